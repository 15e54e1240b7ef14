//! The server's life cycle against the in-process registry: register,
//! shut down gracefully, crash, retry a failing registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lorem::server::{ConnectOnDemand, RunningServer, ServerError, ServerOptions, start};
use registry::{Instance, MemoryRegistry, Registrar, Registration, Watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it is true, or fails naming `what` never happened.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn options(id: &str) -> ServerOptions {
    let mut options = ServerOptions::new(id);
    options.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    options.drain_delay = Duration::ZERO;
    options.shutdown_timeout = Duration::from_secs(5);
    options.tags = vec!["v1".to_owned()];
    options
}

async fn wait_registered(server: &RunningServer) {
    eventually("registration", || async { server.is_registered() }).await;
}

async fn health_ok(addr: SocketAddr) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    match client.get(format!("http://{addr}/health")).send().await {
        Ok(response) => response.status() == 200,
        Err(_) => false,
    }
}

/// The status of `GET /ready` (0 if there was no answer).
async fn ready_status(addr: SocketAddr) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    match client.get(format!("http://{addr}/ready")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

async fn port_closed(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

#[tokio::test]
async fn registers_once_listening_and_deregisters_on_shutdown() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let server = start(options("srv-a"), registry.clone())
        .await
        .expect("start");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(server.id(), "srv-a");
    wait_registered(&server).await;

    let instances = registry.instances("lorem").await.expect("instances");
    assert_eq!(
        instances,
        vec![
            Instance::new("lorem", "srv-a", "127.0.0.1", addr.port())
                .with_tag("v1")
                .with_metadata("instance-id-header", "x-instance-id")
        ]
    );
    assert!(health_ok(addr).await);

    server.shutdown().await.expect("clean shutdown");
    assert!(
        registry
            .instances("lorem")
            .await
            .expect("instances")
            .is_empty()
    );
    eventually("port closed after shutdown", || port_closed(addr)).await;
}

#[tokio::test]
async fn keeps_serving_during_the_drain_delay() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let mut options = options("srv-drain");
    // Far longer than the test runs: every check below happens inside the
    // drain, which the test then ends itself.
    options.drain_delay = Duration::from_secs(30);
    let server = start(options, registry.clone()).await.expect("start");
    let addr = server.local_addr();
    wait_registered(&server).await;
    assert_eq!(ready_status(addr).await, 200, "ready once registered");

    let (end_drain, drain_ended) = oneshot::channel::<()>();
    let stopping = tokio::spawn(server.shutdown_with(async move {
        let _ = drain_ended.await;
    }));
    eventually("deregistration", || async {
        registry
            .instances("lorem")
            .await
            .is_ok_and(|i| i.is_empty())
    })
    .await;
    assert!(health_ok(addr).await, "still serving while draining");
    assert_eq!(
        ready_status(addr).await,
        503,
        "not ready once deregistered, though still serving"
    );
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/lorem/word/1/5"))
        .send()
        .await
        .expect("a lorem request during the drain");
    assert_eq!(response.status(), 200);
    assert!(!stopping.is_finished(), "the shutdown waits for the drain");

    end_drain.send(()).expect("the shutdown is still draining");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("ending the drain lets the shutdown finish")
        .expect("join")
        .expect("clean shutdown");
    eventually("port closed after the drain", || port_closed(addr)).await;
}

#[tokio::test]
async fn a_crash_leaves_the_instance_until_its_ttl_and_cuts_connections() {
    let registry = MemoryRegistry::new(Duration::from_secs(2));
    let server = start(options("srv-crash"), registry.clone())
        .await
        .expect("start");
    let addr = server.local_addr();
    wait_registered(&server).await;

    // An idle keep-alive connection that a crash must cut.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("read answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    server.crash();
    assert_eq!(
        ids(&registry.instances("lorem").await.expect("instances")),
        vec!["srv-crash"],
        "a crash does not deregister"
    );
    eventually("port closed after the crash", || port_closed(addr)).await;
    let read = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
        .await
        .expect("the open connection is cut");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eventually("expiry after the TTL", || async {
        registry
            .instances("lorem")
            .await
            .is_ok_and(|i| i.is_empty())
    })
    .await;
}

/// Fails its first `failures` registrations as an unreachable backend would.
struct Flaky {
    inner: MemoryRegistry,
    failures: u32,
    attempts: Arc<AtomicU32>,
}

#[async_trait]
impl Registrar for Flaky {
    async fn register(&self, instance: Instance) -> registry::Result<Registration> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.failures {
            return Err(registry::Error::unavailable(
                "memory",
                "test",
                format!("simulated outage, attempt {attempt}"),
            ));
        }
        self.inner.register(instance).await
    }
}

#[tokio::test]
async fn keeps_retrying_until_the_registry_takes_it() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let attempts = Arc::new(AtomicU32::new(0));
    let flaky = Flaky {
        inner: registry.clone(),
        failures: 4,
        attempts: attempts.clone(),
    };
    let server = start(options("srv-flaky"), flaky).await.expect("start");
    // Serving does not wait for the registry.
    assert!(health_ok(server.local_addr()).await);
    wait_registered(&server).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
    assert_eq!(
        ids(&registry.instances("lorem").await.expect("instances")),
        vec!["srv-flaky"]
    );
    server.shutdown().await.expect("clean shutdown");
    assert!(
        registry
            .instances("lorem")
            .await
            .expect("instances")
            .is_empty()
    );
}

