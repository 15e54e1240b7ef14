//! The registrar task: it owns the one lease of a registrar, the set of live
//! registrations, and the heartbeat that keeps the lease alive.
//!
//! Registrations talk to it through [`Command`]s; the heartbeat task reports
//! to it through [`Beat`]s. Everything that touches etcd runs under
//! `REGISTRY_TIMEOUT`, so one stuck call never blocks the task for long, and
//! the heartbeat runs on its own so that slow calls never delay keep-alives.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{BACKEND, Ctx};
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::util::{Backoff, Outage};

/// Puts per transaction when registering everything again (etcd allows 128
/// operations per transaction by default).
const PUTS_PER_TXN: usize = 64;

/// Every how many renewals of the lease (one per TTL / 3) the registrar
/// checks that its keys are still there: about once per TTL.
const CHECK_EVERY_BEATS: u32 = 3;

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
    tokio::spawn(Actor::new(ctx, commands).run());
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
    /// Renewals since the last check of our keys (see [`Actor::check`]).
    beats_since_check: u32,
    /// When to try again to take a new lease and put everything back.
    recover_at: Option<Instant>,
    backoff: Backoff,
    /// Whether the periodic check of our keys is failing.
    check_outage: Outage,
    /// Whether retrying the pending removals and abandons is failing.
    pending_outage: Outage,
}

