//! The Consul backend: the HTTP API of a Consul agent (tested with 1.14).
//!
//! | operation    | Consul                                                                      |
//! |--------------|-----------------------------------------------------------------------------|
//! | connect      | `GET /v1/status/leader` (proves the agent answers; needs no ACL)            |
//! | register     | `GET /v1/agent/health/service/id/<id>` (duplicate-id check: another service's id is [`Error::Rejected`], another registrar's token whose TTL check is not critical [`Error::AlreadyRegistered`]; a critical one has expired and is replaced), then `PUT /v1/agent/service/register?replace-existing-checks=true` with a TTL check that starts `passing` and the owner token in `Meta["registry-owner"]` |
//! | keep alive   | the registrar core's task: `PUT /v1/agent/check/pass/service:<id>` for every instance every TTL/3, 16 at a time, each round in a task of its own so it never holds up registrations; about once per TTL, one `GET /v1/agent/services` checks that each id still holds our token |
//! | recovery     | a 404 / "Unknown check" / "does not have associated TTL" heartbeat answer, or an id missing or overwritten without a token, means the agent forgot or lost the instance: register it again; connection errors: retry with backoff within TTL/3 |
//! | duplicate id | an id holding another registrar's token is refused until that record's check goes critical (one TTL after its registrar crashed) ([`Error::AlreadyRegistered`] naming the holder); if ours is later found holding another token, we give way (state `Displaced`, no more heartbeats). Best effort, on this agent only: see below |
//! | deregister   | `GET /v1/agent/health/service/id/<id>`, then `PUT /v1/agent/service/deregister/<id>` if the record still holds our token |
//! | deregister_instance | `GET /v1/agent/health/service/id/<id>` (is it this service's, on this agent?), then `PUT /v1/agent/service/deregister/<id>`; a live owner registers it again at its next heartbeat (TTL/3) |
//! | abandon      | stop heartbeating; the check goes critical after the TTL, so the instance leaves the passing set, and the agent reaps it after `DeregisterCriticalServiceAfter` |
//! | instances    | `GET /v1/health/service/<name>?passing=true`                                |
//! | services     | `GET /v1/catalog/services`, then the health query above for each name (without Consul's own `consul`) |
//! | watch        | the health query as a blocking query: `&index=N&wait=60000ms`, and beside it `GET /v1/status/leader` every third of max(2 x TTL, 5 s) to notice a hung agent |
//!
//! Field mapping: `id` -> `ID`, `service` -> `Name` (`Service` when read),
//! `address` -> `Address` (an empty one reads as the node's address),
//! `port` -> `Port`, `tags` -> `Tags`, `metadata` -> `Meta`, `weight` ->
//! `Weights.Passing` (`Weights.Warning` is 1). The TTL check has the id
//! `service:<id>`, the TTL of [`Timing::ttl`], and
//! `DeregisterCriticalServiceAfter` = max(1 minute, 10 x TTL).
//!
//! `Meta["registry-owner"]` holds the token of the registrar that wrote the
//! record (`pid<pid>-<random>`); readers strip it, so it never shows in an
//! instance's metadata, and the instance model reserves the key and allows
//! 63 metadata keys instead of Consul's 64, so that the token always fits.
//!
//! Concurrency, ordering, restores and undo are the registrar core's
//! (`registrar/`; the agent side is `consul/agent.rs`): the calls of one
//! registrar run side by side (up to 32 registrations or deregistrations at
//! once, heartbeats 16 at a time on their own), while the operations on one
//! id keep the order they were asked in.
//!
//! The duplicate-id rule is best effort on Consul, because registrations
//! belong to agents and the check is a read before a write:
//! - The same id registered through two different agents is two records,
//!   both live (Consul's catalog allows one id per node); neither registrar
//!   sees the other's, and readers see the id once (repeats are dropped).
//! - Two registrations of one id racing on one agent may both pass the check
//!   before either writes; the second then replaces the first, whose
//!   registrar notices at its next check of its records (about one TTL) and
//!   gives way. Until then its heartbeats pass the winner's check (the check
//!   id is the same).
//!
//! Consul's rules that show through:
//! - Service ids are unique per *agent*, across all services: registering an
//!   id the agent already has under another service name fails with
//!   [`Error::Rejected`] rather than replace the other service's instance.
//! - Registrations belong to the agent they were made on; one registrar
//!   talks to one agent (one address).
//! - A service with no checks counts as passing, so registrations written by
//!   other tools without any check are discovered.
//! - Watches follow Consul's blocking-query rules: a return is not
//!   necessarily a change (repeats are dropped), the index is reset to 0 when
//!   it goes backwards (an agent restarted with fresh state), an index of 0
//!   in an answer is replaced by 1, and the loop is rate-limited (a burst
//!   of 5 requests, then one per 50 ms, so a quick follow-up change is not
//!   delayed but a hot loop is bounded). A blocking request's timeout is
//!   `wait + wait/16 (Consul's jitter) + REGISTRY_TIMEOUT`; every other call
//!   is bounded by `REGISTRY_TIMEOUT`.
//!
//! # Recovery
//!
//! - A watch follows the contract of [`WatchStream`] (kept by the shared
//!   sink): one `Err` item when the agent cannot be read, however many
//!   retries follow (with backoff, from index 0), and the next answer is
//!   sent as a full snapshot even if unchanged.
//! - A hung agent (it accepts connections but answers nothing) would hold a
//!   blocking query for its whole wait, a minute or more. While the query
//!   waits, the watch asks the agent for `/v1/status/leader` (a few bytes,
//!   no ACL) every third of max(2 x TTL, 5 s), each with that deadline; any
//!   HTTP answer will do. When one goes unanswered the query is dropped and
//!   the `Err` sent, so a hung agent is reported within about
//!   max(2 x TTL, 5 s). A cheap probe rather than a shorter `wait`, which
//!   would make every idle watch re-read its whole service that often.
//!
//! Conventions of Consul's own tools are honoured: `CONSUL_HTTP_ADDR` when no
//! address is configured (default `127.0.0.1:8500`, `https` with
//! `CONSUL_HTTP_SSL=true`), `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME` for HTTPS, and
//! `CONSUL_HTTP_TOKEN` / `CONSUL_HTTP_TOKEN_FILE` when no token is
//! configured, sent as `X-Consul-Token`; our own settings
//! ([`Security`]: `REGISTRY_CA`...) win when both are set.
//! A configured token is checked at connect (`GET /v1/acl/token/self`), so a
//! wrong one is reported there, not at the first registration.
//!
//! What `curl -s 'http://127.0.0.1:8500/v1/health/service/lorem?passing' | jq`
//! shows for one of our instances (real output of a Consul 1.14.11 dev agent,
//! abbreviated):
//!
//! ```text
//! [
//!   {
//!     "Node": {
//!       "Node": "dev",
//!       "Address": "127.0.0.1",
//!       "Datacenter": "dc1",
//!       ...
//!     },
//!     "Service": {
//!       "ID": "lorem-8080",
//!       "Service": "lorem",
//!       "Tags": [ "v1" ],
//!       "Address": "127.0.0.1",
//!       "Meta": { "version": "0.1.0", "registry-owner": "pid4242-5f0c2a9e1b7d" },
//!       "Port": 8080,
//!       "Weights": { "Passing": 1, "Warning": 1 },
//!       ...
//!     },
//!     "Checks": [
//!       {
//!         "Node": "dev",
//!         "CheckID": "serfHealth",
//!         "Name": "Serf Health Status",
//!         "Status": "passing",
//!         "Output": "Agent alive and reachable",
//!         ...
//!       },
//!       {
//!         "Node": "dev",
//!         "CheckID": "service:lorem-8080",
//!         "Name": "registry TTL",
//!         "Status": "passing",
//!         "Notes": "kept passing every TTL/3 by the registrar that registered this instance",
//!         "Output": "",
//!         "ServiceID": "lorem-8080",
//!         "ServiceName": "lorem",
//!         "Type": "ttl",
//!         ...
//!       }
//!     ]
//!   }
//! ]
//! ```

