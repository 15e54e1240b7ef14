//! The stored form of an instance: the JSON a registrar writes (the
//! instance and its owner's token), and the decoding of records found in a
//! registry, which other tools may have written.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::interop::{Interop, Layout as WriteLayout, Payload};
use crate::model::{Instance, MAX_METADATA_KEYS};

/// One instance as this registrar writes it: the instance's JSON plus an
/// `owner` field holding the registrar's random token, so that any reader
/// can tell our records from another registrar's (and from a tool's, which
/// has none). Readers of the instance ignore the extra field.
///
/// ```json
/// {"id":"a","service":"lorem","address":"127.0.0.1","port":8080,"tags":[],"metadata":{},"weight":1,"owner":"pid4242-5f0c2a9e1b7d"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// What is registered.
    pub(crate) instance: Instance,
    /// The registrar's token: `pid<process id>-<12 random hex digits>`,
    /// so that a person reading a refusal can find the holder.
    pub(crate) owner: Arc<str>,
    /// When the record was made, in milliseconds since the Unix epoch:
    /// Curator's `registrationTimeUTC`, fixed so that every encoding of the
    /// record is the same bytes (the registrar compares them).
    pub(crate) registered_ms: u64,
}

/// Which store a record is encoded for: ZooKeeper records always carry
/// Curator's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    Etcd,
    Zookeeper,
}

#[derive(Serialize)]
struct Stored<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    owner: &'a str,
    /// Curator's and Kratos' name of the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    kratos: Option<KratosFields<'a>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    curator: Option<CuratorFields<'a>>,
}

/// What Kratos' readers need beside `id`, `name` and `metadata`.
#[derive(Serialize)]
struct KratosFields<'a> {
    version: &'a str,
    endpoints: [String; 1],
}

/// What Curator x-discovery's `ServiceInstance` has beside `id`, `name`,
/// `address` and `port`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CuratorFields<'a> {
    ssl_port: Option<u16>,
    payload: Option<SpringPayload<'a>>,
    #[serde(rename = "registrationTimeUTC")]
    registration_time_utc: u64,
    service_type: &'static str,
    uri_spec: serde_json::Value,
}

/// Spring Cloud Zookeeper's `ZookeeperInstance` payload, with Jackson's
/// class tag.
#[derive(Serialize)]
struct SpringPayload<'a> {
    #[serde(rename = "@class")]
    class: &'static str,
    id: &'a str,
    name: &'a str,
    metadata: BTreeMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
struct OwnerOnly {
    #[serde(default)]
    owner: Option<String>,
}

impl Record {
    /// The record of `instance` written by the registrar `owner`.
    pub(crate) fn new(instance: Instance, owner: Arc<str>) -> Self {
        let registered_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Record {
            instance,
            owner,
            registered_ms,
        }
    }

    /// The stored JSON with only our fields: the instance's and `owner`.
    #[cfg(test)]
    pub(crate) fn to_json(&self) -> Vec<u8> {
        self.encode(&Interop::default(), Store::Etcd)
    }

    /// The stored value in `store`, as the interop settings lay it out
    /// (see [`crate::interop`]): go-kit's plain `host:port`, or our JSON
    /// with the fields other readers need beside ours.
    pub(crate) fn encode(&self, interop: &Interop, store: Store) -> Vec<u8> {
        let instance = &self.instance;
        if interop.layout == WriteLayout::Gokit {
            return instance.authority().into_bytes();
        }
        let kratos = interop.kratos.then(|| KratosFields {
            version: instance.metadata.get("version").map_or("", String::as_str),
            endpoints: [interop.kratos_endpoint(&instance.authority())],
        });
        let curator = (store == Store::Zookeeper).then(|| CuratorFields {
            ssl_port: None,
            payload: (interop.payload == Payload::Spring).then(|| SpringPayload {
                class: "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                id: &instance.id,
                name: &instance.service,
                metadata: std::iter::once(("instance_status", "UP"))
                    .chain(
                        instance
                            .metadata
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str())),
                    )
                    .collect(),
            }),
            registration_time_utc: self.registered_ms,
            service_type: "DYNAMIC",
            uri_spec: uri_spec(),
        });
        let name = (kratos.is_some() || curator.is_some()).then_some(instance.service.as_str());
        // Plain strings, numbers and maps: serialising cannot fail.
        serde_json::to_vec(&Stored {
            instance,
            owner: &self.owner,
            name,
            kratos,
            curator,
        })
        .unwrap_or_default()
    }

    /// `(service, id)`: what identifies the record within one registrar.
    pub(crate) fn key(&self) -> (String, String) {
        (self.instance.service.clone(), self.instance.id.clone())
    }
}

