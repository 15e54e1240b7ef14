//! Running the service: listen, register, drain, stop.
//!
//! What is lorem's here: the options and flags, the advertised address, the
//! router with its metrics and `GET /ready`. The life in the registry
//! (register once listening, retry with backoff, deregister, drain, stop,
//! crash) is [`registry::lifecycle`], which any axum, hyper or tonic server
//! can use the same way.
//!
//! [`start`] binds the listener, serves the [`router`](crate::http::router),
//! and only then registers the instance, in a background task that retries
//! with backoff until the registry takes it. The [`RunningServer`] it returns
//! stops the server one of two ways:
//!
//! | call                          | registry                         | HTTP                                                  |
//! |-------------------------------|----------------------------------|-------------------------------------------------------|
//! | [`RunningServer::shutdown`]   | deregistered first               | serves `drain_delay` more, stops accepting, closes idle connections, finishes in-flight requests (up to `shutdown_timeout`) |
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

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use registry::lifecycle::{HttpLimits, Lifecycle, LifecycleError, Server};
use registry::{Instance, Registrar};

use crate::metrics::ServerMetrics;

pub use registry::lifecycle::{ConnectOnDemand, REGISTER_BACKOFF_BASE, REGISTER_BACKOFF_MAX};

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
    /// Metadata registered with the instance (`version=v2`, `zone=eu`), for
    /// clients that select by it. `instance-id-header` is always added.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Relative share of traffic for clients balancing by weight (at least 1).
    pub weight: u32,
    /// The instance id: registered, and sent in every `x-instance-id` header.
    pub id: String,
    /// How long to keep serving after deregistering, so that clients
    /// watching the registry move away before the port closes.
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish once the server stops
    /// accepting; connections still open after it are cut.
    pub shutdown_timeout: Duration,
    /// The connections' timeouts, cap and size limits (see
    /// [`registry::lifecycle::http`]).
    pub http: HttpLimits,
}

impl ServerOptions {
    /// Defaults: listen on 127.0.0.1:8080, service `lorem`, no tags, no
    /// advertised address, drain 2 s, shutdown timeout 10 s, the default
    /// [`HttpLimits`].
    pub fn new(id: impl Into<String>) -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            advertise: None,
            service: "lorem".to_owned(),
            tags: Vec::new(),
            metadata: std::collections::BTreeMap::new(),
            weight: 1,
            id: id.into(),
            drain_delay: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
            http: HttpLimits::default(),
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

impl From<LifecycleError> for ServerError {
    fn from(error: LifecycleError) -> Self {
        ServerError::Task {
            reason: error.to_string(),
        }
    }
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
    probe.metadata.clone_from(&options.metadata);
    probe.weight = options.weight;
    probe.validate().map_err(ServerError::InvalidInstance)?;
    if let Some(value) = &options.advertise {
        parse_advertise(value, 1)?;
    }

    let bind_error = |source| ServerError::Bind {
        addr: options.listen,
        source,
    };
    let listener = registry::lifecycle::http::bind(options.listen).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
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
    instance.metadata.clone_from(&options.metadata);
    instance.weight = options.weight;
    // Every answer names this instance in x-instance-id: clients may hold it
    // to that (http_client's identity check, key `instance-id-header`).
    instance.metadata.insert(
        "instance-id-header".to_owned(),
        crate::http::INSTANCE_ID_HEADER.to_owned(),
    );
    instance.validate().map_err(ServerError::InvalidInstance)?;

    let lifecycle = Lifecycle::new(registrar, instance)
        .drain_delay(options.drain_delay)
        .shutdown_timeout(options.shutdown_timeout)
        .http_limits(options.http.clone());
    let metrics = ServerMetrics::new();
    let app = crate::http::router_with_readiness(
        options.id.clone(),
        metrics.clone(),
        lifecycle.readiness(),
    );
    let server = lifecycle.spawn(listener, app)?;
    tracing::info!(
        id = %options.id,
        service = %options.service,
        listen = %local_addr,
        advertise = %server.instance().authority(),
        "lorem server listening"
    );
    Ok(RunningServer { server, metrics })
}

/// The instance id `lorem-server` registers under when `--id` is not given:
/// `<hostname or "lorem">-<pid>-<random>`, in the id alphabet `[A-Za-z0-9._-]`,
/// so that two servers on one host, or one restarted, never share an id.
pub fn default_id() -> String {
    use rand::Rng as _;
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| sanitize(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "lorem".to_owned());
    let host: String = host.chars().take(64).collect();
    let suffix: u32 = rand::thread_rng().r#gen();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
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
    server: Server,
    metrics: Arc<ServerMetrics>,
}

impl RunningServer {
    /// The address the server is bound to (with the real port if `listen`
    /// had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// What the server has counted (also served on `GET /metrics`).
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.server.instance().id
    }

    /// The instance as registered (or as it will be once the registry
    /// answers): the advertised address and port, the service and tags.
    pub fn instance(&self) -> &Instance {
        self.server.instance()
    }

    /// True while the registry holds our registration; false until the
    /// background task gets it through, and after stopping.
    pub fn is_registered(&self) -> bool {
        self.server.is_registered()
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
    pub async fn shutdown_with<F>(self, end_drain: F) -> Result<(), ServerError>
    where
        F: Future<Output = ()> + Send,
    {
        let id = self.id().to_owned();
        let result = self.server.shutdown_with(end_drain).await;
        match &result {
            Ok(()) => tracing::info!(%id, "lorem server stopped"),
            Err(error) => tracing::error!(%id, %error, "lorem server stopped after a task failure"),
        }
        Ok(result?)
    }

    /// Simulates a crash: stops the registration's keep-alive without
    /// deregistering (the instance stays listed until its TTL runs out) and
    /// stops the HTTP server at once, cutting open connections.
    pub fn crash(self) {
        self.server.crash();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_is_a_valid_distinct_id() {
        let (a, b) = (default_id(), default_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        Instance::new("lorem", &a, "127.0.0.1", 1)
            .validate()
            .expect("a valid instance id");
    }

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
}
