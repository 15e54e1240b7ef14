//! The Consul backend's own settings, and the builder that checks them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConsulRegistry;
use crate::endpoint::{Endpoint, addrs};
use crate::error::Result;
use crate::interop::Interop;
use crate::security::{Secret, Security};
use crate::timing::Timing;

/// Which agent, TLS and the ACL token (`[backend]` with `type = "consul"`
/// in a settings file; `REGISTRY_ADDR` and the [`Security`] settings).
/// Consul's own `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_SSL`, `CONSUL_CACERT`,
/// `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`,
/// `CONSUL_HTTP_TOKEN` and `CONSUL_HTTP_TOKEN_FILE` apply when these are not
/// set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The agent's HTTP address; default `CONSUL_HTTP_ADDR`, else
    /// 127.0.0.1:8500. Exactly one: registrations belong to the agent they
    /// are made on.
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// TLS files and the ACL token (`token`, sent as `X-Consul-Token`;
    /// default `CONSUL_HTTP_TOKEN`); the keys sit directly under `[backend]`.
    /// Secrets are redacted in `Debug`.
    #[serde(flatten)]
    pub security: Security,
    /// How foreign records are read and what ours carry for other
    /// frameworks' readers (`payload`, `kratos`, `kratos_scheme`, `layout`
    /// in the same table): see [`Interop`].
    #[serde(flatten)]
    pub interop: Interop,
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
        self.interop.validate()?;
        self.security.validate("consul")
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
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.config.security.token = Some(token.into());
        self
    }

    /// Trusts the CA in this PEM file (default `CONSUL_CACERT`); TLS is on
    /// for an address without a scheme once a CA is set.
    pub fn ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.security.ca = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files; default
    /// `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`), for agents that verify
    /// incoming connections.
    pub fn client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.config.security.cert = Some(cert.into());
        self.config.security.key = Some(key.into());
        self
    }

    /// Replaces all the security settings at once.
    pub fn security(mut self, security: Security) -> Self {
        self.config.security = security;
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
