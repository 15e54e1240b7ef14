//! The registrar's state machine: one task per registrar that owns the lease,
//! the live registrations and the removals still to do, generic over the
//! [`Backend`].
//!
//! The task itself never waits for the registry. Every call (put, delete,
//! abandon, opening a lease, a renewal round) runs in a task of its own and
//! reports back through [`Done`]; the state changes only here, so it needs
//! no lock. Operations on one id queue behind each other (`busy`); ones that
//! need a lease while there is none wait in `waiting` until one is open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Backend, CALL_CONCURRENCY, Found, LeaseEvent, Record, Renewal};
use crate::backoff::{Backoff, Outage};
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::traits::RegistrationState;

/// `(service, id)`.
pub(crate) type Key = (String, String);

/// A good renewal every how many rounds is followed by a check of our
/// records: about once per TTL.
const VERIFY_EVERY: u32 = 3;
/// The shortest renewal period, whatever the TTL.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// What the handles ask of the registrar task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Register `instance` (replacing this registrar's registration of the
    /// same id) and keep it alive.
    Register {
        instance: Instance,
        reply: oneshot::Sender<Result<Ticket>>,
    },
    /// Deregister `key` if registration `token` still holds it.
    Deregister {
        key: Key,
        token: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop keeping `key` alive and let it expire, if `token` still holds it.
    Abandon { key: Key, token: u64 },
}

/// What a successful registration gets back.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// Which registration of the id this is, so that an old handle never
    /// removes a newer registration of the same id.
    pub(crate) token: u64,
    /// The registration's state, kept up to date by the task.
    pub(crate) state: watch::Receiver<RegistrationState>,
}

/// Timing of one registrar.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The TTL (or session timeout) records live for without renewal.
    pub(crate) ttl: Duration,
    /// `REGISTRY_TIMEOUT`: the bound of every call but renewals.
    pub(crate) timeout: Duration,
}

impl Timing {
    /// TTL/3: the renewal period.
    pub(crate) fn period(&self) -> Duration {
        (self.ttl / 3).max(MIN_PERIOD)
    }

    /// The deadline of one renewal attempt: min(`REGISTRY_TIMEOUT`, TTL/3).
    pub(crate) fn renew_deadline(&self) -> Duration {
        self.timeout.min(self.period())
    }
}

/// One registration the task keeps alive.
#[derive(Debug)]
struct Live {
    record: Record,
    token: u64,
    state: watch::Sender<RegistrationState>,
    /// A restore is queued or running: do not queue another.
    restoring: bool,
    /// The last restore failed: log the next success as a recovery.
    failing: bool,
}

/// A removal not confirmed yet.
#[derive(Debug)]
struct Pending {
    record: Record,
    abandon: bool,
    /// The lease it was on; dropped once that lease is lost.
    generation: u64,
    /// A retry is queued or running.
    queued: bool,
}

