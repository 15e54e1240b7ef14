//! Settings: which backend, where it is, TTL and timeout; and the one factory.
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
//!
//! No setting uses the `ETCD_` prefix: etcd reads every such variable as one
//! of its own flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::discovery::Registry;
use crate::error::{Error, Result};

/// The accepted backend names, as listed in error messages.
pub const BACKEND_NAMES: &[&str] = &["memory", "consul", "etcd", "zookeeper", "zk"];

/// The longest TTL, timeout or session timeout accepted: anything longer is
/// surely a typo, and keeps every deadline computed from it far from
/// overflowing (ZooKeeper sends its session timeout as i32 milliseconds).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Default TTL of a registration.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default deadline of every registry call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The smallest ZooKeeper session timeout used unless one is set explicitly:
/// zookeeper-client gives a session up about 1.4 x its timeout after the last
/// reply, and a ZooKeeper restart takes 3-4 s, so shorter sessions would be
/// lost across a restart.
pub const MIN_DEFAULT_ZK_SESSION: Duration = Duration::from_secs(6);

/// All the registry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Which backend, with its own settings.
    #[serde(default)]
    pub backend: BackendConfig,
    /// How long a registration outlives its last keep-alive: the etcd lease
    /// TTL, the Consul check TTL (heartbeat every TTL/3), the memory expiry,
    /// and the ZooKeeper session timeout (but see [`ZookeeperConfig`]).
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    /// The deadline on every registry call, so that nothing hangs on an
    /// unreachable backend.
    #[serde(default = "default_timeout", with = "duration")]
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
    Memory(MemoryConfig),
    /// A Consul agent's HTTP API.
    Consul(ConsulConfig),
    /// An etcd v3 cluster.
    Etcd(EtcdConfig),
    /// A ZooKeeper ensemble.
    #[serde(alias = "zk")]
    Zookeeper(ZookeeperConfig),
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Memory(MemoryConfig::default())
    }
}

impl BackendConfig {
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

/// Settings of the in-process backend (none yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {}

/// Settings of the Consul backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsulConfig {
    /// The agent's HTTP address; default `CONSUL_HTTP_ADDR`, else 127.0.0.1:8500.
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// ACL token sent as `X-Consul-Token`; default `CONSUL_HTTP_TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
}

/// Settings of the etcd backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtcdConfig {
    /// Client endpoints; default 127.0.0.1:2379.
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// Keys are `<prefix>/<service>/<id>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            addr: Vec::new(),
            prefix: default_prefix(),
        }
    }
}

/// Settings of the ZooKeeper backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZookeeperConfig {
    /// Ensemble members; default 127.0.0.1:2181.
    #[serde(default, deserialize_with = "addrs")]
    pub addr: Vec<String>,
    /// Nodes are `<prefix>/<service>/<id>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The session timeout. Default: the TTL, but never less than 6 s
    /// ([`MIN_DEFAULT_ZK_SESSION`]) so sessions survive a server restart.
    /// The server clamps it to 2-20 x its `tickTime`.
    #[serde(default, with = "opt_duration")]
    pub session_timeout: Option<Duration>,
}

impl Default for ZookeeperConfig {
    fn default() -> Self {
        ZookeeperConfig {
            addr: Vec::new(),
            prefix: default_prefix(),
            session_timeout: None,
        }
    }
}

impl ZookeeperConfig {
    /// The session timeout to ask for, given the shared TTL.
    pub fn effective_session_timeout(&self, ttl: Duration) -> Duration {
        self.session_timeout
            .unwrap_or_else(|| ttl.max(MIN_DEFAULT_ZK_SESSION))
    }
}

