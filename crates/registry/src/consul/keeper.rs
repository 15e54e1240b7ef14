//! The registrar's actor: one task per [`ConsulRegistry`](super::ConsulRegistry)
//! that owns the set of live registrations and heartbeats all of them over the
//! registrar's one HTTP client.
//!
//! The actor itself never waits for the agent, so a slow agent cannot hold
//! up anything queued behind a call:
//! - a heartbeat round (`PUT /v1/agent/check/pass/..` for every live
//!   instance, [`HEARTBEAT_CONCURRENCY`] at a time) runs as a task of its
//!   own and reports its results back; one round runs at a time;
//! - registrations, deregistrations and re-registrations each run as a task
//!   of their own, up to [`CALL_CONCURRENCY`] at once for the whole
//!   registrar, so many of them proceed side by side and none waits for a
//!   heartbeat round.
//!
//! Ordering: the operations on one id run one after the other, in the order
//! the actor received them (a queue per id), and each checks when it starts
//! whether it still applies. Each registration carries a token, so an old
//! handle never removes a newer registration of the same id, and a
//! re-registration after the agent forgot an instance never brings back one
//! that was deregistered or replaced meanwhile. Heartbeats only ever pass a
//! check, never register: one that reaches the agent after a deregistration
//! gets "unknown check", which the actor ignores for an id (or token) it no
//! longer keeps alive.
//!
//! A replacement (a registration of an id this registrar already keeps
//! alive) that fails, or whose caller gives up waiting for it, leaves the
//! replaced registration in force: its handle keeps the id. Unless the
//! agent refused the replacement, it may have applied it anyway (a reply
//! that timed out after the `PUT` went out), so the replaced record is
//! registered again ahead of anything else queued on the id, and retried
//! every heartbeat round until the agent takes it. Heartbeats alone could
//! not notice: they pass the id's check whatever record the agent holds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::api::{Api, BACKEND, Heartbeat};
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::util::Backoff;

