//! How long registrations live and how long a call may take: the two
//! settings every backend shares, checked once here.

use std::time::Duration;

use crate::error::{Error, Result};

/// The longest TTL, timeout or session timeout accepted: anything longer is
/// surely a typo, and keeps every deadline computed from it far from
/// overflowing (ZooKeeper sends its session timeout as i32 milliseconds).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Default TTL of a registration.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default deadline of every registry call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The TTL and the call deadline of one registry connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a registration outlives its last keep-alive: the etcd lease
    /// TTL, the Consul check TTL (heartbeat every TTL/3), the memory expiry,
    /// and the ZooKeeper session timeout (unless set on its own).
    pub ttl: Duration,
    /// The deadline on every registry call, so that nothing hangs on an
    /// unreachable backend. Renewals get at most TTL/3 of it.
    pub timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Timing {
    /// Checks both durations.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a TTL under 1 s or over
    /// [`MAX_DURATION`], or a timeout of 0 or over [`MAX_DURATION`].
    pub fn validate(&self) -> Result<()> {
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
        Ok(())
    }
}

/// Durations as humantime strings (`"10s"`, `"1500ms"`) or whole seconds.
pub(crate) mod duration {
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

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        to_duration(Raw::deserialize(d)?).map_err(D::Error::custom)
    }
}

pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
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
