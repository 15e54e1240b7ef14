//! The etcd backend: one lease per registrar, one key per instance.
//!
//! | operation   | etcd (v3 API, through `etcd-client`)                                        |
//! |-------------|-----------------------------------------------------------------------------|
//! | connect     | one gRPC channel per endpoint (TLS with `REGISTRY_CA`, client certificate);  |
//! |             | with a user, `Authenticate` on each member, then a `Range` (count only) on   |
//! |             | every member at once: the first to answer is enough, and is where calls start|
//! | auth token  | refreshed by etcd-client when etcd answers "invalid auth token" (expired    |
//! |             | simple token, server restart); the call is retried once                      |
//! | register    | `LeaseGrant` (TTL = `REGISTRY_TTL`, once per registrar), then             |
//! |             | `Txn { if version(key) == 0 then Put key lease=L else Get key }`: a taken  |
//! |             | id's holder is read in the same round trip (refused if another owner's)    |
//! | keep alive  | `LeaseKeepAlive` every granted TTL / 3 on one stream; a reply with TTL 0     |
//! |             | means the lease is gone: grant a new one and `Put` every live key again     |
//! | check       | every 3rd renewal (about once per TTL): `Txn { Get key... }` over our keys; |
//! |             | put back each one missing, on another lease or changed without another       |
//! |             | registrar's owner token; give way (stop renewing it) if another owns it      |
//! | deregister  | `Txn { if lease(key) == L then Delete key }`                                  |
//! | abandon     | `LeaseGrant` (never kept alive) + `Txn { if lease(key) == L then Put key     |
//! |             | lease=new }`: the key expires one TTL later, as after a crash                |
//! | deregister_instance | `Delete <prefix>/<service>/<id>`, whatever lease (or none) it has; a |
//! |             | live owner puts it back at its next check (about one TTL)                    |
//! | instances   | `Range <prefix>/<service>/` page by page, all pages at one revision          |
//! | services    | `Range <prefix>/` page by page, skipping past each service once it is found  |
//! | watch       | `Range` at revision R, then `Watch <prefix>/<service>/` from R + 1; a        |
//! |             | `WatchProgressRequest` whenever the stream is quiet, to notice a hung member |
//!
//! # Storage layout
//!
//! Each instance is one key, `<prefix>/<service>/<id>` (the prefix is
//! `REGISTRY_PREFIX`, `/services` by default), whose value is the instance's
//! JSON ([`Instance::to_json`]) plus the `owner` token of the registrar that
//! wrote it, and which is attached to its registrar's lease, so it
//! disappears by itself one TTL after its process stops renewing that lease:
//!
//! ```text
//! $ etcdctl get --prefix /services/lorem/
//! /services/lorem/lorem-1
//! {"id":"lorem-1","service":"lorem","address":"127.0.0.1","port":8081,"tags":["v1"],"metadata":{},"weight":1,"owner":"pid4242-5f0c2a9e1b7d"}
//! /services/lorem/lorem-2
//! {"id":"lorem-2","service":"lorem","address":"127.0.0.1","port":8082,"tags":[],"metadata":{"zone":"eu"},"weight":2,"owner":"pid4243-07aa31c94e20"}
//! ```
//!
//! Any tool can register an instance by writing that JSON under that key
//! (with or without a lease): `etcdctl put /services/lorem/x '{"id":"x",...}'`.
//! Kratos' `ServiceInstance` JSON and go-kit's plain `host:port` values are
//! read too, and our values can carry Kratos' fields or be go-kit's plain
//! value ([`crate::interop`]). Values that are none of these, or whose
//! `service`/`id` differ from their key, are skipped with a warning (once per
//! value at a key).
//!
//! # Recovery
//!
//! - A broken keep-alive stream (server restart, network trouble) is reopened
//!   with backoff; the lease survives as long as the server still knows it.
//! - A lease the server no longer knows (revoked with `etcdctl lease revoke`,
//!   expired during a partition, data lost in a restart) is replaced by a new
//!   one and every live instance is put again, retried with backoff.
//! - A watch whose history was compacted, or whose stream broke, reads a
//!   fresh snapshot and watches again from its revision; it emits the fresh
//!   snapshot only if it differs, and never an empty set in between.
//! - A watch that cannot read sends one `Err` item per outage and keeps
//!   retrying with backoff; the next `Ok` is a full snapshot, sent even if
//!   unchanged (the contract of [`WatchStream`], kept by the shared sink).
//! - Every request goes to one member at a time, each member through a
//!   channel of its own, starting with the member that answered last. An
//!   attempt that fails with a transport error (or "no leader"), or that
//!   gets no answer within 1 s (a hung member: it accepts connections and
//!   never answers), moves on to the next member at once; after every
//!   member has been tried the loop backs off and doubles the per-attempt
//!   deadline, until `REGISTRY_TIMEOUT`. With one member of three hung, a
//!   call is answered within about 1 s, and the calls after it at once.
//!   With a single endpoint an attempt may use the whole timeout.
//! - `connect` asks every member at once and succeeds as soon as one
//!   answers, so a hung member cannot hold it up.
//! - A watch asks for a progress report whenever its stream has been quiet
//!   for a quarter of max(2 x TTL, 5 s), and gives the answer as long
//!   again. If nothing comes back the member is taken as hung: the watch
//!   reads again from another member and continues from that read's
//!   revision, with no `Err` item and, if nothing changed meanwhile, no
//!   snapshot. If no member answers that read within the other half of the
//!   limit, the watch sends its one `Err`: a hung registry is reported
//!   within about max(2 x TTL, 5 s).
//! - A key deleted or overwritten by another client while our lease lives
//!   (`etcdctl del /services/lorem/x`, a put without our lease) is noticed by
//!   the check that follows every third renewal, about once per TTL: it
//!   reads our own keys (one `Txn` of `Get`s per 64 keys, never the whole
//!   prefix) and puts back, with a warning, each one that is missing, on
//!   another lease or holding other data without an owner token.
//! - Ids are unique within a service: registering an id whose key holds
//!   another registrar's owner token is refused with
//!   [`Error::AlreadyRegistered`] (see `crate::registrar` for the rule and
//!   why), and a key of ours later found holding another registrar's token
//!   is given up, never fought over.

