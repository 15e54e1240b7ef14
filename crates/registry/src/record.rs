//! The stored form of an instance: the JSON a registrar writes (the
//! instance and its owner's token), and the decoding of records found in a
//! registry, which other tools may have written.

use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::Instance;

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
}

#[derive(Serialize)]
struct Stored<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    owner: &'a str,
}

#[derive(Deserialize)]
struct OwnerOnly {
    #[serde(default)]
    owner: Option<String>,
}

impl Record {
    /// The record of `instance` written by the registrar `owner`.
    pub(crate) fn new(instance: Instance, owner: Arc<str>) -> Self {
        Record { instance, owner }
    }

    /// The stored JSON: the instance's fields and `owner`.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        // Plain strings, numbers and maps: serialising cannot fail.
        serde_json::to_vec(&Stored {
            instance: &self.instance,
            owner: &self.owner,
        })
        .unwrap_or_default()
    }

    /// `(service, id)`: what identifies the record within one registrar.
    pub(crate) fn key(&self) -> (String, String) {
        (self.instance.service.clone(), self.instance.id.clone())
    }
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

/// Decodes one stored record found at `key`, which names `service` and `id`.
///
/// Garbage (not JSON, breaking a rule, or naming another service or id than
/// its key) is logged as a warning and skipped: another tool may have written
/// it, and one bad record must not hide the good ones.
pub(crate) fn decode_record(
    backend: &'static str,
    key: &str,
    service: &str,
    id: &str,
    bytes: &[u8],
) -> Option<Instance> {
    match Instance::from_json(bytes) {
        Ok(instance) if instance.service == service && instance.id == id => Some(instance),
        Ok(instance) => {
            tracing::warn!(
                backend,
                key,
                found_service = %instance.service,
                found_id = %instance.id,
                "skipping record whose service or id does not match its key"
            );
            None
        }
        Err(error) => {
            tracing::warn!(backend, key, %error, "skipping garbage under the registry prefix");
            None
        }
    }
}

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
}
