//! One-shot reads and watch streams, on the registry's current session.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;
use zookeeper_client as zk;

use super::{BACKEND, Params, Shared, validate_node_name};
use crate::backoff::Backoff;
use crate::changes::ChangeStream;
use crate::error::{Error, Result, with_deadline};
use crate::model::{Instance, validate_name};
use crate::record::decode_record;
use crate::watch_sink::{SnapshotSink, silence_limit, spawn_watch_of};

/// How many reads go in one multi-read request (keeps replies well under
/// ZooKeeper's 1 MB packet limit).
pub(super) const MULTI_READ_CHUNK: usize = 256;

/// Waits for a usable current session: one is being re-established while
/// the registrar publishes `None`, and a session that has just expired may
/// still be published for a moment before the registrar notices.
///
/// # Errors
/// [`Error::Closed`] if the registrar task is gone.
pub(super) async fn current_session(
    session: &watch::Receiver<Option<zk::Client>>,
) -> Result<zk::Client> {
    let mut session = session.clone();
    let current = session
        .wait_for(|c| c.as_ref().is_some_and(|c| !c.state().is_terminated()))
        .await
        .map_err(|_| Error::Closed { backend: BACKEND })?;
    current.clone().ok_or(Error::Closed { backend: BACKEND })
}

/// The decodable instances of `service`, by id.
pub(super) async fn read_service(
    params: &Params,
    client: &zk::Client,
    service: &str,
) -> Result<BTreeMap<String, Instance>> {
    let base = params.service_path(service);
    let children = match client.list_children(&base).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Ok(BTreeMap::new()),
        Err(error) => return Err(params.error("list", error)),
    };
    let ids: Vec<(&str, &str)> = children.iter().map(|id| (service, id.as_str())).collect();
    read_nodes(params, client, &ids).await
}

/// Reads the nodes `(service, id)` in multi-reads and decodes them; missing
/// nodes and garbage are skipped.
async fn read_nodes(
    params: &Params,
    client: &zk::Client,
    nodes: &[(&str, &str)],
) -> Result<BTreeMap<String, Instance>> {
    let mut found = BTreeMap::new();
    for chunk in nodes.chunks(MULTI_READ_CHUNK) {
        let mut reader = client.new_multi_reader();
        let paths: Vec<String> = chunk
            .iter()
            .map(|(service, id)| params.node_path(service, id))
            .collect();
        for path in &paths {
            reader
                .add_get_data(path)
                .map_err(|e| params.error("read", e))?;
        }
        let results = reader.commit().await.map_err(|e| params.error("read", e))?;
        for (((service, id), path), result) in chunk.iter().zip(&paths).zip(results) {
            match result {
                zk::MultiReadResult::Data { data, .. } => {
                    if let Some(instance) = decode_record(
                        BACKEND,
                        path,
                        service,
                        id,
                        &data,
                        &params.interop.kratos_scheme,
                    ) {
                        found.insert(instance.id.clone(), instance);
                    }
                }
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } if fails_the_read(&err) => {
                    return Err(params.error("read", err));
                }
                zk::MultiReadResult::Error { err } => {
                    tracing::warn!(backend = BACKEND, %path, error = %err,
                        "skipping a node we cannot read (its ACL may deny us READ); the other instances are still read");
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// Whether a per-node error of a multi-read fails the whole read. Only the
/// connection and the session (and a server shedding load) do: then no
/// node can be read, and the caller retries. Anything else is about that
/// one node (`NoAuth` for a node another tool wrote with an ACL that denies
/// us READ, ...): the node is skipped with a warning, so that one bad record
/// never hides the others.
fn fails_the_read(error: &zk::Error) -> bool {
    use zk::Error as Z;
    matches!(
        error,
        Z::ConnectionLoss
            | Z::SessionExpired
            | Z::SessionMoved
            | Z::ClientClosed
            | Z::NoHosts
            | Z::Timeout
            | Z::AuthFailed
            | Z::Throttled
    )
}

/// The services with at least one decodable instance, sorted.
pub(super) async fn read_services(params: &Params, client: &zk::Client) -> Result<Vec<String>> {
    let names = match client.list_children(&params.prefix).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(error) => return Err(params.error("list", error)),
    };
    let names: Vec<String> = names
        .into_iter()
        .filter(|name| match validate_node_name("service", name) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(backend = BACKEND, prefix = %params.prefix, node = %name, %error,
                    "skipping a child of the prefix that is not a service name");
                false
            }
        })
        .collect();
    // The children of every service, in multi-reads...
    let mut nodes: Vec<(&str, String)> = Vec::new();
    for chunk in names.chunks(MULTI_READ_CHUNK) {
        let mut reader = client.new_multi_reader();
        for name in chunk {
            reader
                .add_get_children(&params.service_path(name))
                .map_err(|e| params.error("list", e))?;
        }
        let results = reader.commit().await.map_err(|e| params.error("list", e))?;
        for (name, result) in chunk.iter().zip(results) {
            match result {
                zk::MultiReadResult::Children { children } => {
                    nodes.extend(children.into_iter().map(|id| (name.as_str(), id)));
                }
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } if fails_the_read(&err) => {
                    return Err(params.error("list", err));
                }
                zk::MultiReadResult::Error { err } => {
                    tracing::warn!(backend = BACKEND, path = %params.service_path(name), error = %err,
                        "skipping a service node we cannot list (its ACL may deny us READ); the other services are still read");
                }
                _ => {}
            }
        }
    }
    // ...then their data, keeping the services with a decodable instance.
    let mut live = BTreeSet::new();
    for chunk in nodes.chunks(MULTI_READ_CHUNK) {
        let pairs: Vec<(&str, &str)> = chunk.iter().map(|(s, id)| (*s, id.as_str())).collect();
        for instance in read_nodes(params, client, &pairs).await?.into_values() {
            live.insert(instance.service);
        }
    }
    Ok(live.into_iter().collect())
}