mod config;
mod lease;
mod read;

pub use self::config::{Builder, Config};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KvClient, LeaseClient, TlsOptions,
    WatchClient,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::backoff::Backoff;
use crate::endpoint::endpoints_or_default;
use crate::error::{Error, Result, with_deadline};
use crate::interop::Interop;
use crate::model::{Instance, validate_name};
use crate::registrar::Registrar as Core;
use crate::security::{Secret, TlsFiles};
use crate::timing::Timing;
use crate::traits::{Registrar, Registration, WatchStream, Watcher};
use crate::watch_sink::spawn_watch_of;

const BACKEND: &str = "etcd";
const DEFAULT_ADDR: &str = "127.0.0.1:2379";
/// Keys read by the first `Range` request of a paged read: small enough
/// for a page of the largest instances the model allows to fit the
/// decoding limit below. Later pages grow to about [`PAGE_BYTES`] by the
/// largest record seen so far (see `etcd/read.rs`).
const DEFAULT_PAGE_SIZE: usize = 128;
/// What a grown page aims at: a sixteenth of the decoding limit, so that a
/// page of records up to 16 times the largest seen still decodes (a page
/// that does not is read again with half as many keys).
const PAGE_BYTES: usize = MAX_DECODING_BYTES / 16;
/// The most keys one grown page asks for.
const MAX_PAGE_SIZE: usize = 8192;
/// gRPC decoding limit for range replies (tonic's default is 4 MiB).
const MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;
/// The deadline of one attempt on one member when the cluster has another
/// member to try: short enough that a call whose first member hangs is
/// answered by another within about 2 s, long enough for any of our
/// requests on a loaded machine (the deadline doubles after every round of
/// members, so a slow cluster still answers).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 ping interval; etcd refuses pings more often than every 5 s.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);

/// A registrar and watcher over an etcd cluster.
///
/// Cheap to clone: clones share one gRPC channel per member and one
/// registrar task, which holds ONE lease for all the registrations made
/// through any of them.
#[derive(Clone)]
pub struct EtcdRegistry {
    ctx: Ctx,
    registrar: Core<lease::Leases>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("addr", &self.ctx.addr)
            .field("prefix", &self.ctx.prefix)
            .field("ttl", &self.ctx.ttl)
            .field("timeout", &self.ctx.timeout)
            .field("owner", &self.registrar.owner())
            .finish_non_exhaustive()
    }
}

