//! Running the service: listen, register, drain, stop.
//!
//! [`start`] binds the listener, serves the [`router`](crate::http::router),
//! and only then registers the instance, in a background task that retries
//! with backoff until the registry takes it. The [`RunningServer`] it returns
//! stops the server one of two ways:
//!
//! | call                          | registry                         | HTTP                                                  |
//! |-------------------------------|----------------------------------|-------------------------------------------------------|
//! | [`RunningServer::shutdown`]   | deregistered first               | serves `drain_delay` more, stops accepting, finishes in-flight requests (up to `shutdown_timeout`) |
//! | [`RunningServer::shutdown_with`] | deregistered first            | as `shutdown`, but the drain ends as soon as the given future completes |
//! | [`RunningServer::crash`]      | left to expire (TTL)             | stops at once; open connections are cut              |
//! | dropping the handle           | deregistered (best effort)       | stops at once                                         |
//!
//! `GET /ready` follows [`RunningServer::is_registered`]: 503 until the
//! registration has gone through and again from the deregistration on, so
//! a container health check that probes it means "discoverable", not just
//! "listening".
//!
//! ```
//! use std::time::Duration;
//! use lorem::server::{ServerOptions, start};
//! use registry::{MemoryRegistry, Watcher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = MemoryRegistry::new(Duration::from_secs(10));
//! let mut options = ServerOptions::new("lorem-1");
//! options.listen = "127.0.0.1:0".parse()?;
//! options.drain_delay = Duration::ZERO;
//! let server = start(options, registry.clone()).await?;
//! // Registration runs in the background; wait for it.
//! for _ in 0..100 {
//!     if server.is_registered() { break; }
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! assert_eq!(registry.instances("lorem").await?.len(), 1);
//! server.shutdown().await?;
//! assert!(registry.instances("lorem").await?.is_empty());
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use registry::{Instance, Registrar, Registration, RegistrationState};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::metrics::ServerMetrics;

pub use registry::lifecycle::ConnectOnDemand;

/// The first delay between two registration attempts.
pub const REGISTER_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest delay between two registration attempts.
pub const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to run one instance of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// The address to bind; port 0 picks a free port (see
    /// [`RunningServer::local_addr`]).
    pub listen: SocketAddr,
    /// `host:port` (or just `host`, keeping the bound port) that clients
    /// should use, when it differs from the bound address: behind NAT, in a
    /// container, or when listening on `0.0.0.0`, which cannot be advertised.
    pub advertise: Option<String>,
    /// The service name to register under.
    pub service: String,
    /// Tags registered with the instance.
    pub tags: Vec<String>,
    /// The instance id: registered, and sent in every `x-instance-id` header.
    pub id: String,
    /// How long to keep serving after deregistering, so that clients
    /// watching the registry move away before the port closes.
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish once the server stops
    /// accepting; connections still open after it are cut.
    pub shutdown_timeout: Duration,
}