#[tokio::test]
async fn shutdown_while_still_retrying_is_clean() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let attempts = Arc::new(AtomicU32::new(0));
    let never = Flaky {
        inner: registry.clone(),
        failures: u32::MAX,
        attempts: attempts.clone(),
    };
    let server = start(options("srv-never"), never).await.expect("start");
    let addr = server.local_addr();
    eventually("a second attempt", || async {
        attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(!server.is_registered());
    assert!(health_ok(addr).await, "serving while the registry refuses");
    assert_eq!(
        ready_status(addr).await,
        503,
        "not ready while unregistered"
    );
    tokio::time::timeout(DEADLINE, server.shutdown())
        .await
        .expect("shutdown does not wait for the registry")
        .expect("clean shutdown");
    eventually("port closed", || port_closed(addr)).await;
    assert!(
        registry
            .instances("lorem")
            .await
            .expect("instances")
            .is_empty()
    );
}

#[tokio::test]
async fn bad_instances_and_addresses_are_startup_errors() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));

    let err = start(options("bad id"), registry.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ServerError::InvalidInstance(_)), "{err}");
    assert!(err.to_string().contains("\"bad id\""), "{err}");

    let mut unspecified = options("srv-any");
    unspecified.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let err = start(unspecified.clone(), registry.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ServerError::UnspecifiedAdvertise { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--advertise"), "{err}");

    let mut advertised = unspecified;
    advertised.advertise = Some("127.0.0.1".to_owned());
    let server = start(advertised, registry.clone()).await.expect("start");
    wait_registered(&server).await;
    let instances = registry.instances("lorem").await.expect("instances");
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].address, "127.0.0.1");
    assert_eq!(instances[0].port, server.local_addr().port());
    server.shutdown().await.expect("clean shutdown");

    let mut other = options("srv-adv");
    other.advertise = Some("lorem.example:9999".to_owned());
    let server = start(other, registry.clone()).await.expect("start");
    wait_registered(&server).await;
    let instances = registry.instances("lorem").await.expect("instances");
    assert_eq!(instances[0].authority(), "lorem.example:9999");
    server.shutdown().await.expect("clean shutdown");

    let mut zero = options("srv-zero");
    zero.advertise = Some("0.0.0.0:80".to_owned());
    let err = start(zero, registry.clone()).await.unwrap_err();
    assert!(
        matches!(err, ServerError::UnspecifiedAdvertise { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn connect_on_demand_registers_in_the_configured_registry() {
    // The default settings select the process-wide in-memory registry.
    let settings = registry::Settings::default();
    let registrar = ConnectOnDemand::new(settings.clone());
    assert!(registrar.registry().is_none());
    let mut options = options("srv-on-demand");
    options.service = "lorem-on-demand".to_owned();
    let server = start(options, registrar).await.expect("start");
    wait_registered(&server).await;
    let global = MemoryRegistry::global(settings.ttl);
    assert_eq!(
        ids(&global
            .instances("lorem-on-demand")
            .await
            .expect("instances")),
        vec!["srv-on-demand"]
    );
    server.shutdown().await.expect("clean shutdown");
    assert!(
        global
            .instances("lorem-on-demand")
            .await
            .expect("instances")
            .is_empty()
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_a_shutdown() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let mut options = options("srv-idle");
    // Far beyond the test deadline: finishing before it means the idle
    // connection was closed gracefully, not cut by the timeout.
    options.shutdown_timeout = Duration::from_secs(600);
    let server = start(options, registry.clone()).await.expect("start");
    let addr = server.local_addr();
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("read answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::timeout(DEADLINE, server.shutdown())
        .await
        .expect("an idle connection does not hold up the shutdown")
        .expect("clean shutdown");
    let read = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
        .await
        .expect("the idle connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_request_stuck_past_the_shutdown_timeout_is_cut() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let mut options = options("srv-stuck");
    options.shutdown_timeout = Duration::from_millis(300);
    let server = start(options, registry.clone()).await.expect("start");
    let addr = server.local_addr();
    // Half a request: the server waits for the rest of its headers.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stuck
        .write_all(b"POST /lorem/word/1/5 HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    // Make sure the server has accepted it before stopping.
    eventually("the server to answer others", || health_ok(addr)).await;
    tokio::time::timeout(DEADLINE, server.shutdown())
        .await
        .expect("the shutdown timeout bounds the wait")
        .expect("a timed-out shutdown is still Ok");
    let mut buf = vec![0u8; 1024];
    let read = tokio::time::timeout(DEADLINE, stuck.read(&mut buf))
        .await
        .expect("the stuck connection is cut");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    eventually("port closed", || port_closed(addr)).await;
}

/// Panics inside `register`, as a buggy backend might.
struct Panicking {
    calls: Arc<AtomicU32>,
}

#[async_trait]
impl Registrar for Panicking {
    async fn register(&self, _instance: Instance) -> registry::Result<Registration> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        panic!("simulated bug in the registry backend");
    }
}

#[tokio::test]
async fn a_dead_registration_task_makes_the_shutdown_fail() {
    let calls = Arc::new(AtomicU32::new(0));
    let server = start(
        options("srv-panic"),
        Panicking {
            calls: calls.clone(),
        },
    )
    .await
    .expect("start");
    let addr = server.local_addr();
    eventually("the registration attempt", || async {
        calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Still serving, though unregistered.
    assert!(health_ok(addr).await);
    assert!(!server.is_registered());
    let result = tokio::time::timeout(DEADLINE, server.shutdown())
        .await
        .expect("shutdown finishes");
    match result {
        Err(ServerError::Task { reason }) => {
            assert!(reason.contains("registration"), "{reason}");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    eventually("port closed", || port_closed(addr)).await;
}