/// One etcd member: a gRPC channel to its endpoint alone, and the clients
/// over it. A request sent through these goes to this member and no other,
/// so that a member that hangs (accepts TCP, never answers) costs one short
/// attempt and the next attempt goes elsewhere; a channel balanced over
/// every endpoint would keep picking the hung one.
#[derive(Clone)]
pub(super) struct Member {
    /// Which member of [`Members`] this is.
    pub(super) index: usize,
    /// `http://host:port`, for logs and errors.
    pub(super) endpoint: Arc<str>,
    /// Reads, writes and transactions.
    pub(super) kv: KvClient,
    /// Lease grants, keep-alives and revokes.
    pub(super) lease: LeaseClient,
    /// Watch streams.
    pub(super) watch: WatchClient,
    /// The client the others came from: it holds the user's credentials
    /// and auth token, shared with them (see [`authenticate`]).
    client: Client,
    /// Whether this member gave us an auth token (always true without a
    /// user): from then on etcd-client refreshes it by itself whenever etcd
    /// answers "invalid auth token" (expired, or lost in a restart), and
    /// retries the call once.
    authenticated: Arc<std::sync::atomic::AtomicBool>,
}

/// Every member of the cluster, and the one to try first.
struct Members {
    list: Vec<Member>,
    /// The member that answered last: calls start there, so that once a
    /// member hangs only the first call after it pays for the failover.
    preferred: AtomicUsize,
}

impl Members {
    /// The index of the member to try first.
    fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.list.len()
    }

    /// `index` answered: start there next time.
    fn answered(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    /// `index` stopped answering (a watch noticed): if calls still start
    /// there, start at the next member instead.
    fn skip(&self, index: usize) {
        let next = (index + 1) % self.list.len();
        let _ = self
            .preferred
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What every etcd call needs: the members, where the keys live, the limits.
#[derive(Clone)]
struct Ctx {
    members: Arc<Members>,
    /// `REGISTRY_PREFIX`, without a trailing slash.
    prefix: Arc<str>,
    /// The endpoints, comma-separated, for error messages.
    addr: Arc<str>,
    ttl: Duration,
    timeout: Duration,
    /// The deadline of one attempt on one member, when there is another
    /// member to try: see [`ATTEMPT_TIMEOUT`].
    attempt: Duration,
    /// Keys of a paged read's first page.
    page_size: usize,
    /// Whether later pages grow (false once a test fixed the page size).
    grow_pages: bool,
    /// Test knob: a pause between a watch's snapshot and its watch request.
    watch_start_delay: Duration,
    /// How foreign records are read and ours written.
    interop: Arc<Interop>,
    /// `REGISTRY_USER` and `REGISTRY_PASSWORD`, if set.
    credentials: Option<Arc<(String, Secret)>>,
}

impl Ctx {
    /// `<prefix>/<service>/`: every instance of `service`, and nothing else.
    fn service_prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.prefix)
    }

    /// `<prefix>/<service>/<id>`.
    fn instance_key(&self, instance: &Instance) -> String {
        format!("{}/{}/{}", self.prefix, instance.service, instance.id)
    }

    /// Turns an etcd client error into ours, naming what we were doing.
    fn error(&self, operation: &'static str, error: etcd_client::Error) -> Error {
        map_error(&self.addr, operation, error)
    }

    /// Runs one etcd request with the default per-attempt deadline: see
    /// [`Ctx::call_within`].
    async fn call<T, F, Fut>(&self, operation: &'static str, request: F) -> Result<T>
    where
        F: FnMut(&Member) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(operation, self.attempt, request).await
    }

    /// Runs one etcd request under `REGISTRY_TIMEOUT`, member by member.
    ///
    /// `request` is given the member to send it to. The first attempt goes
    /// to the member that answered last; an attempt that fails with a
    /// transport error, "no leader" or the like, or that gets no answer
    /// within `attempt` (a hung member: it accepts the connection and never
    /// answers), moves on to the next member at once. After every member
    /// has been tried the loop backs off a little and doubles `attempt`, so
    /// that a cluster that is merely slow still gets to answer, until the
    /// whole call reaches `REGISTRY_TIMEOUT`. With a single member there is
    /// nowhere else to go, and its attempts may use the whole timeout.
    ///
    /// The registrar's lease keep-alive calls this with
    /// `min(REGISTRY_TIMEOUT, TTL/3)`: a renewal must reach a live member
    /// well within the lease's TTL. Every request we make is idempotent or
    /// harmless to repeat.
    async fn call_within<T, F, Fut>(
        &self,
        operation: &'static str,
        attempt: Duration,
        mut request: F,
    ) -> Result<T>
    where
        F: FnMut(&Member) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let members = &self.members.list;
        let n = members.len();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let mut attempt = if n == 1 {
            self.timeout
        } else {
            attempt.clamp(Duration::from_millis(1), self.timeout)
        };
        let mut index = self.members.preferred();
        let mut tried = 0;
        let mut last = None;
        loop {
            let member = &members[index];
            let until = (tokio::time::Instant::now() + attempt).min(deadline);
            match tokio::time::timeout_at(until, request(member)).await {
                Ok(Ok(value)) => {
                    self.members.answered(index);
                    return Ok(value);
                }
                Ok(Err(error)) if kind_of(&error) != Kind::Unavailable => {
                    return Err(self.error(operation, error));
                }
                Ok(Err(error)) => {
                    tracing::debug!(backend = BACKEND, operation, member = %member.endpoint, %error,
                        "etcd request failed; trying the next member");
                    last = Some(error);
                }
                Err(_) => {
                    tracing::debug!(backend = BACKEND, operation, member = %member.endpoint, ?attempt,
                        "etcd member did not answer in time; trying the next member");
                }
            }
            index = (index + 1) % n;
            tried += 1;
            let mut next = tokio::time::Instant::now();
            if tried % n == 0 {
                attempt = (attempt * 2).min(self.timeout);
                next += backoff.next_delay();
            }
            if next >= deadline {
                return Err(match last {
                    Some(error) => self.error(operation, error),
                    None => Error::Timeout {
                        backend: BACKEND,
                        operation,
                        after: self.timeout,
                    },
                });
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Runs `fut` under `REGISTRY_TIMEOUT`.
    async fn deadline<T>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        with_deadline(BACKEND, operation, self.timeout, fut).await
    }
}

// gRPC status codes (stable numbers from the gRPC spec), so that we need not
// name tonic's types.
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_NOT_FOUND: i32 = 5;
const GRPC_OUT_OF_RANGE: i32 = 11;
const GRPC_INTERNAL: i32 = 13;
const GRPC_UNAVAILABLE: i32 = 14;

/// How we treat a gRPC status from etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Transport trouble, no leader, a deadline: may go away by itself.
    Unavailable,
    /// The lease we named is unknown to the server.
    LeaseLost,
    /// The requested revision was compacted away.
    Compacted,
    /// A refusal of a well-formed request (permission, quota...).
    Rejected,
}

