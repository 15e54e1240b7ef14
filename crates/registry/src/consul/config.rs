//! The Consul backend's own settings, and the builder that checks them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConsulRegistry;
use crate::endpoint::{Endpoint, addrs};
use crate::error::Result;
use crate::interop::Interop;
use crate::timing::Timing;

/// Which agent, and the ACL token (`[backend]` with `type = "consul"` in a
/// settings file; `REGISTRY_ADDR`). Consul's own `CONSUL_HTTP_ADDR` and
/// `CONSUL_HTTP_TOKEN` apply when these are not set.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The agent's HTTP address; default `CONSUL_HTTP_ADDR`, else
    /// 127.0.0.1:8500. Exactly one: registrations belong to the agent they
    /// are made on.
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// ACL token sent as `X-Consul-Token`; default `CONSUL_HTTP_TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// How foreign records are read and what ours carry for other
    /// frameworks' readers (`payload`, `kratos`, `kratos_scheme`, `layout`
    /// in the same table): see [`Interop`].
    #[serde(flatten)]
    pub interop: Interop,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("interop", &self.interop)
            .finish()
    }
}

impl Config {
    /// Checks every address.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the first
    /// bad one.
    pub fn validate(&self) -> Result<()> {
        for addr in &self.addr {
            Endpoint::parse(addr)?;
        }
        self.interop.validate()
    }
}

/// Builds a [`ConsulRegistry`] without going through
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

    /// Sets the agent's address (default `CONSUL_HTTP_ADDR`, else
    /// 127.0.0.1:8500).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.config.addr = vec![addr.into()];
        self
    }

    /// Sets the ACL token (default `CONSUL_HTTP_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Sets the check TTL (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.timing.ttl = ttl;
        self
    }

    /// Sets the deadline of every call (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timing.timeout = timeout;
        self
    }

    /// Checks the settings and connects: see [`ConsulRegistry::connect`].
    ///
    /// # Errors
    /// As [`ConsulRegistry::connect`].
    pub async fn connect(self) -> Result<ConsulRegistry> {
        ConsulRegistry::connect(&self.config, self.timing).await
    }
}