impl ServerOptions {
    /// Defaults: listen on 127.0.0.1:8080, service `lorem`, no tags, no
    /// advertised address, drain 2 s, shutdown timeout 10 s.
    pub fn new(id: impl Into<String>) -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            advertise: None,
            service: "lorem".to_owned(),
            tags: Vec::new(),
            id: id.into(),
            drain_delay: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address from `--listen`.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The address to advertise is `0.0.0.0` or `::`, which no client can
    /// connect to.
    #[error(
        "cannot advertise {address}: it is an unspecified address that clients cannot reach; pass --advertise host:port (LOREM_ADVERTISE) with a reachable address"
    )]
    UnspecifiedAdvertise {
        /// The address that would have been advertised.
        address: String,
    },

    /// `--advertise` is not `host:port`.
    #[error("invalid --advertise {value:?}: {reason}; expected host:port, e.g. 10.0.0.5:8080")]
    InvalidAdvertise {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The instance to register breaks the registry's rules (bad id, service
    /// name, tag...). Not retried: it would never succeed.
    #[error("cannot register this server: {0}")]
    InvalidInstance(#[source] registry::Error),

    /// A background task of the server (the HTTP server, or the one that
    /// keeps the instance registered) failed or panicked.
    #[error("a server task failed: {reason}")]
    Task {
        /// What happened to it.
        reason: String,
    },
}

/// Starts serving on `options.listen`, then registers the instance through
/// `registrar` in the background (retrying with backoff until it works).
///
/// # Errors
/// [`ServerError::Bind`] if the address cannot be bound,
/// [`ServerError::InvalidAdvertise`] / [`ServerError::UnspecifiedAdvertise`]
/// if no usable address can be advertised, [`ServerError::InvalidInstance`]
/// for an id, service or tag the registry would refuse. Registry outages are
/// not errors here: the background task keeps retrying.
pub async fn start<R: Registrar + 'static>(
    options: ServerOptions,
    registrar: R,
) -> Result<RunningServer, ServerError> {
    // Check what does not depend on the bound port before binding.
    let mut probe = Instance::new(&options.service, &options.id, "127.0.0.1", 1);
    probe.tags.clone_from(&options.tags);
    probe.validate().map_err(ServerError::InvalidInstance)?;
    if let Some(value) = &options.advertise {
        parse_advertise(value, 1)?;
    }

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: options.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: options.listen,
        source,
    })?;
    let (address, port) = match &options.advertise {
        Some(value) => parse_advertise(value, local_addr.port())?,
        None => {
            if local_addr.ip().is_unspecified() {
                return Err(ServerError::UnspecifiedAdvertise {
                    address: local_addr.to_string(),
                });
            }
            (local_addr.ip().to_string(), local_addr.port())
        }
    };
    let mut instance = Instance::new(&options.service, &options.id, address, port);
    instance.tags.clone_from(&options.tags);
    instance.validate().map_err(ServerError::InvalidInstance)?;

    let connections = Arc::new(Connections::default());
    let tracked = TrackedListener {
        listener,
        connections: connections.clone(),
    };
    let (stop_serving, stop_serving_rx) = oneshot::channel::<()>();
    let metrics = ServerMetrics::new();
    // `GET /ready` answers from the same flag `is_registered` reads.
    let registered = Arc::new(AtomicBool::new(false));
    let app =
        crate::http::router_with_readiness(options.id.clone(), metrics.clone(), registered.clone());
    let serve = tokio::spawn(async move {
        axum::serve(tracked, app)
            .with_graceful_shutdown(async move {
                let _ = stop_serving_rx.await;
            })
            .await
    });
    tracing::info!(
        id = %options.id,
        service = %options.service,
        listen = %local_addr,
        advertise = %instance.authority(),
        "lorem server listening"
    );

    let (stop_registration, stop_rx) = oneshot::channel();
    let registration = supervise_registration(
        tokio::spawn(keep_registered(
            registrar,
            instance.clone(),
            registered.clone(),
            stop_rx,
        )),
        options.id.clone(),
        registered.clone(),
    );

    Ok(RunningServer {
        local_addr,
        metrics,
        instance,
        registered,
        drain_delay: options.drain_delay,
        shutdown_timeout: options.shutdown_timeout,
        tasks: Some(Tasks {
            serve,
            stop_serving,
            connections,
            registration,
            stop_registration,
        }),
    })
}

/// Parses `host:port`, `[v6]:port`, or a bare host (which keeps `bound_port`).
fn parse_advertise(value: &str, bound_port: u16) -> Result<(String, u16), ServerError> {
    let bad = |reason: &str| ServerError::InvalidAdvertise {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = value.trim();
    let (host, port) = if let Ok(ip) = trimmed.parse::<IpAddr>() {
        (ip.to_string(), bound_port)
    } else if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        (addr.ip().to_string(), addr.port())
    } else if let Some((host, port)) = trimmed.rsplit_once(':') {
        let port = port
            .parse::<u16>()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        (host.to_owned(), port)
    } else {
        (trimmed.to_owned(), bound_port)
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if port == 0 {
        return Err(bad("the port must be from 1 to 65535"));
    }
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(ServerError::UnspecifiedAdvertise {
            address: value.to_owned(),
        });
    }
    Ok((host, port))
}

/// A running server. Stop it with [`shutdown`](Self::shutdown) or
/// [`crash`](Self::crash); dropping it stops it at once and deregisters on a
/// best-effort basis.
#[must_use = "dropping a RunningServer stops it"]
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    metrics: Arc<ServerMetrics>,
    instance: Instance,
    registered: Arc<AtomicBool>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    /// `None` once stopped.
    tasks: Option<Tasks>,
}

#[derive(Debug)]
struct Tasks {
    serve: JoinHandle<io::Result<()>>,
    stop_serving: oneshot::Sender<()>,
    connections: Arc<Connections>,
    /// The supervisor of the registration task: `Err` with what happened if
    /// that task panicked.
    registration: JoinHandle<Result<(), String>>,
    stop_registration: oneshot::Sender<Stop>,
}