/// The TLS settings of every member's channel: the CA to trust, the client
/// certificate, and the name to expect when it is not the endpoint's host.
fn tls_options(tls: TlsFiles) -> Result<TlsOptions> {
    let mut options = TlsOptions::new();
    if let Some(ca) = tls.ca {
        options = options.ca_certificate(Certificate::from_pem(ca));
    } else {
        return Err(Error::InvalidConfig(
            "etcd: TLS needs ca (REGISTRY_CA), the PEM file of the CA that signed the members' \
             certificates"
                .to_owned(),
        ));
    }
    if let Some((cert, key)) = tls.identity {
        options = options.identity(Identity::from_pem(cert, key.expose()));
    }
    if let Some(name) = tls.server_name {
        options = options.domain_name(name);
    }
    Ok(options)
}

/// Sorts a gRPC status code and message into a [`Kind`].
fn classify(code: i32, message: &str) -> Kind {
    match code {
        GRPC_CANCELLED
        | GRPC_UNKNOWN
        | GRPC_DEADLINE_EXCEEDED
        | GRPC_INTERNAL
        | GRPC_UNAVAILABLE => Kind::Unavailable,
        GRPC_NOT_FOUND if message.contains("lease not found") => Kind::LeaseLost,
        GRPC_OUT_OF_RANGE if message.contains("compacted") => Kind::Compacted,
        _ => Kind::Rejected,
    }
}

/// The [`Kind`] of an etcd client error; errors without a gRPC status are
/// transport errors.
fn kind_of(error: &etcd_client::Error) -> Kind {
    match error {
        etcd_client::Error::GRpcStatus(status) => classify(status.code().into(), status.message()),
        // `LeaseClient::keep_alive` checks the first reply itself and says
        // so when its TTL is 0.
        etcd_client::Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            Kind::LeaseLost
        }
        _ => Kind::Unavailable,
    }
}

/// The whole cause chain of an etcd client error (tonic hides the TLS
/// failure a few sources down), with the likely cause in our settings'
/// words when it is a TLS or login failure.
fn describe(error: &etcd_client::Error) -> String {
    with_hint(crate::security::chain(error))
}

/// Whether a transport error is a certificate refused by one side (ours or
/// the member's), which retrying will not fix.
fn is_certificate_failure(error: &etcd_client::Error) -> bool {
    let text = crate::security::chain(error).to_ascii_lowercase();
    text.contains("invalid peer certificate") || text.contains("fatal alert")
}

