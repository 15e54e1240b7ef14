//! The registrar's actor: one task per [`ConsulRegistry`](super::ConsulRegistry)
//! that owns the set of live registrations and heartbeats all of them over the
//! registrar's one HTTP client.
//!
//! Every call to the agent that changes our registrations (register,
//! heartbeat, re-register, deregister) is made by this task, one after the
//! other, so a heartbeat can never bring back an instance that is being
//! deregistered, and an old handle can never remove a newer registration of
//! the same id (each registration carries a token).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::api::{Api, BACKEND, Heartbeat};
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::util::Backoff;

/// How many heartbeats (or re-registrations) run at once.
const CONCURRENCY: usize = 16;
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
    /// The last heartbeat failed: log the next success as a recovery.
    failing: bool,
}

/// What one heartbeat of one instance came to.
#[derive(Debug)]
enum Beat {
    /// The check is passing (again, possibly after a re-registration).
    Ok,
    /// The agent could not be reached, or refused: retry with backoff.
    Failed(Error),
}

/// The actor's state.
#[derive(Debug)]
pub(super) struct Keeper {
    api: Api,
    ttl: Duration,
    /// TTL / 3: the heartbeat period.
    period: Duration,
    live: BTreeMap<String, Live>,
    next_token: u64,
    /// Between heartbeat rounds while the agent fails.
    backoff: Backoff,
    next_round: Instant,
}

impl Keeper {
    /// Starts the actor on the current runtime. It ends when every sender
    /// (the registry's clones and the registrations' keep-alives) is gone.
    pub(super) fn spawn(api: Api, ttl: Duration) -> mpsc::UnboundedSender<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        let period = (ttl / 3).max(MIN_PERIOD);
        let keeper = Keeper {
            api,
            ttl,
            period,
            live: BTreeMap::new(),
            next_token: 0,
            backoff: Backoff::reconnect(),
            next_round: Instant::now() + period,
        };
        tokio::spawn(keeper.run(rx));
        tx
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let round = tokio::time::sleep_until(self.next_round);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                () = round, if !self.live.is_empty() => self.heartbeat_round().await,
            }
        }
        tracing::debug!(
            backend = BACKEND,
            addr = self.api.addr(),
            "registrar closed"
        );
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Register { instance, reply } => self.register(instance, reply).await,
            Command::Deregister { id, token, reply } => {
                let result = match self.live.get(&id) {
                    Some(live) if live.token == token => {
                        let live = self.live.remove(&id);
                        let result = self.api.deregister(&id).await;
                        let service = live.map(|l| l.instance.service).unwrap_or_default();
                        match &result {
                            Ok(()) => {
                                tracing::info!(backend = BACKEND, %service, %id, "deregistered")
                            }
                            Err(error) => tracing::warn!(backend = BACKEND, %service, %id, %error,
                                "deregistration failed; the instance is no longer kept alive and leaves the passing set after its TTL"),
                        }
                        result
                    }
                    // Replaced by a newer registration of the same id, which
                    // must stay.
                    _ => Ok(()),
                };
                let _ = reply.send(result);
            }
            Command::Abandon { id, token } => {
                if self.live.get(&id).is_some_and(|l| l.token == token) {
                    self.live.remove(&id);
                    tracing::info!(backend = BACKEND, %id, ttl = ?self.ttl,
                        "abandoned: no more heartbeats; the check goes critical after the TTL");
                }
            }
        }
    }

    async fn register(&mut self, instance: Instance, reply: oneshot::Sender<Result<u64>>) {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(error) = self.api.register(&instance, self.ttl).await {
            let _ = reply.send(Err(error));
            return;
        }
        tracing::info!(backend = BACKEND, service = %instance.service, id = %instance.id,
            addr = %instance.authority(), "registered");
        if self.live.is_empty() {
            self.next_round = Instant::now() + self.period;
        }
        let id = instance.id.clone();
        let previous = self.live.insert(
            id.clone(),
            Live {
                instance,
                token,
                failing: false,
            },
        );
        if reply.send(Ok(token)).is_err() {
            // The caller stopped waiting (its deadline passed): nobody holds
            // this registration, so it must not be kept alive for ever.
            match previous {
                // A handle still holds the id: keep the (replaced) record
                // alive for it.
                Some(previous) => {
                    if let Some(live) = self.live.get_mut(&id) {
                        live.token = previous.token;
                    }
                }
                None => {
                    self.live.remove(&id);
                    if let Err(error) = self.api.deregister(&id).await {
                        tracing::warn!(backend = BACKEND, %id, %error,
                            "could not undo a registration whose caller gave up; it leaves the passing set after its TTL");
                    }
                }
            }
        }
    }

    /// Heartbeats every live instance once, registering again those the
    /// agent has forgotten, then schedules the next round: after the period,
    /// or sooner, with backoff, if anything failed.
    async fn heartbeat_round(&mut self) {
        let ttl = self.ttl;
        let beats: Vec<_> = self
            .live
            .values()
            .map(|live| {
                let api = self.api.clone();
                let instance = live.instance.clone();
                let token = live.token;
                async move {
                    let beat = heartbeat(&api, &instance, ttl).await;
                    (instance.id, token, beat)
                }
            })
            .collect();
        let beats: Vec<(String, u64, Beat)> = futures::stream::iter(beats)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;

        let mut all_ok = true;
        for (id, token, beat) in beats {
            let Some(live) = self.live.get_mut(&id).filter(|l| l.token == token) else {
                continue;
            };
            let service = &live.instance.service;
            match beat {
                Beat::Ok => {
                    if live.failing {
                        tracing::info!(backend = BACKEND, %service, %id, "keep-alive recovered: the check is passing again");
                    }
                    live.failing = false;
                }
                Beat::Failed(error) => {
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
        }
        let now = Instant::now();
        if all_ok {
            self.backoff.reset();
            self.next_round = now + self.period;
        } else {
            self.next_round = now + self.backoff.next_delay().min(self.period);
        }
    }
}

/// One heartbeat of `instance`; registers it again if the agent forgot it.
async fn heartbeat(api: &Api, instance: &Instance, ttl: Duration) -> Beat {
    match api.pass(&instance.id).await {
        Heartbeat::Passed => Beat::Ok,
        Heartbeat::Failed(error) => Beat::Failed(error),
        Heartbeat::Forgotten(reason) => {
            tracing::warn!(backend = BACKEND, service = %instance.service, id = %instance.id, %reason,
                "the Consul agent no longer knows this instance (restarted without its state, or the service was removed); registering it again");
            match api.register(instance, ttl).await {
                Ok(()) => {
                    tracing::info!(backend = BACKEND, service = %instance.service, id = %instance.id,
                        "registered again after the agent forgot it");
                    Beat::Ok
                }
                Err(error) => Beat::Failed(error),
            }
        }
    }
}
