//! The one error type of `sdctl`, in domain words.

/// Everything an `sdctl` command can fail with. Messages say what failed,
/// with which value, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry refused, could not be reached, or timed out; or the
    /// settings are unusable. The message is the registry crate's.
    #[error(transparent)]
    Registry(#[from] registry::Error),

    /// A service with no live instance was asked for by name.
    #[error("no live instances of service {service:?} in {registry}; {known}")]
    UnknownService {
        /// The name that was asked for.
        service: String,
        /// Which registry was read (see [`describe`](crate::describe)).
        registry: String,
        /// The services that do have live instances, as a sentence.
        known: String,
    },

    /// `sdctl deregister` found nothing to remove.
    #[error("no instance {id:?} of service {service:?} to deregister in {registry}; {hint}")]
    UnknownInstance {
        /// The service asked for.
        service: String,
        /// The id asked for.
        id: String,
        /// Which registry was read.
        registry: String,
        /// What is there instead, or why it could not be removed.
        hint: String,
    },

    /// An argument or option that cannot be used.
    #[error("{0}")]
    InvalidArgument(String),

    /// `sdctl ui` could not listen on the address it was given.
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Writing the output failed (other than a closed pipe, which ends a
    /// command quietly).
    #[error("cannot write {what}: {source}")]
    Io {
        /// What was being written: `stdout`, a file name.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] on `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// True for a write into a pipe whose reader has gone (`sdctl watch x |
    /// head -1`): the command then ends quietly with success.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `sdctl`'s result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "services with live instances: a, b" or "it has no service with live
/// instances", for messages about a service that is not there.
pub(crate) fn known_services(services: &[String]) -> String {
    if services.is_empty() {
        "it has no service with live instances".to_owned()
    } else {
        format!("services with live instances: {}", services.join(", "))
    }
}
