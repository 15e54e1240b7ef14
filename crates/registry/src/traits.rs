//! The two traits every backend implements, and the registration handle.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::watch;

#[cfg(doc)]
use crate::changes::WatchEvent;
use crate::changes::{ChangeStream, changes_from_snapshots};
use crate::error::Result;
use crate::model::Instance;

/// A stream of full snapshots of a service's live instances.
///
/// The first item comes at once; after that one item per change.
/// Snapshots are sorted by instance id.
///
/// # Errors: one `Err` per outage
///
/// Every backend keeps the same contract when its registry cannot be read
/// (it is down, partitioned, or hung: accepting connections but never
/// answering):
///
/// - **one `Err` item when an outage starts**, not one per retry: the
///   watch keeps retrying behind it, and the stream does not end;
/// - **the next `Ok` item ends the outage**: a full snapshot, sent even if
///   it equals the last one before the outage, so that a consumer can tell
///   that the set is fresh again;
/// - a registry that stops answering is noticed within about
///   max(2 x TTL, 5 s), even when no connection breaks (a hung etcd
///   member or Consul agent, a ZooKeeper server that went silent);
/// - while another member of a cluster answers there is no outage: a watch
///   whose member hangs moves to another one without an `Err` item and
///   without any change of the set.
///
/// A consumer can therefore treat an `Err` as "the set may be stale from
/// now on" and the next `Ok` as "fresh again", which is what the client's
/// balancer reports as `stale` and `last_error`.
///
/// The one exception: a service name that breaks the naming rules can never
/// be watched, so its stream yields a single
/// [`Error::InvalidInstance`](crate::Error::InvalidInstance) and ends.
/// Validate names up front with [`validate_name`](crate::validate_name).
pub type WatchStream = BoxStream<'static, Result<Vec<Instance>>>;

/// Puts instances into a registry and keeps them alive.
///
/// One registrar holds one connection, lease or session, shared by all the
/// registrations made through it. If the backend loses that lease or session
/// (a registry restart, a long partition), the registrar opens a new one and
/// registers every live instance again, with backoff, logging each step.
#[async_trait]
pub trait Registrar: Send + Sync {
    /// Registers `instance` and keeps it alive until the returned handle is
    /// deregistered, abandoned or dropped.
    ///
    /// Registering an id that this registrar already holds replaces it.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`](crate::Error::InvalidInstance) for an
    /// instance that breaks the model's rules; a backend error
    /// (`Unavailable`, `Timeout`, `Rejected`) if the first registration did
    /// not go through. Errors are always returned, never swallowed.
    async fn register(&self, instance: Instance) -> Result<Registration>;

    /// Removes the record of instance `id` of `service` from the registry,
    /// whoever registered it: the operator's removal behind
    /// `sdctl deregister`, for records whose owner is gone (a crashed
    /// process before its TTL or session runs out, a record another tool
    /// wrote without a lease or check).
    ///
    /// Returns `Ok(true)` if a record was removed, `Ok(false)` if there was
    /// none. Watchers see the instance go at once. A registrar that still
    /// holds the instance restores it at its next check (memory and Consul:
    /// within TTL/3; etcd: about one TTL; ZooKeeper: one session timeout),
    /// as it would after any loss: to take a live instance out for good,
    /// stop its process or deregister its [`Registration`].
    ///
    /// The provided implementation refuses, for registrars that are not a
    /// backend (wrappers, test doubles); every backend of this crate
    /// implements it.
    ///
    /// # Errors
    /// [`Error::InvalidInstance`](crate::Error::InvalidInstance) for a
    /// service name or id that breaks the naming rules; a backend error
    /// (`Unavailable`, `Timeout`, `Rejected`) if the removal could not be
    /// done within the timeout.
    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        let _ = (service, id);
        Err(crate::Error::Rejected {
            backend: "registrar",
            operation: "deregister_instance",
            reason:
                "this registrar cannot remove other registrations; use a backend's own registry"
                    .to_owned(),
        })
    }
}

/// Reads and watches the live instances of services.
#[async_trait]
pub trait Watcher: Send + Sync {
    /// The live (healthy) instances of `service` now, sorted by id.
    ///
    /// # Errors
    /// A backend error if the registry cannot be read within the timeout.
    async fn instances(&self, service: &str) -> Result<Vec<Instance>>;

    /// The names of the services that have at least one live instance, sorted.
    ///
    /// # Errors
    /// A backend error if the registry cannot be read within the timeout.
    async fn services(&self) -> Result<Vec<String>>;

    /// Pushes full snapshots of the live instances of `service`: see
    /// [`WatchStream`]. The stream ends only when dropped (or at once, after
    /// one error item, for an invalid service name).
    fn watch(&self, service: &str) -> WatchStream;

