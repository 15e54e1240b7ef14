//! The life of a server in the registry: register once it is ready, retry
//! with backoff while the registry is down, tell readiness checks whether
//! it is registered, and on shutdown deregister, drain, stop.
//!
//! Every server that registers itself needs the same order of steps, and
//! getting it wrong costs failed requests: registering before listening
//! sends clients to a closed port; stopping before deregistering sends them
//! to a dead one; failing at start-up because the registry is down turns a
//! registry outage into a service outage. [`Lifecycle`] does it once:
//!
//! | step            | what happens                                                                 |
//! |-----------------|------------------------------------------------------------------------------|
//! | start           | the caller binds and serves; the instance is then registered in the background, retried with backoff ([`REGISTER_BACKOFF_BASE`] doubling to [`REGISTER_BACKOFF_MAX`]) while the registry refuses; an instance the registry rejects as invalid is logged and not retried |
//! | running         | [`Readiness`] says whether the registry holds the instance (false while it is being restored after a loss); a registration displaced by another registrar is registered again once the id is free |
//! | shutdown        | deregister (bounded by the shutdown timeout), keep serving for the drain delay so that watchers move away, stop accepting, close idle connections at once, finish in-flight requests (up to the shutdown timeout), cut the rest |
//! | crash (tests)   | stop the keep-alive without deregistering; the instance expires after its TTL |
//!
//! Two ways in:
//!
//! - **axum** (feature `axum`, on by default): [`Lifecycle::serve`] runs the
//!   whole life in one call; [`Lifecycle::spawn`] returns a [`Server`] to
//!   stop later. The serve helper owns the accept loop ([`HttpServer`], also
//!   usable alone by a server that registers nothing), so the options of a
//!   connection ([`HttpLimits`]: timeouts, a connection cap, size limits)
//!   have one place to live; see [`http`] for what each one does.
//! - **anything else** (hyper, tonic, a custom accept loop):
//!   [`Lifecycle::start`] once listening, then await
//!   [`Handle::shutdown`] inside the server's graceful-shutdown future.
//!
//! Why axum is a feature and not a generic "future that serves": the part
//! that needs care is what happens *after* the graceful shutdown was asked
//! for (in-flight requests past the timeout, connections to cut on a
//! crash), which needs the listener and its connections, not just a future.
//! Without the feature the crate does not depend on axum; the [`Handle`]
//! covers the registration half for any server.
//!
//! [`shutdown_signal`] (and [`Signals`], when a second signal should end the
//! drain) is the one SIGTERM/SIGINT helper every binary uses.
//!
//! ```
//! use std::time::Duration;
//! use registry::lifecycle::Lifecycle;
//! use registry::{Instance, MemoryRegistry, Watcher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = MemoryRegistry::new(Duration::from_secs(10));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let port = listener.local_addr()?.port();
//! let lifecycle = Lifecycle::new(registry.clone(), Instance::new("hello", "hello-1", "127.0.0.1", port))
//!     .drain_delay(Duration::from_millis(10));
//! // A readiness route answers from the registration.
//! let readiness = lifecycle.readiness();
//! let router = axum::Router::new().route(
//!     "/ready",
//!     axum::routing::get(move || {
//!         let ready = readiness.is_registered();
//!         async move { if ready { "ready" } else { "not registered" } }
//!     }),
//! );
//! // In a binary: `lifecycle.serve(listener, router, shutdown_signal()).await?`.
//! let server = lifecycle.spawn(listener, router)?;
//! server.readiness().registered().await;
//! assert_eq!(registry.instances("hello").await?.len(), 1);
//! server.shutdown().await?;
//! assert!(registry.instances("hello").await?.is_empty());
//! # Ok(())
//! # }
//! ```

mod connect;
#[cfg(feature = "axum")]
pub mod http;
mod register;
#[cfg(feature = "axum")]
mod serve;
mod signal;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Instance, Registrar};

pub use connect::ConnectOnDemand;
#[cfg(feature = "axum")]
pub use http::{HttpLimits, HttpServer};
pub use register::Handle;
#[cfg(feature = "axum")]
pub use serve::Server;
pub use signal::{Signals, shutdown_signal};

