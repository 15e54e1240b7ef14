//! The one record every backend stores: an [`Instance`] of a service.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most metadata keys an instance may carry: Consul's limit of 64, less
/// the one the Consul backend spends on its owner token
/// (the key `registry-owner`), applied on every backend so that an instance
/// round-trips through all of them (a 64th key would make Consul refuse the
/// registration).
pub const MAX_METADATA_KEYS: usize = 63;
/// The metadata key the Consul backend stores a registrar's owner token
/// under, reserved on every backend (like Consul's `consul-` prefix) so that
/// an instance's own metadata never collides with it. Readers strip it: it
/// never shows in a discovered instance.
pub(crate) const OWNER_METADATA_KEY: &str = "registry-owner";
/// The longest metadata key, in bytes (Consul's limit).
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// The longest metadata value, in characters (Consul's limit).
pub const MAX_METADATA_VALUE_LEN: usize = 512;
/// The longest id or service name.
pub const MAX_NAME_LEN: usize = 128;
/// The most tags an instance may carry.
pub const MAX_TAGS: usize = 64;
/// The longest tag, in characters.
pub const MAX_TAG_LEN: usize = 255;

/// One running copy of a service, as registered and as discovered.
///
/// Backends that store values (etcd, ZooKeeper) store exactly this as JSON,
/// so other tools can write instances we discover:
///
/// ```json
/// {"id":"a","service":"lorem","address":"127.0.0.1","port":8080,"tags":[],"metadata":{},"weight":1}
/// ```
///
/// Unknown fields are ignored when reading; `tags`, `metadata` and `weight`
/// may be left out. Use [`Instance::validate`] (every backend does before it
/// registers) or [`Instance::from_json`] to enforce the rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within its service; `[A-Za-z0-9._:-]{1,128}` (`:` for ids
    /// such as Dubbo's and go-kit's `host:port`). The balancer and
    /// the `x-instance-id` header report it, so keep it stable across
    /// restarts of the same logical instance.
    pub id: String,
    /// The service name clients look up; `[A-Za-z0-9._-]{1,128}` (as `id`
    /// without `:`, which service names never need).
    pub service: String,
    /// A host name or IP address only: no scheme, no port.
    pub address: String,
    /// The TCP port the instance serves on (1-65535).
    pub port: u16,
    /// Free-form labels (Consul tags); up to 64 of up to 255 characters.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Key/value annotations, within Consul's limits: up to 63 keys (one
    /// of Consul's 64 carries the registrar's owner token) of
    /// `[A-Za-z0-9_-]`, values up to 512 characters; `registry-owner` is
    /// reserved.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Relative share of traffic for weighted balancing; at least 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl Instance {
    /// A new instance with no tags, no metadata and weight 1.
    ///
    /// Nothing is checked here; [`validate`](Self::validate) does that.
    pub fn new(
        service: impl Into<String>,
        id: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> Self {
        Instance {
            id: id.into(),
            service: service.into(),
            address: address.into(),
            port,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: 1,
        }
    }

    /// Adds a tag (builder style).
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry (builder style).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the weight (builder style).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// `address:port`, with brackets around an IPv6 address, ready for a URL.
    pub fn authority(&self) -> String {
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.address, self.port),
        }
    }

    /// Checks every rule of the model.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`] naming the first field that breaks a rule.
    pub fn validate(&self) -> Result<()> {
        validate_id(&self.id)?;
        validate_name("service", &self.service)?;
        validate_host(&self.address)?;
        if self.port == 0 {
            return Err(invalid(format!(
                "instance {:?}: port must be 1-65535, got 0",
                self.id
            )));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(invalid(format!(
                "instance {:?}: {} tags, at most {MAX_TAGS} allowed",
                self.id,
                self.tags.len()
            )));
        }
        for tag in &self.tags {
            if tag.is_empty()
                || tag.chars().count() > MAX_TAG_LEN
                || tag.chars().any(char::is_control)
            {
                return Err(invalid(format!(
                    "instance {:?}: tag {tag:?} must be 1-{MAX_TAG_LEN} printable characters",
                    self.id
                )));
            }
        }
        validate_metadata(&self.id, &self.metadata)?;
        if self.weight == 0 {
            return Err(invalid(format!(
                "instance {:?}: weight must be at least 1",
                self.id
            )));
        }
        Ok(())
    }

    /// Parses and validates the stored JSON form.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`] if the bytes are not an instance's JSON or
    /// the instance breaks a rule.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let instance: Instance = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not an instance record: {e}")))?;
        instance.validate()?;
        Ok(instance)
    }

    /// The stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidInstance(message)
}

/// Checks a key prefix or ZooKeeper root (`REGISTRY_PREFIX`): it starts
/// with `/`, does not end with one, and has no empty segment.
///
/// # Errors
/// [`Error::InvalidConfig`] naming the prefix.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = prefix.starts_with('/')
        && prefix.len() > 1
        && !prefix.ends_with('/')
        && !prefix.contains("//");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "prefix {prefix:?} must start with '/' and not end with '/' (for example /services)"
        )))
    }
}

/// Checks an instance id: `[A-Za-z0-9._:-]{1,128}`, not `.` or `..`.
///
/// # Errors
/// [`Error::InvalidInstance`] naming the id.
pub fn validate_id(value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "id {value:?} must match [A-Za-z0-9._:-]{{1,{MAX_NAME_LEN}}} and not be . or .."
        )))
    }
}