    /// Pushes what changes in `service`: a [`WatchEvent::Synced`] with the
    /// full state first, then one [`WatchEvent::Changed`] per change (or
    /// per batch, for a consumer slower than the registry: nothing is
    /// queued, it gets the newest state), and outages as events of their
    /// own, under the same contract as [`WatchStream`]. Every event carries
    /// the full state as a shared [`Snapshot`](crate::changes::Snapshot)
    /// (an O(1) clone).
    ///
    /// etcd and ZooKeeper apply each registry event in O(log N) and a
    /// consumer can do O(1) work per change; the provided implementation,
    /// for watchers that only have [`watch`](Self::watch) (Consul, which
    /// answers with whole lists, wrappers, test doubles), diffs the full
    /// lists.
    fn watch_changes(&self, service: &str) -> ChangeStream {
        changes_from_snapshots(self.watch(service))
    }
}

/// A registry that both registers and discovers: what
/// [`connect`](crate::connect) returns.
pub trait Registry: Registrar + Watcher {}

impl<T: Registrar + Watcher + ?Sized> Registry for T {}

#[async_trait]
impl<T: Registrar + ?Sized> Registrar for Arc<T> {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        (**self).register(instance).await
    }
    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        (**self).deregister_instance(service, id).await
    }
}

#[async_trait]
impl<T: Watcher + ?Sized> Watcher for Arc<T> {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        (**self).instances(service).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        (**self).services().await
    }
    fn watch(&self, service: &str) -> WatchStream {
        (**self).watch(service)
    }
    fn watch_changes(&self, service: &str) -> ChangeStream {
        (**self).watch_changes(service)
    }
}

/// The backend side of a [`Registration`]: what keeps one instance alive.
///
/// Backends implement it; users only see [`Registration`].
#[async_trait]
pub trait KeepAlive: Send + 'static {
    /// Stops keeping the instance alive and removes it from the registry.
    async fn deregister(self: Box<Self>) -> Result<()>;

    /// Stops keeping the instance alive but leaves it in the registry, where
    /// it expires after the TTL or session timeout, exactly as if the process
    /// had crashed.
    fn abandon(self: Box<Self>);

    /// The registration's state, as the registrar keeps it. The provided
    /// implementation always says [`RegistrationState::Registered`].
    fn state(&self) -> watch::Receiver<RegistrationState> {
        watch::channel(RegistrationState::Registered).1
    }
}

/// Where a [`Registration`] stands: what a readiness check or an operator
/// wants to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// The record is in the registry and kept alive.
    Registered,
    /// The record is being put back: the lease or session was lost, or the
    /// registry forgot or lost the record; the registrar retries with
    /// backoff.
    Restoring,
    /// Another registrar registered the same id after ours had gone (it
    /// expired during a partition, or was removed): ours gave way and is no
    /// longer kept alive. Deregister it and register under another id, or
    /// wait for the other one to go.
    Displaced {
        /// The other registrar's owner token (`pid<process id>-<random>`).
        holder: String,
    },
    /// Deregistered, abandoned or replaced by a newer registration of the
    /// same id through the same registrar.
    Ended,
}

/// A live registration. It keeps its instance registered until
/// [`deregister`](Self::deregister) is awaited.
///
/// Dropping it deregisters on a best-effort basis (a task is spawned on the
/// current Tokio runtime, if there is one). [`abandon`](Self::abandon) stops
/// the keep-alive without deregistering, which simulates a crash.
#[must_use = "dropping a Registration deregisters the instance"]
pub struct Registration {
    instance: Instance,
    keeper: Option<Box<dyn KeepAlive>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// Wraps a backend's keep-alive for `instance` (backend authors:
    /// [`backend::registration`](crate::backend::registration)).
    pub(crate) fn new(instance: Instance, keeper: Box<dyn KeepAlive>) -> Self {
        Registration {
            instance,
            keeper: Some(keeper),
        }
    }

    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The registration's state now, and its changes (`changed().await`):
    /// whether the record is in the registry, being put back, or displaced
    /// by another registrar. Readiness checks use it.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        match &self.keeper {
            Some(keeper) => keeper.state(),
            None => watch::channel(RegistrationState::Ended).1,
        }
    }

    /// Removes the instance from the registry and stops its keep-alive.
    ///
    /// # Errors
    /// A backend error if the removal could not be confirmed; the keep-alive
    /// is stopped regardless, so the instance expires after the TTL.
    pub async fn deregister(mut self) -> Result<()> {
        match self.keeper.take() {
            Some(keeper) => keeper.deregister().await,
            None => Ok(()),
        }
    }

    /// Stops the keep-alive without deregistering: the registry drops the
    /// instance once its TTL or session runs out, as after a crash.
    pub fn abandon(mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abandon();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        let id = self.instance.id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = keeper.deregister().await {
                        tracing::warn!(%id, %error, "deregistration on drop failed; the instance will expire after its TTL");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%id, "registration dropped outside a Tokio runtime; the instance will expire after its TTL");
                keeper.abandon();
            }
        }
    }
}
