//! The live page in a real browser (headless Chromium over WebDriver):
//! the gateway's page over etcd with two `lorem-server` processes shows
//! them, shows one leave within 2 s of its SIGTERM and come back, shows an
//! ejection, and renders a hostile registration as text; `sdctl ui` serves
//! the same page for the same registry. Writes a screenshot to
//! `target/tmp/ui.png` (docs/ui.png is a copy).
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/install-deps.sh
//! test installs them) and etcd.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client::{Balancer, BalancerOptions, ClientOptions, EjectionOptions, LoremClient, gateway};
use common::paced_load;
use common::procs::{Guard, await_ids, env_for, lorem_server_bin, record, settings};
use registry::{Instance, Registrar};
use serde_json::Value;
use testkit::browser::{Browser, Chromedriver};
use testkit::{EtcdServer, RegistryServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The hostile registration's strings: markup that would run if the page
/// ever put registry strings into HTML.
const SCRIPT_TAG: &str = "<script>window.__pwned='tag'</script>";
const IMG_TAG: &str = "<img src=x onerror=\"window.__pwned='img'\">";
const IMG_META: &str = "<img src=x onerror=window.__pwned='meta'>";

/// Starts `lorem-server` with `id` against `etcd`.
fn lorem_server(etcd: &dyn RegistryServer, id: &str) -> Guard {
    let mut command = Command::new(lorem_server_bin());
    env_for(&mut command, "etcd", etcd);
    command
        .args(["--listen", &format!("127.0.0.1:{}", testkit::free_port())])
        .args(["--id", id, "--drain-delay", "500ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guard(Some(command.spawn().expect("spawn lorem-server")))
}

/// `true` when the page lists exactly these instance rows (in order).
fn rows_are(ids: &[&str]) -> String {
    let want = serde_json::to_string(ids).unwrap();
    format!(
        "const rows = [...document.querySelectorAll('tr[data-instance]')].map(r => r.dataset.instance);
         return JSON.stringify(rows) === JSON.stringify({want});"
    )
}

async fn page_text(browser: &Browser, selector: &str) -> String {
    let mut text = String::new();
    for element in browser.find_all(selector).await.expect("find") {
        text.push_str(&browser.text(&element).await.expect("text"));
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_in_a_real_browser() {
    let started = Instant::now();
    let driver = Chromedriver::start().unwrap_or_else(|error| {
        panic!("the page test needs a real browser: {error:#}");
    });
    let etcd = EtcdServer::start().expect("start etcd");
    let mut a = lorem_server(&etcd, "ui-a");
    let mut b = lorem_server(&etcd, "ui-b");
    let registry = registry::connect(&settings("etcd", &etcd))
        .await
        .expect("connect to etcd");
    await_ids(&*registry, &["ui-a", "ui-b"], Duration::from_secs(30)).await;

    // The gateway, in this process: its balancer over etcd, its page at /.
    // Ejections last 5 s here, so that the once-a-second traffic reading
    // (and the screenshot) sees them.
    let options = BalancerOptions {
        ejection: EjectionOptions {
            base: Duration::from_secs(5),
            ..EjectionOptions::default()
        },
        ..BalancerOptions::default()
    };
    let balancer = Balancer::new(registry.clone(), "lorem", options).expect("a balancer");
    let client = LoremClient::new(balancer, ClientOptions::default()).expect("a client");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let (stop_gateway, stopped) = oneshot::channel::<()>();
    let gateway = tokio::spawn(gateway::serve(listener, client.clone(), async move {
        let _ = stopped.await;
    }));
    let load = paced_load(&client, 40);

    // The event stream, as any client sees it: text/event-stream, the whole
    // state at once.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut events = http
        .get(format!("{url}ui/events"))
        .send()
        .await
        .expect("GET /ui/events");
    assert_eq!(
        events.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        events.headers()
    );
    let first = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .expect("the first event at once")
        .expect("a chunk")
        .expect("not the end");
    let first = String::from_utf8_lossy(&first);
    assert!(
        first.starts_with("event: state\ndata: {")
            && first.contains("\"title\":\"gateway: lorem\""),
        "{first}"
    );
    drop(events);

    let browser = driver.session().await.expect("a browser session");
    browser.goto(&url).await.expect("load the page");

    // 1. It lists the two lorem servers, and it is live.
    browser
        .wait_for(
            "the two lorem servers",
            &rows_are(&["lorem/ui-a", "lorem/ui-b"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the registry synced and the stream live",
            "return document.getElementById('registry').dataset.state === 'synced'
                 && document.getElementById('connection').dataset.state === 'live'
                 && document.querySelector('li[data-service=\"lorem\"] .count').textContent === '2';",
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // 2. One leaves within 2 s of its SIGTERM, and comes back.
    b.signal("TERM");
    let left = browser
        .wait_for(
            "ui-b gone from the page",
            &rows_are(&["lorem/ui-a"]),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "ui-b's removal on the timeline",
            "return !!document.querySelector('#timeline li[data-kind=\"removed\"][data-instance=\"lorem/ui-b\"]');",
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    record(format!(
        "ui page: an instance left the page {} ms after its SIGTERM (etcd, gateway page)",
        left.as_millis()
    ));
    let status = b.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "ui-b exits 0 on SIGTERM: {status}");
    b = lorem_server(&etcd, "ui-b");
    let back = Instant::now();
    browser
        .wait_for(
            "ui-b back on the page",
            &rows_are(&["lorem/ui-a", "lorem/ui-b"]),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    record(format!(
        "ui page: a restarted instance was back on the page {} ms after its start",
        back.elapsed().as_millis()
    ));

    // 3. A hostile registration: shown as text, never run; nothing listens
    //    at its port, so the gateway ejects it.
    let hostile = Instance::new("lorem", "hostile", "127.0.0.1", common::closed_port().await)
        .with_tag(SCRIPT_TAG)
        .with_tag(IMG_TAG)
        .with_metadata("note", IMG_META)
        .with_metadata("zone", "<b>eu</b>");
    let hostile = registry
        .register(hostile)
        .await
        .expect("register the hostile instance");
    browser
        .wait_for(
            "the hostile instance ejected, on its row and on the timeline",
            "return !!document.querySelector('tr[data-instance=\"lorem/hostile\"][data-ejected=\"true\"]')
                 && !!document.querySelector('#timeline li[data-kind=\"ejected\"][data-instance=\"lorem/hostile\"]');",
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let shown = browser
        .execute(
            "const row = document.querySelector('tr[data-instance=\"lorem/hostile\"]');
             return {
               tags: [...row.querySelectorAll('.tag')].map(e => e.textContent),
               meta: [...row.querySelectorAll('.meta')].map(e => e.textContent),
               images: document.querySelectorAll('img').length,
               scripts: document.querySelectorAll('script').length,
               bold: document.querySelectorAll('b').length,
               pwned: window.__pwned === undefined ? null : String(window.__pwned),
             };",
            Vec::new(),
        )
        .await
        .expect("read the hostile row");
    assert_eq!(
        shown["tags"],
        serde_json::json!([SCRIPT_TAG, IMG_TAG]),
        "{shown}"
    );
    assert_eq!(
        shown["meta"],
        serde_json::json!([format!("note={IMG_META}"), "zone=<b>eu</b>"]),
        "{shown}"
    );
    assert_eq!(shown["images"], 0, "no <img> element was made: {shown}");
    assert_eq!(shown["scripts"], 1, "only the page's own script: {shown}");
    assert_eq!(shown["bold"], 0, "no markup from metadata: {shown}");
    assert_eq!(
        shown["pwned"],
        Value::Null,
        "no registry string ran: {shown}"
    );
    let text = page_text(&browser, "tr[data-instance=\"lorem/hostile\"]").await;
    assert!(
        text.contains(SCRIPT_TAG) && text.contains(IMG_META),
        "the row shows the markup as text: {text}"
    );

    // The chart has a few seconds of traffic; the screenshot shows it all.
    browser
        .wait_for(
            "a few seconds of rates on the chart",
            "return document.querySelectorAll('#legend li').length >= 2;",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    println!("screenshot: {}", shot.display());

    // 4. `sdctl ui` serves the same page for the same registry (every
    //    service, no traffic).
    let mut sdctl = Command::new(testkit::sdctl_bin().expect("sdctl"));
    env_for(&mut sdctl, "etcd", &etcd);
    let mut child = sdctl
        .args(["ui", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sdctl ui");
    let stdout = child.stdout.take().expect("stdout");
    let sdctl = Guard(Some(child));
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .next()
            .map(|l| l.unwrap_or_default())
    })
    .await
    .unwrap()
    .expect("sdctl ui prints where it serves");
    let sdctl_url = line
        .rsplit_once(" at ")
        .map(|(_, url)| url.to_owned())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    browser.goto(&sdctl_url).await.expect("load sdctl's page");
    browser
        .wait_for(
            "sdctl's page listing lorem's three instances",
            &rows_are(&["lorem/hostile", "lorem/ui-a", "lorem/ui-b"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let title = page_text(&browser, "#title").await;
    assert!(title.contains("etcd at 127.0.0.1:"), "{title}");
    let status = sdctl.terminate().await;
    assert!(status.success(), "sdctl ui exits 0 on SIGTERM: {status}");

    browser.close().await.expect("end the session");
    drop(driver);
    hostile
        .deregister()
        .await
        .expect("deregister the hostile one");
    let report = load.stop().await;
    let _ = stop_gateway.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), gateway).await;
    for server in [&mut a, &mut b] {
        server.signal("TERM");
    }
    for server in [a, b] {
        let _ = server.wait(Duration::from_secs(20)).await;
    }
    assert_eq!(report.failed, 0, "no request failed: {report:?}");
    record(format!(
        "ui page: browser test took {} ms in all (chromium start included)",
        started.elapsed().as_millis()
    ));
}
