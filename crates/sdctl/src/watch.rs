//! `sdctl watch SERVICE [--json] [--count N]`: a live stream of one
//! service's changes, one line per change.
//!
//! The first snapshot is printed as one `added` line per instance, then one
//! `synced` line; after that, one line per instance that was added, removed
//! or changed (address, tags, metadata or weight):
//!
//! ```text
//! added lorem/a 127.0.0.1:8081 tags=v1
//! added lorem/b 127.0.0.1:8082 weight=2 meta.zone=eu
//! synced lorem instances=2
//! removed lorem/b 127.0.0.1:8082 weight=2 meta.zone=eu
//! changed lorem/a 127.0.0.1:9090 tags=v1,v2
//! ```
//!
//! With `--json`, each line is one object: `{"event": "added", "instance":
//! {...}}` (likewise `removed`, `changed`) and `{"event": "synced",
//! "service": "lorem", "instances": 2}`. `--count N` stops after N change
//! lines (the `synced` line is not counted).
//!
//! The first snapshot must arrive within `REGISTRY_TIMEOUT`, or the command
//! fails with the registry's last error. After it, errors of the watch are
//! reported on stderr and the watch carries on: the registry's watch
//! retries behind them, and its next snapshot is compared with the last one
//! printed, so no change is lost from the output.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use registry::{WatchEvent, Watcher};

use crate::error::{Error, Result, known_services};

pub use registry::diff::{Change, diff};

/// How `sdctl watch` prints, and how long it waits for the first snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Stop after this many change lines.
    pub count: Option<u64>,
    /// The deadline of the first snapshot (`REGISTRY_TIMEOUT`).
    pub timeout: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            json: false,
            count: None,
            timeout: registry::DEFAULT_TIMEOUT,
        }
    }
}

