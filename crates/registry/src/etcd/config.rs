//! The etcd backend's own settings, and the builder that checks them.

use serde::{Deserialize, Serialize};

use super::EtcdRegistry;
use crate::endpoint::{Endpoint, addrs};
use crate::error::Result;
use crate::interop::Interop;
use crate::model::validate_prefix;
use crate::security::{Secret, Security};
use crate::timing::Timing;

/// Where the etcd cluster is, where our keys live, and how we prove who we
/// are (`[backend]` with `type = "etcd"` in a settings file; `REGISTRY_ADDR`,
/// `REGISTRY_PREFIX`, and the [`Security`] settings: `https://` endpoints
/// with `REGISTRY_CA`, a client certificate `REGISTRY_CERT` / `REGISTRY_KEY`,
/// a user `REGISTRY_USER` / `REGISTRY_PASSWORD`).
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
    /// TLS files and user/password; the keys sit directly under `[backend]`.
    #[serde(flatten)]
    pub security: Security,
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
            security: Security::default(),
        }
    }
}

impl Config {
    /// Checks every address, the prefix and the security settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the first
    /// bad one.
    pub fn validate(&self) -> Result<()> {
        for addr in &self.addr {
            Endpoint::parse(addr)?;
        }
        self.interop.validate()?;
        validate_prefix(&self.prefix)?;
        self.security.validate("etcd")
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

    /// Trusts the CA in this PEM file for `https://` endpoints (TLS is also
    /// on for endpoints without a scheme once this is set).
    pub fn ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.security.ca = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files): mutual TLS.
    pub fn client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.security.cert = Some(cert.into());
        self.config.security.key = Some(key.into());
        self
    }

    /// Authenticates as this etcd user; its token is refreshed when it
    /// expires.
    pub fn user(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.config.security.user = Some(user.into());
        self.config.security.password = Some(password.into());
        self
    }

    /// Replaces all the security settings at once.
    pub fn security(mut self, security: Security) -> Self {
        self.config.security = security;
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
