//! A service's live instances as a tower [`Discover`](tower::discover::Discover)
//! stream, so that `tower::balance::p2c` (and so hyper, tonic or any tower
//! stack) can balance over them without the lorem client.
//!
//! | our watch                               | tower                                   |
//! |-----------------------------------------|-----------------------------------------|
//! | an instance appears in a snapshot       | `Change::Insert(id, make(&instance))`   |
//! | an instance's record changes (address, port, weight...) | `Change::Insert` again, same key: tower replaces the service |
//! | an instance leaves the snapshot         | `Change::Remove(id)`                    |
//! | an `Err` item (registry unreachable)    | nothing: logged, the last set stays     |
//!
//! Keys are instance ids. The stream never yields an error: tower's
//! balancers treat a discovery error as fatal, while a registry outage is
//! something to ride out on the last known set, as [`Watcher::watch`]
//! promises.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use registry::{Instance, MemoryRegistry, Registrar, ServiceDiscover};
//! use tower::{Service, ServiceExt, balance::p2c::Balance, load::{CompleteOnResponse, PendingRequestsDiscover}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let registry = MemoryRegistry::new(Duration::from_secs(10));
//! let _a = registry.register(Instance::new("lorem", "a", "127.0.0.1", 8081)).await?;
//!
//! // One tower service per instance: here it just names the instance; a
//! // real one would send the request to `instance.authority()`.
//! let discover = ServiceDiscover::new(&registry, "lorem", |instance: &Instance| {
//!     let id = instance.id.clone();
//!     tower::service_fn(move |_request: ()| {
//!         let id = id.clone();
//!         async move { Ok::<_, Infallible>(id) }
//!     })
//! })?;
//! let mut balance = Balance::new(PendingRequestsDiscover::new(discover, CompleteOnResponse::default()));
//! let served_by = balance.ready().await?.call(()).await?;
//! assert_eq!(served_by, "a");
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tower::discover::Change;

use crate::changes::{ChangeStream, Snapshot, WatchEvent};
use crate::diff::Change as Moved;
use crate::error::Result;
use crate::model::{Instance, validate_name};
use crate::traits::Watcher;

/// The live instances of one service as a stream of tower
/// [`Change`]s: see the [crate docs](crate). `make` turns an instance into
/// the tower service that sends to it.
pub struct ServiceDiscover<F, S> {
    service: String,
    stream: ChangeStream,
    make: F,
    live: Snapshot,
    pending: VecDeque<Change<String, S>>,
}

// The services are only stored and handed out by value, never polled in
// place, so nothing here relies on `S` staying put.
impl<F: Unpin, S> Unpin for ServiceDiscover<F, S> {}

impl<F, S> std::fmt::Debug for ServiceDiscover<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDiscover")
            .field("service", &self.service)
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl<F, S> ServiceDiscover<F, S>
where
    F: FnMut(&Instance) -> S,
{
    /// Starts watching `service` through `watcher`.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`](crate::Error::InvalidInstance) for a service
    /// name no registry can hold (see [`validate_name`]).
    pub fn new<W: Watcher + ?Sized>(watcher: &W, service: &str, make: F) -> Result<Self> {
        validate_name("service", service)?;
        Ok(ServiceDiscover {
            service: service.to_owned(),
            // The change stream: O(1) work per change, whatever the size.
            stream: watcher.watch_changes(service),
            make,
            live: Snapshot::default(),
            pending: VecDeque::new(),
        })
    }

    /// The instances the stream has announced and not removed, by id.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.live.iter()
    }

    /// Queues `changes` as tower changes, and keeps `snapshot` as the
    /// announced set.
    fn apply(&mut self, changes: Vec<Moved>, snapshot: Snapshot) {
        for change in changes {
            self.pending.push_back(match change {
                Moved::Removed(gone) => Change::Remove(gone.id),
                Moved::Added(instance) | Moved::Changed(instance) => {
                    Change::Insert(instance.id.clone(), (self.make)(&instance))
                }
            });
        }
        self.live = snapshot;
    }
}

impl<F, S> Stream for ServiceDiscover<F, S>
where
    F: FnMut(&Instance) -> S + Unpin,
{
    type Item = std::result::Result<Change<String, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match this.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(WatchEvent::Changed { changes, snapshot })) => {
                    this.apply(changes, snapshot);
                }
                // The first state, or the state after an outage: what
                // differs from the announced set.
                Poll::Ready(Some(WatchEvent::Synced(snapshot))) => {
                    let changes = snapshot.changes_since(&this.live);
                    this.apply(changes, snapshot);
                }
                Poll::Ready(Some(WatchEvent::Outage(error))) => {
                    tracing::warn!(service = %this.service, %error, kept = this.live.len(),
                        "discovery error; tower keeps the last known instances");
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
