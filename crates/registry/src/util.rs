//! Pieces shared by the backends: backoff, watch plumbing, record decoding.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::discovery::WatchStream;
use crate::error::{Error, Result};
use crate::model::Instance;

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

/// Exponential backoff with full jitter, for reconnect and re-register loops.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles each failure, never waits longer than `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The backoff used by reconnect loops: 100 ms doubling up to 5 s.
    pub(crate) fn reconnect() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay to wait: a random duration in [ceiling/2, ceiling].
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let ceiling = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// Waits for the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Forgets past failures after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Remembers since when a periodically retried operation has been failing,
/// so that an outage is logged once at warn when it starts and once at info
/// when it ends, rather than at every attempt.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    since: Option<tokio::time::Instant>,
}

impl Outage {
    /// Records a failure; true if it starts an outage (log it at warn).
    pub(crate) fn failed(&mut self) -> bool {
        let first = self.since.is_none();
        self.since.get_or_insert_with(tokio::time::Instant::now);
        first
    }

    /// Records a success; how long the outage lasted, if this ends one (log
    /// it at info).
    pub(crate) fn recovered(&mut self) -> Option<Duration> {
        self.since.take().map(|since| since.elapsed())
    }

    /// True between a failure and the next success.
    #[cfg(test)]
    pub(crate) fn is_failing(&self) -> bool {
        self.since.is_some()
    }
}

/// The sending side of a [`WatchStream`], and the one place that keeps its
/// error contract (see [`WatchStream`]), so that backends cannot drift:
///
/// - snapshots are sorted by id, and a repeat of the last one is dropped;
/// - the first [`error`](Self::error) of an outage is sent as one `Err`
///   item and logged at warn; later errors of the same outage (every retry)
///   are only logged at debug;
/// - the first [`snapshot`](Self::snapshot) after an outage ends it: it is
///   always sent, even if it equals the last one, so that a consumer sees
///   the watch has recovered, and the recovery is logged at info with the
///   outage's length.
#[derive(Debug)]
pub(crate) struct SnapshotSink {
    tx: mpsc::Sender<Result<Vec<Instance>>>,
    last: Option<Vec<Instance>>,
    /// Since when the watch has been failing, if it is.
    outage: Outage,
    /// The backend, for logs.
    backend: &'static str,
    /// The watched service, for logs.
    service: String,
}

impl SnapshotSink {
    fn new(
        tx: mpsc::Sender<Result<Vec<Instance>>>,
        backend: &'static str,
        service: String,
    ) -> Self {
        SnapshotSink {
            tx,
            last: None,
            outage: Outage::default(),
            backend,
            service,
        }
    }

    /// Sends `instances` (sorted by id) unless it equals the last snapshot
    /// sent and no outage is under way. Returns false once the stream has
    /// been dropped.
    pub(crate) async fn snapshot(&mut self, mut instances: Vec<Instance>) -> bool {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        instances.dedup_by(|a, b| a.id == b.id);
        let recovered = self.outage.recovered();
        if let Some(after) = recovered {
            tracing::info!(backend = self.backend, service = %self.service, outage = ?after,
                instances = instances.len(), "watch recovered");
        } else if self.last.as_ref() == Some(&instances) {
            return !self.tx.is_closed();
        }
        self.last = Some(instances.clone());
        self.tx.send(Ok(instances)).await.is_ok()
    }

    /// Reports a failure of the watch, which keeps retrying behind it: the
    /// first one of an outage is sent as an `Err` item, later ones until the
    /// next snapshot are only logged. An invalid service name is no outage:
    /// it is sent as is (the stream then ends). Returns false once the
    /// stream has been dropped.
    pub(crate) async fn error(&mut self, error: Error) -> bool {
        if matches!(error, Error::InvalidInstance(_)) {
            // Not an outage: a service name that can never be watched (the
            // stream ends right after; see `WatchStream`).
            return self.tx.send(Err(error)).await.is_ok();
        }
        if self.outage.failed() {
            tracing::warn!(backend = self.backend, service = %self.service, %error,
                "watch failed; serving nothing new until it recovers (retrying; further failures of this outage are logged at debug)");
            self.tx.send(Err(error)).await.is_ok()
        } else {
            tracing::debug!(backend = self.backend, service = %self.service, %error,
                "watch still failing; retrying");
            !self.tx.is_closed()
        }
    }

