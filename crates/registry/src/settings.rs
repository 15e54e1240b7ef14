//! Settings: which backend, where it is, TTL and timeout; and the one factory.
//!
//! Dependencies go one way: each backend owns its configuration type
//! ([`etcd::Config`], ...), which this module wraps in [`BackendConfig`] and
//! turns into a connected registry in [`connect`]; no backend imports this
//! module.
//!
//! Sources are merged with figment, later ones winning:
//! built-in defaults < the TOML file named by `REGISTRY_CONFIG` < environment.
//!
//! | variable           | file key          | meaning                                          |
//! |--------------------|-------------------|--------------------------------------------------|
//! | `REGISTRY`         | `backend.type`    | `memory`, `consul`, `etcd`, `zookeeper` (or `zk`) |
//! | `REGISTRY_ADDR`    | `backend.addr`    | comma-separated `host:port`, scheme optional     |
//! | `REGISTRY_PREFIX`  | `backend.prefix`  | etcd key prefix / ZooKeeper root (`/services`)   |
//! | `REGISTRY_TTL`     | `ttl`             | lease / check TTL / memory expiry (`10s`)         |
//! | `REGISTRY_TIMEOUT` | `timeout`         | deadline of every registry call (`5s`)           |
//! | `REGISTRY_CONFIG`  |                   | path of the TOML file                            |
//! | `REGISTRY_PAYLOAD` | `backend.payload` | `none`/`spring`: Spring's payload (ZooKeeper), `Meta.secure` (Consul) |
//! | `REGISTRY_KRATOS`  | `backend.kratos`  | `true`: Kratos' fields / Consul conventions in what we write |
//! | `REGISTRY_KRATOS_SCHEME` | `backend.kratos_scheme` | endpoint scheme of Kratos records (`http`) |
//! | `REGISTRY_LAYOUT`  | `backend.layout`  | `json`/`gokit`: go-kit's plain `host:port` values (etcd, ZooKeeper) |
//! | `REGISTRY_CA`      | `backend.ca`      | PEM file of the CA that signed the servers       |
//! | `REGISTRY_CERT`    | `backend.cert`    | PEM client certificate (mutual TLS)              |
//! | `REGISTRY_KEY`     | `backend.key`     | PEM private key of that certificate              |
//! | `REGISTRY_TLS_SERVER_NAME` | `backend.tls_server_name` | name expected in the server's certificate |
//! | `REGISTRY_USER`    | `backend.user`    | etcd user / ZooKeeper digest user                |
//! | `REGISTRY_PASSWORD`| `backend.password`| its password (`REGISTRY_PASSWORD_FILE`, `backend.password_file`: from a file) |
//! | `REGISTRY_TOKEN`   | `backend.token`   | Consul ACL token (`REGISTRY_TOKEN_FILE`, `backend.token_file`: from a file) |
//!
//! `REGISTRY_PAYLOAD`, `REGISTRY_KRATOS`, `REGISTRY_KRATOS_SCHEME` and
//! `REGISTRY_LAYOUT` are the interop settings ([`crate::interop`],
//! `docs/interop.md`): foreign records are read without any of them.
//!
//! The security settings are described in [`security`](crate::security)
//! (what each backend does with them; Consul's own `CONSUL_*` variables);
//! secrets are [`Secret`](crate::security::Secret)s, never shown by `Debug`.
//!
//! No setting uses the `ETCD_` prefix: etcd reads every such variable as one
//! of its own flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::timing::{DEFAULT_TIMEOUT, DEFAULT_TTL, Timing};
use crate::traits::Registry;
use crate::{consul, etcd, memory, zookeeper};

/// The accepted backend names, as listed in error messages.
pub const BACKEND_NAMES: &[&str] = &["memory", "consul", "etcd", "zookeeper", "zk"];

/// All the registry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Which backend, with its own settings.
    #[serde(default)]
    pub backend: BackendConfig,
    /// How long a registration outlives its last keep-alive: the etcd lease
    /// TTL, the Consul check TTL (heartbeat every TTL/3), the memory expiry,
    /// and the ZooKeeper session timeout (but see [`zookeeper::Config`]).
    #[serde(default = "default_ttl", with = "crate::timing::duration")]
    pub ttl: Duration,
    /// The deadline on every registry call, so that nothing hangs on an
    /// unreachable backend.
    #[serde(default = "default_timeout", with = "crate::timing::duration")]
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backend: BackendConfig::default(),
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