/// Curator's `UriSpec` of `{scheme}://{address}:{port}` (Spring Cloud
/// Zookeeper's default), as Curator serialises it.
fn uri_spec() -> serde_json::Value {
    let part =
        |value: &str, variable: bool| serde_json::json!({"value": value, "variable": variable});
    serde_json::json!({"parts": [
        part("scheme", true),
        part("://", false),
        part("address", true),
        part(":", false),
        part("port", true),
    ]})
}

/// The owner token in stored JSON, if it has one (records written by tools
/// or other frameworks do not).
pub(crate) fn owner_of(stored: &[u8]) -> Option<String> {
    serde_json::from_slice::<OwnerOnly>(stored)
        .ok()
        .and_then(|o| o.owner)
        .filter(|o| !o.is_empty())
}

/// A fresh owner token for a new registrar.
pub(crate) fn new_owner() -> Arc<str> {
    let random: u64 = rand::thread_rng().r#gen::<u64>() & 0xffff_ffff_ffff;
    format!("pid{}-{random:012x}", std::process::id()).into()
}

/// Decodes one stored record found at `key`, which names `service` and `id`,
/// whichever layout wrote it (see [`crate::interop`]): ours, a Kratos
/// `ServiceInstance` (its endpoint of scheme `kratos_scheme`), Curator
/// x-discovery JSON (Spring's `payload.metadata`, or a plain map payload's
/// strings, as metadata), or a go-kit plain `host:port` / URL value (id and
/// service from the key).
///
/// Anything else (not a known layout, breaking a rule, or naming another
/// service or id than its key) is skipped with a warning, once per record
/// content at that key (a watch re-reading the same garbage stays quiet):
/// another tool may have written it, and one bad record must not hide the
/// good ones.
pub(crate) fn decode_record(
    backend: &'static str,
    key: &str,
    service: &str,
    id: &str,
    bytes: &[u8],
    kratos_scheme: &str,
) -> Option<Instance> {
    match parse_record(service, id, bytes, kratos_scheme) {
        Ok(instance) => Some(instance),
        Err(reason) => {
            if first_warning(backend, key, bytes) {
                tracing::warn!(backend, key, %reason, "skipping a record under the registry prefix");
            } else {
                tracing::debug!(backend, key, %reason, "skipping a record under the registry prefix (warned before)");
            }
            None
        }
    }
}

/// The layouts a stored value can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Ours,
    Kratos,
    Curator,
}

/// The instance in `bytes`, or why there is none.
fn parse_record(
    service: &str,
    id: &str,
    bytes: &[u8],
    kratos_scheme: &str,
) -> Result<Instance, String> {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        // Not JSON: go-kit's plain value, or garbage.
        Err(_) => return parse_plain(service, id, bytes),
    };
    let object = match value {
        serde_json::Value::Object(object) => object,
        serde_json::Value::String(plain) => return parse_plain(service, id, plain.as_bytes()),
        _ => return Err("not an instance record: JSON that is not an object".to_owned()),
    };
    let layout = if object.contains_key("service") {
        Layout::Ours
    } else if object.contains_key("endpoints") {
        Layout::Kratos
    } else if object.contains_key("name") && object.contains_key("address") {
        Layout::Curator
    } else {
        return Err("not an instance record: no field `service` (ours), `endpoints` (Kratos) or `name` and `address` (Curator)".to_owned());
    };
    let instance = match layout {
        Layout::Ours => Instance::from_json(bytes).map_err(|e| e.to_string())?,
        Layout::Kratos => kratos(&object, kratos_scheme)?,
        Layout::Curator => curator(&object)?,
    };
    if instance.service != service || instance.id != id {
        return Err(format!(
            "the record names service {:?} and id {:?}, not those of its key",
            instance.service, instance.id
        ));
    }
    instance
        .validate()
        .map_err(|e| format!("{layout:?} record: {e}"))?;
    Ok(instance)
}