/// `text`, plus "(likely: ...)" naming the setting when it reads like a TLS
/// or login failure.
fn with_hint(mut text: String) -> String {
    if let Some(hint) = crate::security::diagnose(&text) {
        text.push_str(" (likely: ");
        text.push_str(hint);
        text.push(')');
    }
    text
}

/// Turns an etcd client error into ours: transport trouble is `Unavailable`
/// (naming `addr`), an unknown lease is `LeaseLost`, other refusals are
/// `Rejected`.
fn map_error(addr: &str, operation: &'static str, error: etcd_client::Error) -> Error {
    let message = match &error {
        etcd_client::Error::GRpcStatus(status) => with_hint(status.message().to_owned()),
        other => other.to_string(),
    };
    match kind_of(&error) {
        Kind::Unavailable | Kind::Compacted => match crate::security::diagnose(&describe(&error)) {
            // TLS and login failures say which setting is wrong.
            Some(_) => Error::unavailable(BACKEND, addr, describe(&error)),
            None => Error::unavailable(BACKEND, addr, error),
        },
        Kind::LeaseLost => Error::LeaseLost {
            backend: BACKEND,
            reason: format!("{operation}: {message}"),
        },
        Kind::Rejected => Error::Rejected {
            backend: BACKEND,
            operation,
            reason: message,
        },
    }
}

/// Proves, within `REGISTRY_TIMEOUT`, that at least one member answers: one
/// count-only `Range` on every member at once, each retried on transport
/// errors; the first answer wins (and that member is tried first by the
/// calls that follow), so a hung member cannot hold up `connect`.
///
/// # Errors
/// The first refusal (`Rejected`: a wrong password, a missing permission) if a
/// member refused; otherwise [`Error::Unavailable`] naming every endpoint
/// and what each one did.
async fn probe(ctx: &Ctx, tls: Option<&TlsFiles>) -> Result<()> {
    let result = probe_members(ctx, tls).await;
    if result.is_ok() && ctx.credentials.is_some() {
        // Members that did not answer in time authenticate in the
        // background, so that calls failing over to them carry a token.
        for member in ctx
            .members
            .list
            .iter()
            .filter(|m| !m.authenticated.load(Ordering::Relaxed))
        {
            tokio::spawn(authenticate_later(
                Arc::downgrade(&ctx.members),
                member.index,
                ctx.credentials.clone(),
            ));
        }
    }
    result
}

/// Logs in on `member` once (`Authenticate`), unless it already has a token
/// or no user is configured. etcd-client keeps the credentials with the
/// member's client and from then on re-authenticates by itself when etcd
/// answers "invalid auth token" (a simple token unused for
/// `--auth-token-ttl`, or lost in a restart), retrying that call once: no
/// call fails because a token expired.
async fn authenticate(
    member: &Member,
    credentials: Option<&(String, Secret)>,
) -> std::result::Result<(), etcd_client::Error> {
    let Some((user, password)) = credentials else {
        return Ok(());
    };
    if member.authenticated.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut client = member.client.clone();
    client
        .update_user(Some((user.clone(), password.expose().to_owned())))
        .await?;
    member.authenticated.store(true, Ordering::Relaxed);
    Ok(())
}

/// [`authenticate`] in the background for a member that did not answer at
/// connect time: retried with backoff (up to 5 s apart) until it works, the
/// credentials are refused, or the registry is dropped.
async fn authenticate_later(
    members: std::sync::Weak<Members>,
    index: usize,
    credentials: Option<Arc<(String, Secret)>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        backoff.wait().await;
        let Some(members) = members.upgrade() else {
            return;
        };
        let member = &members.list[index];
        match tokio::time::timeout(
            ATTEMPT_TIMEOUT * 2,
            authenticate(member, credentials.as_deref()),
        )
        .await
        {
            Ok(Ok(())) => return,
            Ok(Err(error)) if kind_of(&error) != Kind::Unavailable => {
                tracing::warn!(backend = BACKEND, endpoint = %member.endpoint, error = %map_error(&member.endpoint, "authenticate", error), "etcd member refused our user");
                return;
            }
            _ => {}
        }
    }
}

