//! The sending side of every backend's watch: the [`WatchStream`]'s error
//! contract kept in one place, the task that feeds it, and how long a watch
//! may hear nothing before it reports an outage.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backoff::Outage;
use crate::error::{Error, Result};
use crate::model::Instance;
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

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
}
