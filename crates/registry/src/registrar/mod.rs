//! The one registrar mechanism every backend runs on.
//!
//! Registering an instance and keeping it registered is the same state
//! machine on every backend: open a lease (etcd), a session (ZooKeeper) or
//! nothing at all (a Consul agent, the in-process store); put records; renew
//! them every TTL/3; notice that the lease or session is gone and put every
//! live record back on a new one; undo a registration whose caller gave up
//! waiting; retry removals that failed during an outage; check now and then
//! that our records are still there and still ours; give way when another
//! registrar holds an id. That machine lives here once ([`core`]), with the
//! handles users hold ([`handle`]); each backend implements only the small
//! [`Backend`] trait, the part that differs.
//!
//! # The rules, the same on every backend
//!
//! - **One call at a time per id, many ids at once.** Operations on one
//!   instance id (register, deregister, abandon, restore) run one after the
//!   other in the order they were asked; operations on different ids run
//!   side by side (up to [`CALL_CONCURRENCY`]). Keep-alive rounds run on
//!   their own, so a slow call never delays a renewal.
//! - **A registration waits for the lease.** A `register` that arrives while
//!   the lease or session is being opened or re-established waits for it,
//!   bounded by the caller's `REGISTRY_TIMEOUT` (then a transient error).
//! - **Renewal deadlines come from the TTL.** Each renewal attempt gets at
//!   most min(`REGISTRY_TIMEOUT`, TTL/3), then is retried at once (on
//!   another member, for a cluster): a renewal that waited `REGISTRY_TIMEOUT`
//!   on a hung member could outlast the lease itself.
//! - **"Ours" is decidable.** Every registrar writes a random owner token
//!   ([`Record::owner`]) into its records. A record is ours only with our
//!   token.
//! - **No takeover, no tug-of-war.** Registering an id whose record another
//!   registrar holds is refused with
//!   [`Error::AlreadyRegistered`](crate::Error::AlreadyRegistered) naming the
//!   holder; the refusal is transient, so a server that retries gets in once
//!   the other record is deregistered or expires (a crash-restarted server
//!   therefore waits up to one TTL or session timeout). Refusing was chosen
//!   over a loud takeover because a takeover needs the displaced side to
//!   cooperate, and the displaced side is most often a process we cannot
//!   reach (a partitioned twin, an operator's typo in `--id`). If our own
//!   record is later found holding another registrar's token (our lease
//!   expired during a partition and someone else registered the id), we give
//!   way: the registration's state becomes
//!   [`Displaced`](crate::RegistrationState::Displaced) and we stop keeping
//!   it alive, loudly.
//! - **Deleted or overwritten records come back.** A record that is missing,
//!   or holds other data without another registrar's token (a tool wrote
//!   over it), is put back at the next check, with a warning.
//! - **A caller that gives up leaves nothing behind.** If the caller of
//!   `register` stopped waiting, the registration is undone: the record is
//!   removed, or the earlier registration of the same id it replaced is put
//!   back.
//! - **Removals survive outages.** A deregistration or abandon that could
//!   not be confirmed is retried after each good renewal, until it is done or
//!   the lease it was on is lost (its records went with it).
//!
//! # What a backend cannot offer
//!
//! - Consul and memory have no lease to lose: their records are renewed one
//!   by one, and "lost" shows as individual records the agent forgot
//!   ([`Renewal::Forgotten`]), put back one by one.
//! - Consul checks ownership only on the agent it talks to: the same id
//!   registered through two different agents is two records that both live
//!   (Consul's catalog allows one id per node); detection there is best
//!   effort, and two registrations racing on one agent may both pass the
//!   check before either writes (the second then replaces the first).
//! - ZooKeeper renews by itself (the client pings the session); its renewal
//!   only reports whether the session is connected.

pub(crate) mod core;
pub(crate) mod handle;

#[cfg(test)]
mod tests;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::Result;

pub(crate) use self::handle::Registrar;
pub(crate) use crate::record::Record;

/// How many register, deregister, restore and undo calls of one registrar
/// run at once (renewal rounds not included).
pub(crate) const CALL_CONCURRENCY: usize = 32;