/// The probe of [`probe`]: the first member to answer wins.
async fn probe_members(ctx: &Ctx, tls: Option<&TlsFiles>) -> Result<()> {
    let root = format!("{}/", ctx.prefix);
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let mut probes: FuturesUnordered<_> = ctx
        .members
        .list
        .iter()
        .map(|member| {
            let root = root.clone();
            async move {
                let mut backoff =
                    Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
                let outcome = loop {
                    let mut kv = member.kv.clone();
                    let root = root.clone();
                    let read = async {
                        authenticate(member, ctx.credentials.as_deref()).await?;
                        kv.get(
                            root,
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )
                        .await
                    };
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(Ok(_)) => break Ok(()),
                        Ok(Err(error)) if kind_of(&error) != Kind::Unavailable => {
                            break Err(Some(error));
                        }
                        // A certificate one side refuses does not heal
                        // within seconds: no point retrying until the
                        // deadline.
                        Ok(Err(error)) if is_certificate_failure(&error) => {
                            break Err(Some(error));
                        }
                        Ok(Err(error)) => {
                            let delay = backoff.next_delay();
                            if tokio::time::Instant::now() + delay >= deadline {
                                break Err(Some(error));
                            }
                            tokio::time::sleep(delay).await;
                        }
                        Err(_) => break Err(None),
                    }
                };
                (member, outcome)
            }
        })
        .collect();
    let mut failures = Vec::new();
    let mut refused = None;
    while let Some((member, outcome)) = probes.next().await {
        match outcome {
            Ok(()) => {
                ctx.members.answered(member.index);
                return Ok(());
            }
            Err(Some(error)) if kind_of(&error) != Kind::Unavailable => {
                refused.get_or_insert_with(|| map_error(&member.endpoint, "connect", error));
            }
            Err(Some(error)) => failures.push(format!("{}: {}", member.endpoint, describe(&error))),
            Err(None) => failures.push(format!("{}: no answer", member.endpoint)),
        }
    }
    if let Some(error) = refused {
        return Err(error);
    }
    // tonic may say only "connection closed" when the member refused our
    // client certificate: find out which TLS setting is wrong with a
    // handshake of our own.
    let undiagnosed = failures
        .iter()
        .all(|f| crate::security::diagnose(f).is_none());
    if let (Some(tls), true) = (tls, undiagnosed) {
        if let Some(member) = ctx.members.list.first() {
            let url = member.endpoint.trim_start_matches("https://");
            if let Ok(endpoint) = crate::endpoint::Endpoint::parse(url) {
                let within = Duration::from_secs(1);
                if let Some(failure) =
                    crate::security::tls_failure(&endpoint.host, endpoint.port, tls, within).await
                {
                    failures.push(failure);
                }
            }
        }
    }
    Err(Error::unavailable(
        BACKEND,
        &*ctx.addr,
        format!(
            "no member answered within {:?} (REGISTRY_TIMEOUT); is etcd running there? ({})",
            ctx.timeout,
            failures.join("; ")
        ),
    ))
}

impl EtcdRegistry {
    /// A builder that checks its settings as [`connect`](crate::connect)
    /// does, for a direct user who does not go through
    /// [`Settings`](crate::Settings).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Connects to the etcd endpoints of `config` (default `127.0.0.1:2379`)
    /// and checks, within `timing.timeout`, that they answer.
    ///
    /// No lease is taken until the first registration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unusable address or security
    /// setting (`https://` without a CA, TLS files with `http://`, a file
    /// that cannot be read); [`Error::Unavailable`] naming the endpoints if
    /// none answered within the timeout, with the TLS setting that is wrong
    /// when a handshake failed; `Rejected` if etcd refused the login or the
    /// read (wrong password, no user, a role without the prefix).
    pub async fn connect(config: &Config, timing: Timing) -> Result<Self> {
        config.validate()?;
        timing.validate()?;
        let security = &config.security;
        let tls = security.tls_files(BACKEND)?;
        let credentials = security.credentials(BACKEND)?.map(Arc::new);
        let default_scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints = endpoints_or_default(BACKEND, &config.addr, DEFAULT_ADDR)?;
        let urls: Vec<String> = endpoints.iter().map(|e| e.url(default_scheme)).collect();
        let https = urls.iter().filter(|u| u.starts_with("https://")).count();
        if https != 0 && https != urls.len() {
            return Err(Error::InvalidConfig(format!(
                "etcd endpoints mix http:// and https:// ({}); all members speak the same",
                urls.join(",")
            )));
        }
        let addr: Arc<str> = urls.join(",").into();
        let timeout = timing.timeout;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(HTTP2_PING_INTERVAL, timeout)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true)
            .with_auto_token_refresh(credentials.is_some());
        let tls_files = tls.clone();
        match (tls, https != 0) {
            (Some(tls), true) => options = options.with_tls(tls_options(tls)?),
            (Some(_), false) => {
                return Err(Error::InvalidConfig(format!(
                    "etcd endpoints {addr} are plain http://, but TLS files are set (ca, cert or key); \
                     use https:// (or no scheme) or remove them"
                )));
            }
            (None, true) => {
                return Err(Error::InvalidConfig(format!(
                    "etcd endpoints {addr} use https but no CA is set: set ca (REGISTRY_CA) to the PEM \
                     file of the CA that signed the members' certificates"
                )));
            }
            (None, false) => {}
        }