/// What the registration task is told when the server stops.
#[derive(Debug)]
enum Stop {
    /// Deregister, and say how it went.
    Deregister(oneshot::Sender<registry::Result<()>>),
    /// Stop the keep-alive but leave the instance to expire.
    Abandon,
}

impl RunningServer {
    /// The address the server is bound to (with the real port if `listen`
    /// had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the server has counted (also served on `GET /metrics`).
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.instance.id
    }

    /// The instance as registered (or as it will be once the registry
    /// answers): the advertised address and port, the service and tags.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// True while the registry holds our registration; false until the
    /// background task gets it through, and after stopping.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    /// Stops gracefully: deregisters (errors are logged), keeps serving for
    /// `drain_delay` so clients see the change, stops accepting, and waits up
    /// to `shutdown_timeout` for in-flight requests; connections still open
    /// after that are cut.
    ///
    /// # Errors
    /// [`ServerError::Task`] if the HTTP server task or the registration task
    /// had failed or panicked (the server is stopped all the same).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown_with(std::future::pending()).await
    }

    /// [`shutdown`](Self::shutdown), except that the drain ends early when
    /// `end_drain` completes: an operator's second signal ("stop now"), or a
    /// test that has seen what it needed of the drain. Deregistration and the
    /// wait for in-flight requests are the same as in `shutdown`.
    ///
    /// # Errors
    /// [`ServerError::Task`] if the HTTP server task or the registration task
    /// had failed or panicked (the server is stopped all the same).
    pub async fn shutdown_with<F>(mut self, end_drain: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send,
    {
        let Some(tasks) = self.tasks.take() else {
            return Ok(());
        };
        let id = self.instance.id.clone();
        tracing::info!(%id, "shutting down: deregistering");

        let (reply, outcome) = oneshot::channel();
        if tasks
            .stop_registration
            .send(Stop::Deregister(reply))
            .is_ok()
        {
            match tokio::time::timeout(self.shutdown_timeout, outcome).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%id, %error, "deregistration failed; the instance will expire after its TTL");
                }
                Ok(Err(_)) => {
                    tracing::warn!(%id, "the registration task ended before deregistering");
                }
                Err(_) => {
                    tracing::warn!(%id, timeout = ?self.shutdown_timeout,
                        "deregistration did not finish in time; the instance will expire after its TTL");
                }
            }
        } else {
            tracing::error!(%id, "cannot deregister: the registration task is gone; the instance, if registered, will expire after its TTL");
        }
        self.registered.store(false, Ordering::SeqCst);

        if !self.drain_delay.is_zero() {
            tracing::info!(%id, drain_delay = ?self.drain_delay, "draining: still serving while clients move away");
            tokio::select! {
                () = tokio::time::sleep(self.drain_delay) => {}
                () = end_drain => {
                    tracing::info!(%id, "drain ended early on request");
                }
            }
        }

        tracing::info!(%id, "no longer accepting connections; finishing in-flight requests");
        let _ = tasks.stop_serving.send(());
        let mut serve = tasks.serve;
        let result = match tokio::time::timeout(self.shutdown_timeout, &mut serve).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(ServerError::Task {
                reason: error.to_string(),
            }),
            Ok(Err(join)) => Err(ServerError::Task {
                reason: join.to_string(),
            }),
            Err(_) => {
                let cut = tasks.connections.kill();
                tracing::warn!(%id, timeout = ?self.shutdown_timeout, connections = cut,
                    "in-flight requests did not finish in time; cutting their connections");
                serve.abort();
                let _ = serve.await;
                Ok(())
            }
        };
        let registration = match tasks.registration.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ServerError::Task { reason }),
            Err(join) => {
                tracing::error!(%id, error = %join, "the registration supervisor failed");
                Err(ServerError::Task {
                    reason: join.to_string(),
                })
            }
        };
        match (&result, &registration) {
            (Ok(()), Ok(())) => tracing::info!(%id, "lorem server stopped"),
            _ => tracing::error!(%id, "lorem server stopped after a task failure"),
        }
        // The HTTP server's failure, if any, comes first.
        result.and(registration)
    }

    /// Simulates a crash: stops the registration's keep-alive without
    /// deregistering (the instance stays listed until its TTL runs out) and
    /// stops the HTTP server at once, cutting open connections.
    pub fn crash(mut self) {
        let Some(tasks) = self.tasks.take() else {
            return;
        };
        tracing::warn!(id = %self.instance.id, "simulating a crash: no deregistration, connections cut");
        let _ = tasks.stop_registration.send(Stop::Abandon);
        self.registered.store(false, Ordering::SeqCst);
        tasks.connections.kill();
        tasks.serve.abort();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let Some(tasks) = self.tasks.take() else {
            return;
        };
        tracing::info!(id = %self.instance.id, "server handle dropped; stopping at once");
        // Dropping the sender makes the registration task drop its
        // `Registration`, which deregisters on a best-effort basis.
        drop(tasks.stop_registration);
        self.registered.store(false, Ordering::SeqCst);
        tasks.connections.kill();
        tasks.serve.abort();
    }
}