    /// Sends `error` and nothing after it: for a watch that can never work
    /// (an invalid service name), whose stream ends right after.
    pub(crate) async fn fatal(&mut self, error: Error) {
        let _ = self.tx.send(Err(error)).await;
    }

    /// True while an outage is under way (an `Err` item was sent and no
    /// snapshot since).
    #[cfg(test)]
    pub(crate) fn failing(&self) -> bool {
        self.outage.is_failing()
    }

    /// True once the consumer has dropped the stream.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs `task` on the Tokio runtime, feeding a [`WatchStream`]; the task is
/// cancelled when the stream is dropped. For the in-process registry, which
/// has no outages to log; the backends with a server use
/// [`spawn_watch_of`].
pub(crate) fn spawn_watch<F, Fut>(task: F) -> WatchStream
where
    F: FnOnce(SnapshotSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    spawn_watch_of("memory", String::new(), task)
}

/// Runs `task` on the Tokio runtime, feeding a [`WatchStream`] of
/// `service` on `backend` (both named in the sink's logs); the task is
/// cancelled when the stream is dropped.
pub(crate) fn spawn_watch_of<F, Fut>(
    backend: &'static str,
    service: impl Into<String>,
    task: F,
) -> WatchStream
where
    F: FnOnce(SnapshotSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let closed = tx.clone();
    let fut = task(SnapshotSink::new(tx, backend, service.into()));
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            () = closed.closed() => {}
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Decodes one stored record found at `key`, which names `service` and `id`.
///
/// Garbage (not JSON, breaking a rule, or naming another service or id than
/// its key) is logged as a warning and skipped: another tool may have written
/// it, and one bad record must not hide the good ones.
pub(crate) fn decode_record(
    backend: &'static str,
    key: &str,
    service: &str,
    id: &str,
    bytes: &[u8],
) -> Option<Instance> {
    match Instance::from_json(bytes) {
        Ok(instance) if instance.service == service && instance.id == id => Some(instance),
        Ok(instance) => {
            tracing::warn!(
                backend,
                key,
                found_service = %instance.service,
                found_id = %instance.id,
                "skipping record whose service or id does not match its key"
            );
            None
        }
        Err(error) => {
            tracing::warn!(backend, key, %error, "skipping garbage under the registry prefix");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let mut outage = Outage::default();
        assert!(outage.recovered().is_none(), "no outage, nothing to report");
        assert!(outage.failed(), "the first failure starts the outage");
        assert!(!outage.failed(), "later failures are the same outage");
        assert!(outage.recovered().is_some(), "a success ends it");
        assert!(outage.recovered().is_none(), "and only once");
        assert!(outage.failed(), "the next failure starts a new one");
    }

    #[tokio::test]
    async fn a_watch_sends_one_err_per_outage_and_always_the_next_snapshot() {
        let down = || Error::Closed { backend: "test" };
        let a = vec![Instance::new("svc", "a", "127.0.0.1", 1)];
        let stream = spawn_watch_of("test", "svc", move |mut sink| async move {
            assert!(sink.snapshot(a.clone()).await);
            assert!(sink.snapshot(a.clone()).await, "a repeat is dropped");
            assert!(sink.error(down()).await, "an outage starts");
            assert!(sink.failing());
            assert!(sink.error(down()).await, "a retry of the same outage");
            assert!(sink.error(down()).await, "and another");
            assert!(sink.snapshot(a.clone()).await, "the outage ends");
            assert!(!sink.failing());
            assert!(sink.snapshot(a.clone()).await, "a repeat is dropped again");
            assert!(sink.error(down()).await, "a second outage");
        });
        let items: Vec<Result<Vec<Instance>>> = stream.collect().await;
        let shape: Vec<&str> = items
            .iter()
            .map(|item| if item.is_ok() { "Ok" } else { "Err" })
            .collect();
        assert_eq!(shape, ["Ok", "Err", "Ok", "Err"]);
        assert_eq!(
            items[0].as_ref().ok(),
            items[2].as_ref().ok(),
            "the same set, sent again"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[7] >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