        // One client (one gRPC channel) per member: see `Member`. The
        // channels connect lazily, so this does not wait for any member.
        let mut list = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            // Without a user this does no I/O (the channel connects lazily);
            // the user logs in during the probe.
            let client = Client::connect([url], Some(options.clone()))
                .await
                .map_err(|error| map_error(url, "connect", error))?;
            list.push(Member {
                index,
                endpoint: url.as_str().into(),
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_DECODING_BYTES),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_DECODING_BYTES),
                lease: client.lease_client(),
                authenticated: Arc::new(std::sync::atomic::AtomicBool::new(credentials.is_none())),
                client,
            });
        }
        let ctx = Ctx {
            members: Arc::new(Members {
                list,
                preferred: AtomicUsize::new(0),
            }),
            prefix: config.prefix.trim_end_matches('/').into(),
            addr: addr.clone(),
            ttl: timing.ttl,
            timeout,
            attempt: ATTEMPT_TIMEOUT.min(timeout),
            page_size: DEFAULT_PAGE_SIZE,
            grow_pages: true,
            watch_start_delay: Duration::ZERO,
            interop: Arc::new(config.interop.clone()),
            credentials,
        };
        probe(&ctx, tls_files.as_ref()).await?;
        tracing::info!(backend = BACKEND, addr = %addr, prefix = %ctx.prefix, tls = https != 0,
            user = ctx.credentials.as_ref().map(|c| c.0.as_str()), "connected to etcd");

        let registrar = Core::new(lease::Leases::new(ctx.clone()), ctx.ttl, ctx.timeout);
        Ok(EtcdRegistry { ctx, registrar })
    }

    /// This registrar's owner token: the `owner` field of every record it
    /// writes (`pid<process id>-<random>`), and what another registrar's
    /// refusal of the same id names as the holder.
    pub fn owner(&self) -> &str {
        self.registrar.owner()
    }

    /// Testing knob: how many keys each `Range` request reads (default: 128
    /// at first, then grown by the size of the records seen).
    #[doc(hidden)]
    pub fn with_page_size(mut self, keys: usize) -> Self {
        self.ctx.page_size = keys.max(1);
        self.ctx.grow_pages = false;
        self
    }

    /// Testing knob: a pause between a watch's snapshot read and its watch
    /// request, so that a test can compact the history in between.
    #[doc(hidden)]
    pub fn with_watch_start_delay(mut self, delay: Duration) -> Self {
        self.ctx.watch_start_delay = delay;
        self
    }
}

#[async_trait]
impl Registrar for EtcdRegistry {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        instance.validate()?;
        let registration = self.registrar.register(instance).await?;
        tracing::debug!(
            backend = BACKEND,
            key = self.ctx.instance_key(registration.instance()),
            "registered"
        );
        Ok(registration)
    }

    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        self.delete_key(service, id).await
    }
}

impl EtcdRegistry {
    /// `Delete <prefix>/<service>/<id>`: see [`Registrar::deregister_instance`].
    async fn delete_key(&self, service: &str, id: &str) -> Result<bool> {
        validate_name("service", service)?;
        validate_name("id", id)?;
        let key = format!("{}/{service}/{id}", self.ctx.prefix);
        let reply = self
            .ctx
            .call("deregister", |member| {
                let mut kv = member.kv.clone();
                let key = key.clone();
                async move { kv.delete(key, None).await }
            })
            .await?;
        let removed = reply.deleted() > 0;
        tracing::info!(backend = BACKEND, key, removed, "operator deregistration");
        Ok(removed)
    }
}

