//! A SIGKILLed server's port taken by another program before its
//! registration expires: 0 failed requests and 0 answers from the stranger.
//!
//! On etcd (started by the testkit on loopback, TTL 2 s), `lorem-client
//! load` runs (100 requests/s, 4 in flight, the client's defaults) against
//! two `lorem-server` processes. One is SIGKILLed, and at once a stranger
//! binds its port on 127.0.0.1 and answers whatever comes:
//!
//! 1. `404`: 404 with a text body;
//! 2. `429`: 429 with `Retry-After: 1`;
//! 3. `html`: 200 with an HTML page;
//! 4. `lorem`: a lorem server of another service (`other`, id `stranger`),
//!    which answers lorem requests perfectly well, naming itself.
//!
//! The killed server's registration says its answers carry `x-instance-id`
//! (lorem-server registers `instance-id-header`), so the client's identity
//! check turns each stranger answer into a failure of that endpoint: retried
//! on the survivor, the endpoint ejected, until the registration expires.
//! Without it, 404, 429 and HTML answers failed requests, and the other
//! lorem service's answers were counted as ours. Each scenario checks that
//! the stranger was reached, then that the load ended with 0 failed and 0
//! answers whose `x-instance-id` was not the picked instance's (`foreign`).

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::procs::{Guard, await_ids, env_for, lorem_server_bin, record, settings};
use registry::DynRegistry;
use serde_json::Value;
use testkit::EtcdServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Generous bound on every wait for the registry or a process.
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
enum Stranger {
    NotFound,
    TooMany,
    Html,
    OtherLorem,
}

impl Stranger {
    fn name(self) -> &'static str {
        match self {
            Stranger::NotFound => "404",
            Stranger::TooMany => "429",
            Stranger::Html => "html",
            Stranger::OtherLorem => "lorem",
        }
    }
}

/// A stranger bound to the port, counting the requests it answered.
enum Running {
    Http {
        hits: Arc<AtomicU64>,
        _stop: oneshot::Sender<()>,
    },
    Lorem(Box<lorem::server::RunningServer>),
}

impl Running {
    /// The requests it answered so far.
    async fn hits(&self, http: &reqwest::Client) -> u64 {
        match self {
            Running::Http { hits, .. } => hits.load(Ordering::SeqCst),
            Running::Lorem(server) => served(http, server.local_addr().port()).await,
        }
    }
}

/// Binds `port` as soon as it is free (polling every millisecond, for at
/// most 5 s) and serves as `kind`.
async fn take_port(kind: Stranger, port: u16) -> Running {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    if let Stranger::OtherLorem = kind {
        let mut options = lorem::server::ServerOptions::new("stranger");
        options.listen = addr;
        options.service = "other".to_owned();
        options.drain_delay = Duration::ZERO;
        // Registered, but in a registry of its own: another system.
        let registry = registry::MemoryRegistry::new(Duration::from_secs(60));
        loop {
            match lorem::server::start(options.clone(), registry.clone()).await {
                Ok(server) => return Running::Lorem(Box::new(server)),
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot take port {port}: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot take port {port}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let router = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match kind {
                Stranger::NotFound => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
                Stranger::TooMany => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    "rate limited",
                )
                    .into_response(),
                _ => axum::response::Html(
                    "<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>",
                )
                .into_response(),
            }
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Running::Http { hits, _stop: stop }
}

/// The lorem requests a lorem server on `port` has answered, from its
/// metrics.
async fn served(http: &reqwest::Client, port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let Ok(response) = http.get(url).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("lorem_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Fleet {
    registry: EtcdServer,
    watcher: DynRegistry,
    http: reqwest::Client,
}

impl Fleet {
    fn start_server(&self, id: &str, port: u16) -> Guard {
        let mut command = Command::new(lorem_server_bin());
        env_for(&mut command, "etcd", &self.registry);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--id", id])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        Guard(Some(command.spawn().expect("spawn lorem-server")))
    }

    fn start_load(&self) -> (Guard, std::process::ChildStdout) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
        env_for(&mut command, "etcd", &self.registry);
        command
            .args(["load", "--duration", "300s"])
            .args(["--concurrency", "4", "--rate", "100", "--json"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("spawn lorem-client load");
        let stdout = child.stdout.take().expect("piped stdout");
        (Guard(Some(child)), stdout)
    }

    async fn await_traffic(&self, port: u16) {
        let deadline = Instant::now() + PATIENCE;
        while served(&self.http, port).await == 0 {
            assert!(
                Instant::now() < deadline,
                "the load never reached port {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn scenario(fleet: &Fleet, kind: Stranger) -> String {
    let (a_id, b_id) = (format!("{}-a", kind.name()), format!("{}-b", kind.name()));
    let (a_port, b_port) = (testkit::free_port(), testkit::free_port());
    let a = fleet.start_server(&a_id, a_port);
    let b = fleet.start_server(&b_id, b_port);
    await_ids(&*fleet.watcher, &[&a_id, &b_id], PATIENCE).await;
    let (load, stdout) = fleet.start_load();
    fleet.await_traffic(a_port).await;
    fleet.await_traffic(b_port).await;

    // The stranger polls for the port from before the kill, so it takes it
    // within a millisecond or so of its release.
    let stranger = tokio::spawn(take_port(kind, b_port));
    b.signal("KILL");
    let status = b.wait(PATIENCE).await;
    assert!(!status.success(), "SIGKILL ends it: {status}");
    let stranger = stranger.await.expect("the stranger took the port");
    // The registration outlives the process by up to its TTL: the stranger
    // answers for it meanwhile.
    await_ids(&*fleet.watcher, &[&a_id], PATIENCE).await;
    let reached = stranger.hits(&fleet.http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    use std::io::Read as _;
    load.signal("INT");
    let exit = load.wait(PATIENCE).await;
    let mut text = String::new();
    let mut pipe = stdout;
    pipe.read_to_string(&mut text).expect("read the report");
    let report: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("load must print one JSON object ({e}): {text}"));
    let foreign = report["foreign"].as_u64().unwrap_or(0);
    let line = format!(
        "reused port | stranger {} | requests {} | failed {} | retries {} | stranger reached {} time(s) | answers from the stranger counted {}",
        kind.name(),
        report["ok"].as_u64().unwrap_or(0) + report["failed"].as_u64().unwrap_or(0),
        report["failed"],
        report["retries"],
        reached,
        foreign
    );
    record(line.clone());
    assert!(
        reached > 0,
        "the stranger on port {b_port} was never reached before the registration expired; the scenario did not happen: {report}"
    );
    assert_eq!(report["failed"], 0, "no request may fail: {report}");
    assert_eq!(foreign, 0, "no stranger answer may count: {report}");
    assert!(exit.success(), "load exits 0 when nothing failed: {exit}");
    assert_eq!(a.terminate().await.code(), Some(0));
    if let Running::Lorem(server) = stranger {
        server.shutdown().await.expect("the stranger stops cleanly");
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_a_killed_servers_port_fails_nothing_and_counts_nothing() {
    let registry = tokio::task::block_in_place(EtcdServer::start).expect("start etcd");
    let watcher = registry::connect(&settings("etcd", &registry))
        .await
        .expect("connect the test's watcher");
    let fleet = Fleet {
        registry,
        watcher,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    };
    for kind in [
        Stranger::NotFound,
        Stranger::TooMany,
        Stranger::Html,
        Stranger::OtherLorem,
    ] {
        scenario(&fleet, kind).await;
    }
}
