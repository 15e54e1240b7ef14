//! The ZooKeeper backend's own settings, and the builder that checks them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ZookeeperRegistry;
use crate::endpoint::{Endpoint, addrs};
use crate::error::{Error, Result};
use crate::interop::Interop;
use crate::model::validate_prefix;
use crate::security::{Secret, Security};
use crate::timing::{MAX_DURATION, Timing};

/// The smallest ZooKeeper session timeout used unless one is set explicitly:
/// zookeeper-client gives a session up about 1.4 x its timeout after the last
/// reply, and a ZooKeeper restart takes 3-4 s, so shorter sessions would be
/// lost across a restart.
pub const MIN_DEFAULT_SESSION: Duration = Duration::from_secs(6);

/// Where the ensemble is, where our nodes live, the session timeout, and how
/// we prove who we are (`[backend]` with `type = "zookeeper"` in a settings
/// file; `REGISTRY_ADDR`, `REGISTRY_PREFIX`, and the [`Security`] settings:
/// TLS to a `secureClientPort` with `REGISTRY_CA` and optionally
/// `REGISTRY_CERT` / `REGISTRY_KEY`; digest auth with `REGISTRY_USER` /
/// `REGISTRY_PASSWORD`, which also puts an ACL on our instance nodes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Ensemble members; default 127.0.0.1:2181. One entry may also be a
    /// whole connect string (`a:2181,b:2181`).
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// Nodes are `<prefix>/<service>/<id>`; default `/services`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The session timeout. Default: the TTL, but never less than 6 s
    /// ([`MIN_DEFAULT_SESSION`]) so sessions survive a server restart.
    /// The server clamps it to 2-20 x its `tickTime`.
    #[serde(default, with = "crate::timing::opt_duration")]
    pub session_timeout: Option<Duration>,
    /// How foreign records are read and what ours carry for other
    /// frameworks' readers (`payload`, `kratos`, `kratos_scheme`, `layout`
    /// in the same table): see [`Interop`].
    #[serde(flatten)]
    pub interop: Interop,
    /// TLS files and digest user/password; the keys sit directly under
    /// `[backend]`.
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
            session_timeout: None,
            security: Security::default(),
        }
    }
}

impl Config {
    /// The session timeout to ask for, given the shared TTL.
    pub fn effective_session_timeout(&self, ttl: Duration) -> Duration {
        self.session_timeout
            .unwrap_or_else(|| ttl.max(MIN_DEFAULT_SESSION))
    }

    /// Checks every address, the prefix and the session timeout.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        for entry in &self.addr {
            for addr in entry.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                Endpoint::parse(addr)?;
            }
        }
        self.interop.validate()?;
        validate_prefix(&self.prefix)?;
        if let Some(session) = self.session_timeout {
            if session < Duration::from_secs(1) || session > MAX_DURATION {
                return Err(Error::InvalidConfig(format!(
                    "ZooKeeper session_timeout {} must be between 1s and {}",
                    humantime::format_duration(session),
                    humantime::format_duration(MAX_DURATION)
                )));
            }
        }
        self.security.validate("zookeeper")
    }
}

/// Builds a [`ZookeeperRegistry`] without going through
/// [`Settings`](crate::Settings), with the same checks as
/// [`connect`](crate::connect).
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

    /// Adds an ensemble member (any number; default 127.0.0.1:2181).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.config.addr.push(addr.into());
        self
    }

    /// Sets the root of our nodes (default `/services`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// Sets the session timeout (default: the TTL, at least 6 s).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.session_timeout = Some(timeout);
        self
    }

    /// Connects with TLS (to the ensemble's `secureClientPort`), trusting
    /// the CA in this PEM file.
    pub fn ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.security.ca = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files) over TLS.
    pub fn client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.security.cert = Some(cert.into());
        self.config.security.key = Some(key.into());
        self
    }

    /// Authenticates with the digest scheme as `user:password`; our instance
    /// nodes then carry an ACL that lets only this identity change them.
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

    /// Sets the TTL (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.timing.ttl = ttl;
        self
    }

    /// Sets the deadline of every call (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timing.timeout = timeout;
        self
    }

    /// Checks the settings and connects: see [`ZookeeperRegistry::connect`].
    ///
    /// # Errors
    /// As [`ZookeeperRegistry::connect`].
    pub async fn connect(self) -> Result<ZookeeperRegistry> {
        ZookeeperRegistry::connect(&self.config, self.timing).await
    }
}
