//! The few calls of the Consul agent's HTTP API that the backend makes, their
//! JSON, and the mapping of their failures to [`Error`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::interop::{Interop, Payload};
use crate::model::{Instance, MAX_METADATA_KEYS, OWNER_METADATA_KEY, validate_name};

/// The backend's name in errors and logs.
pub(super) const BACKEND: &str = "consul";

/// The smallest `DeregisterCriticalServiceAfter` Consul accepts.
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// A Consul answer that was not a success, kept as the `source` of an
/// [`Error::Unavailable`].
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
pub(super) struct StatusError {
    status: StatusCode,
    body: String,
}

/// A request that did not get an answer. Its message is the whole chain of
/// causes ("...: tcp connect error: Connection refused"), which reqwest's own
/// message leaves out.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct TransportError {
    message: String,
    #[source]
    source: reqwest::Error,
}

impl TransportError {
    fn new(source: reqwest::Error) -> Self {
        let mut parts: Vec<String> = vec![source.to_string()];
        let mut cause = std::error::Error::source(&source);
        while let Some(error) = cause {
            let text = error.to_string();
            if parts.last() != Some(&text) {
                parts.push(text);
            }
            cause = error.source();
        }
        let mut message = parts.join(": ");
        if let Some(hint) = crate::security::diagnose(&message) {
            message.push_str(" (likely: ");
            message.push_str(hint);
            message.push(')');
        }
        TransportError { message, source }
    }
}

/// The outcome of one heartbeat (`PUT /v1/agent/check/pass/<check>`).
#[derive(Debug)]
pub(super) enum Heartbeat {
    /// The check was set to passing.
    Passed,
    /// The agent does not know the check (it restarted without its state,
    /// or the service was removed or reaped): the instance must be
    /// registered again. Holds what the agent said.
    Forgotten(String),
    /// The agent could not be reached or failed: retry later.
    Failed(Error),
}

/// One HTTP client for one agent; cheap to clone (reqwest pools connections).
#[derive(Debug, Clone)]
pub(super) struct Api {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// `host:port`, for error messages.
    addr: String,
    /// `REGISTRY_TIMEOUT`: the timeout of every non-blocking request.
    timeout: Duration,
    /// What registrations carry for other frameworks' readers.
    interop: Interop,
}

impl Api {
    pub(super) fn new(
        http: reqwest::Client,
        base: String,
        addr: String,
        timeout: Duration,
    ) -> Self {
        Api {
            http,
            base,
            addr,
            timeout,
            interop: Interop::default(),
        }
    }

    /// Sets what registrations carry for other frameworks' readers
    /// (Spring's `Meta.secure`, Kratos' tagged addresses and version tag).
    pub(super) fn with_interop(mut self, interop: Interop) -> Self {
        self.interop = interop;
        self
    }

    /// The agent's address, as given.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// The `REGISTRY_TIMEOUT` of every non-blocking call.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request and reads the whole answer, turning transport
    /// failures into [`Error::Timeout`] or [`Error::Unavailable`].
    async fn send(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(StatusCode, Option<u64>, Vec<u8>)> {
        let transport = |error: reqwest::Error| {
            if error.is_timeout() {
                Error::Timeout {
                    backend: BACKEND,
                    operation,
                    after: timeout,
                }
            } else {
                Error::unavailable(BACKEND, self.addr.clone(), TransportError::new(error))
            }
        };
        let response = request.timeout(timeout).send().await.map_err(transport)?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = response.bytes().await.map_err(transport)?;
        // Without a copy when the body is one uniquely owned buffer (a list of
        // 10,000 health entries is megabytes, read at every change).
        Ok((status, index, Vec::from(body)))
    }

    /// Maps an unexpected answer to an error: a refusal of a well-formed
    /// request becomes [`Error::Rejected`], anything else (a 5xx, no leader,
    /// rate limiting) [`Error::Unavailable`].
    fn status_error(&self, operation: &'static str, status: StatusCode, body: &str) -> Error {
        let body = body.trim().to_owned();
        match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Error::Rejected {
                backend: BACKEND,
                operation,
                reason: format!(
                    "HTTP {status}: {body} (check the ACL token and its policy: token / REGISTRY_TOKEN, token_file or CONSUL_HTTP_TOKEN)"
                ),
            },
            StatusCode::BAD_REQUEST
            | StatusCode::CONFLICT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => Error::Rejected {
                backend: BACKEND,
                operation,
                reason: format!("HTTP {status}: {body}"),
            },
            _ => Error::unavailable(BACKEND, self.addr.clone(), StatusError { status, body }),
        }
    }

