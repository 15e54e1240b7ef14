//! The registrar task: it owns the one lease of a registrar, the set of live
//! registrations, and the heartbeat that keeps the lease alive.
//!
//! Registrations talk to it through [`Command`]s; the heartbeat task reports
//! to it through [`Beat`]s. Everything that touches etcd runs under
//! `REGISTRY_TIMEOUT`, so one stuck call never blocks the task for long, and
//! the heartbeat runs on its own so that slow calls never delay keep-alives.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BACKEND, Ctx};
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::util::Backoff;

/// Puts per transaction when registering everything again (etcd allows 128
/// operations per transaction by default).
const PUTS_PER_TXN: usize = 64;

/// What registrations ask of the registrar task.
pub(super) enum Command {
    /// Put `instance` on the lease (taking one first if needed); the reply
    /// carries the registration's token.
    Register {
        instance: Instance,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Delete `key` if registration `token` still owns it.
    Deregister {
        key: String,
        token: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Let `key` expire one TTL from now, if registration `token` still owns it.
    Abandon { key: String, token: u64 },
}

/// What the heartbeat task reports.
enum Beat {
    /// The server renewed `lease`.
    Alive { lease: i64 },
    /// The server no longer knows `lease`.
    Gone { lease: i64, reason: String },
}

/// Starts the registrar task; it ends when every sender is dropped.
pub(super) fn spawn(ctx: Ctx) -> mpsc::UnboundedSender<Command> {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (beats_tx, beats) = mpsc::unbounded_channel();
    let actor = Actor {
        ctx,
        commands,
        beats_tx,
        beats,
        lease: None,
        live: BTreeMap::new(),
        pending: Vec::new(),
        next_token: 0,
        recover_at: None,
        backoff: Backoff::reconnect(),
    };
    tokio::spawn(actor.run());
    commands_tx
}

/// A registration the task keeps alive.
struct Live {
    instance: Instance,
    token: u64,
}

/// A deregistration or abandon that could not be confirmed yet: retried each
/// time the heartbeat renews `lease`, dropped if the lease is lost (its keys
/// are then gone with it).
struct Pending {
    key: String,
    lease: i64,
    action: Action,
}

enum Action {
    Delete,
    Abandon(Instance),
}

/// The lease in use and the task renewing it (stopped when this is dropped).
struct ActiveLease {
    id: i64,
    heartbeat: JoinHandle<()>,
}

impl Drop for ActiveLease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

struct Actor {
    ctx: Ctx,
    commands: mpsc::UnboundedReceiver<Command>,
    beats_tx: mpsc::UnboundedSender<Beat>,
    beats: mpsc::UnboundedReceiver<Beat>,
    lease: Option<ActiveLease>,
    /// Live registrations by key.
    live: BTreeMap<String, Live>,
    pending: Vec<Pending>,
    next_token: u64,
    /// When to try again to take a new lease and put everything back.
    recover_at: Option<Instant>,
    backoff: Backoff,
}

impl Actor {
    async fn run(mut self) {
        loop {
            let recover_at = self.recover_at;
            let recover = async move {
                match recover_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(beat) = self.beats.recv() => self.on_beat(beat).await,
                () = recover => self.recover().await,
            }
        }
        self.shutdown().await;
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Register { instance, reply } => {
                let key = self.ctx.instance_key(&instance);
                if reply.is_closed() {
                    // The caller's deadline passed while we were busy.
                    return;
                }
                let result = self.register(&key, &instance).await;
                let token = result.as_ref().ok().copied();
                if reply.send(result).is_err() {
                    if let Some(token) = token {
                        tracing::debug!(
                            backend = BACKEND,
                            key,
                            "register timed out on the caller's side; undoing it"
                        );
                        self.deregister(&key, token).await.ok();
                    }
                }
            }
            Command::Deregister { key, token, reply } => {
                let result = self.deregister(&key, token).await;
                // The caller may have given up; the outcome stands anyway.
                let _ = reply.send(result);
            }
            Command::Abandon { key, token } => self.abandon(&key, token).await,
        }
    }

    /// Puts `instance` on our lease, taking a lease first if there is none,
    /// and a new one if the server has forgotten ours.
    async fn register(&mut self, key: &str, instance: &Instance) -> Result<u64> {
        // A new registration of the key supersedes any unfinished removal.
        self.pending.retain(|p| p.key != key);
        let mut retried = false;
        loop {
            let lease = match &self.lease {
                Some(lease) => lease.id,
                None => self.establish().await?,
            };
            match self.put(key, instance, lease).await {
                Ok(()) => {
                    self.next_token += 1;
                    let token = self.next_token;
                    self.live.insert(
                        key.to_owned(),
                        Live {
                            instance: instance.clone(),
                            token,
                        },
                    );
                    return Ok(token);
                }
                Err(Error::LeaseLost { reason, .. }) if !retried => {
                    retried = true;
                    self.lost(lease, &reason);
                }
                Err(error) => {
                    // The put may have been applied before the error: make
                    // sure the key does not live on under our lease, unless
                    // an earlier registration of it is still live.
                    if !self.live.contains_key(key) {
                        self.pending.push(Pending {
                            key: key.to_owned(),
                            lease,
                            action: Action::Delete,
                        });
                    }
                    return Err(error);
                }
            }
        }
    }

    async fn deregister(&mut self, key: &str, token: u64) -> Result<()> {
        if !self.owns(key, token) {
            // Already gone, or re-registered since: nothing of ours to remove.
            return Ok(());
        }
        self.live.remove(key);
        let Some(lease) = self.lease.as_ref().map(|l| l.id) else {
            // The lease is gone, and our keys with it.
            return Ok(());
        };
        match self.delete_if_ours(key, lease).await {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::warn!(backend = BACKEND, key, %error,
                    "deregistration not confirmed; retrying while the lease lives");
                self.pending.push(Pending {
                    key: key.to_owned(),
                    lease,
                    action: Action::Delete,
                });
                Err(error)
            }
        }
    }

