//! The etcd side of the registrar core: one lease per registrar, one key per
//! instance attached to it.
//!
//! The state machine (when to renew, re-register, undo, retry, give way)
//! is the core's (`crate::registrar`); this file only says how each step is
//! done with etcd's requests.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::Mutex;

use super::{BACKEND, Ctx};
use crate::error::{Error, Result};
use crate::record::{Store, owner_of};
use crate::registrar::{Backend, Found, Record, Renewal};

/// Gets per transaction when checking our keys (etcd allows 128 operations
/// per transaction by default).
const GETS_PER_TXN: usize = 64;

/// How many times a put races with another client's writes to the same key
/// before giving up on one request.
const MAX_RACES: usize = 5;

/// An open keep-alive stream.
struct KeepAliveStream {
    lease: i64,
    /// Which member it goes to (see `Members`).
    member: usize,
    keeper: LeaseKeeper,
    replies: LeaseKeepAliveStream,
}

/// The etcd [`Backend`]: leases, and keys on them.
pub(super) struct Leases {
    ctx: Ctx,
    /// The open keep-alive stream, the lease it renews and the member it
    /// goes to. Taken out for the duration of a renewal and put back only
    /// after a good answer, so that a renewal cut short by its deadline
    /// leaves no half-read stream behind: the next one opens a fresh stream.
    keep_alive: Mutex<Option<KeepAliveStream>>,
}