    /// `GET /v1/acl/token/self`: proves that the configured token is known
    /// to Consul (any valid token may read itself). An agent without ACLs
    /// answers 401 "ACL support disabled", which is fine: the token is then
    /// simply not needed.
    pub(super) async fn check_token(&self) -> Result<()> {
        let url = format!("{}/v1/acl/token/self", self.base);
        let (status, _, body) = self
            .send("connect", self.http.get(url), self.timeout)
            .await?;
        let body = String::from_utf8_lossy(&body);
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED if body.contains("ACL support disabled") => Ok(()),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(Error::Rejected {
                backend: BACKEND,
                operation: "connect",
                reason: format!(
                    "the ACL token is not accepted (HTTP {status}: {}); check token / REGISTRY_TOKEN, \
                     token_file or CONSUL_HTTP_TOKEN",
                    body.trim()
                ),
            }),
            _ => Err(self.status_error("connect", status, &body)),
        }
    }

    /// `GET /v1/status/leader`: the cheapest call that proves the agent
    /// answers (it needs no ACL). Returns the leader's address, empty while
    /// the cluster has none.
    pub(super) async fn leader(&self) -> Result<String> {
        let url = format!("{}/v1/status/leader", self.base);
        let (status, _, body) = self
            .send("connect", self.http.get(url), self.timeout)
            .await?;
        if !status.is_success() {
            return Err(self.status_error("connect", status, &text(&body)));
        }
        serde_json::from_slice::<String>(&body).map_err(|e| {
            Error::unavailable(
                BACKEND,
                self.addr.clone(),
                format!("{} does not answer like a Consul agent: {e}", self.addr),
            )
        })
    }

    /// Whether the agent answers at all within `within`: `GET
    /// /v1/status/leader`, the cheapest call there is (no ACL, a few bytes).
    /// Any HTTP answer counts, even an error status: the agent is alive.
    /// A watch runs this beside its long blocking query, which would
    /// otherwise wait for a hung agent (one that accepts connections and
    /// never answers) for the whole `wait`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the agent if it did not answer in time
    /// or could not be reached.
    pub(super) async fn answers(&self, within: Duration) -> Result<()> {
        let url = format!("{}/v1/status/leader", self.base);
        match self.send("watch", self.http.get(url), within).await {
            Ok(_) => Ok(()),
            Err(Error::Timeout { .. }) => Err(Error::unavailable(
                BACKEND,
                self.addr.clone(),
                format!(
                    "the agent did not answer within {within:?}; it may be hung (the last snapshot may be stale)"
                ),
            )),
            Err(error) => Err(error),
        }
    }

    /// `GET /v1/agent/health/service/id/<id>`: what this agent has under
    /// `id`, if anything (service ids are unique per agent, across
    /// services), and whether its TTL check has expired. The agent answers
    /// 200, 429 or 503 for a passing, warning or critical service, 404 for
    /// an unknown id.
    pub(super) async fn agent_service(
        &self,
        operation: &'static str,
        id: &str,
    ) -> Result<Option<AgentRecord>> {
        #[derive(Deserialize)]
        struct Health {
            #[serde(rename = "Service", default)]
            service: Option<AgentService>,
            #[serde(rename = "Checks", default)]
            checks: Option<Vec<CheckEntry>>,
        }
        #[derive(Deserialize)]
        struct CheckEntry {
            #[serde(rename = "CheckID", default)]
            id: String,
            #[serde(rename = "Status", default)]
            status: String,
        }
        let url = format!("{}/v1/agent/health/service/id/{id}", self.base);
        let (status, _, body) = self
            .send(operation, self.http.get(url), self.timeout)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                let health = serde_json::from_slice::<Health>(&body).map_err(|e| {
                    Error::unavailable(
                        BACKEND,
                        self.addr.clone(),
                        format!("unreadable answer of /v1/agent/health/service/id/{id}: {e}"),
                    )
                })?;
                let check = check_id(id);
                let expired = health
                    .checks
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.id == check && c.status == "critical");
                Ok(health.service.map(|service| AgentRecord {
                    expired,
                    ..service.into()
                }))
            }
            s => Err(self.status_error(operation, s, &text(&body))),
        }
    }

    /// `GET /v1/agent/services`: every service this agent has, by id. One
    /// call however many instances a registrar keeps, so that checking all
    /// of them once per TTL stays cheap.
    pub(super) async fn agent_services(&self) -> Result<HashMap<String, AgentRecord>> {
        let url = format!("{}/v1/agent/services", self.base);
        let operation = "check our records";
        let (status, _, body) = self
            .send(operation, self.http.get(url), self.timeout)
            .await?;
        if !status.is_success() {
            return Err(self.status_error(operation, status, &text(&body)));
        }
        let services: HashMap<String, AgentService> =
            serde_json::from_slice(&body).map_err(|e| {
                Error::unavailable(
                    BACKEND,
                    self.addr.clone(),
                    format!("unreadable answer of /v1/agent/services: {e}"),
                )
            })?;
        Ok(services
            .into_iter()
            .map(|(id, service)| (id, service.into()))
            .collect())
    }

    /// `PUT /v1/agent/service/register`: registers (or replaces) `instance`
    /// on the agent with a TTL check that starts passing, and `owner` in its
    /// `Meta` under [`OWNER_METADATA_KEY`]. Whether the id may be written is
    /// the caller's to check first (see `agent.rs`).
    pub(super) async fn register(
        &self,
        instance: &Instance,
        owner: &str,
        ttl: Duration,
    ) -> Result<()> {
        let url = format!(
            "{}/v1/agent/service/register?replace-existing-checks=true",
            self.base
        );
        let request =
            self.http
                .put(url)
                .json(&registration_body(instance, owner, ttl, &self.interop));
        let (status, _, body) = self.send("register", request, self.timeout).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.status_error("register", status, &text(&body)))
        }
    }

    /// `PUT /v1/agent/check/pass/<check>`: one heartbeat of `id`.
    pub(super) async fn pass(&self, id: &str) -> Heartbeat {
        let url = format!("{}/v1/agent/check/pass/{}", self.base, check_id(id));
        let (status, _, body) = match self
            .send("heartbeat", self.http.put(url), self.timeout)
            .await
        {
            Ok(answer) => answer,
            Err(error) => return Heartbeat::Failed(error),
        };
        let message = text(&body);
        if status.is_success() {
            Heartbeat::Passed
        } else if status == StatusCode::NOT_FOUND
            || message.contains("Unknown check")
            || message.contains("does not have associated TTL")
        {
            Heartbeat::Forgotten(message.trim().to_owned())
        } else {
            Heartbeat::Failed(self.status_error("heartbeat", status, &message))
        }
    }

    /// `PUT /v1/agent/service/deregister/<id>`; an id the agent does not know
    /// is already deregistered.
    pub(super) async fn deregister(&self, id: &str) -> Result<()> {
        let url = format!("{}/v1/agent/service/deregister/{id}", self.base);
        let (status, _, body) = self
            .send("deregister", self.http.put(url), self.timeout)
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.status_error("deregister", status, &text(&body)))
        }
    }

    /// `GET /v1/catalog/services`: every service name in the catalog,
    /// healthy or not.
    pub(super) async fn catalog_services(&self) -> Result<Vec<String>> {
        let url = format!("{}/v1/catalog/services", self.base);
        let (status, _, body) = self.send("read", self.http.get(url), self.timeout).await?;
        if !status.is_success() {
            return Err(self.status_error("read", status, &text(&body)));
        }
        let names: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| {
                Error::unavailable(
                    BACKEND,
                    self.addr.clone(),
                    format!("unreadable answer of /v1/catalog/services: {e}"),
                )
            })?;
        Ok(names.into_keys().collect())
    }

    /// `GET /v1/health/service/<service>?passing=true`: the instances whose
    /// checks (node checks included) all pass, and the `X-Consul-Index`.
    ///
    /// With `blocking = Some((index, wait))` this is a blocking query: the
    /// agent answers when the result changes after `index`, or after about
    /// `wait` (plus up to wait/16 of jitter). The request timeout is then
    /// `wait + wait/16 + REGISTRY_TIMEOUT`.
    pub(super) async fn healthy(
        &self,
        service: &str,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(Vec<Instance>, u64)> {
        let (body, index) = self.fetch_healthy(service, blocking).await?;
        Ok((self.decode_healthy(service, &body)?, index))
    }

    /// The blocking query of a watch: as [`healthy`](Self::healthy) with
    /// `Some((index, wait))`, but `None` instead of the instances when the
    /// answer's index did not move (the wait ran out with no change), so
    /// that an unchanged list is not even decoded.
    pub(super) async fn healthy_since(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<Vec<Instance>>, u64)> {
        let (body, answer) = self.fetch_healthy(service, Some((index, wait))).await?;
        if answer == index && index > 0 {
            return Ok((None, answer));
        }
        Ok((Some(self.decode_healthy(service, &body)?), answer))
    }

    /// The body and `X-Consul-Index` of a health query.
    async fn fetch_healthy(
        &self,
        service: &str,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(Vec<u8>, u64)> {
        let (operation, url, timeout) = match blocking {
            Some((index, wait)) => (
                "watch",
                format!(
                    "{}/v1/health/service/{service}?passing=true&index={index}&wait={}ms",
                    self.base,
                    wait.as_millis()
                ),
                wait + wait / 16 + self.timeout,
            ),
            None => (
                "read",
                format!("{}/v1/health/service/{service}?passing=true", self.base),
                self.timeout,
            ),
        };
        let (status, index, body) = self.send(operation, self.http.get(url), timeout).await?;
        if !status.is_success() {
            return Err(self.status_error(operation, status, &text(&body)));
        }
        Ok((body, index.unwrap_or(0)))
    }

    /// Decodes a health answer straight into typed entries (no JSON tree:
    /// the fields we do not read are skipped as they are parsed); only if
    /// that fails (an entry of a shape we do not expect, written by another
    /// tool) is the answer read again entry by entry, so that one bad entry
    /// is skipped with a warning instead of hiding the others.
    fn decode_healthy(&self, service: &str, body: &[u8]) -> Result<Vec<Instance>> {
        if let Ok(entries) = serde_json::from_slice::<Vec<HealthEntry>>(body) {
            return Ok(entries
                .into_iter()
                .filter_map(|entry| instance_of(service, entry))
                .collect());
        }
        let entries: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
            Error::unavailable(
                BACKEND,
                self.addr.clone(),
                format!("unreadable answer of /v1/health/service/{service}: {e}"),
            )
        })?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| decode_entry(service, entry))
            .collect())
    }
}

