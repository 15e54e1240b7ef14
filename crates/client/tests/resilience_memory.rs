//! The resilience scenarios on the embedded `memory` registry: servers,
//! registry and load in one process (the only way the memory registry
//! works), with `RunningServer::crash` standing for SIGKILL and
//! `RunningServer::shutdown` for SIGTERM. The load is the library behind
//! `lorem-client load`, 100 requests/s with 4 in flight.
//!
//! Scenario 5 (a registry restart) does not apply: the memory registry has
//! no server to restart; it lives and dies with the process.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use client::load::LoadReport;
use client::{Balancer, BalancerOptions, ClientOptions, LoremClient};
use common::wait_for_ids;
use lorem::generate::Kind;
use lorem::server::{RunningServer, ServerOptions};
use registry::{MemoryRegistry, Watcher};

/// The TTL of the scenarios: a crash shows after it.
const TTL: Duration = Duration::from_secs(2);

/// A server with the default drain delay, on `port` (0: a free one).
async fn server(registry: &MemoryRegistry, id: &str, port: u16) -> RunningServer {
    let mut options = ServerOptions::new(id);
    options.listen = SocketAddr::from(([127, 0, 0, 1], port));
    lorem::server::start(options, registry.clone())
        .await
        .expect("the lorem server starts")
}

/// A running load and the client it goes through.
struct Running {
    load: common::BackgroundLoad,
    client: LoremClient,
}

fn start_load(registry: &MemoryRegistry) -> Running {
    let balancer = Balancer::new(
        registry.clone(),
        "lorem",
        BalancerOptions {
            wait_timeout: Duration::from_secs(30),
            ..BalancerOptions::default()
        },
    )
    .expect("a valid service name");
    let client = LoremClient::new(balancer, ClientOptions::default()).expect("valid options");
    Running {
        load: common::paced_load(&client, 100),
        client,
    }
}

impl Running {
    async fn stop(self) -> LoadReport {
        let report = self.load.stop().await;
        println!("{report}");
        assert_eq!(report.failed, 0, "no request may fail: {report}");
        assert!(report.ok > 0, "{report}");
        report
    }
}

/// Waits until `server` has answered a lorem request.
async fn await_traffic(server: &RunningServer) {
    common::wait_until(&format!("{} serves", server.id()), || {
        let served = server.metrics().lorem_requests(Kind::Sentence) > 0;
        async move { served }
    })
    .await;
}

async fn await_registered(registry: &MemoryRegistry, ids: &[&str]) {
    common::wait_until(&format!("the registry lists {ids:?}"), || async {
        let listed: Vec<String> = registry
            .instances("lorem")
            .await
            .map(|found| found.into_iter().map(|i| i.id).collect())
            .unwrap_or_default();
        listed == ids
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_no_request() {
    let registry = MemoryRegistry::new(TTL);
    let a = server(&registry, "a", 0).await;
    let b = server(&registry, "b", 0).await;
    await_registered(&registry, &["a", "b"]).await;
    let load = start_load(&registry);
    await_traffic(&a).await;
    await_traffic(&b).await;
    b.crash();
    // Listed until the TTL runs out; retries cover the gap.
    wait_for_ids(load.client.balancer(), &["a"]).await;
    let report = load.stop().await;
    assert_eq!(report.instances, ["a"]);
    a.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_and_a_rolling_restart_fail_no_request() {
    let registry = MemoryRegistry::new(TTL);
    let mut servers = vec![
        server(&registry, "a", 0).await,
        server(&registry, "b", 0).await,
    ];
    await_registered(&registry, &["a", "b"]).await;
    let load = start_load(&registry);
    for server in &servers {
        await_traffic(server).await;
    }
    // Each in turn: deregister, drain, stop, then back on the same port.
    for i in 0..2 {
        let old = servers.remove(i);
        let (id, port) = (old.id().to_owned(), old.local_addr().port());
        old.shutdown().await.expect("clean shutdown");
        let new = server(&registry, &id, port).await;
        await_registered(&registry, &["a", "b"]).await;
        await_traffic(&new).await;
        servers.insert(i, new);
    }
    let report = load.stop().await;
    assert_eq!(report.instances, ["a", "b"]);
    // Graceful stops never even need a retry.
    assert_eq!(report.retries, 0, "{report}");
    for server in servers {
        server.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_and_a_joining_server_fail_no_request() {
    let registry = MemoryRegistry::new(TTL);
    let load = start_load(&registry);
    // Requests park while nothing is registered.
    common::wait_until("requests parked", || {
        let parked = load.client.balancer().waiting() > 0;
        async move { parked }
    })
    .await;
    let a = server(&registry, "a", 0).await;
    let b = server(&registry, "b", 0).await;
    await_traffic(&a).await;
    await_traffic(&b).await;
    let c = server(&registry, "c", 0).await;
    await_registered(&registry, &["a", "b", "c"]).await;
    let registered = tokio::time::Instant::now();
    await_traffic(&c).await;
    let first = registered.elapsed();
    println!("the joining server got its first request {first:?} after registering");
    assert!(first < Duration::from_secs(1), "{first:?}");
    let report = load.stop().await;
    assert_eq!(report.instances, ["a", "b", "c"]);
    for server in [a, b, c] {
        server.shutdown().await.expect("clean shutdown");
    }
}