fn default_prefix() -> String {
    "/services".to_owned()
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
            ])
            .map(|key| {
                let mapped = match key.as_str().to_ascii_lowercase().as_str() {
                    "registry" => "backend.type",
                    "registry_addr" => "backend.addr",
                    "registry_prefix" => "backend.prefix",
                    "registry_ttl" => "ttl",
                    "registry_timeout" => "timeout",
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

    fn check(&self) -> Result<()> {
        if self.ttl < Duration::from_secs(1) {
            return Err(Error::InvalidConfig(format!(
                "REGISTRY_TTL {:?} is too short; use at least 1s",
                self.ttl
            )));
        }
        if self.ttl > MAX_DURATION {
            return Err(Error::InvalidConfig(format!(
                "REGISTRY_TTL {} is too long; use at most {}",
                humantime::format_duration(self.ttl),
                humantime::format_duration(MAX_DURATION)
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "REGISTRY_TIMEOUT must be more than 0s".to_owned(),
            ));
        }
        if self.timeout > MAX_DURATION {
            return Err(Error::InvalidConfig(format!(
                "REGISTRY_TIMEOUT {} is too long; use at most {}",
                humantime::format_duration(self.timeout),
                humantime::format_duration(MAX_DURATION)
            )));
        }
        if let BackendConfig::Zookeeper(zk) = &self.backend {
            if let Some(session) = zk.session_timeout {
                if session < Duration::from_secs(1) || session > MAX_DURATION {
                    return Err(Error::InvalidConfig(format!(
                        "ZooKeeper session_timeout {} must be between 1s and {}",
                        humantime::format_duration(session),
                        humantime::format_duration(MAX_DURATION)
                    )));
                }
            }
        }
        let (addrs, prefix) = match &self.backend {
            BackendConfig::Memory(_) => (&[][..], None),
            BackendConfig::Consul(c) => (&c.addr[..], None),
            BackendConfig::Etcd(c) => (&c.addr[..], Some(&c.prefix)),
            BackendConfig::Zookeeper(c) => (&c.addr[..], Some(&c.prefix)),
        };
        for addr in addrs {
            Endpoint::parse(addr)?;
        }
        if let Some(prefix) = prefix {
            let ok = prefix.starts_with('/')
                && prefix.len() > 1
                && !prefix.ends_with('/')
                && !prefix.contains("//");
            if !ok {
                return Err(Error::InvalidConfig(format!(
                    "prefix {prefix:?} must start with '/' and not end with '/' (for example /services)"
                )));
            }
        }
        Ok(())
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

/// One parsed entry of `REGISTRY_ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https` if one was given.
    pub scheme: Option<String>,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`, `[v6]:port` or `scheme://host:port[/]`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the entry.
    pub fn parse(entry: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidConfig(format!(
                "registry address {entry:?} {why}; expected host:port, optionally with http:// or https://"
            ))
        };
        let entry_trim = entry.trim();
        let (scheme, rest) = match entry_trim.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "http" | "https") {
                    return Err(bad("has an unsupported scheme"));
                }
                (Some(scheme), rest)
            }
            None => (None, entry_trim),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, port) = v6.split_once("]:").ok_or_else(|| bad("has no port"))?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("has no port"))?
        };
        if host.is_empty() || host.contains(['/', ' ', ',', '@', '?', '#']) {
            return Err(bad("has no valid host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("has no valid port (1-65535)"))?;
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, with brackets for IPv6.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port`, with `default_scheme` if none was given.
    pub fn url(&self, default_scheme: &str) -> String {
        format!(
            "{}://{}",
            self.scheme.as_deref().unwrap_or(default_scheme),
            self.authority()
        )
    }
}

/// Parses a list of addresses, logging `default` when the list is empty.
pub(crate) fn endpoints_or_default(
    backend: &'static str,
    addrs: &[String],
    default: &str,
) -> Result<Vec<Endpoint>> {
    if addrs.is_empty() {
        tracing::info!(
            backend,
            addr = default,
            "REGISTRY_ADDR not set; using the default"
        );
        return Ok(vec![Endpoint::parse(default)?]);
    }
    addrs.iter().map(|a| Endpoint::parse(a)).collect()
}

/// Accepts `"a:1,b:2"` or `["a:1", "b:2"]`.
fn addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addrs {
        One(String),
        Many(Vec<String>),
    }
    let list = match Addrs::deserialize(deserializer)? {
        Addrs::One(s) => s.split(',').map(str::to_owned).collect(),
        Addrs::Many(v) => v,
    };
    Ok(list
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Durations as humantime strings (`"10s"`, `"1500ms"`) or whole seconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Raw {
        Secs(u64),
        Float(f64),
        Text(String),
    }

    pub(super) fn to_duration(raw: Raw) -> Result<Duration, String> {
        match raw {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Float(f) => {
                Duration::try_from_secs_f64(f).map_err(|_| format!("{f} is not a duration"))
            }
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| format!("{t:?} is not a duration like 10s or 1500ms: {e}")),
        }
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        to_duration(Raw::deserialize(d)?).map_err(D::Error::custom)
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<super::duration::Raw>::deserialize(d)? {
            Some(raw) => super::duration::to_duration(raw)
                .map(Some)
                .map_err(D::Error::custom),
            None => Ok(None),
        }
    }
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
    tracing::debug!(backend = settings.backend.name(), ttl = ?settings.ttl, "connecting to registry");
    Ok(match &settings.backend {
        BackendConfig::Memory(_) => Arc::new(crate::memory::MemoryRegistry::global(settings.ttl)),
        BackendConfig::Consul(config) => {
            Arc::new(crate::consul::ConsulRegistry::connect(config, settings).await?)
        }
        BackendConfig::Etcd(config) => {
            Arc::new(crate::etcd::EtcdRegistry::connect(config, settings).await?)
        }
        BackendConfig::Zookeeper(config) => {
            Arc::new(crate::zookeeper::ZookeeperRegistry::connect(config, settings).await?)
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
            BackendConfig::Etcd(EtcdConfig {
                addr: vec!["127.0.0.1:2379".into(), "http://127.0.0.1:22379".into()],
                prefix: "/services".into()
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
            ZookeeperConfig::default().effective_session_timeout(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
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
    fn endpoints_parse() {
        let e = Endpoint::parse("https://[::1]:8501/").unwrap();
        assert_eq!(e.url("http"), "https://[::1]:8501");
        let e = Endpoint::parse("localhost:2181").unwrap();
        assert_eq!(e.url("http"), "http://localhost:2181");
        assert!(Endpoint::parse("zk://h:1").is_err());
        assert!(Endpoint::parse("h:0").is_err());
        assert!(Endpoint::parse("h:x").is_err());
        assert!(Endpoint::parse("a:1,b:2").is_err());
    }
}