/// The check id of our TTL check for instance `id`: Consul's own default
/// for a service's single check.
pub(super) fn check_id(id: &str) -> String {
    format!("service:{id}")
}

/// How long a critical instance stays in the catalog before the agent reaps
/// it: ten TTLs, but at least Consul's one-minute minimum. Readers never see
/// it meanwhile (they ask for passing instances only); this only cleans up
/// after crashed processes.
pub(super) fn deregister_after(ttl: Duration) -> Duration {
    ttl.saturating_mul(10).max(MIN_DEREGISTER_AFTER)
}

/// The JSON of `PUT /v1/agent/service/register` for `instance`, written by
/// the registrar `owner`, with what `interop` asks other frameworks'
/// readers to find: Spring Cloud Consul's `Meta.secure` (`false`: we serve
/// plain HTTP; left out when the instance sets it, or when Consul's 64 keys
/// are taken), Kratos' `TaggedAddresses[<scheme>]` (its reader takes the
/// instance's endpoints from there) and `version=<v>` tag.
fn registration_body(
    instance: &Instance,
    owner: &str,
    ttl: Duration,
    interop: &Interop,
) -> serde_json::Value {
    let mut meta = instance.metadata.clone();
    meta.insert(OWNER_METADATA_KEY.to_owned(), owner.to_owned());
    if interop.payload == Payload::Spring && meta.len() < MAX_METADATA_KEYS + 1 {
        meta.entry("secure".to_owned())
            .or_insert_with(|| "false".to_owned());
    }
    let mut tags = instance.tags.clone();
    let mut tagged = serde_json::Map::new();
    if interop.kratos {
        let version = instance.metadata.get("version").map_or("", String::as_str);
        tags.push(format!("version={version}"));
        tagged.insert(
            interop.kratos_scheme.clone(),
            json!({"Address": interop.kratos_endpoint(&instance.authority()), "Port": instance.port}),
        );
    }
    json!({
        "ID": instance.id,
        "Name": instance.service,
        "Address": instance.address,
        "Port": instance.port,
        "Tags": tags,
        "Meta": meta,
        "TaggedAddresses": tagged,
        "Weights": { "Passing": instance.weight, "Warning": 1 },
        "Check": {
            "CheckID": check_id(&instance.id),
            "Name": "registry TTL",
            "Notes": "kept passing every TTL/3 by the registrar that registered this instance",
            "TTL": format!("{}ms", ttl.as_millis()),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": format!("{}ms", deregister_after(ttl).as_millis()),
        },
    })
}