impl Actor {
    fn new(ctx: Ctx, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        let (beats_tx, beats) = mpsc::unbounded_channel();
        Actor {
            ctx,
            commands,
            beats_tx,
            beats,
            lease: None,
            live: BTreeMap::new(),
            pending: Vec::new(),
            next_token: 0,
            beats_since_check: 0,
            recover_at: None,
            backoff: Backoff::reconnect(),
            check_outage: Outage::default(),
            pending_outage: Outage::default(),
        }
    }

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
                let (result, previous) = match self.register(&key, &instance).await {
                    Ok((token, previous)) => (Ok(token), previous),
                    Err(error) => (Err(error), None),
                };
                let token = result.as_ref().ok().copied();
                if reply.send(result).is_err() {
                    if let Some(token) = token {
                        self.undo_register(&key, token, previous).await;
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

    /// Undoes registration `token` of `key`, whose caller stopped waiting
    /// for it (its deadline passed): nobody holds a handle on it, so it must
    /// not be kept alive. If it replaced a registration that a handle still
    /// holds, that one is put back, in `live` and in etcd; otherwise the key
    /// is removed.
    async fn undo_register(&mut self, key: &str, token: u64, previous: Option<Live>) {
        if !self.owns(key, token) {
            return;
        }
        let Some(previous) = previous else {
            tracing::debug!(
                backend = BACKEND,
                key,
                "register timed out on the caller's side; undoing it"
            );
            // A failure is logged and retried by `deregister` itself.
            let _ = self.deregister(key, token).await;
            return;
        };
        tracing::debug!(
            backend = BACKEND,
            key,
            "register timed out on the caller's side; restoring the registration it replaced"
        );
        let instance = previous.instance.clone();
        self.live.insert(key.to_owned(), previous);
        let Some(lease) = self.lease.as_ref().map(|l| l.id) else {
            // Recovery puts every live instance back on a new lease.
            return;
        };
        match self.put(key, &instance, lease).await {
            Ok(()) => {}
            Err(Error::LeaseLost { reason, .. }) => self.lost(lease, &reason),
            Err(error) => tracing::warn!(backend = BACKEND, key, %error,
                "could not restore a replaced registration yet; the next check retries"),
        }
    }

    /// Puts `instance` on our lease, taking a lease first if there is none,
    /// and a new one if the server has forgotten ours. Returns the new
    /// registration's token and the live registration of `key` it replaced.
    async fn register(&mut self, key: &str, instance: &Instance) -> Result<(u64, Option<Live>)> {
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
                    let previous = self.live.insert(
                        key.to_owned(),
                        Live {
                            instance: instance.clone(),
                            token,
                        },
                    );
                    return Ok((token, previous));
                }
                Err(Error::LeaseLost { reason, .. }) if !retried => {
                    retried = true;
                    self.lost(lease, &reason);
                }
                Err(error) => {
                    // The put may have been applied before the error: make
                    // sure the key does not live on under our lease, unless
                    // an earlier registration of it is still live (then the
                    // next check puts that one's value back).
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
            Beat::Alive { lease } if Some(lease) == current => {
                self.retry_pending(lease).await;
                self.beats_since_check += 1;
                if self.beats_since_check >= CHECK_EVERY_BEATS {
                    self.beats_since_check = 0;
                    self.check(lease).await;
                }
            }
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
        self.beats_since_check = 0;
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
            .call(operation, |member| {
                let mut lease = member.lease.clone();
                async move { lease.grant(seconds, None).await }
            })
            .await?;
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
        Ok((granted.id(), ttl))
    }

    async fn put(&self, key: &str, instance: &Instance, lease: i64) -> Result<()> {
        let value = instance.to_json();
        self.ctx
            .call("register", |member| {
                let mut kv = member.kv.clone();
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
            .call(operation, |member| {
                let mut kv = member.kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        Ok(())
    }

    /// Checks that every live key is still in etcd, on `lease`, with its
    /// instance's value, and puts back those that are not: another client
    /// may have deleted or overwritten one (`etcdctl del`, another registrar
    /// registering the same id) while our lease lives, and etcd tells the
    /// lease's owner nothing about that. One `Txn` of `Get`s per
    /// [`PUTS_PER_TXN`] keys, so the cost grows with our own keys only.
    /// The next check retries what failed; the first failure of a run is
    /// logged at warn, the others at debug, and the first success after
    /// them at info.
    async fn check(&mut self, lease: i64) {
        match self.check_keys(lease).await {
            Ok(()) => {
                if let Some(after) = self.check_outage.recovered() {
                    tracing::info!(backend = BACKEND, after = ?after,
                        "the periodic check of our keys works again");
                }
            }
            Err(error) => {
                if self.check_outage.failed() {
                    tracing::warn!(backend = BACKEND, lease = format_args!("{lease:x}"), %error,
                        "could not check or restore our keys; retrying at every check, about once per TTL (further failures are logged at debug until it works again)");
                } else {
                    tracing::debug!(backend = BACKEND, %error, "could not check or restore our keys, again");
                }
            }
        }
    }

    /// The work of [`Actor::check`]: the first failure, if any (a lost lease
    /// is handled here, and is not one).
    async fn check_keys(&mut self, lease: i64) -> Result<()> {
        let keys: Vec<&String> = self.live.keys().collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut found: BTreeMap<Vec<u8>, (i64, Vec<u8>)> = BTreeMap::new();
        for chunk in keys.chunks(PUTS_PER_TXN) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|key| TxnOp::get(key.as_str(), None))
                .collect();
            let response = self
                .ctx
                .call("check", |member| {
                    let mut kv = member.kv.clone();
                    let txn = Txn::new().and_then(gets.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
            for op in response.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    for kv in get.kvs() {
                        found.insert(kv.key().to_vec(), (kv.lease(), kv.value().to_vec()));
                    }
                }
            }
        }
        let stale: Vec<(String, Instance, &'static str)> = self
            .live
            .iter()
            .filter_map(|(key, live)| {
                let problem = match found.get(key.as_bytes()) {
                    None => "deleted",
                    Some((on, _)) if *on != lease => "not on our lease",
                    Some((_, value)) if *value != live.instance.to_json() => "overwritten",
                    Some(_) => return None,
                };
                Some((key.clone(), live.instance.clone(), problem))
            })
            .collect();
        let mut failure = None;
        for (key, instance, problem) in stale {
            match self.put(&key, &instance, lease).await {
                Ok(()) => tracing::warn!(
                    backend = BACKEND,
                    key,
                    problem,
                    "our key was changed by another client; restored"
                ),
                Err(Error::LeaseLost { reason, .. }) => {
                    self.lost(lease, &reason);
                    return Ok(());
                }
                Err(error) => {
                    tracing::debug!(backend = BACKEND, key, problem, %error,
                        "our key was changed by another client; could not restore it yet");
                    failure.get_or_insert(error);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Retries the removals and abandons that failed earlier, now that the
    /// server answers again.
    async fn retry_pending(&mut self, lease: i64) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut failure = None;
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
                Err(error) => {
                    failure.get_or_insert((item.key.clone(), error));
                    self.pending.push(item);
                }
            }
        }
        match failure {
            None => {
                if let Some(after) = self.pending_outage.recovered() {
                    tracing::info!(backend = BACKEND, after = ?after,
                        "retrying delayed deregistrations and abandons works again");
                }
            }
            Some((key, error)) => {
                let waiting = self.pending.len();
                if self.pending_outage.failed() {
                    tracing::warn!(backend = BACKEND, key, %error, waiting,
                        "a delayed deregistration or abandon failed again; retrying at every renewal of the lease (further failures are logged at debug until one works)");
                } else {
                    tracing::debug!(backend = BACKEND, key, %error, waiting,
                        "delayed deregistrations or abandons still failing");
                }
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
            .call("revoke lease", |member| {
                let mut lease = member.lease.clone();
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
                            .call("keep-alive", |member| {
                                let mut client = member.lease.clone();
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

#[cfg(test)]
mod tests {
    //! The registrar task driven step by step against a real etcd, for the
    //! paths no public call can reach on purpose.

    use etcd_client::GetOptions;

    use super::*;
    use crate::config::{BackendConfig, EtcdConfig, Settings};
    use crate::etcd::EtcdRegistry;

    async fn actor(endpoint: &str) -> Actor {
        let settings = Settings {
            backend: BackendConfig::Etcd(EtcdConfig {
                addr: vec![endpoint.to_owned()],
                prefix: "/services".to_owned(),
            }),
            ttl: Duration::from_secs(2),
            timeout: Duration::from_secs(3),
        };
        let BackendConfig::Etcd(config) = &settings.backend else {
            unreachable!("built just above")
        };
        let registry = EtcdRegistry::connect(config, &settings)
            .await
            .expect("connect to the test etcd");
        // The actor under test gets a channel of its own; the registry's
        // own task stays idle.
        let (_commands, receiver) = mpsc::unbounded_channel();
        Actor::new(registry.ctx.clone(), receiver)
    }

    /// The value and lease of `key`, if present.
    async fn stored(actor: &Actor, key: &str) -> Option<(Vec<u8>, i64)> {
        let mut kv = actor.ctx.member().kv.clone();
        let response = kv
            .get(key, Some(GetOptions::new()))
            .await
            .expect("read from the test etcd");
        response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.lease()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_reregistration_restores_the_one_it_replaced() {
        let etcd = tokio::task::block_in_place(testkit::EtcdServer::start)
            .expect("start etcd (install it with `apt-get install etcd-server etcd-client`)");
        let mut actor = actor(&etcd.endpoint()).await;
        let first = Instance::new("lorem", "a", "127.0.0.1", 8081);
        let second = Instance::new("lorem", "a", "127.0.0.1", 8082);
        let key = actor.ctx.instance_key(&first);

        let (token1, previous) = actor.register(&key, &first).await.expect("register");
        assert!(previous.is_none());
        let (token2, previous) = actor.register(&key, &second).await.expect("register again");
        assert!(actor.owns(&key, token2));
        assert_eq!(
            stored(&actor, &key).await.map(|s| s.0),
            Some(second.to_json())
        );

        // The caller of the second registration gave up: the first is back,
        // in `live` and in etcd, on the lease.
        actor.undo_register(&key, token2, previous).await;
        assert!(
            actor.owns(&key, token1),
            "the first registration is live again"
        );
        let lease = actor.lease.as_ref().map(|l| l.id).expect("a lease");
        assert_eq!(stored(&actor, &key).await, Some((first.to_json(), lease)));

        // Without an earlier registration, giving up removes the key.
        let other = Instance::new("lorem", "b", "127.0.0.1", 8083);
        let other_key = actor.ctx.instance_key(&other);
        let (token, previous) = actor.register(&other_key, &other).await.expect("register");
        actor.undo_register(&other_key, token, previous).await;
        assert!(!actor.live.contains_key(&other_key));
        assert_eq!(stored(&actor, &other_key).await, None);
        assert_eq!(stored(&actor, &key).await, Some((first.to_json(), lease)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_check_puts_back_deleted_moved_and_overwritten_keys() {
        let etcd = tokio::task::block_in_place(testkit::EtcdServer::start)
            .expect("start etcd (install it with `apt-get install etcd-server etcd-client`)");
        let mut actor = actor(&etcd.endpoint()).await;
        let mut keys = Vec::new();
        for id in ["a", "b", "c", "d"] {
            let instance = Instance::new("lorem", id, "127.0.0.1", 8080);
            let key = actor.ctx.instance_key(&instance);
            actor.register(&key, &instance).await.expect("register");
            keys.push((key, instance));
        }
        let lease = actor.lease.as_ref().map(|l| l.id).expect("a lease");
        let mut kv = actor.ctx.member().kv.clone();
        kv.delete(keys[0].0.as_str(), None).await.expect("delete");
        kv.put(keys[1].0.as_str(), "garbage", None)
            .await
            .expect("overwrite");
        let json = keys[2].1.to_json();
        kv.put(keys[2].0.as_str(), json, None)
            .await
            .expect("detach from the lease");

        actor.check(lease).await;
        for (key, instance) in &keys {
            assert_eq!(
                stored(&actor, key).await,
                Some((instance.to_json(), lease)),
                "{key} restored"
            );
        }
    }
}