/// The id of a direct child of `base`, from a watch event's path.
fn child_id<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let id = path.strip_prefix(base)?.strip_prefix('/')?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Why one watch on one session stopped.
enum Stopped {
    /// The consumer dropped the stream.
    Closed,
    /// The session ended; wait for the registrar's next one.
    SessionEnded,
    /// Something failed: report it, back off, start again.
    Failed(Error),
}

/// Pushes the changes of `service`'s live instances; see
/// [`Watcher::watch_changes`](crate::Watcher::watch_changes).
pub(super) fn watch(shared: Arc<Shared>, service: String) -> ChangeStream {
    spawn_watch_of(BACKEND, service.clone(), move |mut sink| async move {
        if let Err(error) = validate_node_name("service", &service) {
            sink.fatal(error).await;
            return;
        }
        let mut backoff = Backoff::reconnect();
        let mut sessions = shared.session.clone();
        loop {
            match watch_one_session(&shared, &service, &mut sink, &mut sessions, &mut backoff).await
            {
                Stopped::Closed => return,
                Stopped::SessionEnded => {
                    tracing::debug!(backend = BACKEND, %service, "watch: session ended; waiting for the next one");
                }
                Stopped::Failed(error) => {
                    // The sink reports the first failure of an outage and
                    // logs the others.
                    if !sink.error(error).await {
                        return;
                    }
                    backoff.wait().await;
                }
            }
        }
    })
}