/// What `/v1/agent/service/<id>` and `/v1/agent/services` tell about one
/// service, reduced to what the registrar reads.
#[derive(Debug, Deserialize)]
struct AgentService {
    #[serde(rename = "Service")]
    service: String,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

/// The agent's record of one service id: whose service it is and which
/// registrar wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AgentRecord {
    /// The service name the id is registered under.
    pub(super) service: String,
    /// The owner token in its `Meta`, if a registrar of ours wrote it (other
    /// tools and older versions leave none).
    pub(super) owner: Option<String>,
    /// Its TTL check (`service:<id>`) is critical: nobody passed it for a
    /// TTL, so whoever wrote it is gone or cut off, as an expired lease is
    /// on the other backends (the agent keeps the record until
    /// `DeregisterCriticalServiceAfter`). Only
    /// [`Api::agent_service`] tells; `false` from [`Api::agent_services`].
    pub(super) expired: bool,
}

impl From<AgentService> for AgentRecord {
    fn from(service: AgentService) -> Self {
        AgentRecord {
            owner: service
                .meta
                .and_then(|mut meta| meta.remove(OWNER_METADATA_KEY))
                .filter(|owner| !owner.is_empty()),
            service: service.service,
            expired: false,
        }
    }
}

/// One element of `/v1/health/service/<name>`, reduced to what we read.
#[derive(Debug, Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: Option<NodeEntry>,
    #[serde(rename = "Service")]
    service: ServiceEntry,
}

