//! Progress lines on stderr, only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Overwrites one status line on stderr (`[12.3s] etcd: crash detection`),
/// or does nothing when disabled or when stderr is not a terminal.
#[derive(Debug)]
pub(crate) struct Progress {
    enabled: bool,
    started: Instant,
}

impl Progress {
    /// Enabled if `wanted` and stderr is a terminal.
    pub(crate) fn new(wanted: bool) -> Self {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    /// Shows what `backend` is doing now.
    pub(crate) fn say(&self, backend: &str, what: &str) {
        if self.enabled {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r\x1b[2K[{:5.1}s] {backend}: {what}",
                self.started.elapsed().as_secs_f64()
            );
            let _ = stderr.flush();
        }
    }

    /// Erases the status line.
    pub(crate) fn clear(&self) {
        if self.enabled {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}
