//! The balancer's error type, in domain words.

use std::time::Duration;

/// What can go wrong when building a balancer or picking an instance.
///
/// Messages say what failed, with which value, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No instance of the service (matching the selector) was in the
    /// registry for the whole wait.
    #[error(
        "no instance of service {service:?} appeared within {}; is a server of it running and registered in the same registry?",
        humantime::format_duration(*waited)
    )]
    NoInstance {
        /// The service that was looked up.
        service: String,
        /// How long we waited for one to appear.
        waited: Duration,
    },

    /// The options cannot be used (a service name no registry can hold, a
    /// timeout over a day, an unknown strategy...).
    #[error("invalid balancer options: {0}")]
    InvalidOptions(String),
}

impl Error {
    /// True when no instance of the service was available: a gateway answers
    /// 503 for it.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::NoInstance { .. })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
