//! SIGINT/SIGTERM, for commands that run until interrupted.

use std::future::Future;

/// Installs the SIGINT and SIGTERM listeners now (not on first poll, so a
/// signal that arrives while a registration is being made is not lost) and
/// returns a future that completes on the first of them.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let wait = |signal: Option<Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => {}
            () = wait(terminate) => {}
        }
    }
}
