//! The one error type of the crate, in domain words.

use std::time::Duration;

/// A boxed backend error, kept as the `source` of an [`Error`] so that the
/// backend client's own types never leak into our public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong when registering or discovering instances.
///
/// Messages say what failed, with which value, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An [`Instance`](crate::Instance) breaks a rule of the model (bad id,
    /// service name, address, port, metadata...). The message names the
    /// field and the rule.
    #[error("invalid instance: {0}")]
    InvalidInstance(String),

    /// The settings cannot be used: a bad address, duration or file.
    #[error("invalid registry config: {0}")]
    InvalidConfig(String),

    /// `REGISTRY` (or `backend.type`) names no backend we know.
    #[error("unknown registry {name:?}; expected one of memory, consul, etcd, zookeeper (or zk)")]
    UnknownBackend {
        /// The name that was given.
        name: String,
    },

    /// The backend could not be reached or answered with a failure.
    #[error("{backend} at {addr} is unavailable: {source}")]
    Unavailable {
        /// `consul`, `etcd`, `zookeeper` or `memory`.
        backend: &'static str,
        /// The address(es) that were tried.
        addr: String,
        /// What the backend client reported.
        #[source]
        source: BoxError,
    },

    /// A registry call did not finish within `REGISTRY_TIMEOUT`.
    #[error("{backend} {operation} timed out after {after:?} (REGISTRY_TIMEOUT)")]
    Timeout {
        /// The backend that did not answer in time.
        backend: &'static str,
        /// What we were doing: `connect`, `register`, `read`...
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
    },

    /// The backend refused a request that was well formed on our side
    /// (a permission, a quota, a conflicting node...).
    #[error("{backend} rejected {operation}: {reason}")]
    Rejected {
        /// The backend that refused.
        backend: &'static str,
        /// What we asked for.
        operation: &'static str,
        /// What it said.
        reason: String,
    },

    /// The lease or session that kept our registrations alive is gone and
    /// could not be re-established yet (the registrar keeps trying).
    #[error("{backend} lease or session lost: {reason}")]
    LeaseLost {
        /// The backend whose lease or session expired.
        backend: &'static str,
        /// Why we think it is gone.
        reason: String,
    },

    /// Another registrar holds a live record of this instance id: registering
    /// it again elsewhere would silently replace (or fight over) the other
    /// one, so it is refused. `holder` names the other registrar (its owner
    /// token, which starts with its process id). The refusal goes away by
    /// itself once the other record expires (its process crashed: one TTL
    /// or session timeout) or is deregistered, so it counts as transient: a
    /// server retrying its registration gets in as soon as the id is free.
    #[error(
        "{backend}: instance {id:?} of service {service:?} is already registered by another registrar ({holder}); \
         give this instance another id, or wait until the other record is deregistered or expires"
    )]
    AlreadyRegistered {
        /// The backend that holds the other record.
        backend: &'static str,
        /// The service of the instance.
        service: String,
        /// The id that is taken.
        id: String,
        /// Who holds it: the other registrar's owner token.
        holder: String,
    },

    /// The registrar was shut down (its task ended) before the call finished.
    #[error("the {backend} registrar has shut down")]
    Closed {
        /// The backend whose registrar is gone.
        backend: &'static str,
    },
}

impl Error {
    /// Builds an [`Error::Unavailable`] from any backend error.
    pub fn unavailable(
        backend: &'static str,
        addr: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Unavailable {
            backend,
            addr: addr.into(),
            source: source.into(),
        }
    }

    /// True for errors that may go away by themselves (the backend is down,
    /// slow, or our session is being re-established); callers such as a
    /// server retrying its registration use it to decide whether to retry.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout { .. }
                | Error::LeaseLost { .. }
                | Error::AlreadyRegistered { .. }
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `fut` under the `REGISTRY_TIMEOUT` deadline, turning an elapsed
/// deadline into [`Error::Timeout`].
pub(crate) async fn with_deadline<T>(
    backend: &'static str,
    operation: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            backend,
            operation,
            after,
        }),
    }
}