/// Exponential backoff with jitter: each delay is drawn in `[d/2, d]`, `d`
/// doubling from `base` up to `max`.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Backoff { next: base, max }
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(rand::thread_rng().r#gen::<f64>())
    }
}

/// Registers `instance`, retrying until it works or the server stops, then
/// holds the registration until told what to do with it.
async fn keep_registered<R: Registrar>(
    registrar: R,
    instance: Instance,
    registered: Arc<AtomicBool>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let id = instance.id.clone();
    let mut backoff = Backoff::new(REGISTER_BACKOFF_BASE, REGISTER_BACKOFF_MAX);
    let mut attempt: u32 = 0;
    // Registered, then held until told what to do, or until another
    // registrar takes the id over (ours had gone in the meantime): then
    // back to registering, which waits until the other one goes.
    let (registration, stop) = 'register: loop {
        let registration: Registration = loop {
            attempt = attempt.saturating_add(1);
            let result = tokio::select! {
                stop = &mut stop => {
                    finish_unregistered(&id, stop.ok());
                    return;
                }
                result = registrar.register(instance.clone()) => result,
            };
            match result {
                Ok(registration) => break registration,
                Err(registry::Error::InvalidInstance(reason)) => {
                    tracing::error!(%id, %reason, "the registry refused this instance; not retrying");
                    let stop = (&mut stop).await.ok();
                    finish_unregistered(&id, stop);
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%id, %error, attempt, retry_in = ?delay, "registration failed; retrying");
                    tokio::select! {
                        stop = &mut stop => {
                            finish_unregistered(&id, stop.ok());
                            return;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        registered.store(true, Ordering::SeqCst);
        tracing::info!(
            %id,
            service = %instance.service,
            address = %instance.authority(),
            attempts = attempt,
            "registered"
        );
        let mut state = registration.state();
        loop {
            tokio::select! {
                stop = &mut stop => break 'register (registration, stop),
                changed = state.changed() => {
                    if changed.is_err() {
                        // The registrar is gone: nothing more will change.
                        let stop = (&mut stop).await;
                        break 'register (registration, stop);
                    }
                    let now = state.borrow_and_update().clone();
                    registered.store(now == RegistrationState::Registered, Ordering::SeqCst);
                    if let RegistrationState::Displaced { holder } = now {
                        tracing::error!(%id, %holder,
                            "another registrar took this instance id over after our record had gone; registering again once it is free");
                        drop(registration);
                        attempt = 0;
                        continue 'register;
                    }
                }
            }
        }
    };
    match stop {
        Ok(Stop::Deregister(reply)) => {
            registered.store(false, Ordering::SeqCst);
            let result = registration.deregister().await;
            if result.is_ok() {
                tracing::info!(%id, "deregistered");
            }
            let _ = reply.send(result);
        }
        Ok(Stop::Abandon) => {
            registered.store(false, Ordering::SeqCst);
            registration.abandon();
        }
        Err(_) => {
            registered.store(false, Ordering::SeqCst);
            drop(registration);
        }
    }
}

/// Waits for the registration task and reports, as soon as it happens, a
/// panic that would otherwise leave the server serving unregistered until
/// shutdown. Resolves to `Err` with what happened if the task did not end
/// normally.
fn supervise_registration(
    task: JoinHandle<()>,
    id: String,
    registered: Arc<AtomicBool>,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        match task.await {
            Ok(()) => Ok(()),
            Err(error) => {
                registered.store(false, Ordering::SeqCst);
                tracing::error!(%id, %error,
                    "the registration task died; still serving, but no longer registered (or kept alive) in the registry");
                Err(format!("the registration task died: {error}"))
            }
        }
    })
}

fn finish_unregistered(id: &str, stop: Option<Stop>) {
    tracing::info!(%id, "stopping before the registration went through");
    if let Some(Stop::Deregister(reply)) = stop {
        let _ = reply.send(Ok(()));
    }
}

/// The open connections, so that a crash (or a shutdown past its timeout)
/// can cut them: each holds a duplicate of its socket, and shutting that
/// down wakes and ends the connection's task.
#[derive(Debug, Default)]
struct Connections {
    next_id: AtomicU64,
    /// One lock for both, so that a connection is either tracked before a
    /// kill (and cut by it) or sees the kill (and cuts itself).
    state: Mutex<ConnectionsState>,
}

#[derive(Debug, Default)]
struct ConnectionsState {
    killed: bool,
    open: HashMap<u64, std::net::TcpStream>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionsState> {
        // Every update is a single insert, remove or flag: poisoning is harmless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts every open connection, and any accepted from now on. Returns how
    /// many were cut.
    fn kill(&self) -> usize {
        let open: Vec<std::net::TcpStream> = {
            let mut state = self.lock();
            state.killed = true;
            state.open.drain().map(|(_, s)| s).collect()
        };
        for socket in &open {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }

    /// Wraps an accepted stream so that [`kill`](Self::kill) can cut it.
    fn track(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let handle = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cut = {
            let mut state = self.lock();
            if state.killed {
                Some(handle)
            } else {
                state.open.insert(id, handle);
                None
            }
        };
        if let Some(handle) = cut {
            let _ = handle.shutdown(std::net::Shutdown::Both);
        }
        Ok(TrackedStream {
            inner: stream,
            id,
            connections: self.clone(),
        })
    }
}

/// The listener given to axum: a TCP listener whose connections are tracked.
struct TrackedListener {
    listener: TcpListener,
    connections: Arc<Connections>,
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, remote)) => match self.connections.track(stream) {
                    Ok(tracked) => return (tracked, remote),
                    Err(error) => {
                        tracing::warn!(%remote, %error, "could not set up an accepted connection; dropping it");
                    }
                },
                Err(error) => {
                    // Running out of file descriptors and the like: back off
                    // a little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted connection; forgets its duplicate handle when dropped, so the
/// socket really closes.
struct TrackedStream {
    inner: TcpStream,
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_forms() {
        assert_eq!(
            parse_advertise("10.0.0.5:9000", 1).unwrap(),
            ("10.0.0.5".to_owned(), 9000)
        );
        assert_eq!(
            parse_advertise("[::1]:9000", 1).unwrap(),
            ("::1".to_owned(), 9000)
        );
        assert_eq!(
            parse_advertise("lorem-1", 8080).unwrap(),
            ("lorem-1".to_owned(), 8080)
        );
        assert_eq!(
            parse_advertise("::1", 8080).unwrap(),
            ("::1".to_owned(), 8080)
        );
        assert!(matches!(
            parse_advertise("0.0.0.0:80", 1),
            Err(ServerError::UnspecifiedAdvertise { .. })
        ));
        assert!(parse_advertise("host:x", 1).is_err());
        assert!(parse_advertise(":80", 1).is_err());
        assert!(parse_advertise("host:0", 1).is_err());
    }

    /// A connected pair: the server side (to track) and the client side.
    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    async fn assert_cut(client: &mut TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(15), client.read(&mut buf))
            .await
            .expect("the connection is cut");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn kill_cuts_tracked_connections_and_later_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connections = Arc::new(Connections::default());

        let (server_side, mut before) = pair(&listener).await;
        let tracked = connections.track(server_side).expect("track");
        assert_eq!(connections.lock().open.len(), 1);
        assert_eq!(connections.kill(), 1);
        assert!(connections.lock().killed);
        assert_cut(&mut before).await;
        drop(tracked);

        // Accepted after the kill: cut at once, never left open.
        let (server_side, mut after) = pair(&listener).await;
        let _tracked = connections.track(server_side).expect("track");
        assert!(connections.lock().open.is_empty());
        assert_cut(&mut after).await;
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(REGISTER_BACKOFF_BASE, REGISTER_BACKOFF_MAX);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= REGISTER_BACKOFF_MAX));
        assert!(delays[9] >= REGISTER_BACKOFF_MAX / 2);
    }
}