#[derive(Debug, Deserialize)]
struct NodeEntry {
    #[serde(rename = "Node", default)]
    name: Option<String>,
    #[serde(rename = "Address", default)]
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ServiceEntry {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Service")]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: Option<String>,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
}

/// Turns one health entry into an [`Instance`], or skips it with a warning
/// if it breaks our model (a foreign registration with a port of 0, an empty
/// tag, an id we cannot address...): one bad entry must not hide the others.
fn decode_entry(service: &str, entry: serde_json::Value) -> Option<Instance> {
    match serde_json::from_value(entry) {
        Ok(entry) => instance_of(service, entry),
        Err(error) => {
            tracing::warn!(backend = BACKEND, service, %error, "skipping a Consul health entry that does not decode");
            None
        }
    }
}

/// Turns one decoded health entry into an [`Instance`], or skips it with a
/// warning (see [`decode_entry`]).
fn instance_of(service: &str, entry: HealthEntry) -> Option<Instance> {
    let node = entry.node.unwrap_or(NodeEntry {
        name: None,
        address: None,
    });
    let s = entry.service;
    let address = match s.address.filter(|a| !a.is_empty()) {
        Some(address) => address,
        // Consul's rule: an empty service address means the node's address.
        None => node.address.unwrap_or_default(),
    };
    let instance = Instance {
        id: s.id,
        service: s.service,
        address,
        port: s.port,
        tags: s.tags.unwrap_or_default(),
        // Our owner token is the registrar's business, not the instance's.
        metadata: s
            .meta
            .map(|mut meta| {
                meta.remove(OWNER_METADATA_KEY);
                meta
            })
            .unwrap_or_default(),
        // Consul fills in weights {1, 1} when none are given; a registration
        // without any (or with 0) counts as the default weight.
        weight: s.weights.map(|w| w.passing).filter(|w| *w > 0).unwrap_or(1),
    };
    let checked = instance
        .validate()
        .and_then(|()| addressable("id", &instance.id));
    if let Err(error) = checked {
        tracing::warn!(
            backend = BACKEND,
            service,
            id = %instance.id,
            node = node.name.as_deref().unwrap_or(""),
            %error,
            "skipping a Consul instance that breaks the instance model"
        );
        return None;
    }
    if instance.service != service {
        tracing::warn!(backend = BACKEND, service, found = %instance.service, id = %instance.id,
            "skipping a Consul instance listed under another service");
        return None;
    }
    Some(instance)
}

/// Checks that a valid name can also be a segment of a URL path: `.` and
/// `..` would be resolved away by URL normalisation, so Consul could never
/// be asked about them.
pub(super) fn addressable(what: &str, name: &str) -> Result<()> {
    if name == "." || name == ".." {
        return Err(Error::InvalidInstance(format!(
            "{what} {name:?} cannot be used with Consul: it is not addressable in a URL path"
        )));
    }
    Ok(())
}

/// Validates a service name for a read or a watch: our alphabet, and
/// addressable in a URL path.
pub(super) fn validate_service(service: &str) -> Result<()> {
    validate_name("service", service)?;
    addressable("service", service)
}

/// A response body as text, for messages.
fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_map_consul_rules_and_skip_what_breaks_the_model() {
        let entry = json!({
            "Node": {"Node": "ext", "Address": "10.0.0.9"},
            "Service": {"ID": "f2", "Service": "foreign", "Tags": null, "Address": "",
                        "Meta": null, "Port": 9001},
            "Checks": []
        });
        let instance = decode_entry("foreign", entry).unwrap();
        assert_eq!(instance, Instance::new("foreign", "f2", "10.0.0.9", 9001));

        // Our owner token never reaches the instance's metadata.
        let ours = json!({
            "Node": {"Node": "n", "Address": "127.0.0.1"},
            "Service": {"ID": "a", "Service": "lorem", "Tags": ["v1"], "Address": "192.0.2.1",
                        "Meta": {"zone": "eu", "registry-owner": "pid1-abc"}, "Port": 8080,
                        "Weights": {"Passing": 3, "Warning": 1}}
        });
        assert_eq!(
            decode_entry("lorem", ours).unwrap(),
            Instance::new("lorem", "a", "192.0.2.1", 8080)
                .with_tag("v1")
                .with_metadata("zone", "eu")
                .with_weight(3)
        );

        for bad in [
            json!({"Node": {"Address": "h"}, "Service": {"ID": "bad tag", "Service": "foreign", "Port": 1, "Tags": [""]}}),
            json!({"Node": {"Address": "h"}, "Service": {"ID": "p", "Service": "foreign"}}),
            json!({"Node": {"Address": "h"}, "Service": {"ID": "p", "Service": "foreign", "Port": 70000}}),
            json!({"Node": {"Address": "h"}, "Service": {"ID": "..", "Service": "foreign", "Port": 1}}),
            json!({"Node": {"Address": "h"}, "Service": {"ID": "x", "Service": "other", "Port": 1}}),
            json!({"nothing": true}),
        ] {
            assert_eq!(decode_entry("foreign", bad.clone()), None, "{bad}");
        }
    }