/// A string field of a foreign record.
fn text(
    object: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<String, String> {
    match object.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("field `{field}` is not a string: {other}")),
        None => Err(format!("missing field `{field}`")),
    }
}

/// The string entries of a foreign metadata object that fit our rules
/// (others are left out: a foreign record's metadata is a bonus, not a
/// reason to hide the instance).
fn metadata_of(value: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(serde_json::Value::Object(map)) = value else {
        return out;
    };
    for (key, value) in map {
        let Some(value) = value.as_str() else {
            continue;
        };
        let probe = Instance::new("s", "i", "h", 1).with_metadata(key.clone(), value);
        if out.len() < MAX_METADATA_KEYS && probe.validate().is_ok() {
            out.insert(key.clone(), value.to_owned());
        }
    }
    out
}

/// A Kratos `ServiceInstance`: `{"id","name","version","metadata","endpoints":["http://h:p",...]}`.
fn kratos(
    object: &serde_json::Map<String, serde_json::Value>,
    scheme: &str,
) -> Result<Instance, String> {
    let name = text(object, "name")?;
    let id = text(object, "id")?;
    let endpoints: Vec<&str> = object
        .get("endpoints")
        .and_then(|e| e.as_array())
        .map(|list| list.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    let endpoint = endpoints
        .iter()
        .find(|e| e.split_once("://").is_some_and(|(s, _)| s.eq_ignore_ascii_case(scheme)))
        .ok_or_else(|| format!("Kratos record has no {scheme}:// endpoint among {endpoints:?} (REGISTRY_KRATOS_SCHEME picks which)"))?;
    let (address, port) = split_url(endpoint)?;
    let mut instance = Instance::new(name, id, address, port);
    instance.metadata = metadata_of(object.get("metadata"));
    if let Some(version) = object
        .get("version")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
    {
        if instance.metadata.len() < MAX_METADATA_KEYS
            && version.chars().count() <= crate::model::MAX_METADATA_VALUE_LEN
        {
            instance
                .metadata
                .entry("version".to_owned())
                .or_insert_with(|| version.to_owned());
        }
    }
    Ok(instance)
}

/// Curator x-discovery JSON: `{"name","id","address","port","sslPort","payload",...}`;
/// metadata from Spring's `payload.metadata`, or a map payload's strings.
fn curator(object: &serde_json::Map<String, serde_json::Value>) -> Result<Instance, String> {
    let name = text(object, "name")?;
    let id = text(object, "id")?;
    let address = text(object, "address")?;
    let port_of = |field: &str| {
        object
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
    };
    let port = port_of("port")
        .or_else(|| port_of("sslPort"))
        .ok_or("Curator record has neither `port` nor `sslPort` in 1-65535")?;
    let mut instance = Instance::new(name, id, address, port);
    let payload = object.get("payload");
    instance.metadata = match payload.and_then(|p| p.get("metadata")) {
        Some(spring) => metadata_of(Some(spring)),
        None => {
            let mut map = metadata_of(payload);
            map.remove("@class");
            map
        }
    };
    Ok(instance)
}

/// go-kit's plain value: `host:port`, or a URL `scheme://host:port/...`.
fn parse_plain(service: &str, id: &str, bytes: &[u8]) -> Result<Instance, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not an instance record: neither JSON nor text".to_owned())?
        .trim();
    let (address, port) = split_url(text)
        .map_err(|e| format!("not an instance record: neither JSON nor a host:port value ({e})"))?;
    Ok(Instance::new(service, id, address, port))
}