/// The first delay between two registration attempts.
pub const REGISTER_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest delay between two registration attempts: how long a server
/// may stay unregistered after its registry comes back.
pub const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The default drain delay: long enough for watchers (which see a removal
/// within about a second on every backend) to move away.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(2);
/// The default shutdown timeout.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the lifecycle of one server instance: which registry, which
/// instance, how long to drain and to wait on shutdown. See the
/// [module documentation](self) for the steps and an example.
#[derive(Debug)]
pub struct Lifecycle<R> {
    registrar: R,
    instance: Instance,
    registered: Arc<watch::Sender<bool>>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    #[cfg(feature = "axum")]
    http_limits: HttpLimits,
}

impl<R: Registrar + 'static> Lifecycle<R> {
    /// The lifecycle of `instance` in `registrar` (any [`Registrar`]: a
    /// backend, a [`DynRegistry`](crate::DynRegistry), a
    /// [`ConnectOnDemand`]), with a drain delay of
    /// [`DEFAULT_DRAIN_DELAY`] and a shutdown timeout of
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`]. Nothing happens until it is started.
    ///
    /// `instance` should carry the address and port clients use: build it
    /// once the listener is bound.
    pub fn new(registrar: R, instance: Instance) -> Self {
        Lifecycle {
            registrar,
            instance,
            registered: Arc::new(watch::channel(false).0),
            drain_delay: DEFAULT_DRAIN_DELAY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            #[cfg(feature = "axum")]
            http_limits: HttpLimits::default(),
        }
    }

    /// How long to keep serving after deregistering, so that clients
    /// watching the registry move away before the port closes. Zero skips
    /// the drain.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// How long the deregistration, and then the in-flight requests, may
    /// take on shutdown; connections still open after it are cut.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The instance it registers.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Whether the instance is registered, from before the start on: hand
    /// it to the readiness route of the server being built.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.registered.subscribe())
    }

    /// Starts registering in the background, now: call it once the server
    /// listens. The protocol-agnostic way in; see [`Handle`].
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the registration task).
    pub fn start(self) -> Handle {
        Handle::start(
            self.registrar,
            self.instance,
            self.registered,
            self.drain_delay,
            self.shutdown_timeout,
        )
    }
}

/// Whether the registry holds the instance now: what a readiness check
/// (`GET /ready`, a container health check) should answer, so that "ready"
/// means "clients can discover me", not just "listening".
///
/// False until the registration goes through, while it is being restored
/// after a lost lease or session, after it was displaced by another
/// registrar, and from the deregistration on (while the drain still serves).
/// Cheap to clone; every clone follows the same registration.
#[derive(Debug, Clone)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    /// True while the registry holds the instance.
    pub fn is_registered(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the instance is registered (at once if it is). Never
    /// returns if the lifecycle ended before that.
    pub async fn registered(&self) {
        let mut receiver = self.0.clone();
        if receiver.wait_for(|registered| *registered).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A readiness that always answers `registered`: for a server that has
    /// no registration to wait for (a router served on its own, a test).
    pub fn always() -> Self {
        let (sender, receiver) = watch::channel(true);
        // The value never changes; the receiver keeps it after the sender goes.
        drop(sender);
        Readiness(receiver)
    }
}

/// Why a lifecycle step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The background task that keeps the instance registered died (a
    /// panic in the registrar): the server went on serving unregistered.
    /// Reported on shutdown, once the server is stopped.
    #[error("the registration task failed: {reason}")]
    RegistrationTask {
        /// What happened to it.
        reason: String,
    },

    /// The HTTP server failed.
    #[error("the HTTP server failed: {source}")]
    Serve {
        /// What the listener or axum said.
        #[source]
        source: io::Error,
    },

    /// The HTTP server's task panicked or was cancelled.
    #[error("the HTTP server task failed: {reason}")]
    ServeTask {
        /// What happened to it.
        reason: String,
    },

    /// A signal handler could not be installed.
    #[error("cannot listen for {signal}: {source}")]
    Signal {
        /// `SIGTERM`, `SIGINT` or `Ctrl-C`.
        signal: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}