fn default_ttl() -> Duration {
    DEFAULT_TTL
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// The closed set of backends, tagged by `type` in files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BackendConfig {
    /// The in-process registry: no server, shared by everything in the process.
    Memory(memory::Config),
    /// A Consul agent's HTTP API.
    Consul(consul::Config),
    /// An etcd v3 cluster.
    Etcd(etcd::Config),
    /// A ZooKeeper ensemble.
    #[serde(alias = "zk")]
    Zookeeper(zookeeper::Config),
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Memory(memory::Config::default())
    }
}

impl BackendConfig {
    /// Checks the backend's own settings (addresses, prefix...).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        match self {
            BackendConfig::Memory(_) => Ok(()),
            BackendConfig::Consul(config) => config.validate(),
            BackendConfig::Etcd(config) => config.validate(),
            BackendConfig::Zookeeper(config) => config.validate(),
        }
    }

    /// The backend's name as used in `REGISTRY` and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Memory(_) => "memory",
            BackendConfig::Consul(_) => "consul",
            BackendConfig::Etcd(_) => "etcd",
            BackendConfig::Zookeeper(_) => "zookeeper",
        }
    }
}

impl Settings {
    /// Reads the settings from the environment and the optional file named by
    /// `REGISTRY_CONFIG`.
    ///
    /// # Errors
    /// [`Error::UnknownBackend`] for an unknown `REGISTRY`,
    /// [`Error::InvalidConfig`] for a bad file, address or duration.
    pub fn from_env() -> Result<Self> {
        // An empty REGISTRY_CONFIG (common in compose files) counts as unset.
        let file = std::env::var_os("REGISTRY_CONFIG")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        Self::load(file.as_deref(), Env::raw())
    }

    /// Reads the settings from a TOML file only (no environment).
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::load(Some(path), Env::raw().only(&[]))
    }

    fn load(file: Option<&Path>, env: Env) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::InvalidConfig(format!(
                    "REGISTRY_CONFIG file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let env = env
            .only(&[
                "REGISTRY",
                "REGISTRY_ADDR",
                "REGISTRY_PREFIX",
                "REGISTRY_TTL",
                "REGISTRY_TIMEOUT",
                "REGISTRY_PAYLOAD",
                "REGISTRY_KRATOS",
                "REGISTRY_KRATOS_SCHEME",
                "REGISTRY_LAYOUT",
                "REGISTRY_CA",
                "REGISTRY_CERT",
                "REGISTRY_KEY",
                "REGISTRY_TLS_SERVER_NAME",
                "REGISTRY_USER",
                "REGISTRY_PASSWORD",
                "REGISTRY_PASSWORD_FILE",
                "REGISTRY_TOKEN",
                "REGISTRY_TOKEN_FILE",
            ])
            .map(|key| {
                let mapped = match key.as_str().to_ascii_lowercase().as_str() {
                    "registry" => "backend.type",
                    "registry_addr" => "backend.addr",
                    "registry_prefix" => "backend.prefix",
                    "registry_ttl" => "ttl",
                    "registry_timeout" => "timeout",
                    "registry_payload" => "backend.payload",
                    "registry_kratos" => "backend.kratos",
                    "registry_kratos_scheme" => "backend.kratos_scheme",
                    "registry_layout" => "backend.layout",
                    "registry_ca" => "backend.ca",
                    "registry_cert" => "backend.cert",
                    "registry_key" => "backend.key",
                    "registry_tls_server_name" => "backend.tls_server_name",
                    "registry_user" => "backend.user",
                    "registry_password" => "backend.password",
                    "registry_password_file" => "backend.password_file",
                    "registry_token" => "backend.token",
                    "registry_token_file" => "backend.token_file",
                    _ => return key.into(),
                };
                mapped.into()
            });
        figment = figment.merge(env);

        // Check the backend name ourselves, case-insensitively, so the error
        // lists every accepted name in our words.
        let name = match figment.find_value("backend.type") {
            Ok(value) => value
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{value:?}")),
            Err(_) => "memory".to_owned(),
        };
        let normalized = name.trim().to_ascii_lowercase();
        let canonical = match normalized.as_str() {
            "" | "memory" => "memory",
            "consul" => "consul",
            "etcd" => "etcd",
            "zookeeper" | "zk" => "zookeeper",
            _ => return Err(Error::UnknownBackend { name }),
        };
        figment = figment.merge(Serialized::defaults(serde_json::json!({
            "backend": { "type": canonical }
        })));
        let settings: Settings = figment
            .extract()
            .map_err(|e| Error::InvalidConfig(flatten_figment(e)))?;
        settings.check()?;
        Ok(settings)
    }

    /// The TTL and the call deadline.
    pub fn timing(&self) -> Timing {
        Timing {
            ttl: self.ttl,
            timeout: self.timeout,
        }
    }

    /// Checks every setting, as [`connect`] does.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first bad setting.
    pub fn check(&self) -> Result<()> {
        self.timing().validate()?;
        self.backend.validate()
    }
}

