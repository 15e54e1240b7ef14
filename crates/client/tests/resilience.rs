//! Zero failed requests through crashes, restarts, cold starts and registry
//! restarts, on every real backend, with real processes.
//!
//! For each of etcd, ZooKeeper and Consul (started by the testkit on
//! loopback), `lorem-client load` runs continuously (100 requests/s, 4 in
//! flight, stopped by SIGINT when the scenario is over) against
//! `lorem-server` processes while one of these happens:
//!
//! 1. `sigkill`: one of two servers is SIGKILLed (its registration expires
//!    after the TTL; until then retries go to the other);
//! 2. `sigterm`: one of two servers is SIGTERMed (deregisters, drains);
//! 3. `rolling`: both servers are restarted, one after the other;
//! 4. `cold`: the client starts before any server exists;
//! 5. `registry`: the registry server restarts (for Consul, a fresh dev
//!    agent on the same ports that forgot everything: the servers must
//!    register again);
//! 6. `join`: a third server joins and must get traffic within a second of
//!    being registered.
//!
//! Every scenario must end with 0 failed requests and the right live set in
//! the client; each prints (and keeps for `scripts/test.sh`) its requests,
//! failures, retries and how long after the fault the client's set was
//! right again (from the load report's `set_changes`). The backends run one
//! after the other so that their numbers do not disturb each other.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::{Guard, await_ids, env_for, live_ids, lorem_server_bin, record, settings};
use registry::DynRegistry;
use serde_json::Value;
use testkit::{ConsulAgent, EtcdServer, RegistryServer, ZkServer};

/// One backend at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous bound on every wait for the registry or a process.
const PATIENCE: Duration = Duration::from_secs(60);

fn unix_ms() -> u64 {
    client::load::unix_ms()
}

/// A running `lorem-server` child.
struct Server {
    id: String,
    port: u16,
    guard: Guard,
}

/// A running `lorem-client load` child.
struct Load {
    guard: Guard,
    stdout: std::process::ChildStdout,
}

/// What one scenario measured.
#[derive(Debug)]
struct Row {
    scenario: &'static str,
    requests: u64,
    failed: u64,
    retries: u64,
    /// Milliseconds from the fault until the client's set was right again
    /// (0 when it never went wrong).
    settled_ms: u64,
    note: String,
}

/// The registry, the servers and the test's own watcher of one backend.
struct Fleet {
    backend: &'static str,
    registry: Box<dyn RegistryServer>,
    watcher: DynRegistry,
    http: reqwest::Client,
}