/// Watches `service` on the current session until that session ends or
/// something fails.
async fn watch_one_session(
    shared: &Shared,
    service: &str,
    sink: &mut SnapshotSink,
    sessions: &mut watch::Receiver<Option<zk::Client>>,
    backoff: &mut Backoff,
) -> Stopped {
    let params = &shared.params;
    let timeout = params.timeout;
    let base = params.service_path(service);
    let client = match tokio::time::timeout(timeout, current_session(sessions)).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => return Stopped::Failed(error),
        Err(_) => {
            return Stopped::Failed(Error::LeaseLost {
                backend: BACKEND,
                reason: format!(
                    "no zookeeper session at {} for {timeout:?}; still trying",
                    params.connect_string
                ),
            });
        }
    };
    sessions.borrow_and_update();
    let mut disconnected_since =
        (client.state() == zk::SessionState::Disconnected).then(Instant::now);

    // Watch first, then read: nothing that happens after the read is missed.
    let mut watcher = match add_watch(params, &client, &base).await {
        Ok(watcher) => watcher,
        Err(error) => return Stopped::Failed(error),
    };
    match read_all(params, &client, service).await {
        Ok(current) => sink.replace(current.into_values()),
        Err(error) => return Stopped::Failed(error),
    }
    if !sink.publish() {
        return Stopped::Closed;
    }
    backoff.reset();
    let mut reported = false;
    let report_after = report_after(params, &client);

    loop {
        let report_at = disconnected_since
            .filter(|_| !reported)
            .map(|since| since + report_after);
        let event = tokio::select! {
            event = next_event(&mut watcher) => event,
            () = sleep_until(report_at) => {
                reported = true;
                let error = Error::unavailable(BACKEND, params.connect_string.clone(),
                    format!("disconnected from zookeeper for {report_after:?} (no server answered); the last snapshot may be stale"));
                if !sink.error(error).await {
                    return Stopped::Closed;
                }
                continue;
            }
            changed = sessions.changed() => {
                let same = changed.is_ok() && sessions.borrow_and_update().as_ref()
                    .is_some_and(|c| c.session_id() == client.session_id());
                if same {
                    continue;
                }
                return Stopped::SessionEnded;
            }
        };
        let Some(first) = event else {
            return Stopped::Failed(Error::LeaseLost {
                backend: BACKEND,
                reason: "the watch's session ended".to_owned(),
            });
        };
        // Take every event already delivered, then answer them in one go:
        // a `multi { delete; create }` shows up as two events but must not
        // make the instance flicker out of a snapshot. A deletion is read
        // too (not just applied): when the two events come in separate
        // batches, the read of the first already finds the new node (the
        // conformance test `crash_abandon::zookeeper` caught a version that
        // skipped that read).
        let mut events = vec![first];
        while !events.last().is_some_and(is_terminal) {
            match ready_event(&mut watcher) {
                Some(event) => events.push(event),
                None => break,
            }
        }
        let mut touched = BTreeSet::new();
        let mut reread = false;
        let mut rearm = false;
        for event in &events {
            match event.event_type {
                zk::EventType::Session => match event.session_state {
                    zk::SessionState::Disconnected => {
                        disconnected_since.get_or_insert_with(Instant::now);
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        // Events may have been lost while disconnected.
                        if disconnected_since.take().is_some() {
                            rearm = true;
                            reread = true;
                            reported = false;
                        }
                    }
                    _ => return Stopped::SessionEnded,
                },
                zk::EventType::NodeCreated
                | zk::EventType::NodeDeleted
                | zk::EventType::NodeDataChanged => {
                    if let Some(id) = child_id(&base, &event.path) {
                        touched.insert(id.to_owned());
                    } else if event.path == base && event.event_type == zk::EventType::NodeDeleted {
                        reread = true;
                    }
                }
                zk::EventType::NodeChildrenChanged => reread = true,
            }
        }
        if rearm {
            // zookeeper-client 0.11.2 does not re-send persistent watches
            // when it reconnects (its `resend_watches` only sends the data,
            // exist and child lists), so the server has forgotten ours: add
            // it again (the server treats a repeat as a no-op), then read.
            match add_watch(params, &client, &base).await {
                Ok(fresh) => watcher = fresh,
                Err(error) => return Stopped::Failed(error),
            }
        }
        let updated = if reread {
            read_all(params, &client, service)
                .await
                .map(|all| sink.replace(all.into_values()))
        } else if touched.is_empty() {
            continue;
        } else {
            reread_ids(params, &client, service, &touched, sink).await
        };
        if let Err(error) = updated {
            return Stopped::Failed(error);
        }
        if !sink.publish() {
            return Stopped::Closed;
        }
        tracing::trace!(backend = BACKEND, %service, instances = sink.state().len(), "watch updated");
    }
}