    async fn abandon(&mut self, key: &str, token: u64) {
        if !self.owns(key, token) {
            return;
        }
        let Some(live) = self.live.remove(key) else {
            return;
        };
        let Some(lease) = self.lease.as_ref().map(|l| l.id) else {
            return;
        };
        match self
            .move_to_expiring_lease(key, &live.instance, lease)
            .await
        {
            Ok(()) => tracing::info!(backend = BACKEND, key, ttl = ?self.ctx.ttl,
                "abandoned: the instance expires after its TTL"),
            Err(error) => {
                tracing::warn!(backend = BACKEND, key, %error, "abandon not applied yet; retrying");
                self.pending.push(Pending {
                    key: key.to_owned(),
                    lease,
                    action: Action::Abandon(live.instance),
                });
            }
        }
    }

    fn owns(&self, key: &str, token: u64) -> bool {
        self.live.get(key).is_some_and(|l| l.token == token)
    }

    async fn on_beat(&mut self, beat: Beat) {
        let current = self.lease.as_ref().map(|l| l.id);
        match beat {
            Beat::Alive { lease } if Some(lease) == current => self.retry_pending(lease).await,
            Beat::Gone { lease, reason } if Some(lease) == current => {
                self.lost(lease, &reason);
                self.recover().await;
            }
            // A beat of a lease we have already replaced.
            _ => {}
        }
    }

    /// Forgets `lease` (if it is ours): its keys are gone. Schedules putting
    /// the live instances back on a new lease.
    fn lost(&mut self, lease: i64, reason: &str) {
        if self.lease.as_ref().map(|l| l.id) != Some(lease) {
            return;
        }
        tracing::warn!(
            backend = BACKEND,
            lease = format_args!("{lease:x}"),
            reason,
            instances = self.live.len(),
            "etcd lease lost; taking a new one and registering again"
        );
        self.lease = None;
        self.pending.clear();
        if !self.live.is_empty() {
            self.recover_at = Some(Instant::now());
        }
    }