impl Fleet {
    async fn new(registry: Box<dyn RegistryServer>) -> Fleet {
        let backend = registry.backend();
        let watcher = registry::connect(&settings(backend, &*registry))
            .await
            .expect("connect the test's watcher");
        Fleet {
            backend,
            registry,
            watcher,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// Starts `lorem-server --id id` on `port` (0: a free one).
    fn start_server(&self, id: &str, port: u16) -> Server {
        let port = if port == 0 {
            testkit::free_port()
        } else {
            port
        };
        let mut command = Command::new(lorem_server_bin());
        env_for(&mut command, self.backend, &*self.registry);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--id", id])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let child = command.spawn().expect("spawn lorem-server");
        Server {
            id: id.to_owned(),
            port,
            guard: Guard(Some(child)),
        }
    }

    /// Starts the load; it runs until [`Load::stop`].
    fn start_load(&self) -> Load {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
        env_for(&mut command, self.backend, &*self.registry);
        command
            // The client's defaults (wait 10 s, 3 attempts, 2 s per try,
            // eject after 3 failures): the scenarios hold with them.
            .args(["load", "--duration", "300s"])
            .args(["--concurrency", "4", "--rate", "100", "--json"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("spawn lorem-client load");
        let stdout = child.stdout.take().expect("piped stdout");
        Load {
            guard: Guard(Some(child)),
            stdout,
        }
    }

    /// Two servers, registered, both getting the load's requests.
    async fn two_under_load(&self, a: &str, b: &str) -> (Server, Server, Load) {
        let (a, b) = (self.start_server(a, 0), self.start_server(b, 0));
        self.await_ids(&[&a.id, &b.id]).await;
        let load = self.start_load();
        self.await_traffic(&[&a, &b]).await;
        (a, b, load)
    }

    async fn await_ids(&self, want: &[&str]) -> Duration {
        await_ids(&*self.watcher, want, PATIENCE).await
    }

    /// The lorem requests `server` has answered so far, from its metrics.
    async fn served(&self, server: &Server) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", server.port);
        let Ok(response) = self.http.get(url).send().await else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with("lorem_requests_total{type=\"sentence\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until every one of `servers` has served a request.
    async fn await_traffic(&self, servers: &[&Server]) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut all = true;
            for server in servers {
                all &= self.served(server).await > 0;
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the load never reached every server"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Load {
    /// Stops the load (SIGINT: no new requests, in-flight ones finish) and
    /// returns its JSON report.
    async fn stop(self) -> Value {
        use std::io::Read as _;
        self.guard.signal("INT");
        let status = self.guard.wait(PATIENCE).await;
        let mut stdout = String::new();
        let mut pipe = self.stdout;
        pipe.read_to_string(&mut stdout).expect("read the report");
        let report: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("load must print one JSON object ({e}): {stdout}"));
        assert_eq!(report["failed"], 0, "no request may fail: {report}");
        assert!(report["ok"].as_u64().unwrap_or(0) > 0, "{report}");
        assert!(
            status.success(),
            "load exits 0 when nothing failed: {status}"
        );
        report
    }
}

/// Milliseconds from `fault_ms` to the last change of the client's set at
/// or after it, having checked that the set ends as `want`.
fn settled_ms(report: &Value, fault_ms: u64, want: &[&str]) -> u64 {
    let ids = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&report["instances"]),
        want,
        "the client's set at the end: {report}"
    );
    report["set_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|change| change["at_unix_ms"].as_u64())
        .filter(|at| *at >= fault_ms)
        .max()
        .map_or(0, |at| at - fault_ms)
}

fn row(scenario: &'static str, report: &Value, settled_ms: u64, note: String) -> Row {
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    Row {
        scenario,
        requests: count("ok") + count("failed"),
        failed: count("failed"),
        retries: count("retries"),
        settled_ms,
        note,
    }
}

fn served_by(report: &Value, id: &str) -> u64 {
    report["per_instance"][id].as_u64().unwrap_or(0)
}

/// Scenario 1: one of two servers is SIGKILLed.
async fn sigkill(fleet: &Fleet) -> Row {
    let (a, b, load) = fleet.two_under_load("kill-a", "kill-b").await;
    let fault_ms = unix_ms();
    b.guard.signal("KILL");
    let status = b.guard.wait(PATIENCE).await;
    assert!(!status.success(), "SIGKILL ends it: {status}");
    fleet.await_ids(&["kill-a"]).await;
    // Some more load on the survivor alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    let settled = settled_ms(&report, fault_ms, &["kill-a"]);
    assert_eq!(a.guard.terminate().await.code(), Some(0));
    row(
        "1 SIGKILL one of two",
        &report,
        settled,
        "until its registration expired".to_owned(),
    )
}

/// Scenario 2: One of two servers is SIGTERMed: it deregisters, then drains.
async fn sigterm(fleet: &Fleet) -> Row {
    let (a, b, load) = fleet.two_under_load("term-a", "term-b").await;
    let fault_ms = unix_ms();
    let status = b.guard.terminate().await;
    assert_eq!(status.code(), Some(0), "a drained server exits 0");
    fleet.await_ids(&["term-a"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    let settled = settled_ms(&report, fault_ms, &["term-a"]);
    assert_eq!(a.guard.terminate().await.code(), Some(0));
    row(
        "2 SIGTERM one of two",
        &report,
        settled,
        "deregistered first".to_owned(),
    )
}

/// Scenario 3: Both servers restart, one after the other, on the same ids and ports.
async fn rolling(fleet: &Fleet) -> Row {
    let ids = ["roll-a", "roll-b"];
    let mut servers = vec![fleet.start_server(ids[0], 0), fleet.start_server(ids[1], 0)];
    fleet.await_ids(&ids).await;
    let load = fleet.start_load();
    fleet.await_traffic(&[&servers[0], &servers[1]]).await;
    let mut fault_ms = 0;
    for (i, id) in ids.iter().enumerate() {
        fault_ms = unix_ms();
        let old = servers.remove(i);
        let port = old.port;
        assert_eq!(old.guard.terminate().await.code(), Some(0));
        let new = fleet.start_server(id, port);
        fleet.await_ids(&ids).await;
        fleet.await_traffic(&[&new]).await;
        servers.insert(i, new);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    let settled = settled_ms(&report, fault_ms, &ids);
    for server in servers {
        assert_eq!(server.guard.terminate().await.code(), Some(0));
    }
    row(
        "3 rolling restart",
        &report,
        settled,
        "after the second restart began".to_owned(),
    )
}

/// Scenario 4: The client starts before any server exists.
async fn cold_start(fleet: &Fleet) -> Row {
    assert!(live_ids(&*fleet.watcher).await.is_empty());
    let load = fleet.start_load();
    // Requests are issued and parked meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault_ms = unix_ms();
    let a = fleet.start_server("cold-a", 0);
    let b = fleet.start_server("cold-b", 0);
    fleet.await_ids(&["cold-a", "cold-b"]).await;
    fleet.await_traffic(&[&a, &b]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    let settled = settled_ms(&report, fault_ms, &["cold-a", "cold-b"]);
    let waited = report["p99_ms"].as_f64().unwrap_or(0.0);
    for server in [a, b] {
        assert_eq!(server.guard.terminate().await.code(), Some(0));
    }
    row(
        "4 cold start",
        &report,
        settled,
        format!("after the servers started; early requests waited (p99 {waited:.0} ms)"),
    )
}

/// Scenario 5: The registry server restarts under load.
async fn registry_restart(fleet: &mut Fleet) -> Row {
    let (a, b, load) = fleet.two_under_load("reg-a", "reg-b").await;
    let fault_ms = unix_ms();
    let started = Instant::now();
    tokio::task::block_in_place(|| fleet.registry.restart()).expect("restart the registry");
    let restart_took = started.elapsed();
    fleet.await_ids(&["reg-a", "reg-b"]).await;
    let back = started.elapsed();
    let before = (fleet.served(&a).await, fleet.served(&b).await);
    // Both must serve again after the restart.
    let deadline = Instant::now() + PATIENCE;
    while fleet.served(&a).await == before.0 || fleet.served(&b).await == before.1 {
        assert!(
            Instant::now() < deadline,
            "both servers serve after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    let settled = settled_ms(&report, fault_ms, &["reg-a", "reg-b"]);
    for server in [a, b] {
        assert_eq!(server.guard.terminate().await.code(), Some(0));
    }
    row(
        "5 registry restart",
        &report,
        settled,
        format!(
            "restart took {} ms; registry listed both again after {} ms",
            restart_took.as_millis(),
            back.as_millis()
        ),
    )
}

/// Scenario 6: a third server joins; it must get traffic within a second
/// of being registered.
async fn join(fleet: &Fleet) -> Row {
    let (a, b, load) = fleet.two_under_load("join-a", "join-b").await;
    let fault_ms = unix_ms();
    let c = fleet.start_server("join-c", 0);
    fleet.await_ids(&["join-a", "join-b", "join-c"]).await;
    let registered = Instant::now();
    fleet.await_traffic(&[&c]).await;
    let first_request = registered.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    let settled = settled_ms(&report, fault_ms, &["join-a", "join-b", "join-c"]);
    assert!(served_by(&report, "join-c") > 0, "{report}");
    assert!(
        first_request < Duration::from_secs(1),
        "the new server got its first request {first_request:?} after it was registered"
    );
    for server in [a, b, c] {
        assert_eq!(server.guard.terminate().await.code(), Some(0));
    }
    row(
        "6 a server joins",
        &report,
        settled,
        format!(
            "first request {} ms after the registry listed it",
            first_request.as_millis()
        ),
    )
}

async fn scenarios(start: fn() -> Box<dyn RegistryServer>) {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::new(tokio::task::block_in_place(start)).await;
    let backend = fleet.backend;
    let rows = vec![
        sigkill(&fleet).await,
        sigterm(&fleet).await,
        rolling(&fleet).await,
        cold_start(&fleet).await,
        registry_restart(&mut fleet).await,
        join(&fleet).await,
    ];
    for row in &rows {
        record(format!(
            "resilience {backend} | {} | requests {} | failed {} | retries {} | set right {} ms after the fault ({})",
            row.scenario, row.requests, row.failed, row.retries, row.settled_ms, row.note
        ));
        assert_eq!(row.failed, 0, "{row:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd() {
    scenarios(|| Box::new(EtcdServer::start().expect("start etcd"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper() {
    scenarios(|| Box::new(ZkServer::start().expect("start ZooKeeper"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul() {
    scenarios(|| Box::new(ConsulAgent::start().expect("start Consul"))).await;
}
