//! Helpers shared by the registry's integration tests: instance
//! constructors, logging, and deadline loops over watches and reads.
//!
//! Each test binary declares `mod common;` and uses what it needs.

#![allow(dead_code, unreachable_pub)]

pub mod freeze;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use registry::{Error, Instance, WatchStream, Watcher};
use tokio::time::Instant;

/// Instance `id` of `service` at 127.0.0.1:`port`.
pub fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, id, "127.0.0.1", port)
}

/// Instance `id` of the `lorem` service at 127.0.0.1:8080.
pub fn lorem(id: &str) -> Instance {
    instance("lorem", id, 8080)
}

/// The ids of `instances`, in order: what most checks compare.
pub fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

/// Sends logs to the test's captured output, filtered by `RUST_LOG` or else
/// by `default_filter`. Only the first call of a test binary takes effect.
pub fn init_tracing(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs blocking server control (testkit start/stop, CLI tools) without
/// stalling the other tasks of the (multi-threaded) runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Reads `watch` until a snapshot satisfies `done`, and returns it. Every
/// item, snapshot or error, is passed to `seen` first; error items are also
/// printed, and tolerated (the stream must carry on behind them).
///
/// # Errors
/// A message naming `what` if the stream ends, or if no snapshot satisfies
/// `done` within `within`.
pub async fn watch_until(
    watch: &mut WatchStream,
    within: Duration,
    what: &str,
    mut seen: impl FnMut(Result<&[Instance], &Error>),
    done: impl Fn(&[Instance]) -> bool,
) -> Result<Vec<Instance>, String> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(snapshot))) => {
                seen(Ok(&snapshot));
                if done(&snapshot) {
                    return Ok(snapshot);
                }
                last = Some(ids(&snapshot).join(","));
            }
            Ok(Some(Err(error))) => {
                println!("  watch reported (and carries on): {error}");
                seen(Err(&error));
            }
            Ok(None) => return Err(format!("the watch stream ended while waiting for {what}")),
            Err(_) => {
                return Err(format!(
                    "{what} did not happen within {within:?}; last snapshot: {last:?}"
                ));
            }
        }
    }
}

/// [`watch_until`] that fails the test instead of returning an error.
pub async fn await_snapshot(
    watch: &mut WatchStream,
    within: Duration,
    what: &str,
    done: impl Fn(&[Instance]) -> bool,
) -> Vec<Instance> {
    watch_until(watch, within, what, |_| {}, done)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Reads `watch` until a snapshot's ids are exactly `want`.
pub async fn await_ids(watch: &mut WatchStream, within: Duration, want: &[&str]) -> Vec<Instance> {
    let what = format!("the snapshot {want:?}");
    await_snapshot(watch, within, &what, |s| ids(s) == want).await
}

/// Polls `check` every 50 ms until it returns `Some`, or fails the test
/// naming `what` and the last `Err` (or "not yet") after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => "not yet".to_owned(),
            Err(error) => error,
        };
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `watcher.instances(service)` until `done`, for checks that do not
/// use a watch; read errors are retried.
pub async fn await_instances<W: Watcher + ?Sized>(
    watcher: &W,
    service: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&[Instance]) -> bool,
) -> Vec<Instance> {
    let done = &done;
    eventually(within, what, move || async move {
        match watcher.instances(service).await {
            Ok(found) if done(&found) => Ok(Some(found)),
            Ok(found) => Err(format!("read [{}]", ids(&found).join(","))),
            Err(error) => Err(format!("error: {error}")),
        }
    })
    .await
}
