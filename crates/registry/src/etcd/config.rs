//! The etcd backend's own settings, and the builder that checks them.

use serde::{Deserialize, Serialize};

use super::EtcdRegistry;
use crate::endpoint::{Endpoint, addrs};
use crate::error::Result;
use crate::interop::Interop;
use crate::model::validate_prefix;
use crate::timing::Timing;

/// Where the etcd cluster is and where our keys live (`[backend]` with
/// `type = "etcd"` in a settings file; `REGISTRY_ADDR`, `REGISTRY_PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Client endpoints (`host:port`, `http://host:port`); default
    /// 127.0.0.1:2379.
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// Keys are `<prefix>/<service>/<id>`; default `/services`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How foreign records are read and what ours carry for other
    /// frameworks' readers (`payload`, `kratos`, `kratos_scheme`, `layout`
    /// in the same table): see [`Interop`].
    #[serde(flatten)]
    pub interop: Interop,
}

fn default_prefix() -> String {
    "/services".to_owned()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: Vec::new(),
            prefix: default_prefix(),
            interop: Interop::default(),
        }
    }
}

impl Config {
    /// Checks every address and the prefix.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the first
    /// bad one.
    pub fn validate(&self) -> Result<()> {
        for addr in &self.addr {
            Endpoint::parse(addr)?;
        }
        self.interop.validate()?;
        validate_prefix(&self.prefix)
    }
}

/// Builds an [`EtcdRegistry`] without going through
/// [`Settings`](crate::Settings), with the same checks as
/// [`connect`](crate::connect):
///
/// ```no_run
/// # async fn run() -> registry::Result<()> {
/// use std::time::Duration;
/// let registry = registry::EtcdRegistry::builder()
///     .addr("127.0.0.1:2379")
///     .prefix("/services")
///     .ttl(Duration::from_secs(10))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Builder {
    config: Config,
    timing: Timing,
}

impl Builder {
    /// Sets how foreign records are read and what ours carry for other
    /// frameworks (default: plain reading, our layout): see [`Interop`].
    pub fn interop(mut self, interop: Interop) -> Self {
        self.config.interop = interop;
        self
    }

    /// Adds a client endpoint (any number; default 127.0.0.1:2379).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.config.addr.push(addr.into());
        self
    }

    /// Sets the key prefix (default `/services`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// Sets the lease TTL (default 10 s).
    pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
        self.timing.ttl = ttl;
        self
    }

    /// Sets the deadline of every call (default 5 s).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timing.timeout = timeout;
        self
    }

    /// Checks the settings and connects: see [`EtcdRegistry::connect`].
    ///
    /// # Errors
    /// As [`EtcdRegistry::connect`].
    pub async fn connect(self) -> Result<EtcdRegistry> {
        EtcdRegistry::connect(&self.config, self.timing).await
    }
}
