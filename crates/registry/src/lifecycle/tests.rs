//! The lifecycle against the in-process registry and a registrar whose
//! state the test drives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use super::*;
use crate::backend::{KeepAlive, registration};
use crate::{MemoryRegistry, Registration, RegistrationState, Watcher};

const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it is true, or fails naming what never happened.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn listed(registry: &MemoryRegistry, service: &str) -> usize {
    registry.instances(service).await.map_or(0, |i| i.len())
}

/// Registers in `inner`, noting whether the instance's port accepted a
/// connection at that moment.
struct Probe {
    inner: MemoryRegistry,
    listening: Arc<std::sync::Mutex<Vec<bool>>>,
}

#[async_trait]
impl Registrar for Probe {
    async fn register(&self, instance: Instance) -> crate::Result<Registration> {
        let open = tokio::net::TcpStream::connect(instance.authority())
            .await
            .is_ok();
        self.listening.lock().unwrap().push(open);
        self.inner.register(instance).await
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn registers_once_listening_and_deregisters_before_the_drain() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let listening = Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = Probe {
        inner: registry.clone(),
        listening: listening.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lifecycle = Lifecycle::new(probe, Instance::new("lc", "a", "127.0.0.1", addr.port()))
        .drain_delay(Duration::from_secs(600));
    let readiness = lifecycle.readiness();
    assert!(
        !readiness.is_registered(),
        "not registered before the start"
    );
    assert_eq!(listed(&registry, "lc").await, 0);

    let server = lifecycle.spawn(listener, axum::Router::new()).unwrap();
    tokio::time::timeout(DEADLINE, readiness.registered())
        .await
        .expect("the instance is registered");
    assert!(server.is_registered());
    assert_eq!(listed(&registry, "lc").await, 1);
    assert_eq!(
        *listening.lock().unwrap(),
        [true],
        "the port accepted connections when the registration was made"
    );

    let (end_drain, drain_ended) = oneshot::channel::<()>();
    let stopping = tokio::spawn(server.shutdown_with(async move {
        let _ = drain_ended.await;
    }));
    eventually("the deregistration", || async {
        listed(&registry, "lc").await == 0
    })
    .await;
    assert!(!readiness.is_registered(), "not ready once deregistered");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_ok(),
        "still listening during the drain"
    );
    assert!(!stopping.is_finished(), "the shutdown waits for the drain");
    end_drain.send(()).unwrap();
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the shutdown ends with the drain")
        .unwrap()
        .expect("a clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped"
    );
}

#[tokio::test]
async fn a_handle_registers_in_the_background_and_deregisters_on_shutdown() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let handle = Lifecycle::new(registry.clone(), Instance::new("lc-h", "a", "127.0.0.1", 1))
        .drain_delay(Duration::ZERO)
        .start();
    tokio::time::timeout(DEADLINE, handle.readiness().registered())
        .await
        .expect("the instance is registered");
    assert!(handle.is_registered());
    assert_eq!(listed(&registry, "lc-h").await, 1);
    let readiness = handle.readiness();
    handle.shutdown().await.expect("a clean shutdown");
    assert!(!readiness.is_registered());
    assert_eq!(listed(&registry, "lc-h").await, 0);
}

/// A keep-alive whose state the test sets.
struct Driven {
    state: watch::Receiver<RegistrationState>,
}

#[async_trait]
impl KeepAlive for Driven {
    async fn deregister(self: Box<Self>) -> crate::Result<()> {
        Ok(())
    }
    fn abandon(self: Box<Self>) {}
    fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }
}

/// Hands out registrations whose state the test sets (through the last
/// sender in `states`), failing the first `failures` attempts as an
/// unreachable registry would.
struct DrivenRegistrar {
    states: Arc<std::sync::Mutex<Vec<watch::Sender<RegistrationState>>>>,
    failures: u32,
    attempts: Arc<AtomicU32>,
}

#[async_trait]
impl Registrar for DrivenRegistrar {
    async fn register(&self, instance: Instance) -> crate::Result<Registration> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.failures {
            return Err(crate::Error::unavailable(
                "memory",
                "test",
                "simulated outage",
            ));
        }
        let (sender, state) = watch::channel(RegistrationState::Registered);
        self.states.lock().unwrap().push(sender);
        Ok(registration(instance, Box::new(Driven { state })))
    }
}

#[tokio::test(start_paused = true)]
async fn is_registered_follows_the_registration_state() {
    let states = Arc::new(std::sync::Mutex::new(
        Vec::<watch::Sender<RegistrationState>>::new(),
    ));
    let set = |state: RegistrationState| {
        states
            .lock()
            .unwrap()
            .last()
            .expect("a registration")
            .send_replace(state);
    };
    let attempts = Arc::new(AtomicU32::new(0));
    let registrar = DrivenRegistrar {
        states: states.clone(),
        failures: 3,
        attempts: attempts.clone(),
    };
    let handle = Lifecycle::new(registrar, Instance::new("lc-s", "a", "127.0.0.1", 1))
        .drain_delay(Duration::ZERO)
        .start();
    let readiness = handle.readiness();
    // Three refusals, retried with backoff (the clock is paused: the
    // retries take no real time).
    readiness.registered().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 4, "retried until accepted");

    let follows = |expected: bool, what: &'static str| {
        let readiness = readiness.clone();
        async move {
            eventually(what, || {
                let now = readiness.is_registered();
                async move { now == expected }
            })
            .await;
        }
    };
    set(RegistrationState::Restoring);
    follows(false, "not ready while restoring").await;
    set(RegistrationState::Registered);
    follows(true, "ready once restored").await;

    // Displaced: registered again (a fresh registration of the same id).
    set(RegistrationState::Displaced {
        holder: "pid1-other".to_owned(),
    });
    eventually("a new registration after the displacement", || async {
        attempts.load(Ordering::SeqCst) == 5
    })
    .await;
    follows(true, "ready again").await;

    handle.shutdown().await.expect("a clean shutdown");
    assert!(!readiness.is_registered());
}

#[test]
fn always_ready_is_ready() {
    assert!(Readiness::always().is_registered());
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn serve_runs_the_whole_life_until_the_shutdown_future() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lifecycle = Lifecycle::new(
        registry.clone(),
        Instance::new("lc-v", "a", "127.0.0.1", port),
    )
    .drain_delay(Duration::ZERO);
    let readiness = lifecycle.readiness();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(lifecycle.serve(listener, axum::Router::new(), async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(DEADLINE, readiness.registered())
        .await
        .expect("the instance is registered");
    assert_eq!(listed(&registry, "lc-v").await, 1);
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("serve returns after the shutdown future")
        .unwrap()
        .expect("a clean shutdown");
    assert_eq!(listed(&registry, "lc-v").await, 0);
    assert!(!readiness.is_registered());
}

#[tokio::test]
async fn an_invalid_instance_is_not_retried_and_stops_cleanly() {
    let registry = MemoryRegistry::new(Duration::from_secs(30));
    let handle = Lifecycle::new(
        registry.clone(),
        Instance::new("lc-i", "bad id", "127.0.0.1", 1),
    )
    .drain_delay(Duration::ZERO)
    .start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!handle.is_registered());
    tokio::time::timeout(DEADLINE, handle.shutdown())
        .await
        .expect("the shutdown does not wait for a registration")
        .expect("a clean shutdown");
    assert_eq!(listed(&registry, "lc-i").await, 0);
}
