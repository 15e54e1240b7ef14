//! Helpers shared by the client tests: real lorem servers on 127.0.0.1:0,
//! small axum stubs, and deadline loops.

#![allow(dead_code, unreachable_pub)]

// One freeze helper (SIGSTOP with a SIGCONT guard) for the registry's and
// the client's tests.
#[path = "../../../registry/tests/common/freeze.rs"]
pub mod freeze;
pub mod procs;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::handler::Handler;
use client::{Balancer, BalancerOptions, ClientOptions, LoremClient, Snapshot};
use lorem::server::{RunningServer, ServerOptions};
use registry::{Instance, MemoryRegistry, Registrar, Registration};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Generous bound on every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The in-process registry the tests run on, with a TTL no test outlives.
pub fn memory_registry() -> MemoryRegistry {
    MemoryRegistry::new(Duration::from_secs(10))
}

/// Registers instance `id` of service `lorem` at 127.0.0.1:`port` (a stub,
/// or nothing at all) for as long as the returned handle lives.
pub async fn register_at(registry: &MemoryRegistry, id: &str, port: u16) -> Registration {
    registry
        .register(Instance::new("lorem", id, "127.0.0.1", port))
        .await
        .expect("register")
}

/// Starts a real lorem server with `id` for `service` and waits until it is
/// registered.
pub async fn start_lorem<R: Registrar + 'static>(
    registrar: R,
    service: &str,
    id: &str,
) -> RunningServer {
    let mut options = ServerOptions::new(id);
    options.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    options.service = service.to_owned();
    options.drain_delay = Duration::ZERO;
    options.shutdown_timeout = Duration::from_secs(5);
    let server = lorem::server::start(options, registrar)
        .await
        .expect("the lorem server starts");
    wait_until(&format!("lorem server {id} registered"), || {
        let registered = server.is_registered();
        async move { registered }
    })
    .await;
    server
}

/// Polls `condition` every 10 ms until it holds; panics naming `what` after
/// [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the balancer's set has exactly `ids` (sorted).
pub async fn wait_for_ids(balancer: &Balancer, ids: &[&str]) -> Snapshot {
    let mut set = balancer.subscribe();
    let wanted: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    let seen = tokio::time::timeout(
        DEADLINE,
        set.wait_for(|set| set.iter().map(|i| i.id.clone()).collect::<Vec<_>>() == wanted),
    )
    .await
    .map(|r| r.is_ok());
    assert!(
        matches!(seen, Ok(true)),
        "the balancer never saw exactly {ids:?}; it has {:?}",
        balancer
            .instances()
            .iter()
            .map(|i| &i.id)
            .collect::<Vec<_>>()
    );
    balancer.instances()
}

/// A balancer and lorem client over `registry`.
pub fn lorem_client(
    registry: &MemoryRegistry,
    service: &str,
    balancer: BalancerOptions,
    client: ClientOptions,
) -> LoremClient {
    let balancer =
        Balancer::new(registry.clone(), service, balancer).expect("a valid service name");
    LoremClient::new(balancer, client).expect("valid client options")
}

/// [`lorem_client`] for service `lorem`, with default options.
pub fn default_client(registry: &MemoryRegistry) -> LoremClient {
    lorem_client(
        registry,
        "lorem",
        BalancerOptions::default(),
        ClientOptions::default(),
    )
}

/// A port on 127.0.0.1 with nothing listening on it.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// A running axum stub; dropping `stop` ends it.
pub struct Stub {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stub {
    /// Serves `router` on 127.0.0.1:0.
    pub async fn start(router: axum::Router) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("the stub serves");
        });
        Stub {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Serves `handler` on the lorem route (`POST /lorem/{kind}/{min}/{max}`):
    /// an instance that misbehaves on purpose.
    pub async fn lorem<H, T>(handler: H) -> Stub
    where
        H: Handler<T, ()>,
        T: 'static,
    {
        Stub::start(
            axum::Router::new().route("/lorem/{kind}/{min}/{max}", axum::routing::post(handler)),
        )
        .await
    }

    /// Stops it and waits for a clean exit.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the stub stops in time")
            .expect("the stub task ends cleanly");
    }
}

/// A paced load running in the background until [`BackgroundLoad::stop`].
pub struct BackgroundLoad {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<client::Result<client::load::LoadReport>>,
}

/// Starts `rate` requests per second, 4 in flight, through `client`, for
/// at most two minutes.
pub fn paced_load(client: &LoremClient, rate: u32) -> BackgroundLoad {
    let (stop, stopped) = oneshot::channel::<()>();
    let client = client.clone();
    let task = tokio::spawn(async move {
        client::load::run_until(
            &client,
            &client::load::LoadOptions {
                requests: None,
                duration: Some(Duration::from_secs(120)),
                concurrency: 4,
                rate: Some(rate),
                ..client::load::LoadOptions::default()
            },
            async move {
                let _ = stopped.await;
            },
        )
        .await
    });
    BackgroundLoad { stop, task }
}

impl BackgroundLoad {
    /// Stops sending, waits for the requests in flight, and returns the
    /// report.
    pub async fn stop(self) -> client::load::LoadReport {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the load stops in time")
            .expect("no panic")
            .expect("valid options")
    }
}