/// An operation on one id.
#[derive(Debug)]
enum Op {
    Register {
        record: Record,
        token: u64,
        reply: oneshot::Sender<Result<Ticket>>,
    },
    Deregister {
        token: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Abandon `record` (already out of `live`).
    Abandon { record: Record },
    /// Put the live registration `token` back.
    Restore { token: u64 },
    /// Retry the pending removal of the id.
    Retry,
    /// Remove `record`, whose caller gave up, unless the id is live again.
    Undo { record: Record },
}

/// What a call reports back.
enum Done<L> {
    Opened(Result<L>),
    Op {
        key: Key,
        generation: u64,
        outcome: Outcome,
    },
    Round {
        generation: u64,
        started: Instant,
        renewal: Result<Renewal>,
        /// The records renewed, by token, in the order given to the backend.
        renewed: Vec<(Key, u64)>,
        verified: Option<Result<Vec<(Key, u64, Found)>>>,
    },
    Event {
        generation: u64,
        event: LeaseEvent,
    },
}

enum Outcome {
    Registered {
        record: Record,
        token: u64,
        reply: oneshot::Sender<Result<Ticket>>,
        result: Result<()>,
    },
    Deregistered {
        reply: oneshot::Sender<Result<()>>,
        record: Record,
        result: Result<()>,
    },
    Abandoned {
        record: Record,
        result: Result<()>,
    },
    Restored {
        token: u64,
        result: Result<()>,
    },
    Retried {
        abandon: bool,
        result: Result<()>,
    },
    Undone {
        record: Record,
        result: Result<()>,
    },
}

/// The task's state.
pub(crate) struct Core<B: Backend> {
    backend: Arc<B>,
    owner: Arc<str>,
    timing: Timing,
    lease: Option<B::Lease>,
    /// Bumped each time a lease is opened: results from an older lease are
    /// ignored.
    generation: u64,
    /// A lease is being opened (a task runs) or will be at `open_at`.
    opening: bool,
    open_at: Option<Instant>,
    open_backoff: Backoff,
    open_outage: Outage,
    live: BTreeMap<Key, Live>,
    pending: BTreeMap<Key, Pending>,
    /// The ids with an operation running, each with the ones queued behind.
    busy: HashMap<Key, VecDeque<Op>>,
    /// Operations that need a lease, in arrival order, until one is open.
    waiting: VecDeque<(Key, Op)>,
    next_token: u64,
    round: Option<JoinHandle<()>>,
    next_round: Instant,
    rounds_since_verify: u32,
    renew_backoff: Backoff,
    renew_outage: Outage,
    /// The event forwarder of the current lease.
    events: Option<JoinHandle<()>>,
    /// Calls running now (see [`Core::shutdown`]).
    in_flight: usize,
    calls: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Done<B::Lease>>,
}

impl<B: Backend> Drop for Core<B> {
    fn drop(&mut self) {
        if let Some(round) = self.round.take() {
            round.abort();
        }
        if let Some(events) = self.events.take() {
            events.abort();
        }
    }
}

impl<B: Backend> Core<B> {
    /// Starts the task on the current runtime. It ends when every sender of
    /// the returned channel is gone.
    pub(crate) fn spawn(
        backend: Arc<B>,
        owner: Arc<str>,
        timing: Timing,
    ) -> mpsc::UnboundedSender<Command> {
        let (tx, commands) = mpsc::unbounded_channel();
        let (done, reports) = mpsc::unbounded_channel();
        if timing.renew_deadline() < timing.timeout {
            tracing::info!(backend = B::NAME, ttl = ?timing.ttl, timeout = ?timing.timeout,
                renewal_deadline = ?timing.renew_deadline(),
                "each renewal attempt gets TTL/3, less than REGISTRY_TIMEOUT, so that a hung member cannot outlast the lease");
        }
        let core = Core {
            backend,
            owner,
            timing,
            lease: None,
            generation: 0,
            opening: false,
            open_at: None,
            open_backoff: Backoff::reconnect(),
            open_outage: Outage::default(),
            live: BTreeMap::new(),
            pending: BTreeMap::new(),
            busy: HashMap::new(),
            waiting: VecDeque::new(),
            next_token: 0,
            round: None,
            next_round: Instant::now(),
            rounds_since_verify: 0,
            renew_backoff: Backoff::new(Duration::from_millis(50), timing.period()),
            renew_outage: Outage::default(),
            events: None,
            in_flight: 0,
            calls: Arc::new(Semaphore::new(CALL_CONCURRENCY)),
            done,
        };
        tokio::spawn(core.run(commands, reports));
        tx
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Done<B::Lease>>,
    ) {
        loop {
            let round_due = self.round.is_none()
                && self.lease.is_some()
                && (!self.live.is_empty() || !self.pending.is_empty());
            let next_round = self.next_round;
            let open_at = self.open_at;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(done) = reports.recv() => self.finish(done),
                () = tokio::time::sleep_until(next_round), if round_due => self.start_round(),
                () = sleep_until(open_at) => {
                    self.open_at = None;
                    self.start_open();
                }
            }
        }
        self.shutdown(reports).await;
    }