mod agent;
mod api;
mod config;

pub use self::config::{Builder, Config};

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use self::agent::Agent;
use self::api::{Api, BACKEND, validate_service};
use crate::backoff::Backoff;
use crate::endpoint::{Endpoint, endpoints_or_default};
use crate::error::{Error, Result, with_deadline};
use crate::model::Instance;
use crate::security::{Secret, Security, TlsFiles};
use crate::timing::Timing;
use crate::traits::{Registrar, Registration, WatchStream, Watcher};
use crate::watch_sink::{SnapshotSink, silence_limit, spawn_watch_of};

/// The agent address used when none is configured.
const DEFAULT_ADDR: &str = "127.0.0.1:8500";
/// How long a blocking query may wait for a change before the agent answers
/// anyway.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// The pace of one watch's requests once its burst is spent, even when the
/// agent answers at once.
const WATCH_MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Requests a watch may send back to back before [`WATCH_MIN_INTERVAL`]
/// applies (see [`RateLimit`]).
const WATCH_BURST: u32 = 5;
/// How many services [`ConsulRegistry::services`] reads at once.
const SERVICES_CONCURRENCY: usize = 8;

/// A registry on a Consul agent's HTTP API.
///
/// Cheap to clone: clones share one HTTP client and one registrar (one task,
/// one owner token), which heartbeats all the registrations made through
/// them. Each `connect` is a registrar of its own: a second one cannot take
/// an id the first holds.
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    api: Api,
    registrar: crate::registrar::Registrar<Agent>,
    /// `REGISTRY_TTL`: besides the checks, it sets how soon a watch notices
    /// a hung agent ([`silence_limit`]).
    ttl: Duration,
}

