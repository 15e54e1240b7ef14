//! Sharing a registry with services of other frameworks: the settings that
//! say how foreign records are read and what ours carry for foreign readers.
//!
//! Reading needs no setting beyond [`Interop::kratos_scheme`]: every record
//! is recognised by its fields (see `docs/interop.md`):
//!
//! | layout | where | recognised by |
//! |--------|-------|---------------|
//! | ours | etcd, ZooKeeper | a `service` field |
//! | Kratos `ServiceInstance` | etcd, ZooKeeper | an `endpoints` field (no `service`) |
//! | Curator x-discovery (Spring Cloud Zookeeper, Dubbo 3) | ZooKeeper (and etcd) | `name` and `address` (no `service`) |
//! | go-kit plain value | etcd, ZooKeeper | not JSON: `host:port` or a URL; the id is the key's last segment |
//!
//! Writing is ours by default, with Curator's fields always added on
//! ZooKeeper (they cost nothing and make Curator and Spring list our
//! instances under the right name); the rest is opt-in, because each
//! addition breaks or confuses some other reader:
//!
//! | variable | file key (`[backend]`) | meaning |
//! |----------|------------------------|---------|
//! | `REGISTRY_PAYLOAD` | `payload` | `none` (default) or `spring`: ZooKeeper records carry Spring's `ZookeeperInstance` payload (metadata for Spring's `DiscoveryClient`; plain Curator readers without Spring's class then fail on the whole service); Consul registrations carry `Meta.secure` |
//! | `REGISTRY_KRATOS` | `kratos` | `true`: etcd/ZooKeeper records carry Kratos' `version` and `endpoints`; Consul registrations carry `TaggedAddresses[<scheme>]` and a `version=<v>` tag (`v` is the instance's `version` metadata, empty without one) |
//! | `REGISTRY_KRATOS_SCHEME` | `kratos_scheme` | which endpoint of a Kratos record is the instance when reading, and the scheme of the endpoint written (`http` default; `grpc`, ...) |
//! | `REGISTRY_LAYOUT` | `layout` | `json` (default) or `gokit`: etcd/ZooKeeper values are the plain `host:port` go-kit readers take (no metadata, no owner token) |

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The payload of our ZooKeeper records (Curator's `payload` field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Payload {
    /// `null`: every Curator reader can parse the record (Spring's
    /// `DiscoveryClient` lists it with empty metadata).
    #[default]
    None,
    /// Spring Cloud Zookeeper's `ZookeeperInstance`, carrying the metadata;
    /// a plain Curator reader without that class fails on the whole service.
    Spring,
}

/// How our etcd and ZooKeeper values are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Layout {
    /// Our JSON record (with the fields other readers need).
    #[default]
    Json,
    /// go-kit's plain `host:port` string: no metadata, tags, weight or owner
    /// token, so another registrar of the same id cannot be told apart.
    Gokit,
}

impl TryFrom<String> for Payload {
    type Error = String;
    fn try_from(value: String) -> std::result::Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Payload::None),
            "spring" => Ok(Payload::Spring),
            _ => Err(format!(
                "payload (REGISTRY_PAYLOAD) {value:?} must be none or spring"
            )),
        }
    }
}

impl TryFrom<String> for Layout {
    type Error = String;
    fn try_from(value: String) -> std::result::Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "json" | "" => Ok(Layout::Json),
            "gokit" | "go-kit" => Ok(Layout::Gokit),
            _ => Err(format!(
                "layout (REGISTRY_LAYOUT) {value:?} must be json or gokit"
            )),
        }
    }
}

/// The interop settings of a backend, flattened into its `[backend]` table:
/// see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interop {
    /// `REGISTRY_PAYLOAD`: the payload of our ZooKeeper records, and Spring's
    /// `Meta.secure` on Consul.
    #[serde(default)]
    pub payload: Payload,
    /// `REGISTRY_KRATOS`: add Kratos' fields (etcd, ZooKeeper) or
    /// conventions (Consul) to what we write.
    #[serde(default)]
    pub kratos: bool,
    /// `REGISTRY_KRATOS_SCHEME`: the endpoint scheme read from and written to
    /// Kratos records (`http`).
    #[serde(default = "default_scheme")]
    pub kratos_scheme: String,
    /// `REGISTRY_LAYOUT`: our JSON (default) or go-kit's plain value.
    #[serde(default)]
    pub layout: Layout,
}

fn default_scheme() -> String {
    "http".to_owned()
}

impl Default for Interop {
    fn default() -> Self {
        Interop {
            payload: Payload::None,
            kratos: false,
            kratos_scheme: default_scheme(),
            layout: Layout::Json,
        }
    }
}

impl Interop {
    /// Checks the scheme (letters, digits, `+`, `-`, `.`, starting with a
    /// letter, as in a URL).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the scheme.
    pub fn validate(&self) -> Result<()> {
        let s = &self.kratos_scheme;
        let ok = s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "kratos_scheme {s:?} must be a URL scheme such as http or grpc"
            )))
        }
    }

    /// The Kratos endpoint of `authority` (`host:port`): `<scheme>://host:port`.
    pub(crate) fn kratos_endpoint(&self, authority: &str) -> String {
        format!("{}://{authority}", self.kratos_scheme)
    }
}
