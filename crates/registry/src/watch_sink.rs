//! The sending side of every backend's watch: the [`WatchStream`]'s error
//! contract kept in one place, the task that feeds it, and how long a watch
//! may hear nothing before it reports an outage.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::backoff::Outage;
use crate::changes::{ChangeStream, InstanceMap, Snapshot, WatchEvent};
use crate::error::Error;
use crate::model::Instance;
#[cfg(doc)]
use crate::traits::WatchStream;

/// How long a watch may go without hearing from its registry before it
/// reports an outage (one `Err` item): max(2 x TTL, 5 s).
///
/// A registry that hangs (a stopped process, a frozen VM) breaks no
/// connection, so each backend checks that it still answers within this
/// bound: etcd with progress requests on the watch stream, Consul with a
/// small probe beside its blocking query, ZooKeeper with the session's own
/// pings. Two TTLs, because that is when the registry itself starts
/// expiring instances; never under 5 s, so that a busy machine or a leader
/// election is not an outage.
pub(crate) fn silence_limit(ttl: Duration) -> Duration {
    ttl.saturating_mul(2).max(Duration::from_secs(5))
}

/// The sending side of a [`ChangeStream`] (and so of every
/// [`WatchStream`]), and the one place that keeps the watch's error
/// contract (see [`WatchStream`]), so that backends cannot drift.
///
/// The backend keeps the live set here, by id, in a persistent map: it
/// [`put`](Self::put)s and [`remove`](Self::remove)s instances as events
/// come (O(log N) each) or [`replace`](Self::replace)s the whole set after
/// a full read, then [`publish`](Self::publish)es (an O(1) hand-off).
/// Nothing is queued: the consumer takes the newest state when it is ready,
/// with the changes since its last look computed then (see
/// [`crate::changes`]), so a slow consumer gets the latest state coalesced.
///
/// - a state equal to the last one the consumer saw yields no event;
/// - the first [`error`](Self::error) of an outage becomes one
///   [`WatchEvent::Outage`] and is logged at warn; later errors of the same
///   outage (every retry) are only logged at debug;
/// - the first [`publish`](Self::publish) after an outage ends it: it
///   becomes a [`WatchEvent::Synced`], always, even if nothing changed, so
///   that a consumer sees the watch has recovered, and the recovery is
///   logged at info with the outage's length.
#[derive(Debug)]
pub(crate) struct SnapshotSink {
    shared: Arc<Shared>,
    /// The backend's current set, by id.
    state: InstanceMap,
    /// Since when the watch has been failing, if it is.
    outage: Outage,
    /// The backend, for logs.
    backend: &'static str,
    /// The watched service, for logs.
    service: String,
    /// Dropped with the stream: `closed()` tells the feeding task to stop.
    alive: watch::Sender<()>,
}

/// What the two sides of one watch share.
#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the consumer (a permit is kept if it is not waiting yet).
    wake: Notify,
}

/// What the consumer has not taken yet: at most two maps that share their
/// nodes, an error and a few flags, however fast the registry changes.
#[derive(Debug, Default)]
struct Pending {
    /// The newest published state.
    current: Snapshot,
    /// Whether anything was published yet.
    published: bool,
    /// What the consumer last saw.
    delivered: Snapshot,
    /// The next state goes out as `Synced` (the first one, and the first
    /// after an outage).
    resync: bool,
    /// An outage that started and was not taken yet.
    outage: Option<Error>,
    /// The last event: an error that ends the stream.
    fatal: Option<Error>,
    /// The fatal error was taken, or the sender is gone.
    ended: bool,
}