/// How many heartbeats of one round run at once.
const HEARTBEAT_CONCURRENCY: usize = 16;
/// How many registrations, deregistrations and re-registrations of one
/// registrar talk to the agent at once (heartbeats not included).
const CALL_CONCURRENCY: usize = 32;
/// The shortest heartbeat period, whatever the TTL.
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// What the registrar's handles ask of the actor.
#[derive(Debug)]
pub(super) enum Command {
    /// Register `instance` (replacing this registrar's registration of the
    /// same id) and keep it alive; the reply carries its token.
    Register {
        instance: Instance,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Stop keeping `id` alive and deregister it, if `token` still owns it.
    Deregister {
        id: String,
        token: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop keeping `id` alive but leave it on the agent, if `token` still
    /// owns it: its check goes critical after the TTL, as after a crash.
    Abandon { id: String, token: u64 },
}

/// One instance this registrar keeps alive.
#[derive(Debug)]
struct Live {
    instance: Instance,
    /// Which registration owns the id (see [`Command`]).
    token: u64,
    /// The last heartbeat or re-registration failed: log the next success
    /// as a recovery.
    failing: bool,
    /// A re-registration is queued or running: do not queue another.
    reregistering: bool,
    /// The agent may hold another record for this id (a replacement that
    /// failed or whose caller gave up): register this one again, each round,
    /// until the agent takes it.
    restore: bool,
}

/// An operation on one id. It starts once the operations received before it
/// on the same id have finished, and checks then whether it still applies.
#[derive(Debug)]
enum Op {
    /// Register `instance` under `token`.
    Register {
        instance: Instance,
        token: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Deregister the id if `token` still owns it.
    Deregister {
        token: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Register the id again (the agent forgot it) if `token` still owns it.
    Reregister { token: u64 },
    /// Deregister an instance whose caller stopped waiting for its
    /// registration, unless a newer registration holds the id by now.
    Undo,
}

/// What a task running an [`Op`] or a heartbeat round reports back.
#[derive(Debug)]
enum Done {
    Registered {
        instance: Instance,
        token: u64,
        reply: oneshot::Sender<Result<u64>>,
        result: Result<()>,
    },
    Deregistered {
        id: String,
        service: String,
        reply: oneshot::Sender<Result<()>>,
        result: Result<()>,
    },
    Reregistered {
        id: String,
        token: u64,
        result: Result<()>,
    },
    Undone {
        id: String,
        result: Result<()>,
    },
    Round {
        started: Instant,
        beats: Vec<(String, u64, Heartbeat)>,
    },
}

/// The actor's state.
#[derive(Debug)]
pub(super) struct Keeper {
    api: Api,
    ttl: Duration,
    /// TTL / 3: the heartbeat period.
    period: Duration,
    live: BTreeMap<String, Live>,
    /// The ids with an operation running, each with the operations queued
    /// behind it.
    busy: HashMap<String, VecDeque<Op>>,
    next_token: u64,
    /// Between heartbeat rounds while the agent fails.
    backoff: Backoff,
    next_round: Instant,
    /// The heartbeat round running now, if any.
    round: Option<JoinHandle<()>>,
    /// Bounds the registrar's calls other than heartbeats.
    calls: Arc<Semaphore>,
    /// Where operation and round tasks report.
    done: mpsc::UnboundedSender<Done>,
}

impl Keeper {
    /// Starts the actor on the current runtime. It ends when every sender
    /// (the registry's clones and the registrations' keep-alives) is gone.
    pub(super) fn spawn(api: Api, ttl: Duration) -> mpsc::UnboundedSender<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done, reports) = mpsc::unbounded_channel();
        let period = (ttl / 3).max(MIN_PERIOD);
        let keeper = Keeper {
            api,
            ttl,
            period,
            live: BTreeMap::new(),
            busy: HashMap::new(),
            next_token: 0,
            backoff: Backoff::reconnect(),
            next_round: Instant::now() + period,
            round: None,
            calls: Arc::new(Semaphore::new(CALL_CONCURRENCY)),
            done,
        };
        tokio::spawn(keeper.run(rx, reports));
        tx
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut reports: mpsc::UnboundedReceiver<Done>,
    ) {
        loop {
            let round = tokio::time::sleep_until(self.next_round);
            let idle = self.round.is_none() && !self.live.is_empty();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(done) = reports.recv() => self.finish(done),
                () = round, if idle => self.start_round(),
            }
        }
        if let Some(round) = self.round.take() {
            round.abort();
        }
        tracing::debug!(
            backend = BACKEND,
            addr = self.api.addr(),
            "registrar closed"
        );
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register { instance, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                let id = instance.id.clone();
                self.submit(
                    id,
                    Op::Register {
                        instance,
                        token,
                        reply,
                    },
                );
            }
            Command::Deregister { id, token, reply } => {
                self.submit(id, Op::Deregister { token, reply });
            }
            Command::Abandon { id, token } => {
                // No call to the agent, so no need to queue: whatever runs
                // on the id now finds it gone (or owned by another token).
                if self.live.get(&id).is_some_and(|l| l.token == token) {
                    self.live.remove(&id);
                    tracing::info!(backend = BACKEND, %id, ttl = ?self.ttl,
                        "abandoned: no more heartbeats; the check goes critical after the TTL");
                }
            }
        }
    }

    /// Runs `op` now if nothing runs on `id`, else queues it behind.
    fn submit(&mut self, id: String, op: Op) {
        match self.busy.get_mut(&id) {
            Some(queue) => queue.push_back(op),
            None => self.run_queue(id, VecDeque::from([op])),
        }
    }

    /// Starts the first operation of `queue` that still applies (those that
    /// no longer do are answered at once) and marks `id` busy with the rest.
    fn run_queue(&mut self, id: String, mut queue: VecDeque<Op>) {
        while let Some(op) = queue.pop_front() {
            if self.start(&id, op) {
                self.busy.insert(id, queue);
                return;
            }
        }
    }

    /// The operation running on `id` has finished: start the next one.
    fn next_on(&mut self, id: &str) {
        if let Some(queue) = self.busy.remove(id) {
            self.run_queue(id.to_owned(), queue);
        }
    }