/// Checks a service name (or, with `what` = `"id"`, an id: see
/// [`validate_id`]): `[A-Za-z0-9._-]{1,128}`.
///
/// # Errors
/// [`Error::InvalidInstance`] naming `what` and the value.
pub fn validate_name(what: &str, value: &str) -> Result<()> {
    if what == "id" {
        return validate_id(value);
    }
    // `.` and `..` are valid characters but not valid path segments (etcd
    // keys, ZooKeeper nodes, Consul URLs), so they are refused everywhere.
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {value:?} must match [A-Za-z0-9._-]{{1,{MAX_NAME_LEN}}} and not be . or .."
        )))
    }
}

fn validate_host(host: &str) -> Result<()> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "address {host:?} must be a host name or IP address only (no scheme, no port)"
        )))
    }
}

fn validate_metadata(id: &str, metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(invalid(format!(
            "instance {id:?}: {} metadata keys, at most {MAX_METADATA_KEYS} allowed",
            metadata.len()
        )));
    }
    for (key, value) in metadata {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_METADATA_KEY_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !key_ok {
            return Err(invalid(format!(
                "instance {id:?}: metadata key {key:?} must match [A-Za-z0-9_-]{{1,{MAX_METADATA_KEY_LEN}}}"
            )));
        }
        if key.starts_with("consul-") {
            return Err(invalid(format!(
                "instance {id:?}: metadata key {key:?} uses the prefix \"consul-\", which Consul reserves"
            )));
        }
        if key == OWNER_METADATA_KEY {
            return Err(invalid(format!(
                "instance {id:?}: metadata key {key:?} is reserved for the registrar's owner token"
            )));
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            return Err(invalid(format!(
                "instance {id:?}: metadata value of {key:?} is longer than {MAX_METADATA_VALUE_LEN} characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_json_gets_defaults_and_ignores_unknown_fields() {
        let json = br#"{"id":"a","service":"lorem","address":"127.0.0.1","port":8080,"zone":"x"}"#;
        let instance = Instance::from_json(json).unwrap();
        assert_eq!(instance, Instance::new("lorem", "a", "127.0.0.1", 8080));
        assert_eq!(instance.weight, 1);
    }

    #[test]
    fn json_round_trips() {
        let instance = Instance::new("lorem", "a", "127.0.0.1", 8080)
            .with_tag("v1")
            .with_metadata("zone", "eu")
            .with_weight(3);
        assert_eq!(Instance::from_json(&instance.to_json()).unwrap(), instance);
        assert_eq!(
            String::from_utf8(Instance::new("lorem", "a", "127.0.0.1", 8080).to_json()).unwrap(),
            r#"{"id":"a","service":"lorem","address":"127.0.0.1","port":8080,"tags":[],"metadata":{},"weight":1}"#
        );
    }

    #[test]
    fn rules_are_enforced_with_named_fields() {
        let ok = Instance::new("lorem", "a", "127.0.0.1", 8080);
        let cases: Vec<(Instance, &str)> = vec![
            (
                Instance {
                    id: "a b".into(),
                    ..ok.clone()
                },
                "id \"a b\"",
            ),
            (
                Instance {
                    id: String::new(),
                    ..ok.clone()
                },
                "id \"\"",
            ),
            (
                Instance {
                    id: "..".into(),
                    ..ok.clone()
                },
                "not be . or ..",
            ),
            (
                Instance {
                    id: "x".repeat(129),
                    ..ok.clone()
                },
                "id",
            ),
            (
                Instance {
                    service: "lo/rem".into(),
                    ..ok.clone()
                },
                "service",
            ),
            (
                Instance {
                    address: "http://h".into(),
                    ..ok.clone()
                },
                "address",
            ),
            (
                Instance {
                    address: "h:80".into(),
                    ..ok.clone()
                },
                "address",
            ),
            (
                Instance {
                    port: 0,
                    ..ok.clone()
                },
                "port",
            ),
            (
                Instance {
                    weight: 0,
                    ..ok.clone()
                },
                "weight",
            ),
            (ok.clone().with_tag(""), "tag"),
            (ok.clone().with_metadata("a.b", "v"), "metadata key"),
            (ok.clone().with_metadata("consul-x", "v"), "reserves"),
            (
                ok.clone().with_metadata("registry-owner", "v"),
                "reserved for the registrar",
            ),
            (
                ok.clone().with_metadata("k", "v".repeat(513)),
                "metadata value",
            ),
        ];
        for (instance, needle) in cases {
            let err = instance.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let mut most = ok.clone();
        for i in 0..63 {
            most.metadata.insert(format!("k{i}"), "v".into());
        }
        assert!(most.validate().is_ok());
        let mut many = ok.clone();
        for i in 0..64 {
            many.metadata.insert(format!("k{i}"), "v".into());
        }
        assert!(
            many.validate()
                .unwrap_err()
                .to_string()
                .contains("at most 63")
        );
        assert!(Instance::new("lorem", "a", "::1", 1).validate().is_ok());
        assert_eq!(Instance::new("lorem", "a", "::1", 1).authority(), "[::1]:1");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = Instance::from_json(b"not json").unwrap_err().to_string();
        assert!(err.contains("not an instance record"), "{err}");
        let err = Instance::from_json(br#"{"id":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field"), "{err}");
    }
}