    /// Every handle is gone. Lets the calls still running finish (an
    /// abandon must move its record off the lease before the lease is
    /// closed, or the record would go at once instead of after the TTL),
    /// within `REGISTRY_TIMEOUT`; then ends the lease now if nothing is left
    /// on it.
    async fn shutdown(mut self, mut reports: mpsc::UnboundedReceiver<Done<B::Lease>>) {
        let deadline = Instant::now() + self.timing.timeout;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(done @ Done::Op { .. })) => self.finish(done),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let abandoning = self.pending.values().any(|p| p.abandon);
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.live.is_empty() && !abandoning {
            tracing::debug!(backend = B::NAME, "registrar stopped; closing its lease");
            self.backend.close(lease).await;
        } else {
            tracing::debug!(
                backend = B::NAME,
                "registrar stopped; its records expire after the TTL"
            );
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register { instance, reply } => {
                self.next_token += 1;
                let token = self.next_token;
                let record = Record::new(instance, self.owner.clone());
                let key = record.key();
                self.submit(
                    key,
                    Op::Register {
                        record,
                        token,
                        reply,
                    },
                );
            }
            Command::Deregister { key, token, reply } => {
                self.submit(key, Op::Deregister { token, reply });
            }
            Command::Abandon { key, token } => {
                // No more renewals from now on; the call that leaves the
                // record to expire queues behind whatever runs on the id.
                if self.live.get(&key).is_some_and(|l| l.token == token) {
                    if let Some(live) = self.live.remove(&key) {
                        live.state.send_replace(RegistrationState::Ended);
                        self.submit(
                            key,
                            Op::Abandon {
                                record: live.record,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Runs `op` now if nothing runs on `key`, else queues it behind.
    fn submit(&mut self, key: Key, op: Op) {
        match self.busy.get_mut(&key) {
            Some(queue) => queue.push_back(op),
            None => self.run_queue(key, VecDeque::from([op])),
        }
    }

    /// Queues `op` ahead of anything else on `key`.
    fn submit_first(&mut self, key: Key, op: Op) {
        match self.busy.get_mut(&key) {
            Some(queue) => queue.push_front(op),
            None => self.run_queue(key, VecDeque::from([op])),
        }
    }

    /// Starts the first operation of `queue` that still applies and marks
    /// `key` busy with the rest.
    fn run_queue(&mut self, key: Key, mut queue: VecDeque<Op>) {
        while let Some(op) = queue.pop_front() {
            if self.start(&key, op) {
                self.busy.insert(key, queue);
                return;
            }
        }
    }

    /// The operation on `key` has finished: start the next one.
    fn next_on(&mut self, key: &Key) {
        if let Some(queue) = self.busy.remove(key) {
            self.run_queue(key.clone(), queue);
        }
    }

    /// Starts `op` if it still applies; returns whether something now runs
    /// (or waits for a lease) on `key`.
    fn start(&mut self, key: &Key, op: Op) -> bool {
        let needs_lease = matches!(op, Op::Register { .. } | Op::Restore { .. });
        match &op {
            Op::Register { reply, .. } if reply.is_closed() => {
                // The caller's deadline passed while this waited its turn.
                return false;
            }
            Op::Deregister { token, .. } | Op::Restore { token }
                if self.live.get(key).is_none_or(|l| l.token != *token) =>
            {
                // Replaced by a newer registration, or already gone.
                if let Op::Deregister { reply, .. } = op {
                    let _ = reply.send(Ok(()));
                }
                return false;
            }
            Op::Retry if !self.pending.contains_key(key) => return false,
            Op::Undo { .. } if self.live.contains_key(key) => return false,
            _ => {}
        }
        let Some(lease) = self.lease.clone() else {
            if needs_lease {
                self.waiting.push_back((key.clone(), op));
                self.ensure_open();
                return true;
            }
            // Without a lease there is nothing of ours to remove: a lost
            // lease took its records with it, and none was ever opened
            // otherwise.
            match op {
                Op::Deregister { reply, .. } => {
                    if let Some(live) = self.live.remove(key) {
                        live.state.send_replace(RegistrationState::Ended);
                    }
                    let _ = reply.send(Ok(()));
                }
                Op::Retry => {
                    self.pending.remove(key);
                }
                _ => {}
            }
            return false;
        };
        let generation = self.generation;
        let backend = self.backend.clone();
        let key_for_task = key.clone();
        match op {
            Op::Register {
                record,
                token,
                reply,
            } => self.spawn_call(key_for_task, generation, async move {
                let result = backend.put(&lease, &record).await;
                Outcome::Registered {
                    record,
                    token,
                    reply,
                    result,
                }
            }),
            Op::Deregister { token: _, reply } => {
                let Some(live) = self.live.remove(key) else {
                    let _ = reply.send(Ok(()));
                    return false;
                };
                live.state.send_replace(RegistrationState::Ended);
                let record = live.record;
                self.spawn_call(key_for_task, generation, async move {
                    let result = backend.delete(&lease, &record).await;
                    Outcome::Deregistered {
                        reply,
                        record,
                        result,
                    }
                });
            }
            Op::Abandon { record } => self.spawn_call(key_for_task, generation, async move {
                let result = backend.abandon(&lease, &record).await;
                Outcome::Abandoned { record, result }
            }),
            Op::Restore { token } => {
                let Some(live) = self.live.get(key) else {
                    return false;
                };
                let record = live.record.clone();
                self.spawn_call(key_for_task, generation, async move {
                    let result = backend.put(&lease, &record).await;
                    Outcome::Restored { token, result }
                });
            }
            Op::Retry => {
                let Some(pending) = self.pending.get_mut(key) else {
                    return false;
                };
                if pending.generation != generation {
                    self.pending.remove(key);
                    return false;
                }
                pending.queued = true;
                let record = pending.record.clone();
                let abandon = pending.abandon;
                self.spawn_call(key_for_task, generation, async move {
                    let result = if abandon {
                        backend.abandon(&lease, &record).await
                    } else {
                        backend.delete(&lease, &record).await
                    };
                    Outcome::Retried { abandon, result }
                });
            }
            Op::Undo { record } => self.spawn_call(key_for_task, generation, async move {
                let result = backend.delete(&lease, &record).await;
                Outcome::Undone { record, result }
            }),
        }
        true
    }

    /// Runs one call in a task of its own, within the registrar's bound on
    /// concurrent calls, and reports its outcome.
    fn spawn_call(
        &mut self,
        key: Key,
        generation: u64,
        call: impl Future<Output = Outcome> + Send + 'static,
    ) {
        self.in_flight += 1;
        let calls = self.calls.clone();
        let done = self.done.clone();
        tokio::spawn(async move {
            // The semaphore is never closed; without a permit the call
            // simply runs unbounded.
            let _permit = calls.acquire_owned().await.ok();
            let outcome = call.await;
            let _ = done.send(Done::Op {
                key,
                generation,
                outcome,
            });
        });
    }

    /// Starts opening a lease unless one is open or being opened.
    fn ensure_open(&mut self) {
        if self.lease.is_some() || self.opening {
            return;
        }
        self.opening = true;
        self.start_open();
    }

    fn start_open(&mut self) {
        // Nothing needs a lease any more (every waiting caller gave up and
        // nothing is live): stop trying.
        self.waiting.retain(|(_, op)| match op {
            Op::Register { reply, .. } => !reply.is_closed(),
            _ => true,
        });
        if self.live.is_empty() && self.waiting.is_empty() {
            self.opening = false;
            return;
        }
        let backend = self.backend.clone();
        let done = self.done.clone();
        let deadline = self.timing.timeout;
        tokio::spawn(async move {
            let opened = match tokio::time::timeout(deadline, backend.open()).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    backend: B::NAME,
                    operation: "open a lease",
                    after: deadline,
                }),
            };
            let _ = done.send(Done::Opened(opened));
        });
    }

    /// The lease of `generation` is gone (if it is still the current one):
    /// every live record must be put back on a new one.
    fn lost(&mut self, generation: u64, reason: &str) {
        if generation != self.generation {
            return;
        }
        let Some(lease) = self.lease.take() else {
            return;
        };
        tracing::warn!(
            backend = B::NAME,
            reason,
            instances = self.live.len(),
            "lease or session lost; opening a new one and registering every live instance again"
        );
        self.backend.forget(&lease);
        if let Some(events) = self.events.take() {
            events.abort();
        }
        if let Some(round) = self.round.take() {
            round.abort();
        }
        // Records on the lost lease are gone with it.
        self.pending.clear();
        for live in self.live.values_mut() {
            live.state.send_replace(RegistrationState::Restoring);
        }
        self.open_backoff.reset();
        self.ensure_open();
    }

    fn finish(&mut self, done: Done<B::Lease>) {
        match done {
            Done::Opened(result) => self.opened(result),
            Done::Op {
                key,
                generation,
                outcome,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.apply(&key, generation, outcome);
                self.next_on(&key);
            }
            Done::Round {
                generation,
                started,
                renewal,
                renewed,
                verified,
            } => self.round_done(generation, started, renewal, renewed, verified),
            Done::Event { generation, event } => match event {
                LeaseEvent::Lost(reason) => self.lost(generation, &reason),
                LeaseEvent::Reconnected if generation == self.generation => {
                    tracing::info!(backend = B::NAME, "reconnected; checking our records now");
                    self.rounds_since_verify = VERIFY_EVERY;
                    self.next_round = Instant::now();
                }
                LeaseEvent::Reconnected => {}
            },
        }
    }

    fn opened(&mut self, result: Result<B::Lease>) {
        self.opening = false;
        let lease = match result {
            Ok(lease) => lease,
            Err(error) => {
                let delay = self.open_backoff.next_delay();
                if self.open_outage.failed() {
                    tracing::warn!(backend = B::NAME, %error, retry_in = ?delay,
                        "could not open a lease or session; retrying with backoff (further failures at debug)");
                } else {
                    tracing::debug!(backend = B::NAME, %error, retry_in = ?delay, "could not open a lease or session, again");
                }
                // Callers waiting for a lease learn nothing here: they wait
                // until it opens or their own deadline passes.
                if error.is_transient() || !self.live.is_empty() {
                    self.opening = true;
                    self.open_at = Some(Instant::now() + delay);
                } else {
                    // A refusal (bad credentials, no permission): tell the
                    // waiting callers now rather than at their deadline.
                    for (key, op) in std::mem::take(&mut self.waiting) {
                        if let Op::Register { reply, .. } = op {
                            let _ = reply.send(Err(clone_error(&error)));
                        }
                        self.next_on(&key);
                    }
                }
                return;
            }
        };
        if let Some(after) = self.open_outage.recovered() {
            tracing::info!(backend = B::NAME, after = ?after, "lease or session open again");
        }
        self.open_backoff.reset();
        self.generation += 1;
        let generation = self.generation;
        if let Some(events) = self.backend.events(&lease) {
            let done = self.done.clone();
            self.events = Some(tokio::spawn(async move {
                let mut events = events;
                while let Some(event) = events.next().await {
                    let lost = matches!(event, LeaseEvent::Lost(_));
                    if done.send(Done::Event { generation, event }).is_err() || lost {
                        return;
                    }
                }
            }));
        }
        self.lease = Some(lease);
        self.next_round = Instant::now() + self.timing.period();
        self.rounds_since_verify = 0;
        // Everything live goes back on the new lease, ahead of what waits.
        let restore: Vec<(Key, u64)> = self
            .live
            .iter_mut()
            .filter(|(_, live)| !live.restoring)
            .map(|(key, live)| {
                live.restoring = true;
                (key.clone(), live.token)
            })
            .collect();
        if !restore.is_empty() {
            tracing::info!(
                backend = B::NAME,
                instances = restore.len(),
                "registering every live instance again on the new lease"
            );
        }
        for (key, token) in restore {
            self.submit_first(key, Op::Restore { token });
        }
        for (key, op) in std::mem::take(&mut self.waiting) {
            // These were already "running" on their id: start them for real.
            if !self.start(&key, op) {
                self.next_on(&key);
            }
        }
    }

    fn apply(&mut self, key: &Key, generation: u64, outcome: Outcome) {
        match outcome {
            Outcome::Registered {
                record,
                token,
                reply,
                result,
            } => self.registered(key, generation, record, token, reply, result),
            Outcome::Deregistered {
                reply,
                record,
                result,
            } => {
                match &result {
                    Ok(()) => {
                        tracing::info!(backend = B::NAME, service = %key.0, id = %key.1, "deregistered")
                    }
                    Err(Error::LeaseLost { .. }) => {
                        // Gone with the lease.
                        self.lost(generation, "a deregistration found the lease gone");
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1, %error,
                            "deregistration not confirmed; retrying after each renewal while the lease lives");
                        self.pending.insert(
                            key.clone(),
                            Pending {
                                record,
                                abandon: false,
                                generation,
                                queued: false,
                            },
                        );
                    }
                }
                let _ = reply.send(result);
            }
            Outcome::Abandoned { record, result } => match result {
                Ok(()) => {
                    tracing::info!(backend = B::NAME, service = %key.0, id = %key.1, ttl = ?self.timing.ttl,
                    "abandoned: the instance expires after its TTL, as after a crash")
                }
                Err(Error::LeaseLost { .. }) => {
                    self.lost(generation, "an abandon found the lease gone")
                }
                Err(error) => {
                    tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1, %error, "abandon not applied yet; retrying");
                    self.pending.insert(
                        key.clone(),
                        Pending {
                            record,
                            abandon: true,
                            generation,
                            queued: false,
                        },
                    );
                }
            },
            Outcome::Restored { token, result } => self.restored(key, generation, token, result),
            Outcome::Retried { abandon, result } => match result {
                Ok(()) => {
                    self.pending.remove(key);
                    tracing::info!(backend = B::NAME, service = %key.0, id = %key.1, abandon,
                        "delayed deregistration or abandon applied");
                }
                Err(Error::LeaseLost { .. }) => {
                    self.pending.remove(key);
                    self.lost(generation, "a delayed removal found the lease gone");
                }
                Err(error) => {
                    if let Some(pending) = self.pending.get_mut(key) {
                        pending.queued = false;
                    }
                    tracing::debug!(backend = B::NAME, service = %key.0, id = %key.1, %error,
                        "delayed deregistration or abandon failed again");
                }
            },
            Outcome::Undone { record, result } => match result {
                Ok(()) | Err(Error::LeaseLost { .. }) => {}
                Err(error) => {
                    tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1, %error,
                        "could not undo a registration whose caller gave up; retrying");
                    self.pending.insert(
                        key.clone(),
                        Pending {
                            record,
                            abandon: false,
                            generation,
                            queued: false,
                        },
                    );
                }
            },
        }
    }