    /// Starts `op` in a task of its own if it still applies; returns whether
    /// it did.
    fn start(&mut self, id: &str, op: Op) -> bool {
        let api = self.api.clone();
        let ttl = self.ttl;
        match op {
            Op::Register {
                instance,
                token,
                reply,
            } => {
                self.spawn_call(async move {
                    let result = api.register(&instance, ttl).await;
                    Done::Registered {
                        instance,
                        token,
                        reply,
                        result,
                    }
                });
                true
            }
            Op::Deregister { token, reply } => {
                if self.live.get(id).is_none_or(|l| l.token != token) {
                    // Replaced by a newer registration of the same id, which
                    // must stay (or already gone).
                    let _ = reply.send(Ok(()));
                    return false;
                }
                // No more heartbeats from here on, whatever the agent says.
                let service = self
                    .live
                    .remove(id)
                    .map(|l| l.instance.service)
                    .unwrap_or_default();
                let id = id.to_owned();
                self.spawn_call(async move {
                    let result = api.deregister(&id).await;
                    Done::Deregistered {
                        id,
                        service,
                        reply,
                        result,
                    }
                });
                true
            }
            Op::Reregister { token } => {
                let Some(live) = self.live.get(id).filter(|l| l.token == token) else {
                    return false;
                };
                let instance = live.instance.clone();
                let id = id.to_owned();
                self.spawn_call(async move {
                    let result = api.register(&instance, ttl).await;
                    Done::Reregistered { id, token, result }
                });
                true
            }
            Op::Undo => {
                if self.live.contains_key(id) {
                    return false;
                }
                let id = id.to_owned();
                self.spawn_call(async move {
                    let result = api.deregister(&id).await;
                    Done::Undone { id, result }
                });
                true
            }
        }
    }

    /// Runs one call to the agent in a task of its own, within the
    /// registrar's bound on concurrent calls, and reports its outcome.
    fn spawn_call(&self, call: impl Future<Output = Done> + Send + 'static) {
        let calls = self.calls.clone();
        let done = self.done.clone();
        tokio::spawn(async move {
            // The semaphore is never closed; without a permit the call
            // simply runs unbounded.
            let _permit = calls.acquire_owned().await.ok();
            let _ = done.send(call.await);
        });
    }

    /// Applies what a task reports.
    fn finish(&mut self, done: Done) {
        match done {
            Done::Registered {
                instance,
                token,
                reply,
                result,
            } => {
                let id = instance.id.clone();
                self.registered(instance, token, reply, result);
                self.next_on(&id);
            }
            Done::Deregistered {
                id,
                service,
                reply,
                result,
            } => {
                match &result {
                    Ok(()) => tracing::info!(backend = BACKEND, %service, %id, "deregistered"),
                    Err(error) => tracing::warn!(backend = BACKEND, %service, %id, %error,
                        "deregistration failed; the instance is no longer kept alive and leaves the passing set after its TTL"),
                }
                let _ = reply.send(result);
                self.next_on(&id);
            }
            Done::Reregistered { id, token, result } => {
                self.reregistered(&id, token, result);
                self.next_on(&id);
            }
            Done::Undone { id, result } => {
                if let Err(error) = result {
                    tracing::warn!(backend = BACKEND, %id, %error,
                        "could not undo a registration whose caller gave up; it leaves the passing set after its TTL");
                }
                self.next_on(&id);
            }
            Done::Round { started, beats } => self.round_done(started, beats),
        }
    }

    fn registered(
        &mut self,
        instance: Instance,
        token: u64,
        reply: oneshot::Sender<Result<u64>>,
        result: Result<()>,
    ) {
        if let Err(error) = result {
            // A replacement failed: the replaced registration stays, but
            // unless the agent refused it, the agent may have applied the
            // replacement all the same (e.g. the reply timed out).
            let refused = matches!(error, Error::Rejected { .. });
            if !refused && self.live.contains_key(&instance.id) {
                self.restore(&instance.id, "the replacement failed");
            }
            let _ = reply.send(Err(error));
            return;
        }
        tracing::info!(backend = BACKEND, service = %instance.service, id = %instance.id,
            addr = %instance.authority(), "registered");
        if self.live.is_empty() && self.round.is_none() {
            self.next_round = Instant::now() + self.period;
        }
        let id = instance.id.clone();
        let previous = self.live.insert(
            id.clone(),
            Live {
                instance,
                token,
                failing: false,
                reregistering: false,
                restore: false,
            },
        );
        if reply.send(Ok(token)).is_ok() {
            return;
        }
        // The caller stopped waiting (its deadline passed): nobody holds
        // this registration, so it must not be kept alive for ever.
        match previous {
            // A handle still holds the id: keep its (replaced) record alive,
            // and put it back on the agent, which now holds the replacement.
            Some(previous) => {
                self.live.insert(id.clone(), previous);
                self.restore(&id, "the replacement's caller gave up");
            }
            // Remove it before anything queued on the id runs (a newer
            // registration queued there then stays).
            None => {
                self.live.remove(&id);
                if let Some(queue) = self.busy.get_mut(&id) {
                    queue.push_front(Op::Undo);
                }
            }
        }
    }