fn flatten_figment(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if path.is_empty() {
                format!("{} ({source})", e.kind)
            } else {
                format!("{path}: {} ({source})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A connected registry of whichever backend the settings chose.
pub type DynRegistry = Arc<dyn Registry>;

/// The one factory: connects to the backend the settings name.
///
/// Each call opens a new connection (or, for `memory`, returns a handle to
/// the process-wide in-memory registry). Defaults for missing addresses are
/// logged.
///
/// # Errors
/// [`Error::InvalidConfig`] for unusable settings; a backend error
/// (`Unavailable`, `Timeout`) if the backend cannot be reached within
/// `settings.timeout`.
pub async fn connect(settings: &Settings) -> Result<DynRegistry> {
    settings.check()?;
    let timing = settings.timing();
    tracing::debug!(backend = settings.backend.name(), ttl = ?settings.ttl, "connecting to registry");
    Ok(match &settings.backend {
        BackendConfig::Memory(_) => Arc::new(memory::MemoryRegistry::global(settings.ttl)),
        BackendConfig::Consul(config) => {
            Arc::new(consul::ConsulRegistry::connect(config, timing).await?)
        }
        BackendConfig::Etcd(config) => Arc::new(etcd::EtcdRegistry::connect(config, timing).await?),
        BackendConfig::Zookeeper(config) => {
            Arc::new(zookeeper::ZookeeperRegistry::connect(config, timing).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's own error type is large; this is test-only plumbing.
    #[allow(clippy::result_large_err)]
    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings> {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let path = file.map(|contents| {
                jail.create_file("registry.toml", contents).unwrap();
                jail.directory().join("registry.toml")
            });
            out = Some(Settings::load(path.as_deref(), Env::raw()));
            Ok(())
        });
        out.expect("the jail ran")
    }

    #[test]
    fn defaults_to_memory() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.ttl, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(5));
    }

    #[test]
    fn env_picks_backend_and_addresses() {
        let s = load(
            None,
            &[
                ("REGISTRY", "ETCD"),
                ("REGISTRY_ADDR", "127.0.0.1:2379, http://127.0.0.1:22379"),
                ("REGISTRY_TTL", "3s"),
                ("REGISTRY_TIMEOUT", "2"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.backend,
            BackendConfig::Etcd(etcd::Config {
                addr: vec!["127.0.0.1:2379".into(), "http://127.0.0.1:22379".into()],
                prefix: "/services".into(),
                ..etcd::Config::default()
            })
        );
        assert_eq!(s.ttl, Duration::from_secs(3));
        assert_eq!(s.timeout, Duration::from_secs(2));
        let zk = load(None, &[("REGISTRY", "zk")]).unwrap();
        assert_eq!(zk.backend.name(), "zookeeper");
    }

    #[test]
    fn unknown_backend_lists_the_accepted_names() {
        let err = load(None, &[("REGISTRY", "etc")]).unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown registry \"etc\"; expected one of memory, consul, etcd, zookeeper (or zk)"
        );
    }

    #[test]
    fn file_then_env() {
        let file = r#"
            ttl = "4s"
            [backend]
            type = "zookeeper"
            addr = ["127.0.0.1:2181", "127.0.0.1:2182"]
            prefix = "/sd"
            session_timeout = "8s"
        "#;
        let s = load(Some(file), &[("REGISTRY_TTL", "6s")]).unwrap();
        assert_eq!(s.ttl, Duration::from_secs(6));
        let BackendConfig::Zookeeper(zk) = &s.backend else {
            panic!("expected zookeeper, got {:?}", s.backend)
        };
        assert_eq!(zk.prefix, "/sd");
        assert_eq!(zk.addr.len(), 2);
        assert_eq!(zk.effective_session_timeout(s.ttl), Duration::from_secs(8));
        assert_eq!(
            zookeeper::Config::default().effective_session_timeout(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn interop_settings_from_env_and_file() {
        use crate::interop::{Interop, Layout, Payload};
        let s = load(
            None,
            &[
                ("REGISTRY", "zookeeper"),
                ("REGISTRY_PAYLOAD", "spring"),
                ("REGISTRY_KRATOS", "true"),
                ("REGISTRY_KRATOS_SCHEME", "grpc"),
                ("REGISTRY_LAYOUT", "gokit"),
            ],
        )
        .unwrap();
        let BackendConfig::Zookeeper(zk) = &s.backend else {
            panic!("expected zookeeper, got {:?}", s.backend)
        };
        assert_eq!(
            zk.interop,
            Interop {
                payload: Payload::Spring,
                kratos: true,
                kratos_scheme: "grpc".into(),
                layout: Layout::Gokit,
            }
        );
        let file = r#"
            [backend]
            type = "etcd"
            kratos = true
            layout = "json"
        "#;
        let s = load(Some(file), &[]).unwrap();
        let BackendConfig::Etcd(etcd) = &s.backend else {
            panic!("expected etcd, got {:?}", s.backend)
        };
        assert!(etcd.interop.kratos);
        assert_eq!(etcd.interop.kratos_scheme, "http");
        let s = load(
            None,
            &[("REGISTRY", "consul"), ("REGISTRY_PAYLOAD", "spring")],
        )
        .unwrap();
        let BackendConfig::Consul(consul) = &s.backend else {
            panic!("expected consul, got {:?}", s.backend)
        };
        assert_eq!(consul.interop.payload, Payload::Spring);
        let err = load(
            None,
            &[("REGISTRY", "etcd"), ("REGISTRY_PAYLOAD", "jackson")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("payload") && err.contains("spring"), "{err}");
        let err = load(
            None,
            &[("REGISTRY", "etcd"), ("REGISTRY_KRATOS_SCHEME", "h p")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kratos_scheme"), "{err}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = load(None, &[("REGISTRY", "etcd"), ("REGISTRY_ADDR", "nohost")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nohost\" has no port"), "{err}");
        let err = load(None, &[("REGISTRY_TTL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let err = load(None, &[("REGISTRY_TTL", "100ms")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("too short"), "{err}");
        let err = load(Some("ttl = ["), &[]).unwrap_err().to_string();
        assert!(err.contains("invalid registry config"), "{err}");
        let err = load(
            None,
            &[("REGISTRY", "etcd"), ("REGISTRY_PREFIX", "services/")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("prefix"), "{err}");
    }

    #[test]
    fn security_settings_from_env_and_file() {
        let s = load(
            None,
            &[
                ("REGISTRY", "etcd"),
                ("REGISTRY_CA", "/tls/ca.pem"),
                ("REGISTRY_CERT", "/tls/client.pem"),
                ("REGISTRY_KEY", "/tls/client-key.pem"),
                ("REGISTRY_USER", "svc"),
                ("REGISTRY_PASSWORD", "env-secret"),
            ],
        )
        .unwrap();
        let BackendConfig::Etcd(etcd) = &s.backend else {
            panic!("expected etcd, got {:?}", s.backend)
        };
        assert_eq!(etcd.security.ca.as_deref(), Some(Path::new("/tls/ca.pem")));
        assert_eq!(
            etcd.security.key.as_deref(),
            Some(Path::new("/tls/client-key.pem"))
        );
        assert_eq!(etcd.security.user.as_deref(), Some("svc"));
        assert_eq!(
            etcd.security.password.as_ref().map(|p| p.expose()),
            Some("env-secret")
        );
        assert!(!format!("{s:?}").contains("env-secret"));

        let file = r#"
            [backend]
            type = "consul"
            addr = "https://consul.internal:8501"
            ca = "/etc/consul/ca.pem"
            tls_server_name = "server.dc1.consul"
            token_file = "/run/secrets/consul-token"
        "#;
        let s = load(Some(file), &[("REGISTRY_CA", "/override/ca.pem")]).unwrap();
        let BackendConfig::Consul(consul) = &s.backend else {
            panic!("expected consul, got {:?}", s.backend)
        };
        assert_eq!(
            consul.security.ca.as_deref(),
            Some(Path::new("/override/ca.pem"))
        );
        assert_eq!(
            consul.security.tls_server_name.as_deref(),
            Some("server.dc1.consul")
        );
        assert!(consul.security.token_file.is_some());

        let err = load(
            None,
            &[
                ("REGISTRY", "consul"),
                ("REGISTRY_USER", "u"),
                ("REGISTRY_PASSWORD", "p"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ACL token"), "{err}");
        let err = load(None, &[("REGISTRY", "zk"), ("REGISTRY_CERT", "/c.pem")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REGISTRY_KEY"), "{err}");
    }
}
