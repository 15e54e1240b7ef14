//! The client's error type, in domain words.

use std::time::Duration;

/// Everything that can go wrong when calling a service through the
/// balancer.
///
/// Messages say what failed, with which value, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No instance of the service was in the registry for the whole wait.
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

    /// Every try failed and no further try was allowed (see [`GaveUp`]).
    #[error(
        "{service} request failed after {attempts} attempt(s) ({gave_up}); last error from instance {instance:?}: {last}"
    )]
    Exhausted {
        /// The service that was called.
        service: String,
        /// How many tries were made.
        attempts: u32,
        /// Why no further try was made.
        gave_up: GaveUp,
        /// The registry id of the instance that failed last.
        instance: String,
        /// What went wrong the last time.
        last: String,
    },

    /// An instance refused the request (a 4xx). The client itself returns
    /// such answers as they are; API clients built on it (lorem's) turn
    /// them into this error, which is not retried, since another instance
    /// would refuse the request too.
    #[error("instance {instance:?} refused the request with {status}: {message}")]
    Rejected {
        /// The registry id of the instance that answered.
        instance: String,
        /// The HTTP status (400-499).
        status: u16,
        /// The `error` field of a JSON body, or the body itself.
        message: String,
        /// The raw body, so that a gateway can pass it through.
        body: String,
    },

    /// An instance answered 2xx with a body that is not what the service
    /// promises (see [`Response::json`](crate::Response::json)).
    #[error("instance {instance:?} answered with an unexpected body: {reason}")]
    BadResponse {
        /// The registry id of the instance that answered.
        instance: String,
        /// What was wrong with it.
        reason: String,
    },

    /// The options cannot be used (zero attempts, a service name no
    /// registry can hold...).
    #[error("invalid client options: {0}")]
    InvalidOptions(String),

    /// The request cannot be sent as built (a header that is not valid
    /// HTTP, a body that does not serialise).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// True when no instance of the service was available: a gateway answers
    /// 503 for it.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::NoInstance { .. })
    }
}

impl From<balancer::Error> for Error {
    fn from(error: balancer::Error) -> Self {
        match error {
            balancer::Error::NoInstance { service, waited } => {
                Error::NoInstance { service, waited }
            }
            balancer::Error::InvalidOptions(message) => Error::InvalidOptions(message),
            other => Error::InvalidOptions(other.to_string()),
        }
    }
}

/// Why a request stopped retrying: part of [`Error::Exhausted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// It made [`ClientOptions::attempts`](crate::ClientOptions::attempts) tries.
    Attempts,
    /// Every live instance had been tried once: a retry never goes back to
    /// an instance that failed the same request.
    AllTried,
    /// The retry budget was spent: too many requests are being retried, so
    /// the backends are sick, and retrying would only add load.
    Budget,
    /// The live set emptied after a failed try and no instance appeared
    /// within the balancer's wait timeout.
    NoneLeft,
    /// The request is not safe to repeat: its method is not idempotent, it
    /// did not opt in ([`RequestBuilder::idempotent`](crate::RequestBuilder::idempotent)),
    /// and the failed try may have reached the service.
    NotSafe,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GaveUp::Attempts => "no attempts left",
            GaveUp::AllTried => "every live instance was tried",
            GaveUp::Budget => "the retry budget is spent",
            GaveUp::NoneLeft => "no instance was left to retry on",
            GaveUp::NotSafe => {
                "the request is not safe to repeat: not idempotent, and it may have reached the service"
            }
        })
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