    /// Registers the record `id`'s live entry holds again, ahead of
    /// anything else queued on `id`, because the agent may hold another
    /// record for the id (see [`Live::restore`]).
    fn restore(&mut self, id: &str, why: &'static str) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        tracing::warn!(backend = BACKEND, service = %live.instance.service, %id, why,
            "registering the replaced record again: the agent may hold the replacement, which nobody keeps alive");
        live.restore = true;
        live.reregistering = true;
        let op = Op::Reregister { token: live.token };
        match self.busy.get_mut(id) {
            Some(queue) => queue.push_front(op),
            None => self.submit(id.to_owned(), op),
        }
    }

    fn reregistered(&mut self, id: &str, token: u64, result: Result<()>) {
        let Some(live) = self.live.get_mut(id).filter(|l| l.token == token) else {
            // Abandoned meanwhile: the record is back on the agent, but
            // nobody keeps it alive, so it goes critical after the TTL.
            tracing::debug!(backend = BACKEND, %id, ?result,
                "re-registration finished after its registration was abandoned");
            return;
        };
        live.reregistering = false;
        let service = &live.instance.service;
        match result {
            Ok(()) if std::mem::take(&mut live.restore) => tracing::info!(backend = BACKEND,
                %service, %id, "the agent holds the replaced record again"),
            Ok(()) => tracing::info!(backend = BACKEND, %service, %id,
                "registered again after the agent forgot it"),
            Err(error) => {
                if live.failing {
                    tracing::debug!(backend = BACKEND, %service, %id, %error, "re-registration failed again");
                } else {
                    tracing::warn!(backend = BACKEND, %service, %id, %error,
                        "re-registration failed; retrying with backoff until the agent takes it");
                }
                live.failing = true;
            }
        }
    }

    /// Starts a heartbeat round over every live instance in a task of its
    /// own.
    fn start_round(&mut self) {
        let started = Instant::now();
        let targets: Vec<(String, u64)> = self
            .live
            .iter()
            .map(|(id, live)| (id.clone(), live.token))
            .collect();
        let api = self.api.clone();
        let done = self.done.clone();
        self.round = Some(tokio::spawn(async move {
            let beats = futures::stream::iter(targets)
                .map(|(id, token)| {
                    let api = api.clone();
                    async move {
                        let beat = api.pass(&id).await;
                        (id, token, beat)
                    }
                })
                .buffer_unordered(HEARTBEAT_CONCURRENCY)
                .collect()
                .await;
            let _ = done.send(Done::Round { started, beats });
        }));
    }

    /// Applies a round's results: logs failures and recoveries, queues a
    /// re-registration of every instance the agent forgot or whose restore
    /// failed (see [`Live::restore`]), then schedules the next round: one
    /// period after this one started, or sooner, with backoff, if anything
    /// failed.
    fn round_done(&mut self, started: Instant, beats: Vec<(String, u64, Heartbeat)>) {
        self.round = None;
        let mut all_ok = true;
        let mut forgotten = Vec::new();
        for (id, token, beat) in beats {
            // Deregistered, abandoned or replaced since the round started:
            // whatever the agent said about it no longer matters.
            let Some(live) = self.live.get_mut(&id).filter(|l| l.token == token) else {
                continue;
            };
            let service = &live.instance.service;
            let mut again = false;
            match beat {
                Heartbeat::Passed => {
                    if live.failing {
                        tracing::info!(backend = BACKEND, %service, %id, "keep-alive recovered: the check is passing again");
                    }
                    live.failing = false;
                }
                Heartbeat::Forgotten(reason) => {
                    all_ok = false;
                    if !live.reregistering {
                        tracing::warn!(backend = BACKEND, %service, %id, %reason,
                            "the Consul agent no longer knows this instance (restarted without its state, or the service was removed); registering it again");
                        again = true;
                    }
                }
                Heartbeat::Failed(error) => {
                    all_ok = false;
                    if live.failing {
                        tracing::debug!(backend = BACKEND, %service, %id, %error, "heartbeat failed again");
                    } else {
                        tracing::warn!(backend = BACKEND, %service, %id, %error,
                            "heartbeat failed; retrying with backoff until the agent answers");
                    }
                    live.failing = true;
                }
            }
            // A restore that failed: try again.
            again |= live.restore && !live.reregistering;
            if again {
                live.reregistering = true;
                forgotten.push((id, token));
            }
        }
        for (id, token) in forgotten {
            self.submit(id, Op::Reregister { token });
        }
        let now = Instant::now();
        if all_ok {
            self.backoff.reset();
            self.next_round = (started + self.period).max(now);
        } else {
            self.next_round = now + self.backoff.next_delay().min(self.period);
        }
    }
}