/// How long a watch stays disconnected before it reports an outage.
///
/// zookeeper-client declares a connection lost after 2/5 of the granted
/// session timeout without any reply, checked every 1/20 of it (it pings
/// every 3/20), then tries the servers of the ensemble in turn, each
/// attempt bounded by that same 2/5 (a hung server accepts the connection
/// and never answers). An outage is reported once the [`silence_limit`]
/// has passed since the last reply, but never before one such attempt
/// could have failed and another succeeded, and never later than
/// `REGISTRY_TIMEOUT` after the disconnection. A reconnection to another
/// server before that is no outage.
fn report_after(params: &Params, client: &zk::Client) -> Duration {
    let session = client.session_timeout();
    let noticed_after = session * 2 / 5 + session / 20;
    silence_limit(params.ttl)
        .saturating_sub(noticed_after)
        .max(noticed_after)
        .min(params.timeout)
}

/// Adds a persistent recursive watch on `base` (which may not exist yet).
async fn add_watch(
    params: &Params,
    client: &zk::Client,
    base: &str,
) -> Result<zk::PersistentWatcher> {
    with_deadline(BACKEND, "watch", params.timeout, async {
        client
            .watch(base, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| params.error("watch", e))
    })
    .await
}

/// A full read under the deadline.
async fn read_all(
    params: &Params,
    client: &zk::Client,
    service: &str,
) -> Result<BTreeMap<String, Instance>> {
    with_deadline(
        BACKEND,
        "read",
        params.timeout,
        read_service(params, client, service),
    )
    .await
}

/// Reads again the children an event named, updating the sink's set
/// (O(log N) each).
async fn reread_ids(
    params: &Params,
    client: &zk::Client,
    service: &str,
    ids: &BTreeSet<String>,
    sink: &mut SnapshotSink,
) -> Result<()> {
    // Names that cannot be ids can never decode; skip the round trip.
    let pairs: Vec<(&str, &str)> = ids
        .iter()
        .filter(|id| validate_name("id", id).is_ok())
        .map(|id| (service, id.as_str()))
        .collect();
    let found = with_deadline(
        BACKEND,
        "read",
        params.timeout,
        read_nodes(params, client, &pairs),
    )
    .await?;
    let mut found = found;
    for id in ids {
        match found.remove(id) {
            Some(instance) => sink.put(instance),
            None => sink.remove(id),
        };
    }
    Ok(())
}

fn is_terminal(event: &zk::WatchedEvent) -> bool {
    event.event_type == zk::EventType::Session && event.session_state.is_terminated()
}

/// The next event, or `None` if the watcher broke (zookeeper-client panics
/// when polled after its session ended; we never do that knowingly, and
/// turn it into a retry rather than a dead stream if it happens anyway).
async fn next_event(watcher: &mut zk::PersistentWatcher) -> Option<zk::WatchedEvent> {
    AssertUnwindSafe(watcher.changed())
        .catch_unwind()
        .await
        .ok()
}

/// An event already delivered, if any (never waits).
fn ready_event(watcher: &mut zk::PersistentWatcher) -> Option<zk::WatchedEvent> {
    std::panic::catch_unwind(AssertUnwindSafe(|| watcher.changed().now_or_never()))
        .ok()
        .flatten()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_and_session_errors_fail_a_read() {
        assert!(fails_the_read(&zk::Error::ConnectionLoss));
        assert!(fails_the_read(&zk::Error::SessionExpired));
        assert!(!fails_the_read(&zk::Error::NoAuth));
        assert!(!fails_the_read(&zk::Error::MarshallingError));
    }

    #[test]
    fn child_ids() {
        assert_eq!(child_id("/s/lorem", "/s/lorem/a"), Some("a"));
        assert_eq!(child_id("/s/lorem", "/s/lorem"), None);
        assert_eq!(child_id("/s/lorem", "/s/lorem/a/b"), None);
        assert_eq!(child_id("/s/lorem", "/s/loremx/a"), None);
    }
}
