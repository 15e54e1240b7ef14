//! The life of a server in the registry.
//!
//! [`shutdown_signal`] (and [`Signals`], when a second signal should end the
//! drain) is the one SIGTERM/SIGINT helper every binary uses.

mod connect;
mod signal;

use std::io;

pub use connect::ConnectOnDemand;
pub use signal::{Signals, shutdown_signal};

/// Why a lifecycle step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// A signal handler could not be installed.
    #[error("cannot listen for {signal}: {source}")]
    Signal {
        /// `SIGTERM`, `SIGINT` or `Ctrl-C`.
        signal: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}
