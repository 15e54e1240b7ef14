//! The one log set-up of every binary in the workspace (`lorem-server`,
//! `lorem-client`, `lorem-demo`, `sdctl`, `local-topology`).
//!
//! Logs are `tracing` events written to stderr (stdout is kept for
//! results), filtered by an environment variable (`RUST_LOG` unless the
//! binary names another), with ANSI colours only when stderr is a terminal
//! and `NO_COLOR` is unset or empty (<https://no-color.org>). A log piped to
//! a file therefore stays greppable: `lorem-client gateway 2>client.log;
//! grep instances=2 client.log` finds `service=lorem instances=2`.
//!
//! ```no_run
//! logging::init("info");
//! tracing::info!(service = "lorem", instances = 2, "watch updated");
//! ```

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The environment variable that turns colours off when set to anything
/// non-empty (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";

/// Installs the log subscriber, filtered by `RUST_LOG`, at `default` (an
/// [`EnvFilter`] directive such as `info` or `warn`) when `RUST_LOG` is
/// unset or invalid.
///
/// A second call keeps the first subscriber (tests may call it more than
/// once).
pub fn init(default: &str) {
    init_from_env("RUST_LOG", default);
}

/// Like [`init`], filtered by the environment variable `var` instead of
/// `RUST_LOG` (`local-topology` reads `LOCAL_TOPOLOGY_LOG`, so that the
/// `RUST_LOG` it passes to its children does not flood its own output).
pub fn init_from_env(var: &str, default: &str) {
    let filter = EnvFilter::try_from_env(var).unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = use_color(
        std::io::stderr().is_terminal(),
        std::env::var_os(NO_COLOR).as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Whether logs get ANSI colours: only on a terminal, and never when
/// `NO_COLOR` (`no_color`, its value if set) is non-empty.
pub fn use_color(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(true, Some(OsStr::new("false"))));
        assert!(!use_color(false, None));
        assert!(!use_color(false, Some(OsStr::new("1"))));
    }
}