impl ConsulRegistry {
    /// A builder that checks its settings as [`connect`](crate::connect)
    /// does, for a direct user who does not go through
    /// [`Settings`](crate::Settings).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Connects to the agent named by `config.addr` (else `CONSUL_HTTP_ADDR`,
    /// else `127.0.0.1:8500`) and checks that it answers within
    /// `timing.timeout`. Registrations made through the result use
    /// `timing.ttl` as their check TTL.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unusable address (more than one, an
    /// `https://` one, a malformed one) or token; [`Error::Unavailable`]
    /// naming the address if the agent cannot be reached or does not answer
    /// within the timeout.
    pub async fn connect(config: &Config, timing: Timing) -> Result<Self> {
        config.validate()?;
        timing.validate()?;
        let security = security_with_consul_env(config)?;
        let mut endpoint = agent_endpoint(config)?;
        if endpoint.scheme.is_none() && security.wants_tls() {
            endpoint.scheme = Some("https".to_owned());
        }
        let https = endpoint.scheme.as_deref() == Some("https");
        let addr = endpoint.authority();
        let mut headers = HeaderMap::new();
        let token = security.token(BACKEND)?;
        if let Some(token) = &token {
            let mut value = HeaderValue::from_str(token.expose().trim()).map_err(|_| {
                Error::InvalidConfig(
                    "the Consul ACL token (token, token_file, CONSUL_HTTP_TOKEN or \
                     CONSUL_HTTP_TOKEN_FILE) contains characters not allowed in an HTTP header"
                        .to_owned(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert("X-Consul-Token", value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(timing.timeout);
        let mut base = endpoint.url("http");
        match security.tls_files(BACKEND)? {
            Some(tls) if https => {
                (builder, base) = tls_client(builder, &endpoint, tls).await?;
            }
            Some(_) => {
                return Err(Error::InvalidConfig(format!(
                    "consul address {} is plain http://, but TLS files are set (ca, cert, key or \
                     CONSUL_CACERT...); use https:// or remove them",
                    endpoint.url("http")
                )));
            }
            None => {}
        }
        let http = builder
            .build()
            .map_err(|e| Error::unavailable(BACKEND, addr.clone(), e))?;
        let api =
            Api::new(http, base, addr.clone(), timing.timeout).with_interop(config.interop.clone());

        let leader = tokio::time::timeout(timing.timeout, api.leader())
            .await
            .map_err(|_| {
                Error::unavailable(
                    BACKEND,
                    addr.clone(),
                    format!(
                        "the agent did not answer within {:?} (REGISTRY_TIMEOUT)",
                        timing.timeout
                    ),
                )
            })?
            .map_err(|error| match error {
                Error::Timeout { after, .. } => Error::unavailable(
                    BACKEND,
                    addr.clone(),
                    format!("the agent did not answer within {after:?} (REGISTRY_TIMEOUT)"),
                ),
                other => other,
            })?;
        if token.is_some() {
            with_deadline(BACKEND, "connect", timing.timeout, api.check_token()).await?;
        }
        if leader.is_empty() {
            tracing::warn!(backend = BACKEND, %addr,
                "the Consul cluster has no leader yet; reads fail until it elects one");
        }
        tracing::info!(backend = BACKEND, %addr, ttl = ?timing.ttl, tls = https, token = token.is_some(),
            "connected to the Consul agent");
        let registrar = crate::registrar::Registrar::new(
            Agent::new(api.clone(), timing.ttl),
            timing.ttl,
            timing.timeout,
        );
        tracing::debug!(
            backend = BACKEND,
            owner = registrar.owner(),
            "registrar ready"
        );
        Ok(ConsulRegistry {
            api,
            registrar,
            ttl: timing.ttl,
        })
    }
}

/// The security settings with Consul's own variables filling in what ours
/// leave unset (ours win: `REGISTRY_CA` over `CONSUL_CACERT`, ...).
fn security_with_consul_env(config: &Config) -> Result<Security> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut security = config.security.clone();
    if security.ca.is_none() {
        security.ca = env("CONSUL_CACERT").map(PathBuf::from);
    }
    if security.cert.is_none() && security.key.is_none() {
        security.cert = env("CONSUL_CLIENT_CERT").map(PathBuf::from);
        security.key = env("CONSUL_CLIENT_KEY").map(PathBuf::from);
    }
    if security.tls_server_name.is_none() {
        security.tls_server_name = env("CONSUL_TLS_SERVER_NAME");
    }
    if security.token.is_none() && security.token_file.is_none() {
        if let Some(token) = env("CONSUL_HTTP_TOKEN") {
            security.token = Some(Secret::new(token.trim()));
        } else {
            security.token_file = env("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from);
        }
    }
    security.validate(BACKEND)?;
    Ok(security)
}

/// Sets up HTTPS: only the configured CA is trusted (else the system's
/// roots), the client certificate if any, and `tls_server_name`, which is
/// checked by sending requests to that name resolved to the agent's address
/// (reqwest verifies the certificate against the URL's host). Returns the
/// builder and the base URL.
async fn tls_client(
    mut builder: reqwest::ClientBuilder,
    endpoint: &Endpoint,
    tls: TlsFiles,
) -> Result<(reqwest::ClientBuilder, String)> {
    let bad = |setting: &str, e: reqwest::Error| {
        Error::InvalidConfig(format!(
            "consul: {setting} cannot be used: {}",
            crate::security::chain(&e)
        ))
    };
    if let Some(ca) = &tls.ca {
        let roots = reqwest::Certificate::from_pem_bundle(ca.as_bytes())
            .map_err(|e| bad("ca (REGISTRY_CA / CONSUL_CACERT)", e))?;
        builder = builder.tls_certs_only(roots);
    }
    if let Some((cert, key)) = &tls.identity {
        let pem = format!("{cert}\n{}", key.expose());
        let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            bad(
                "cert and key (REGISTRY_CERT, REGISTRY_KEY / CONSUL_CLIENT_CERT...)",
                e,
            )
        })?;
        builder = builder.identity(identity);
    }
    let mut base = endpoint.url("https");
    if let Some(name) = &tls.server_name {
        let target = format!("{}:{}", endpoint.host, endpoint.port);
        let socket = tokio::net::lookup_host(target.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                Error::unavailable(
                    BACKEND,
                    target.clone(),
                    "the agent's host name does not resolve",
                )
            })?;
        builder = builder.resolve(name, socket);
        base = format!("https://{name}:{}", endpoint.port);
    }
    Ok((builder, base))
}

/// The one agent address: `config.addr`, else `CONSUL_HTTP_ADDR`, else the
/// default (logged).
fn agent_endpoint(config: &Config) -> Result<Endpoint> {
    let endpoints = if config.addr.is_empty() {
        match std::env::var("CONSUL_HTTP_ADDR")
            .ok()
            .filter(|a| !a.trim().is_empty())
        {
            Some(addr) => {
                tracing::info!(backend = BACKEND, %addr, "REGISTRY_ADDR not set; using CONSUL_HTTP_ADDR");
                let mut endpoint = Endpoint::parse(&addr)
                    .map_err(|e| Error::InvalidConfig(format!("CONSUL_HTTP_ADDR: {e}")))?;
                // Consul's tools read CONSUL_HTTP_SSL=true as "https".
                let ssl = std::env::var("CONSUL_HTTP_SSL")
                    .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"));
                if endpoint.scheme.is_none() && ssl {
                    endpoint.scheme = Some("https".to_owned());
                }
                vec![endpoint]
            }
            None => endpoints_or_default(BACKEND, &[], DEFAULT_ADDR)?,
        }
    } else {
        endpoints_or_default(BACKEND, &config.addr, DEFAULT_ADDR)?
    };
    match <[Endpoint; 1]>::try_from(endpoints) {
        Ok([endpoint]) => Ok(endpoint),
        Err(endpoints) => Err(Error::InvalidConfig(format!(
            "consul needs exactly one agent address, got {}: {}; registrations belong to the agent \
             they are made on, so give the address of one (usually local) agent",
            endpoints.len(),
            endpoints
                .iter()
                .map(Endpoint::authority)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[async_trait]
impl Registrar for ConsulRegistry {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        instance.validate()?;
        api::addressable("id", &instance.id)?;
        api::addressable("service", &instance.service)?;
        self.registrar.register(instance).await
    }

    /// Only instances registered on this agent can be removed: Consul keeps
    /// a registration with the agent it was made on, so one made through
    /// another agent is not found here (`Ok(false)`).
    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        validate_service(service)?;
        crate::model::validate_name("id", id)?;
        api::addressable("id", id)?;
        // Service ids are unique per agent across services: never remove
        // another service's instance that happens to have this id.
        let existing = self.api.agent_service("deregister", id).await?;
        if existing.is_none_or(|e| e.service != service) {
            return Ok(false);
        }
        self.api.deregister(id).await?;
        tracing::info!(backend = BACKEND, service, id, "operator deregistration");
        Ok(true)
    }
}

#[async_trait]
impl Watcher for ConsulRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_service(service)?;
        let (instances, _) = with_deadline(
            BACKEND,
            "read",
            self.api.timeout(),
            self.api.healthy(service, None),
        )
        .await?;
        Ok(sorted(instances))
    }

    async fn services(&self) -> Result<Vec<String>> {
        let api = &self.api;
        with_deadline(BACKEND, "read", api.timeout(), async {
            let names = api.catalog_services().await?;
            let live: Vec<Result<Option<String>>> = futures::stream::iter(
                names
                    .into_iter()
                    .filter(|name| name != "consul" && validate_service(name).is_ok()),
            )
            .map(|name| async move {
                let (instances, _) = api.healthy(&name, None).await?;
                Ok((!instances.is_empty()).then_some(name))
            })
            .buffer_unordered(SERVICES_CONCURRENCY)
            .collect()
            .await;
            let mut names = live
                .into_iter()
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>>>()?;
            names.sort();
            Ok(names)
        })
        .await
    }

    fn watch(&self, service: &str) -> WatchStream {
        crate::changes::snapshots(self.watch_changes(service))
    }

    fn watch_changes(&self, service: &str) -> crate::changes::ChangeStream {
        let api = self.api.clone();
        let ttl = self.ttl;
        let name = service.to_owned();
        spawn_watch_of(BACKEND, service, move |sink| {
            watch_loop(api, name, ttl, sink)
        })
    }
}

/// Sorts by id and drops repeated ids (the same id on two nodes).
fn sorted(mut instances: Vec<Instance>) -> Vec<Instance> {
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.dedup_by(|a, b| a.id == b.id);
    instances
}

/// The index of the next blocking query, after an answer carrying `answer`
/// to a query sent with `sent` (Consul's rules for blocking queries).
fn next_index(sent: u64, answer: u64) -> u64 {
    if answer < sent {
        // The index went backwards (e.g. an agent restarted with fresh
        // state): start over with a non-blocking read.
        0
    } else {
        // Never block on 0 after the first call: it would return at once.
        answer.max(1)
    }
}

/// A token bucket: up to `burst` requests at once, then one per `interval`.
///
/// Consul asks clients to rate-limit blocking-query loops (a query can
/// return at once, again and again). A plain minimum interval between
/// requests would also delay the query that follows a real change, adding up
/// to one interval of latency whenever changes come close together; the
/// burst lets those through at once while still bounding a hot loop.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    burst: f64,
    interval: Duration,
    updated: Instant,
}

impl RateLimit {
    fn new(burst: u32, interval: Duration) -> Self {
        RateLimit {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            interval,
            updated: Instant::now(),
        }
    }

    /// Waits until a request may be sent, and takes its token.
    async fn acquire(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.updated).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst);
        self.updated = now;
        if self.tokens < 1.0 {
            let wait = self.interval.mul_f64(1.0 - self.tokens);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.updated = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// One watch: blocking health queries, one full snapshot per answer.
///
/// While a blocking query waits (up to [`WATCH_WAIT`]), [`Api::answers`]
/// checks every third of the [`silence_limit`] that the agent still
/// answers, so that a hung agent is reported (one `Err` item, through the
/// sink) within that limit rather than after the whole wait; the query is
/// then dropped and the loop retries with backoff.
async fn watch_loop(api: Api, service: String, ttl: Duration, mut sink: SnapshotSink) {
    if let Err(error) = validate_service(&service) {
        sink.fatal(error).await;
        return;
    }
    let probe_every = silence_limit(ttl) / 3;
    let mut index = 0u64;
    let mut backoff = Backoff::reconnect();
    let mut limiter = RateLimit::new(WATCH_BURST, WATCH_MIN_INTERVAL);
    loop {
        limiter.acquire().await;
        let answer = if index > 0 {
            tokio::select! {
                answer = api.healthy_since(&service, index, WATCH_WAIT) => answer,
                error = hung(&api, probe_every) => Err(error),
            }
        } else {
            api.healthy(&service, None)
                .await
                .map(|(list, answer)| (Some(list), answer))
        };
        match answer {
            // The wait ran out and the index did not move: nothing to
            // decode. (An answer after an outage always moves from 0.)
            Ok((None, answer)) => {
                backoff.reset();
                index = next_index(index, answer);
            }
            Ok((Some(instances), answer)) => {
                backoff.reset();
                tracing::debug!(backend = BACKEND, %service, index, answer, instances = instances.len(), "watch answer");
                index = next_index(index, answer);
                if !sink.snapshot(instances).await {
                    return;
                }
            }
            Err(error) => {
                if !sink.error(error).await {
                    return;
                }
                // After an error, read the whole state afresh.
                index = 0;
                backoff.wait().await;
            }
        }
        if sink.is_closed() {
            return;
        }
    }
}

/// Resolves once the agent stops answering: probes it every `every`, each
/// probe with a deadline of `every`.
async fn hung(api: &Api, every: Duration) -> Error {
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = api.answers(every).await {
            return error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_query_index_rules() {
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 50), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_rate_limit_lets_a_burst_through_then_paces() {
        let mut limiter = RateLimit::new(5, Duration::from_millis(50));
        let started = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a burst of 5 is not delayed"
        );
        for _ in 0..4 {
            limiter.acquire().await;
        }
        // Then one request per interval: a hot loop is bounded.
        assert!(
            started.elapsed() >= Duration::from_millis(195),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(next_index(42, 7), 0);
        assert_eq!(next_index(1, 0), 0);
    }

    #[test]
    fn one_agent_address_only_and_no_https() {
        let two = Config {
            addr: vec!["127.0.0.1:8500".into(), "127.0.0.1:8501".into()],
            ..Config::default()
        };
        let err = agent_endpoint(&two).unwrap_err().to_string();
        assert!(err.contains("exactly one agent address"), "{err}");
        let one = Config {
            addr: vec!["http://127.0.0.1:8500/".into()],
            ..Config::default()
        };
        assert_eq!(
            agent_endpoint(&one).unwrap().url("http"),
            "http://127.0.0.1:8500"
        );
    }

    #[tokio::test]
    async fn an_unreachable_agent_is_unavailable_and_named() {
        // Bind then drop a listener, so the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let config = Config {
            addr: vec![format!("127.0.0.1:{port}")],
            ..Config::default()
        };
        let timing = Timing {
            timeout: Duration::from_secs(2),
            ..Timing::default()
        };
        let err = ConsulRegistry::connect(&config, timing).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    // figment's own error type is large; this is test-only plumbing.
    #[allow(clippy::result_large_err)]
    #[test]
    fn consul_variables_fill_in_and_ours_win() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONSUL_CACERT", "/consul/ca.pem");
            jail.set_env("CONSUL_CLIENT_CERT", "/consul/cert.pem");
            jail.set_env("CONSUL_CLIENT_KEY", "/consul/key.pem");
            jail.set_env("CONSUL_TLS_SERVER_NAME", "server.dc1.consul");
            jail.set_env("CONSUL_HTTP_TOKEN", "consul-env-token");
            let from_env = security_with_consul_env(&Config::default()).unwrap();
            assert_eq!(
                from_env.ca.as_deref(),
                Some(std::path::Path::new("/consul/ca.pem"))
            );
            assert_eq!(
                from_env.key.as_deref(),
                Some(std::path::Path::new("/consul/key.pem"))
            );
            assert_eq!(
                from_env.tls_server_name.as_deref(),
                Some("server.dc1.consul")
            );
            assert_eq!(
                from_env.token.as_ref().map(Secret::expose),
                Some("consul-env-token")
            );
            let ours = Config {
                security: Security {
                    ca: Some("/ours/ca.pem".into()),
                    token: Some("our-token".into()),
                    ..Security::default()
                },
                ..Config::default()
            };
            let merged = security_with_consul_env(&ours).unwrap();
            assert_eq!(
                merged.ca.as_deref(),
                Some(std::path::Path::new("/ours/ca.pem"))
            );
            assert_eq!(merged.token.as_ref().map(Secret::expose), Some("our-token"));
            assert_eq!(
                merged.cert.as_deref(),
                Some(std::path::Path::new("/consul/cert.pem"))
            );
            Ok(())
        });
    }
}