    fn registered(
        &mut self,
        key: &Key,
        generation: u64,
        record: Record,
        token: u64,
        reply: oneshot::Sender<Result<Ticket>>,
        result: Result<()>,
    ) {
        match result {
            Ok(()) if generation == self.generation && self.lease.is_some() => {}
            Ok(()) | Err(Error::LeaseLost { .. }) => {
                // The lease went while the put ran: try again on the next
                // one (the caller's deadline bounds this).
                self.lost(generation, "a registration found the lease gone");
                self.submit_first(
                    key.clone(),
                    Op::Register {
                        record,
                        token,
                        reply,
                    },
                );
                return;
            }
            Err(error) => {
                let maybe_applied =
                    error.is_transient() && !matches!(error, Error::AlreadyRegistered { .. });
                if maybe_applied {
                    match self.live.get(key).map(|l| l.token) {
                        // The replacement may have been written anyway: put
                        // the one in force back.
                        Some(previous) => self.queue_restore(key, previous),
                        // Make sure nothing of ours is left that nobody
                        // holds a handle on.
                        None => {
                            self.pending.insert(
                                key.clone(),
                                Pending {
                                    record,
                                    abandon: false,
                                    generation,
                                    queued: false,
                                },
                            );
                        }
                    }
                }
                let _ = reply.send(Err(error));
                return;
            }
        }
        tracing::info!(backend = B::NAME, service = %key.0, id = %key.1,
            addr = %record.instance.authority(), "registered");
        self.pending.remove(key);
        let (state, receiver) = watch::channel(RegistrationState::Registered);
        let previous = self.live.insert(
            key.clone(),
            Live {
                record,
                token,
                state,
                restoring: false,
                failing: false,
            },
        );
        if reply
            .send(Ok(Ticket {
                token,
                state: receiver,
            }))
            .is_ok()
        {
            if let Some(previous) = previous {
                previous.state.send_replace(RegistrationState::Ended);
            }
            return;
        }
        // The caller stopped waiting: nobody holds this registration.
        tracing::info!(backend = B::NAME, service = %key.0, id = %key.1,
            "the caller gave up before the registration's answer; undoing it");
        let Some(undone) = self.live.remove(key) else {
            return;
        };
        match previous {
            Some(previous) => {
                let token = previous.token;
                self.live.insert(key.clone(), previous);
                self.queue_restore(key, token);
            }
            None => self.submit_first(
                key.clone(),
                Op::Undo {
                    record: undone.record,
                },
            ),
        }
    }