    /// Takes a new lease and puts every live instance back, or schedules
    /// another attempt after a backoff.
    async fn recover(&mut self) {
        self.recover_at = None;
        if self.lease.is_some() || self.live.is_empty() {
            return;
        }
        match self.establish().await {
            Ok(lease) => {
                self.backoff.reset();
                tracing::info!(
                    backend = BACKEND,
                    lease = format_args!("{lease:x}"),
                    instances = self.live.len(),
                    "etcd lease re-established; instances registered again"
                );
            }
            Err(error) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(backend = BACKEND, %error, retry_in = ?delay,
                    "could not register again yet");
                self.recover_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Grants a new lease, puts every live instance on it and starts its
    /// heartbeat. On failure the new lease is left to expire by itself.
    async fn establish(&mut self) -> Result<i64> {
        let (lease, ttl) = self.grant("grant lease").await?;
        let puts: Vec<TxnOp> = self
            .live
            .iter()
            .map(|(key, live)| {
                TxnOp::put(
                    key.as_str(),
                    live.instance.to_json(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        for chunk in puts.chunks(PUTS_PER_TXN) {
            self.txn("register", Txn::new().and_then(chunk.to_vec()))
                .await?;
        }
        let heartbeat = tokio::spawn(heartbeat(
            self.ctx.clone(),
            lease,
            ttl,
            self.beats_tx.clone(),
        ));
        self.lease = Some(ActiveLease {
            id: lease,
            heartbeat,
        });
        self.pending.clear();
        tracing::debug!(backend = BACKEND, lease = format_args!("{lease:x}"), ttl = ?ttl, "lease granted");
        Ok(lease)
    }

    /// Grants a lease of our TTL; returns its id and the TTL etcd granted
    /// (which may be longer than asked).
    async fn grant(&self, operation: &'static str) -> Result<(i64, Duration)> {
        let seconds = i64::try_from(self.ctx.ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let granted = self
            .ctx
            .call(operation, || {
                let mut lease = self.ctx.lease.clone();
                async move { lease.grant(seconds, None).await }
            })
            .await?;
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
        Ok((granted.id(), ttl))
    }

    async fn put(&self, key: &str, instance: &Instance, lease: i64) -> Result<()> {
        let value = instance.to_json();
        self.ctx
            .call("register", || {
                let mut kv = self.ctx.kv.clone();
                let (key, value) = (key.to_owned(), value.clone());
                async move {
                    kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        Ok(())
    }

    /// Deletes `key` if it is still attached to `lease` (another registrar
    /// may have registered the same id since).
    async fn delete_if_ours(&self, key: &str, lease: i64) -> Result<()> {
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn("deregister", txn).await
    }

    /// Moves `key` from `lease` to a new lease that nobody renews, so that
    /// it expires one TTL from now while `lease` keeps the others alive.
    async fn move_to_expiring_lease(
        &self,
        key: &str,
        instance: &Instance,
        lease: i64,
    ) -> Result<()> {
        let (expiring, _ttl) = self.grant("abandon").await?;
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key,
                instance.to_json(),
                Some(PutOptions::new().with_lease(expiring)),
            )]);
        self.txn("abandon", txn).await
    }

    async fn txn(&self, operation: &'static str, txn: Txn) -> Result<()> {
        self.ctx
            .call(operation, || {
                let mut kv = self.ctx.kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        Ok(())
    }

    /// Retries the removals and abandons that failed earlier, now that the
    /// server answers again.
    async fn retry_pending(&mut self, lease: i64) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for item in pending {
            if item.lease != lease {
                continue;
            }
            let result = match &item.action {
                Action::Delete => self.delete_if_ours(&item.key, lease).await,
                Action::Abandon(instance) => {
                    self.move_to_expiring_lease(&item.key, instance, lease)
                        .await
                }
            };
            match result {
                Ok(()) => tracing::info!(backend = BACKEND, key = %item.key,
                    "delayed deregistration or abandon applied"),
                Err(_) => self.pending.push(item),
            }
        }
    }

    /// Every handle is gone. With nothing live, revoke the lease now rather
    /// than letting it expire; keys being abandoned keep their TTL.
    async fn shutdown(mut self) {
        let abandoning = self
            .pending
            .iter()
            .any(|p| matches!(p.action, Action::Abandon(_)));
        let Some(lease) = self.lease.take() else {
            return;
        };
        if !self.live.is_empty() || abandoning {
            tracing::debug!(
                backend = BACKEND,
                "registrar stopped; its lease will expire after the TTL"
            );
            return;
        }
        let id = lease.id;
        drop(lease);
        let revoked = self
            .ctx
            .call("revoke lease", || {
                let mut lease = self.ctx.lease.clone();
                async move { lease.revoke(id).await }
            })
            .await;
        if let Err(error) = revoked {
            tracing::debug!(backend = BACKEND, %error, "could not revoke the lease; it expires after the TTL");
        }
    }
}

/// Renews `lease` every TTL/3 over one keep-alive stream, reopening the
/// stream (with backoff) when it breaks; reports each renewal, and ends after
/// reporting that the server no longer knows the lease.
async fn heartbeat(ctx: Ctx, lease: i64, ttl: Duration, beats: mpsc::UnboundedSender<Beat>) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    // Never wait longer than a period between attempts: a lease survives a
    // server restart only if renewed within its TTL of the restart.
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        period.min(Duration::from_secs(5)),
    );
    let mut stream = None;
    let mut broken_since: Option<Instant> = None;
    loop {
        let renewal = ctx
            .deadline("keep-alive", async {
                let (keeper, replies) = match &mut stream {
                    Some(open) => open,
                    None => {
                        // Opening the stream renews the lease once, and
                        // fails with "lease not found" for a TTL of 0.
                        let open = ctx
                            .call("keep-alive", || {
                                let mut client = ctx.lease.clone();
                                async move { client.keep_alive(lease).await }
                            })
                            .await?;
                        stream = Some(open);
                        return Ok(1);
                    }
                };
                keeper
                    .keep_alive()
                    .await
                    .map_err(|e| ctx.error("keep-alive", e))?;
                match replies.message().await {
                    Ok(Some(reply)) => Ok(reply.ttl()),
                    Ok(None) => Err(Error::unavailable(
                        BACKEND,
                        &*ctx.addr,
                        "the keep-alive stream was closed by the server",
                    )),
                    Err(e) => Err(ctx.error("keep-alive", e)),
                }
            })
            .await;
        match renewal {
            Ok(left) if left > 0 => {
                if let Some(since) = broken_since.take() {
                    tracing::info!(backend = BACKEND, lease = format_args!("{lease:x}"),
                        after = ?since.elapsed(), "lease keep-alive restored");
                }
                backoff.reset();
                if beats.send(Beat::Alive { lease }).is_err() {
                    return;
                }
                tokio::time::sleep(period).await;
            }
            Ok(_) => {
                let reason = "a keep-alive reply had TTL 0: the lease was revoked or has expired";
                let _ = beats.send(Beat::Gone {
                    lease,
                    reason: reason.to_owned(),
                });
                return;
            }
            Err(Error::LeaseLost { reason, .. }) => {
                let _ = beats.send(Beat::Gone { lease, reason });
                return;
            }
            Err(error) => {
                stream = None;
                if broken_since.is_none() {
                    tracing::warn!(backend = BACKEND, lease = format_args!("{lease:x}"), %error,
                        "lease keep-alive failed; retrying");
                    broken_since = Some(Instant::now());
                } else {
                    tracing::debug!(backend = BACKEND, %error, "lease keep-alive still failing");
                }
                backoff.wait().await;
            }
        }
    }
}