#[async_trait]
impl Watcher for EtcdRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_name("service", service)?;
        let (instances, _revision) = self
            .ctx
            .deadline("read", read::snapshot(&self.ctx, service))
            .await?;
        Ok(instances.into_iter().map(Arc::unwrap_or_clone).collect())
    }

    async fn services(&self) -> Result<Vec<String>> {
        let services = self.ctx.deadline("read", read::services(&self.ctx)).await?;
        Ok(services.into_iter().collect())
    }

    fn watch(&self, service: &str) -> WatchStream {
        crate::changes::snapshots(self.watch_changes(service))
    }

    fn watch_changes(&self, service: &str) -> crate::changes::ChangeStream {
        let ctx = self.ctx.clone();
        let service = service.to_owned();
        spawn_watch_of(BACKEND, service.clone(), move |mut sink| async move {
            if let Err(error) = validate_name("service", &service) {
                sink.fatal(error).await;
                return;
            }
            read::watch(ctx, service, sink).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context over `n` members whose channels never connect (nothing is
    /// sent through them: the requests below are fakes that only look at
    /// which member they were given).
    async fn fake_ctx(n: usize, timeout: Duration) -> Ctx {
        let mut list = Vec::new();
        for index in 0..n {
            let client = Client::connect(["http://127.0.0.1:1"], None)
                .await
                .expect("a lazy channel");
            list.push(Member {
                index,
                endpoint: format!("http://member-{index}").into(),
                kv: client.kv_client(),
                lease: client.lease_client(),
                watch: client.watch_client(),
                authenticated: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                client,
            });
        }
        Ctx {
            members: Arc::new(Members {
                list,
                preferred: AtomicUsize::new(0),
            }),
            prefix: "/services".into(),
            addr: "fake".into(),
            ttl: Duration::from_secs(10),
            timeout,
            attempt: ATTEMPT_TIMEOUT.min(timeout),
            page_size: DEFAULT_PAGE_SIZE,
            grow_pages: true,
            watch_start_delay: Duration::ZERO,
            interop: Arc::default(),
            credentials: None,
        }
    }

    /// A request that hangs on the members in `hung` and answers with the
    /// member's index on the others.
    fn answer_unless(
        hung: &'static [usize],
    ) -> impl FnMut(&Member) -> futures::future::BoxFuture<'static, Result<usize, etcd_client::Error>>
    {
        move |member| {
            let index = member.index;
            Box::pin(async move {
                if hung.contains(&index) {
                    std::future::pending().await
                } else {
                    Ok(index)
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_member_costs_one_short_attempt_and_is_then_avoided() {
        let ctx = fake_ctx(3, Duration::from_secs(5)).await;
        let started = tokio::time::Instant::now();
        let answered = ctx.call("read", answer_unless(&[0])).await.unwrap();
        assert_eq!(answered, 1, "the next member answers");
        assert_eq!(
            started.elapsed(),
            ATTEMPT_TIMEOUT,
            "after one short attempt"
        );

        let started = tokio::time::Instant::now();
        assert_eq!(ctx.call("read", answer_unless(&[0])).await.unwrap(), 1);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the member that answered is tried first"
        );

        // The keep-alive's own per-attempt deadline.
        ctx.members.answered(0);
        let started = tokio::time::Instant::now();
        let attempt = Duration::from_millis(300);
        let answered = ctx.call_within("keep-alive", attempt, answer_unless(&[0, 1]));
        assert_eq!(answered.await.unwrap(), 2);
        assert_eq!(started.elapsed(), attempt * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_where_no_member_answers_gives_up_at_the_timeout() {
        let timeout = Duration::from_secs(5);
        let ctx = fake_ctx(3, timeout).await;
        let started = tokio::time::Instant::now();
        let error = ctx
            .call("read", answer_unless(&[0, 1, 2]))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Timeout { after, .. } if after == timeout),
            "{error:?}"
        );
        assert!(started.elapsed() <= timeout, "{:?}", started.elapsed());

        // With a single member there is nowhere else to go: one attempt may
        // use the whole timeout.
        let ctx = fake_ctx(1, timeout).await;
        let slow = |_: &Member| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, etcd_client::Error>(())
        };
        let started = tokio::time::Instant::now();
        ctx.call("read", slow).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn grpc_statuses_are_classified() {
        assert_eq!(
            classify(GRPC_NOT_FOUND, "etcdserver: requested lease not found"),
            Kind::LeaseLost
        );
        assert_eq!(
            classify(GRPC_UNAVAILABLE, "etcdserver: no leader"),
            Kind::Unavailable
        );
        assert_eq!(
            classify(
                GRPC_OUT_OF_RANGE,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Kind::Compacted
        );
        assert_eq!(classify(7, "etcdserver: permission denied"), Kind::Rejected);
        assert_eq!(classify(GRPC_NOT_FOUND, "something else"), Kind::Rejected);
    }

    #[test]
    fn transport_errors_are_unavailable_and_name_the_address() {
        let error = map_error(
            "http://127.0.0.1:1",
            "read",
            etcd_client::Error::InvalidArgs("x".into()),
        );
        assert!(error.is_transient(), "{error:?}");
        assert!(error.to_string().contains("http://127.0.0.1:1"), "{error}");
    }
}
