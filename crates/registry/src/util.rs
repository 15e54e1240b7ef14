//! Pieces shared by the backends: backoff, watch plumbing, record decoding.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::discovery::WatchStream;
use crate::error::{Error, Result};
use crate::model::Instance;

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
}

/// The sending side of a [`WatchStream`]: sorts snapshots, drops repeats of
/// the last one, and tells the watch task when nobody listens any more.
#[derive(Debug)]
pub(crate) struct SnapshotSink {
    tx: mpsc::Sender<Result<Vec<Instance>>>,
    last: Option<Vec<Instance>>,
}

impl SnapshotSink {
    /// Sends `instances` (sorted by id) unless it equals the last snapshot
    /// sent. Returns false once the stream has been dropped.
    pub(crate) async fn snapshot(&mut self, mut instances: Vec<Instance>) -> bool {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        instances.dedup_by(|a, b| a.id == b.id);
        if self.last.as_ref() == Some(&instances) {
            return !self.tx.is_closed();
        }
        self.last = Some(instances.clone());
        self.tx.send(Ok(instances)).await.is_ok()
    }

    /// Sends an error item. The stream stays open. After an error the next
    /// snapshot is always sent, even if it equals the one before, so that a
    /// consumer sees the watch has recovered.
    pub(crate) async fn error(&mut self, error: Error) -> bool {
        self.last = None;
        self.tx.send(Err(error)).await.is_ok()
    }

    /// True once the consumer has dropped the stream.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs `task` on the Tokio runtime, feeding a [`WatchStream`]; the task is
/// cancelled when the stream is dropped.
pub(crate) fn spawn_watch<F, Fut>(task: F) -> WatchStream
where
    F: FnOnce(SnapshotSink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let closed = tx.clone();
    let fut = task(SnapshotSink { tx, last: None });
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