    /// Queues putting back live registration `token` of `key`, ahead of
    /// anything else on the id, unless one is queued already.
    fn queue_restore(&mut self, key: &Key, token: u64) {
        let Some(live) = self.live.get_mut(key).filter(|l| l.token == token) else {
            return;
        };
        if live.restoring {
            return;
        }
        live.restoring = true;
        self.submit_first(key.clone(), Op::Restore { token });
    }

    fn restored(&mut self, key: &Key, generation: u64, token: u64, result: Result<()>) {
        if let Some(live) = self.live.get_mut(key).filter(|l| l.token == token) {
            live.restoring = false;
        }
        match result {
            Ok(()) => {
                let Some(live) = self.live.get_mut(key).filter(|l| l.token == token) else {
                    return;
                };
                if std::mem::take(&mut live.failing) {
                    tracing::info!(backend = B::NAME, service = %key.0, id = %key.1, "registered again after failures");
                } else {
                    tracing::info!(backend = B::NAME, service = %key.0, id = %key.1, "registered again");
                }
                live.state.send_replace(RegistrationState::Registered);
            }
            Err(Error::AlreadyRegistered { holder, .. }) => self.give_way(key, token, holder),
            Err(Error::LeaseLost { .. }) => {
                self.lost(generation, "putting a record back found the lease gone")
            }
            Err(error) => {
                let Some(live) = self.live.get_mut(key).filter(|l| l.token == token) else {
                    return;
                };
                if live.failing {
                    tracing::debug!(backend = B::NAME, service = %key.0, id = %key.1, %error, "registering again failed again");
                } else {
                    tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1, %error,
                        "registering again failed; retrying at each renewal round");
                }
                live.failing = true;
                live.state.send_replace(RegistrationState::Restoring);
            }
        }
    }

    /// Another registrar holds `key` now: stop keeping ours alive.
    fn give_way(&mut self, key: &Key, token: u64, holder: String) {
        if self.live.get(key).is_none_or(|l| l.token != token) {
            return;
        }
        if let Some(live) = self.live.remove(key) {
            tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1, %holder,
                "another registrar holds this instance id now (our record had expired or was removed, and it registered the id); giving way: this registration is no longer kept alive");
            live.state
                .send_replace(RegistrationState::Displaced { holder });
        }
    }

    /// Starts a renewal round (and, every few rounds, a check of our
    /// records) in a task of its own.
    fn start_round(&mut self) {
        let Some(lease) = self.lease.clone() else {
            return;
        };
        let generation = self.generation;
        let started = Instant::now();
        let renewed: Vec<(Key, u64)> = self
            .live
            .iter()
            .map(|(key, live)| (key.clone(), live.token))
            .collect();
        let records: Vec<Record> = self.live.values().map(|l| l.record.clone()).collect();
        let verify = self.rounds_since_verify + 1 >= VERIFY_EVERY && !records.is_empty();
        let backend = self.backend.clone();
        let done = self.done.clone();
        let deadline = self.timing.renew_deadline();
        let timeout = self.timing.timeout;
        self.round = Some(tokio::spawn(async move {
            let renewal =
                match tokio::time::timeout(deadline, backend.renew(&lease, &records)).await {
                    Ok(renewal) => renewal,
                    Err(_) => Err(Error::Timeout {
                        backend: B::NAME,
                        operation: "renew",
                        after: deadline,
                    }),
                };
            let verified = if verify && matches!(renewal, Ok(Renewal::Alive)) {
                let checked =
                    match tokio::time::timeout(timeout, backend.verify(&lease, &records)).await {
                        Ok(checked) => checked,
                        Err(_) => Err(Error::Timeout {
                            backend: B::NAME,
                            operation: "check our records",
                            after: timeout,
                        }),
                    };
                Some(checked.map(|found| {
                    renewed
                        .iter()
                        .zip(found)
                        .map(|((key, token), found)| (key.clone(), *token, found))
                        .collect()
                }))
            } else {
                None
            };
            let _ = done.send(Done::Round {
                generation,
                started,
                renewal,
                renewed,
                verified,
            });
        }));
    }

    fn round_done(
        &mut self,
        generation: u64,
        started: Instant,
        renewal: Result<Renewal>,
        renewed: Vec<(Key, u64)>,
        verified: Option<Result<Vec<(Key, u64, Found)>>>,
    ) {
        self.round = None;
        if generation != self.generation || self.lease.is_none() {
            return;
        }
        let now = Instant::now();
        let period = self.timing.period();
        let renewal = match renewal {
            Ok(renewal) => renewal,
            Err(Error::LeaseLost { reason, .. }) => Renewal::Lost(reason),
            Err(error) => {
                let delay = self.renew_backoff.next_delay().min(period);
                if self.renew_outage.failed() {
                    tracing::warn!(backend = B::NAME, %error, retry_in = ?delay,
                        "renewal failed; retrying at once, then with backoff within TTL/3 (further failures at debug)");
                } else {
                    tracing::debug!(backend = B::NAME, %error, "renewal failed again");
                }
                self.next_round = now + delay;
                return;
            }
        };
        if let Renewal::Lost(reason) = renewal {
            self.lost(generation, &reason);
            return;
        }
        if let Some(after) = self.renew_outage.recovered() {
            tracing::info!(backend = B::NAME, after = ?after, "renewals work again");
        }
        self.renew_backoff.reset();
        self.next_round = (started + period).max(now);
        if let Renewal::Forgotten(forgotten) = renewal {
            for index in forgotten {
                let Some((key, token)) = renewed.get(index).cloned() else {
                    continue;
                };
                if self
                    .live
                    .get(&key)
                    .is_some_and(|l| l.token == token && !l.restoring)
                {
                    tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1,
                        "the registry no longer knows this instance (restarted without its state, or the record was removed); registering it again");
                    if let Some(live) = self.live.get_mut(&key) {
                        live.state.send_replace(RegistrationState::Restoring);
                    }
                    self.queue_restore(&key, token);
                }
            }
        }
        // Live registrations whose restore failed: try again now.
        let failing: Vec<(Key, u64)> = self
            .live
            .iter()
            .filter(|(_, l)| l.failing && !l.restoring)
            .map(|(k, l)| (k.clone(), l.token))
            .collect();
        for (key, token) in failing {
            self.queue_restore(&key, token);
        }
        // Removals that failed earlier: try again now that it answers.
        let retry: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.queued)
            .map(|(k, _)| k.clone())
            .collect();
        for key in retry {
            if let Some(p) = self.pending.get_mut(&key) {
                p.queued = true;
            }
            self.submit(key, Op::Retry);
        }
        match verified {
            None => self.rounds_since_verify += 1,
            Some(Ok(found)) => {
                self.rounds_since_verify = 0;
                for (key, token, found) in found {
                    match found {
                        Found::Ours => {}
                        Found::Missing | Found::Changed => {
                            if self.live.get(&key).is_some_and(|l| l.token == token) {
                                tracing::warn!(backend = B::NAME, service = %key.0, id = %key.1,
                                    problem = if found == Found::Missing { "missing" } else { "changed" },
                                    "our record was removed or changed by another client; putting it back");
                                self.queue_restore(&key, token);
                            }
                        }
                        Found::Held { holder } => self.give_way(&key, token, holder),
                    }
                }
            }
            Some(Err(error)) => {
                tracing::debug!(backend = B::NAME, %error, "could not check our records; trying again next round");
            }
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A copy of a refusal for each caller that waited for the lease.
fn clone_error(error: &Error) -> Error {
    match error {
        Error::Rejected {
            backend,
            operation,
            reason,
        } => Error::Rejected {
            backend,
            operation,
            reason: reason.clone(),
        },
        Error::InvalidConfig(message) => Error::InvalidConfig(message.clone()),
        other => Error::Rejected {
            backend: "registrar",
            operation: "open a lease",
            reason: other.to_string(),
        },
    }
}