    #[test]
    fn registration_json_carries_kratos_and_spring_conventions_when_asked() {
        let instance = Instance::new("lorem", "a", "127.0.0.1", 8080)
            .with_tag("v1")
            .with_metadata("version", "1.2");
        let interop = Interop {
            payload: Payload::Spring,
            kratos: true,
            kratos_scheme: "grpc".into(),
            ..Interop::default()
        };
        let body = registration_body(&instance, "pid1-abc", Duration::from_secs(3), &interop);
        assert_eq!(body["Tags"], json!(["v1", "version=1.2"]));
        assert_eq!(
            body["TaggedAddresses"],
            json!({"grpc": {"Address": "grpc://127.0.0.1:8080", "Port": 8080}})
        );
        assert_eq!(body["Meta"]["secure"], "false");
        assert_eq!(body["Meta"]["version"], "1.2");
    }

    #[test]
    fn registration_json_has_a_passing_ttl_check() {
        let instance = Instance::new("lorem", "a", "127.0.0.1", 8080).with_weight(2);
        let body = registration_body(
            &instance.clone().with_metadata("zone", "eu"),
            "pid1-abc",
            Duration::from_millis(1500),
            &Interop::default(),
        );
        assert_eq!(body["TaggedAddresses"], json!({}));
        assert_eq!(body["Tags"], json!([]));
        assert_eq!(body["Weights"], json!({"Passing": 2, "Warning": 1}));
        assert_eq!(
            body["Meta"],
            json!({"zone": "eu", "registry-owner": "pid1-abc"})
        );
        assert_eq!(body["Check"]["TTL"], "1500ms");
        assert_eq!(body["Check"]["Status"], "passing");
        assert_eq!(body["Check"]["CheckID"], "service:a");
        assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
        assert_eq!(
            deregister_after(Duration::from_secs(30)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn the_agent_record_names_its_owner_if_it_has_one() {
        let read = |value: serde_json::Value| {
            AgentRecord::from(serde_json::from_value::<AgentService>(value).unwrap())
        };
        assert_eq!(
            read(
                json!({"ID": "a", "Service": "lorem", "Meta": {"registry-owner": "pid1-abc", "zone": "eu"}})
            ),
            AgentRecord {
                service: "lorem".to_owned(),
                owner: Some("pid1-abc".to_owned()),
                expired: false,
            }
        );
        for unowned in [
            json!({"ID": "a", "Service": "lorem"}),
            json!({"ID": "a", "Service": "lorem", "Meta": null}),
            json!({"ID": "a", "Service": "lorem", "Meta": {"registry-owner": ""}}),
        ] {
            assert_eq!(read(unowned).owner, None);
        }
    }

    #[test]
    fn dot_names_are_refused() {
        assert!(validate_service(".").is_err());
        assert!(validate_service("..").is_err());
        assert!(validate_service("a..b").is_ok());
    }
}
