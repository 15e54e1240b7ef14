//! SIGTERM and SIGINT (Ctrl-C elsewhere): the one signal helper every
//! binary uses.

use std::future::Future;
use std::io;

/// The shutdown signals, listened for from [`install`](Self::install) on: a
/// signal that arrives before [`next`](Self::next) is awaited is kept, not
/// lost, and no longer kills the process.
///
/// Why a type and not only [`shutdown_signal`]: a server that drains asks
/// for a *second* signal too ("stop now, end the drain"), from the same
/// listeners.
///
/// ```no_run
/// use registry::lifecycle::Signals;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), registry::lifecycle::LifecycleError> {
/// // First of all, so that a signal during start-up is a clean shutdown.
/// let mut signals = Signals::install()?;
/// // ... start serving ...
/// let first = signals.next().await;
/// tracing::info!(signal = first, "shutting down");
/// // ... deregister and drain until `signals.next()` or the drain delay ...
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl Signals {
    /// Replaces the default action of SIGTERM and SIGINT (Ctrl-C elsewhere)
    /// from now on. Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`LifecycleError::Signal`](super::LifecycleError::Signal) naming the
    /// signal whose handler could not be installed.
    pub fn install() -> Result<Self, super::LifecycleError> {
        let failed = |signal: &'static str| {
            move |source: io::Error| super::LifecycleError::Signal { signal, source }
        };
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate()).map_err(failed("SIGTERM"))?,
                int: signal(SignalKind::interrupt()).map_err(failed("SIGINT"))?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {
                ctrl_c: tokio::signal::windows::ctrl_c().map_err(failed("Ctrl-C"))?,
            })
        }
    }

    /// Waits for the next signal and names it (`"SIGTERM"`, `"SIGINT"`,
    /// `"Ctrl-C"`), for the log. If the listeners close (the runtime is
    /// shutting down) it never returns.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.term.recv() => "SIGTERM",
                Some(()) = self.int.recv() => "SIGINT",
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            match self.ctrl_c.recv().await {
                Some(()) => "Ctrl-C",
                None => std::future::pending().await,
            }
        }
    }
}

/// A future that completes on the first SIGTERM or SIGINT (Ctrl-C
/// elsewhere): the shutdown future to hand to
/// [`Lifecycle::serve`](super::Lifecycle::serve), `axum::serve`'s graceful
/// shutdown, or tonic's `serve_with_shutdown`.
///
/// The listeners are installed when this is called, not when the future is
/// first polled, so a signal that arrives in between (while a registration
/// is being made, say) is not lost. A listener that cannot be installed is
/// logged and that signal keeps its default action. Must be called inside a
/// Tokio runtime.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let shutdown = registry::lifecycle::shutdown_signal();
/// // ... register, serve ...
/// shutdown.await;
/// // ... deregister, drain, stop ...
/// # }
/// ```
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let signals = Signals::install()
        .inspect_err(|error| tracing::warn!(%error, "signals keep their default action"))
        .ok();
    async move {
        match signals {
            Some(mut signals) => {
                let signal = signals.next().await;
                tracing::debug!(signal, "shutdown signal");
            }
            None => std::future::pending().await,
        }
    }
}