/// Watches `service` and writes its changes to `out` until `shutdown`
/// completes, `options.count` changes were written, or `out` is closed.
///
/// `backend` names the registry in a timeout; `options.timeout` bounds the
/// wait for the first snapshot; `notes` receives the stderr notes (a service without live
/// instances yet, errors the watch carries on behind).
///
/// # Errors
/// A registry error (or [`registry::Error::Timeout`]) if no first snapshot
/// came within `timeout`; an invalid service name; [`Error::Io`] if `out`
/// cannot be written (a closed pipe included: see
/// [`Error::is_broken_pipe`]).
pub async fn run<W: Watcher + ?Sized>(
    watcher: &W,
    backend: &'static str,
    service: &str,
    options: &WatchOptions,
    out: &mut (dyn Write + Send),
    notes: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    registry::validate_name("service", service)?;
    // The change stream: O(1) work per change however large the service
    // (etcd, ZooKeeper), the full state again after an outage.
    let mut stream = watcher.watch_changes(service);
    let timeout = options.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    let first = loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(WatchEvent::Synced(snapshot))) => break snapshot,
            // Never before the first `Synced`; nothing to print.
            Ok(Some(WatchEvent::Changed { .. })) => {}
            Ok(Some(WatchEvent::Outage(error))) => last_error = Some(error),
            Ok(None) => {
                return Err(last_error
                    .map(Error::from)
                    .unwrap_or_else(|| Error::InvalidArgument("the watch ended".to_owned())));
            }
            Err(_) => {
                return Err(Error::from(last_error.unwrap_or(
                    registry::Error::Timeout {
                        backend,
                        operation: "watch",
                        after: timeout,
                    },
                )));
            }
        }
    };
    let mut printed = 0u64;
    let limit = options.count.unwrap_or(u64::MAX);
    let added = first.iter().cloned().map(Change::Added);
    if write_changes(added, options, out, &mut printed, limit)? {
        return Ok(());
    }
    let mut seen = first.clone();
    let synced = if options.json {
        serde_json::json!({"event": "synced", "service": service, "instances": first.len()})
            .to_string()
    } else {
        format!("synced {service} instances={}", first.len())
    };
    writeln!(out, "{synced}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("stdout", e))?;
    if first.is_empty() {
        let known = watcher.services().await.unwrap_or_default();
        let _ = writeln!(
            notes,
            "sdctl: service {service:?} has no live instances yet; watching for them ({})",
            known_services(&known)
        );
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(WatchEvent::Changed { changes, snapshot }) => {
                    seen = snapshot;
                    if write_changes(changes, options, out, &mut printed, limit)? {
                        return Ok(());
                    }
                }
                // The state after an outage: what changed meanwhile.
                Some(WatchEvent::Synced(snapshot)) => {
                    let changes = snapshot.changes_since(&seen);
                    seen = snapshot;
                    if write_changes(changes, options, out, &mut printed, limit)? {
                        return Ok(());
                    }
                }
                Some(WatchEvent::Outage(error)) => {
                    let _ = writeln!(notes, "sdctl: watch {service}: {error} (the watch carries on)");
                }
                None => return Err(Error::InvalidArgument(format!("the watch of {service} ended"))),
            },
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// Writes `changes`, one line each; true once `limit` change lines have
/// been written.
fn write_changes(
    changes: impl IntoIterator<Item = Change>,
    options: &WatchOptions,
    out: &mut (dyn Write + Send),
    printed: &mut u64,
    limit: u64,
) -> Result<bool> {
    for change in changes {
        if *printed >= limit {
            break;
        }
        let line = if options.json {
            change.json()
        } else {
            change.line()
        };
        writeln!(out, "{line}").map_err(|e| Error::io("stdout", e))?;
        *printed += 1;
    }
    out.flush().map_err(|e| Error::io("stdout", e))?;
    Ok(*printed >= limit)
}

#[cfg(test)]
mod tests {
    use registry::{Instance, MemoryRegistry, Registrar};

    use super::*;

    fn lorem(id: &str, port: u16) -> Instance {
        Instance::new("lorem", id, "127.0.0.1", port)
    }

    #[tokio::test]
    async fn prints_the_first_snapshot_then_one_line_per_change() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let a = registry.register(lorem("a", 1)).await.unwrap();
        let task_registry = registry.clone();
        let changes = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut notes = Vec::new();
            let options = WatchOptions {
                count: Some(3),
                ..WatchOptions::default()
            };
            run(
                &task_registry,
                "memory",
                "lorem",
                &options,
                &mut out,
                &mut notes,
                std::future::pending(),
            )
            .await
            .map(|()| String::from_utf8(out).unwrap())
        });
        // The watch prints `a` first; these two changes follow.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = registry.register(lorem("b", 2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.deregister().await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(5), changes)
            .await
            .expect("the watch stops after 3 changes")
            .unwrap()
            .unwrap();
        assert_eq!(
            out,
            "added lorem/a 127.0.0.1:1\nsynced lorem instances=1\n\
             added lorem/b 127.0.0.1:2\nremoved lorem/a 127.0.0.1:1\n"
        );
        b.deregister().await.unwrap();
    }

    #[tokio::test]
    async fn an_empty_service_is_watched_with_a_note_and_a_bad_name_is_an_error() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        let options = WatchOptions {
            json: true,
            ..WatchOptions::default()
        };
        run(
            &registry,
            "memory",
            "nobody",
            &options,
            &mut out,
            &mut notes,
            async {},
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"event\":\"synced\",\"instances\":0,\"service\":\"nobody\"}\n"
        );
        let notes = String::from_utf8(notes).unwrap();
        assert!(
            notes.contains("\"nobody\" has no live instances yet"),
            "{notes}"
        );

        let error = run(
            &registry,
            "memory",
            "no/slash",
            &options,
            &mut Vec::new(),
            &mut Vec::new(),
            async {},
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("service \"no/slash\""),
            "{error}"
        );
    }
}