impl Pending {
    /// The next event for the consumer, if there is one now.
    fn take(&mut self) -> Option<WatchEvent> {
        if let Some(error) = self.fatal.take() {
            self.ended = true;
            return Some(WatchEvent::Outage(error));
        }
        // Changes from before an outage come before it...
        if !self.resync && self.published && self.current != self.delivered {
            let snapshot = self.current.clone();
            let changes = snapshot.changes_since(&self.delivered);
            self.delivered = snapshot.clone();
            if !changes.is_empty() {
                return Some(WatchEvent::Changed { changes, snapshot });
            }
        }
        if let Some(error) = self.outage.take() {
            return Some(WatchEvent::Outage(error));
        }
        // ...and the state after it in one `Synced`.
        if self.resync && self.published {
            self.resync = false;
            self.delivered = self.current.clone();
            return Some(WatchEvent::Synced(self.current.clone()));
        }
        None
    }
}

impl SnapshotSink {
    fn new(backend: &'static str, service: String) -> (Self, ChangeStream) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                resync: true,
                ..Pending::default()
            }),
            wake: Notify::new(),
        });
        let (alive, receiver) = watch::channel(());
        let stream = futures::stream::unfold(
            (shared.clone(), receiver),
            |(shared, receiver)| async move {
                loop {
                    let (event, ended) = {
                        let mut pending = lock(&shared.pending);
                        let ended = pending.ended;
                        (pending.take(), ended)
                    };
                    match event {
                        Some(event) => return Some((event, (shared, receiver))),
                        None if ended => return None,
                        None => shared.wake.notified().await,
                    }
                }
            },
        );
        let sink = SnapshotSink {
            shared,
            state: InstanceMap::new(),
            outage: Outage::default(),
            backend,
            service,
            alive,
        };
        (sink, Box::pin(stream))
    }

    /// Puts (or replaces) one instance into the current set: O(log N).
    /// Returns whether the set changed. Call [`publish`](Self::publish)
    /// after a batch.
    pub(crate) fn put(&mut self, instance: Instance) -> bool {
        match self.state.get(instance.id.as_str()) {
            Some(old) if **old == instance => false,
            _ => {
                self.state
                    .insert(Arc::from(instance.id.as_str()), Arc::new(instance));
                true
            }
        }
    }

    /// Removes instance `id` from the current set: O(log N). Returns
    /// whether it was there.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        self.state.remove(id).is_some()
    }

    /// Replaces the current set with `instances` (after a full read; of
    /// two instances with one id, the first wins).
    ///
    /// The new list is sorted and walked beside the current set in one
    /// pass, and only what differs is written: O(N) comparisons and
    /// O(k log N) writes for k changes, and the unchanged parts of the map
    /// stay shared, so the consumer's diff skips them too. This is what
    /// keeps a whole-list registry (Consul) cheap per change.
    pub(crate) fn replace<I: Into<Arc<Instance>>>(
        &mut self,
        instances: impl IntoIterator<Item = I>,
    ) {
        // Each instance goes behind its `Arc` as it comes, so the list
        // sorted here is of pointers, and the caller's records are freed
        // as they are taken: a full read of N instances peaks at about one
        // copy of them, not three.
        let mut fresh: Vec<Arc<Instance>> = instances.into_iter().map(Into::into).collect();
        fresh.sort_by(|a, b| a.id.cmp(&b.id));
        fresh.dedup_by(|a, b| a.id == b.id);
        if self.state.is_empty() {
            self.state = fresh
                .into_iter()
                .map(|i| (Arc::from(i.id.as_str()), i))
                .collect();
            return;
        }
        let (mut puts, mut gone) = (Vec::new(), Vec::new());
        {
            let mut old = self.state.iter().peekable();
            for instance in fresh {
                while let Some((id, _)) = old.next_if(|(id, _)| ***id < *instance.id) {
                    gone.push(id.clone());
                }
                match old.next_if(|(id, _)| ***id == *instance.id) {
                    Some((_, current)) if *current == instance => {}
                    _ => puts.push(instance),
                }
            }
            gone.extend(old.map(|(id, _)| id.clone()));
        }
        for id in gone {
            self.state.remove(&id);
        }
        for instance in puts {
            self.state.insert(Arc::from(instance.id.as_str()), instance);
        }
    }

    /// The current set, by id.
    pub(crate) fn state(&self) -> &InstanceMap {
        &self.state
    }

    /// Hands the current set to the consumer (O(1)). Returns false once the
    /// stream has been dropped.
    pub(crate) fn publish(&mut self) -> bool {
        let recovered = self.outage.recovered();
        if let Some(after) = recovered {
            tracing::info!(backend = self.backend, service = %self.service, outage = ?after,
                instances = self.state.len(), "watch recovered");
        }
        {
            let mut pending = lock(&self.shared.pending);
            pending.current = Snapshot::from_map(self.state.clone());
            pending.published = true;
            if recovered.is_some() {
                pending.resync = true;
            }
        }
        self.shared.wake.notify_one();
        !self.is_closed()
    }

    /// Replaces the current set with `instances` and publishes it: for
    /// backends that read whole lists (Consul, the in-process registry).
    /// Returns false once the stream has been dropped.
    pub(crate) async fn snapshot(&mut self, instances: Vec<Instance>) -> bool {
        self.replace(instances);
        self.publish()
    }

    /// Reports a failure of the watch, which keeps retrying behind it: the
    /// first one of an outage becomes a [`WatchEvent::Outage`], later ones
    /// until the next publish are only logged. An invalid service name is
    /// no outage: it is sent as is, and the stream ends. Returns false once
    /// the stream has been dropped.
    pub(crate) async fn error(&mut self, error: Error) -> bool {
        if matches!(error, Error::InvalidInstance(_)) {
            // Not an outage: a service name that can never be watched (the
            // stream ends right after; see `WatchStream`).
            self.fatal(error).await;
            return !self.is_closed();
        }
        if self.outage.failed() {
            tracing::warn!(backend = self.backend, service = %self.service, %error,
                "watch failed; serving nothing new until it recovers (retrying; further failures of this outage are logged at debug)");
            {
                let mut pending = lock(&self.shared.pending);
                pending.outage = Some(error);
                // A recovery the consumer has not seen yet is over: it
                // sees this outage, and the state after the next one.
                pending.resync = false;
            }
            self.shared.wake.notify_one();
        } else {
            tracing::debug!(backend = self.backend, service = %self.service, %error,
                "watch still failing; retrying");
        }
        !self.is_closed()
    }

    /// Sends `error` and nothing after it: for a watch that can never work
    /// (an invalid service name), whose stream ends right after.
    pub(crate) async fn fatal(&mut self, error: Error) {
        lock(&self.shared.pending).fatal = Some(error);
        self.shared.wake.notify_one();
    }

    /// True while an outage is under way (an outage was reported and no
    /// state published since).
    #[cfg(test)]
    pub(crate) fn failing(&self) -> bool {
        self.outage.is_failing()
    }

    /// True once the consumer has dropped the stream.
    pub(crate) fn is_closed(&self) -> bool {
        self.alive.is_closed()
    }
}