impl Leases {
    pub(super) fn new(ctx: Ctx) -> Self {
        Leases {
            ctx,
            keep_alive: Mutex::new(None),
        }
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

    async fn txn(&self, operation: &'static str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.ctx
            .call(operation, |member| {
                let mut kv = member.kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await
    }

    /// How long one renewal attempt may wait for a member: half of the
    /// core's renewal deadline (min(`REGISTRY_TIMEOUT`, TTL/3)), so that a
    /// member that hangs costs one attempt and the same renewal still
    /// reaches another member in time.
    fn attempt(&self) -> Duration {
        (self.ctx.timeout.min(self.ctx.ttl / 3) / 2).max(Duration::from_millis(25))
    }

    /// One renewal over the keep-alive stream (opened first if needed, on
    /// the member calls start at); the TTL etcd has left for the lease. A
    /// stream whose member does not answer within [`Leases::attempt`] is
    /// dropped, that member skipped, and a new stream opened on the next.
    async fn renew_once(&self, lease: i64) -> Result<i64> {
        let mut slot = self.keep_alive.lock().await;
        if let Some(mut open) = slot.take().filter(|open| open.lease == lease) {
            let renewal = tokio::time::timeout(self.attempt(), async {
                open.keeper
                    .keep_alive()
                    .await
                    .map_err(|e| self.ctx.error("keep-alive", e))?;
                match open.replies.message().await {
                    Ok(Some(reply)) => Ok(reply.ttl()),
                    Ok(None) => Err(Error::unavailable(
                        BACKEND,
                        &*self.ctx.addr,
                        "the keep-alive stream was closed by the server",
                    )),
                    Err(e) => Err(self.ctx.error("keep-alive", e)),
                }
            })
            .await;
            match renewal {
                Ok(Ok(left)) => {
                    *slot = Some(open);
                    return Ok(left);
                }
                Ok(Err(error @ Error::LeaseLost { .. })) => return Err(error),
                Ok(Err(error)) => {
                    tracing::debug!(backend = BACKEND, %error, "keep-alive stream failed; opening another");
                    self.ctx.members.skip(open.member);
                }
                Err(_) => {
                    tracing::debug!(backend = BACKEND, attempt = ?self.attempt(),
                        "keep-alive got no answer in time; opening a stream on another member");
                    self.ctx.members.skip(open.member);
                }
            }
        }
        // Opening the stream renews the lease once, and fails with "lease
        // not found" for a lease etcd no longer knows.
        let (member, keeper, replies) = self
            .ctx
            .call_within("keep-alive", self.attempt(), |member| {
                let mut client = member.lease.clone();
                let index = member.index;
                async move {
                    client
                        .keep_alive(lease)
                        .await
                        .map(|(keeper, replies)| (index, keeper, replies))
                }
            })
            .await?;
        *slot = Some(KeepAliveStream {
            lease,
            member,
            keeper,
            replies,
        });
        Ok(1)
    }
}

#[async_trait]
impl Backend for Leases {
    type Lease = i64;
    const NAME: &'static str = BACKEND;

    async fn open(&self) -> Result<i64> {
        let (lease, ttl) = self.grant("grant lease").await?;
        tracing::debug!(backend = BACKEND, lease = format_args!("{lease:x}"), ttl = ?ttl, "lease granted");
        Ok(lease)
    }

    /// `Txn { if version(key) == 0 then Put key lease=L else Get key }`: the
    /// common case (a new id) in one round trip, and the holder of a taken
    /// id read in that same round trip. A key holding our own token (our
    /// earlier registration of the id, or a leftover of an earlier lease of
    /// ours) or no token at all (written by a tool) is replaced, guarded by
    /// its revision; another registrar's token is a refusal.
    async fn put(&self, lease: &i64, record: &Record) -> Result<()> {
        let key = self.ctx.instance_key(&record.instance);
        let value = record.encode(&self.ctx.interop, Store::Etcd);
        let on_lease = || Some(PutOptions::new().with_lease(*lease));
        let mut txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.clone(), on_lease())])
            .or_else([TxnOp::get(key.as_str(), None)]);
        for _ in 0..MAX_RACES {
            let response = self.txn("register", txn).await?;
            if response.succeeded() {
                return Ok(());
            }
            let found = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            let Some(found) = found else {
                // Deleted in between: create it.
                txn = Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), value.clone(), on_lease())])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                continue;
            };
            match owner_of(found.value()) {
                Some(holder) if *holder != *record.owner => {
                    return Err(Error::AlreadyRegistered {
                        backend: BACKEND,
                        service: record.instance.service.clone(),
                        id: record.instance.id.clone(),
                        holder,
                    });
                }
                Some(_) => {}
                None => tracing::warn!(
                    backend = BACKEND,
                    key,
                    "replacing a record without an owner token (written by a tool or another framework)"
                ),
            }
            txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    found.mod_revision(),
                )])
                .and_then([TxnOp::put(key.as_str(), value.clone(), on_lease())])
                .or_else([TxnOp::get(key.as_str(), None)]);
        }
        Err(Error::Rejected {
            backend: BACKEND,
            operation: "register",
            reason: format!(
                "key {key} kept changing under us ({MAX_RACES} attempts); is another client writing it?"
            ),
        })
    }

    /// `Txn { if lease(key) == L then Delete key }`: never another
    /// registrar's key, nor one moved off our lease.
    async fn delete(&self, lease: &i64, record: &Record) -> Result<()> {
        let key = self.ctx.instance_key(&record.instance);
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, *lease)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.txn("deregister", txn).await.map(drop)
    }

    /// Moves the key from our lease to a new lease that nobody renews, so
    /// that it expires one TTL from now while our lease keeps the others.
    async fn abandon(&self, lease: &i64, record: &Record) -> Result<()> {
        let key = self.ctx.instance_key(&record.instance);
        let (expiring, _ttl) = self.grant("abandon").await?;
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, *lease)])
            .and_then([TxnOp::put(
                key.as_str(),
                record.encode(&self.ctx.interop, Store::Etcd),
                Some(PutOptions::new().with_lease(expiring)),
            )]);
        self.txn("abandon", txn).await.map(drop)
    }

    async fn renew(&self, lease: &i64, _records: &[Record]) -> Result<Renewal> {
        match self.renew_once(*lease).await {
            Ok(left) if left > 0 => Ok(Renewal::Alive),
            Ok(_) => Ok(Renewal::Lost(
                "a keep-alive reply had TTL 0: the lease was revoked or has expired".to_owned(),
            )),
            Err(Error::LeaseLost { reason, .. }) => Ok(Renewal::Lost(reason)),
            Err(error) => Err(error),
        }
    }

    /// One `Txn` of `Get`s per [`GETS_PER_TXN`] of our keys (never the
    /// whole prefix), so the cost grows with our own keys only.
    async fn verify(&self, lease: &i64, records: &[Record]) -> Result<Vec<Found>> {
        let mut found = Vec::with_capacity(records.len());
        for chunk in records.chunks(GETS_PER_TXN) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|r| self.ctx.instance_key(&r.instance))
                .collect();
            let gets: Vec<TxnOp> = keys
                .iter()
                .map(|key| TxnOp::get(key.as_str(), None))
                .collect();
            let response = self.txn("check", Txn::new().and_then(gets)).await?;
            let mut stored = std::collections::HashMap::new();
            for op in response.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    for kv in get.kvs() {
                        stored.insert(kv.key().to_vec(), (kv.lease(), kv.value().to_vec()));
                    }
                }
            }
            for (record, key) in chunk.iter().zip(&keys) {
                found.push(match stored.get(key.as_bytes()) {
                    None => Found::Missing,
                    Some((on, value)) => match owner_of(value) {
                        Some(holder) if *holder != *record.owner => Found::Held { holder },
                        _ if *on != *lease
                            || *value != record.encode(&self.ctx.interop, Store::Etcd) =>
                        {
                            Found::Changed
                        }
                        _ => Found::Ours,
                    },
                });
            }
        }
        Ok(found)
    }

    fn forget(&self, _lease: &i64) {
        if let Ok(mut slot) = self.keep_alive.try_lock() {
            *slot = None;
        }
    }

    /// Revokes the lease: its keys go at once rather than after the TTL.
    async fn close(&self, lease: i64) {
        let revoked = self
            .ctx
            .call("revoke lease", |member| {
                let mut client = member.lease.clone();
                async move { client.revoke(lease).await }
            })
            .await;
        if let Err(error) = revoked {
            tracing::debug!(backend = BACKEND, %error, "could not revoke the lease; it expires after the TTL");
        }
    }
}