/// `host` and `port` of `host:port`, `[v6]:port` or `scheme://host:port/path?query`.
fn split_url(text: &str) -> Result<(String, u16), String> {
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{text:?} has no port"))?;
        (host, port)
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?} has no port in 1-65535"))?;
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

/// Whether this is the first time a skip of these bytes at this key is
/// reported: a process-wide memory of what was warned about (bounded; it
/// forgets everything past [`WARNED_MEMORY`] entries, then warns again).
fn first_warning(backend: &str, key: &str, bytes: &[u8]) -> bool {
    use std::hash::{Hash, Hasher};
    static WARNED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (backend, key, bytes).hash(&mut hasher);
    let digest = hasher.finish();
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let set = warned.get_or_insert_with(HashSet::new);
    if set.len() >= WARNED_MEMORY {
        set.clear();
    }
    set.insert(digest)
}

/// How many skipped records [`first_warning`] remembers.
const WARNED_MEMORY: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_rides_along_and_readers_ignore_it() {
        let instance = Instance::new("lorem", "a", "127.0.0.1", 8080).with_tag("v1");
        let record = Record::new(instance.clone(), "pid1-abc".into());
        let json = record.to_json();
        assert_eq!(owner_of(&json).as_deref(), Some("pid1-abc"));
        assert_eq!(Instance::from_json(&json).unwrap(), instance);
        assert_eq!(owner_of(&instance.to_json()), None);
        assert_eq!(owner_of(b"garbage"), None);
        let a = new_owner();
        assert!(a.starts_with(&format!("pid{}-", std::process::id())), "{a}");
        assert_ne!(a, new_owner());
    }

    const SCHEME: &str = "http";

    fn read(service: &str, id: &str, bytes: &str) -> Option<Instance> {
        decode_record(
            "test",
            &format!("/services/{service}/{id}"),
            service,
            id,
            bytes.as_bytes(),
            SCHEME,
        )
    }

    #[test]
    fn curator_records_are_read() {
        // Plain Curator x-discovery 5.7.1 with a map payload (INTEROP.md, run).
        let curator = r#"{"name":"lorem","id":"c1","address":"127.0.0.1","port":18081,"sslPort":null,
            "payload":{"@class":"java.util.LinkedHashMap","zone":"eu"},
            "registrationTimeUTC":1796546636268,"serviceType":"DYNAMIC",
            "uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://","variable":false},
            {"value":"address","variable":true},{"value":":","variable":false},{"value":"port","variable":true}]}}"#;
        assert_eq!(
            read("lorem", "c1", curator),
            Some(Instance::new("lorem", "c1", "127.0.0.1", 18081).with_metadata("zone", "eu"))
        );
        // Spring Cloud Zookeeper 4.1.2: a UUID id and Spring's payload.
        let spring = r#"{"name":"lorem","id":"5c3a8f2e-6b1d-4e0f-9a7c-2d4b6e8f0a1c","address":"127.0.0.1",
            "port":18083,"sslPort":null,"payload":{"@class":"org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
            "id":"lorem","name":"lorem","metadata":{"zone":"eu","instance_status":"UP"}},
            "registrationTimeUTC":1796546636268,"serviceType":"DYNAMIC","uriSpec":{"parts":[]}}"#;
        let found = read("lorem", "5c3a8f2e-6b1d-4e0f-9a7c-2d4b6e8f0a1c", spring).unwrap();
        assert_eq!((found.address.as_str(), found.port), ("127.0.0.1", 18083));
        assert_eq!(found.metadata.get("zone").map(String::as_str), Some("eu"));
        assert_eq!(
            found.metadata.get("instance_status").map(String::as_str),
            Some("UP")
        );
        // Dubbo 3 application-level: host:port ids, sslPort only.
        let dubbo = r#"{"name":"demo","id":"10.0.0.7:20880","address":"10.0.0.7","port":null,"sslPort":20880,
            "payload":null,"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}"#;
        assert_eq!(
            read("demo", "10.0.0.7:20880", dubbo),
            Some(Instance::new("demo", "10.0.0.7:20880", "10.0.0.7", 20880))
        );
    }

    #[test]
    fn kratos_records_are_read_by_scheme() {
        let kratos = r#"{"id":"k1","name":"lorem","version":"v1","metadata":{"zone":"eu"},
            "endpoints":["http://127.0.0.1:8000","grpc://127.0.0.1:9000?isSecure=false"]}"#;
        let http = read("lorem", "k1", kratos).unwrap();
        assert_eq!(
            http,
            Instance::new("lorem", "k1", "127.0.0.1", 8000)
                .with_metadata("zone", "eu")
                .with_metadata("version", "v1")
        );
        let grpc = decode_record(
            "test",
            "/microservices/lorem/k1",
            "lorem",
            "k1",
            kratos.as_bytes(),
            "grpc",
        )
        .unwrap();
        assert_eq!(grpc.port, 9000);
        // No endpoint of the scheme asked for: skipped.
        assert_eq!(
            decode_record("test", "k", "lorem", "k1", kratos.as_bytes(), "https"),
            None
        );
        let reason = parse_record("lorem", "k1", kratos.as_bytes(), "https").unwrap_err();
        assert!(reason.contains("no https:// endpoint"), "{reason}");
        // Kratos' reader drops a record of another name; so do we.
        assert_eq!(read("other", "k1", kratos), None);
    }

    #[test]
    fn go_kit_plain_values_are_read_with_the_id_of_the_key() {
        let id = "_c_8d3f1e2a4b5c6d7e8f901a2b3c4d5e6f-0000000001";
        assert_eq!(
            read("lorem", id, "127.0.0.1:18082"),
            Some(Instance::new("lorem", id, "127.0.0.1", 18082))
        );
        assert_eq!(
            read("lorem", "1.2.3.4:8080", "http://1.2.3.4:8080/api?x=1"),
            Some(Instance::new("lorem", "1.2.3.4:8080", "1.2.3.4", 8080))
        );
        assert_eq!(
            read("lorem", "v6", "[::1]:9"),
            Some(Instance::new("lorem", "v6", "::1", 9))
        );
        assert_eq!(
            read("lorem", "q", "\"127.0.0.1:7\""),
            Some(Instance::new("lorem", "q", "127.0.0.1", 7))
        );
    }

    #[test]
    fn unrecognised_or_rule_breaking_records_are_skipped_with_a_reason() {
        for (id, bytes, needle) in [
            ("a", "garbage", "neither JSON nor a host:port"),
            ("a", "127.0.0.1:0", "no port in 1-65535"),
            ("a", "42", "not an object"),
            ("a", r#"{"zone":"eu"}"#, "no field `service`"),
            ("a", r#"{"id":"a","service":"lorem"}"#, "missing field"),
            (
                "a",
                r#"{"id":"b","service":"lorem","address":"h","port":1}"#,
                "not those of its key",
            ),
            // A foreign id outside our rule.
            (
                "k 1",
                r#"{"id":"k 1","name":"lorem","endpoints":["http://h:1"]}"#,
                "id \"k 1\"",
            ),
            (
                "a",
                r#"{"id":"a","name":"lorem","address":"h:1","port":1}"#,
                "address",
            ),
        ] {
            let reason = parse_record("lorem", id, bytes.as_bytes(), SCHEME).unwrap_err();
            assert!(
                reason.contains(needle),
                "{bytes}: {reason:?} should mention {needle:?}"
            );
            assert_eq!(read("lorem", id, bytes), None, "{bytes}");
        }
    }

    #[test]
    fn each_skipped_record_is_warned_about_once() {
        let key = "/services/once/a";
        assert!(first_warning("test", key, b"garbage-1"));
        assert!(!first_warning("test", key, b"garbage-1"));
        assert!(!first_warning("test", key, b"garbage-1"));
        // A new value at the same key is a new record: warned again.
        assert!(first_warning("test", key, b"garbage-2"));
        assert!(first_warning("test", "/services/once/b", b"garbage-1"));
    }

    #[test]
    fn ids_may_hold_colons_but_service_names_may_not() {
        assert!(crate::model::validate_id("10.0.0.7:20880").is_ok());
        assert!(crate::model::validate_name("id", "h:1").is_ok());
        assert!(crate::model::validate_name("service", "h:1").is_err());
        assert!(crate::model::validate_id("..").is_err());
        assert!(crate::model::validate_id("a/b").is_err());
        assert!(Instance::new("lorem", "h:1", "h", 1).validate().is_ok());
    }

    #[test]
    fn zookeeper_records_carry_curator_fields_and_read_back_as_ours() {
        let instance = Instance::new("lorem", "a", "127.0.0.1", 8080).with_metadata("zone", "eu");
        let record = Record::new(instance.clone(), "pid1-abc".into());
        let bytes = record.encode(&Interop::default(), Store::Zookeeper);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["name"], "lorem");
        assert_eq!(json["serviceType"], "DYNAMIC");
        assert_eq!(json["sslPort"], serde_json::Value::Null);
        assert_eq!(json["payload"], serde_json::Value::Null);
        assert_eq!(json["registrationTimeUTC"], record.registered_ms);
        assert_eq!(json["uriSpec"]["parts"][2]["value"], "address");
        assert_eq!(owner_of(&bytes).as_deref(), Some("pid1-abc"));
        // The same record always encodes to the same bytes.
        assert_eq!(
            bytes,
            record.clone().encode(&Interop::default(), Store::Zookeeper)
        );
        assert_eq!(
            read("lorem", "a", std::str::from_utf8(&bytes).unwrap()),
            Some(instance.clone())
        );
        // etcd records stay ours only.
        let etcd: serde_json::Value =
            serde_json::from_slice(&record.encode(&Interop::default(), Store::Etcd)).unwrap();
        assert!(etcd.get("name").is_none() && etcd.get("serviceType").is_none());

        let spring = Interop {
            payload: Payload::Spring,
            ..Interop::default()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&record.encode(&spring, Store::Zookeeper)).unwrap();
        assert_eq!(
            json["payload"],
            serde_json::json!({"@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                "id": "a", "name": "lorem", "metadata": {"instance_status": "UP", "zone": "eu"}})
        );
    }

    #[test]
    fn kratos_fields_and_the_go_kit_layout_when_asked() {
        let instance =
            Instance::new("lorem", "a", "127.0.0.1", 8080).with_metadata("version", "v2");
        let record = Record::new(instance.clone(), "pid1-abc".into());
        let kratos = Interop {
            kratos: true,
            kratos_scheme: "grpc".into(),
            ..Interop::default()
        };
        for store in [Store::Etcd, Store::Zookeeper] {
            let bytes = record.encode(&kratos, store);
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["name"], "lorem");
            assert_eq!(json["version"], "v2");
            assert_eq!(
                json["endpoints"],
                serde_json::json!(["grpc://127.0.0.1:8080"])
            );
            assert_eq!(json["metadata"]["version"], "v2");
            // Still ours when read back (`service` wins over `endpoints`).
            assert_eq!(
                read("lorem", "a", std::str::from_utf8(&bytes).unwrap()),
                Some(instance.clone())
            );
        }
        let gokit = Interop {
            layout: WriteLayout::Gokit,
            ..Interop::default()
        };
        assert_eq!(record.encode(&gokit, Store::Etcd), b"127.0.0.1:8080");
        assert_eq!(record.encode(&gokit, Store::Zookeeper), b"127.0.0.1:8080");
        assert_eq!(owner_of(b"127.0.0.1:8080"), None);
    }
}