impl Drop for SnapshotSink {
    fn drop(&mut self) {
        // The feeding task is gone: the stream ends once it has handed out
        // what is pending.
        let mut pending = lock(&self.shared.pending);
        if pending.fatal.is_none() {
            pending.ended = true;
        }
        drop(pending);
        self.shared.wake.notify_one();
    }
}

/// Locks the pending state; a panic while it was held poisons nothing
/// worth refusing (every update is a whole assignment).
fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `task` on the Tokio runtime, feeding a [`ChangeStream`]; the task is
/// cancelled when the stream is dropped. For the in-process registry, which
/// has no outages to log; the backends with a server use
/// [`spawn_watch_of`].
pub(crate) fn spawn_watch<F, Fut>(task: F) -> ChangeStream
where
    F: FnOnce(SnapshotSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    spawn_watch_of("memory", String::new(), task)
}

/// Runs `task` on the Tokio runtime, feeding a [`ChangeStream`] of
/// `service` on `backend` (both named in the sink's logs); the task is
/// cancelled when the stream is dropped.
pub(crate) fn spawn_watch_of<F, Fut>(
    backend: &'static str,
    service: impl Into<String>,
    task: F,
) -> ChangeStream
where
    F: FnOnce(SnapshotSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sink, stream) = SnapshotSink::new(backend, service.into());
    let alive = sink.alive.clone();
    let fut = task(sink);
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            () = alive.closed() => {}
        }
    });
    stream
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn shape(event: Option<Option<WatchEvent>>) -> String {
        match event {
            None => "nothing yet".to_owned(),
            Some(None) => "end".to_owned(),
            Some(Some(WatchEvent::Synced(s))) => format!("synced {}", s.len()),
            Some(Some(WatchEvent::Changed { changes, snapshot })) => {
                let lines: Vec<String> = changes.iter().map(Change::line).collect();
                format!("{} -> {}", lines.join("; "), snapshot.len())
            }
            Some(Some(WatchEvent::Outage(_))) => "outage".to_owned(),
        }
    }

    use crate::diff::Change;

    #[tokio::test]
    async fn one_outage_event_per_outage_the_next_state_always_and_changes_coalesced() {
        let down = || Error::Closed { backend: "test" };
        let i = |id: &str| Instance::new("svc", id, "127.0.0.1", 1);
        let (mut sink, mut stream) = SnapshotSink::new("test", "svc".to_owned());
        let mut next = move || shape(stream.next().now_or_never());

        assert_eq!(next(), "nothing yet");
        assert!(sink.snapshot(vec![i("a")]).await);
        assert_eq!(next(), "synced 1");
        assert!(sink.snapshot(vec![i("a")]).await);
        assert_eq!(next(), "nothing yet", "a repeat is dropped");

        assert!(sink.error(down()).await, "an outage starts");
        assert!(sink.failing());
        assert!(sink.error(down()).await, "a retry of the same outage");
        assert_eq!(next(), "outage");
        assert_eq!(next(), "nothing yet", "one event per outage");
        assert!(sink.snapshot(vec![i("a")]).await, "the outage ends");
        assert!(!sink.failing());
        assert_eq!(next(), "synced 1", "sent although nothing changed");

        // A slow consumer: three publishes, one event with the net changes.
        sink.put(i("b"));
        assert!(sink.publish());
        sink.put(i("c"));
        assert!(sink.publish());
        sink.remove("c");
        sink.remove("a");
        assert!(sink.publish());
        assert_eq!(
            next(),
            "removed svc/a 127.0.0.1:1; added svc/b 127.0.0.1:1 -> 1"
        );

        // Changes from before an outage come before it...
        sink.put(i("d"));
        assert!(sink.publish());
        assert!(sink.error(down()).await);
        assert_eq!(next(), "added svc/d 127.0.0.1:1 -> 2");
        assert_eq!(next(), "outage");
        // ...or, if the consumer looks only after the recovery, in the one
        // `Synced` that follows the outage.
        sink.put(i("f"));
        assert!(sink.publish());
        assert!(sink.error(down()).await);
        sink.replace(vec![i("e")]);
        assert!(sink.publish());
        assert_eq!(next(), "outage");
        assert_eq!(next(), "synced 1");
        assert_eq!(next(), "nothing yet");

        drop(sink);
        assert_eq!(next(), "end");
    }

    #[tokio::test]
    async fn an_invalid_name_is_the_last_event() {
        let (mut sink, mut stream) = SnapshotSink::new("test", "svc".to_owned());
        sink.fatal(Error::InvalidInstance("bad".to_owned())).await;
        drop(sink);
        assert!(matches!(stream.next().await, Some(WatchEvent::Outage(_))));
        assert!(stream.next().await.is_none());
    }
}