/// What one backend does for the registrar core: the part of registering
/// that differs between registries.
///
/// Every method gets the lease it works on, and the core never mixes
/// leases: a result obtained on a lease that has since been lost is ignored.
/// Each call is bounded by the core (renewals by min(`REGISTRY_TIMEOUT`,
/// TTL/3), the rest by the caller's `REGISTRY_TIMEOUT`); a backend may be
/// cancelled at any await point and must leave nothing half-done that a
/// retry cannot repair.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// The lease, session or agent that keeps records alive: cheap to clone.
    type Lease: Clone + Send + Sync + 'static;

    /// The backend's name in errors and logs.
    const NAME: &'static str;

    /// Opens a lease (etcd: `LeaseGrant`; ZooKeeper: a session, or the one
    /// already open; Consul and memory: nothing to open). Called at the
    /// first registration and after a loss, retried with backoff.
    async fn open(&self) -> Result<Self::Lease>;

    /// Writes `record` on `lease`, creating it or replacing our own, unless
    /// another registrar's live record holds the id: then
    /// [`Error::AlreadyRegistered`](crate::Error::AlreadyRegistered), found
    /// without an extra round trip where the registry allows (inside the etcd
    /// transaction, from the ZooKeeper create's answer).
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if `lease` is gone.
    async fn put(&self, lease: &Self::Lease, record: &Record) -> Result<()>;

    /// Removes `record` if it is still ours; a missing record, or another
    /// registrar's, is left alone and is not an error.
    async fn delete(&self, lease: &Self::Lease, record: &Record) -> Result<()>;

    /// Leaves `record` in the registry but stops keeping it alive, so that
    /// it expires one TTL or session timeout from now, as after a crash,
    /// while `lease` keeps the others alive.
    async fn abandon(&self, lease: &Self::Lease, record: &Record) -> Result<()>;

    /// Renews `lease`, or each of `records` for backends that renew record
    /// by record.
    ///
    /// # Errors
    /// A transient error if the registry did not answer (the core retries
    /// at once, then with backoff, never waiting longer than TTL/3).
    async fn renew(&self, lease: &Self::Lease, records: &[Record]) -> Result<Renewal>;

    /// Reads `records` back: one [`Found`] per record, in the same order.
    /// Called about once per TTL after a good renewal, and at once after a
    /// reconnection ([`LeaseEvent::Reconnected`]).
    async fn verify(&self, lease: &Self::Lease, records: &[Record]) -> Result<Vec<Found>>;

    /// Events about `lease` that the backend's client reports by itself
    /// (ZooKeeper's session states), if any. Called once per lease.
    fn events(&self, lease: &Self::Lease) -> Option<BoxStream<'static, LeaseEvent>> {
        let _ = lease;
        None
    }

    /// `lease` was found lost: drop anything kept about it.
    fn forget(&self, lease: &Self::Lease) {
        let _ = lease;
    }

    /// The registrar is stopping with nothing registered on `lease`: end it
    /// now rather than letting it expire (etcd: revoke; ZooKeeper: close the
    /// session).
    async fn close(&self, lease: Self::Lease) {
        let _ = lease;
    }
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Everything renewed.
    Alive,
    /// The registry no longer knows these records (an agent restarted
    /// without its state, an entry removed): put them back. By index into
    /// the records given to [`Backend::renew`].
    Forgotten(Vec<usize>),
    /// The lease or session is gone, and every record on it: open a new one
    /// and put everything back.
    Lost(String),
}

/// What [`Backend::verify`] found for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// There, ours, with our data.
    Ours,
    /// Not there: put it back.
    Missing,
    /// There with other data and no other registrar's token (a tool wrote
    /// over it), or ours but on another lease: put it back.
    Changed,
    /// Held by another registrar: give way.
    Held {
        /// The other registrar's owner token.
        holder: String,
    },
}

/// An event the backend's client reports about a lease by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseEvent {
    /// Connected again after a disconnection that the lease survived:
    /// events may have been missed, so check every record now.
    Reconnected,
    /// The lease or session is gone.
    Lost(String),
}
