//! Requests through the balancer, with bounded, budgeted retries on other
//! instances.
//!
//! [`Client`] is service-agnostic: it POSTs to a path on an instance chosen
//! by the [`Balancer`]. Each try has a deadline ([`ClientOptions::try_timeout`]).
//! Only failures that are safe to retry are retried:
//!
//! | failure of a try                                   | retried | costs retry budget |
//! |----------------------------------------------------|---------|--------------------|
//! | connection refused / unreachable                   | yes     | no                 |
//! | a pooled connection found closed before the request was sent | yes | no         |
//! | connect timeout, try timeout                       | yes     | yes                |
//! | a 5xx answer                                       | yes     | yes                |
//! | the connection closed or reset after the request was sent (the server may have acted on it), an answer body over [`MAX_BODY_BYTES`] | yes | yes |
//! | any other answer (2xx, 3xx, 4xx)                   | no: returned as is |    |
//!
//! A retry never goes back to an instance this request already tried: it
//! goes to another live instance, and when every live instance has been
//! tried the request ends ([`GaveUp::AllTried`]); if the set empties
//! between two tries, the retry waits for an instance like a first try, up
//! to the balancer's wait timeout ([`GaveUp::NoneLeft`]). At most
//! [`ClientOptions::attempts`] tries are made in all.
//!
//! **Retry budget.** Retries that cost budget are limited, over a sliding
//! 10 s window, to [`ClientOptions::retry_percent`] of the requests plus
//! [`ClientOptions::min_retries_per_sec`], in whole numbers, so that a sick
//! backend cannot double the load on the healthy ones. Retries after a
//! refused connection, or a pooled connection found closed before sending,
//! cost nothing: the request never reached a server.
//!
//! Every try's outcome feeds the instance's passive health (see
//! [`EjectionOptions`](crate::EjectionOptions)) and its latency estimate.
//!
//! [`LoremClient`] adds the lorem API on top: `POST /lorem/{kind}/{min}/{max}`
//! answering `{"message": "..."}`.

use std::collections::HashSet;
use std::error::Error as _;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::Instance;
use serde::Deserialize;
use tokio::time::Instant;

use balancer::{
    Balancer, Endpoint, Error, GaveUp, MAX_BODY_BYTES, Result, RetryBudget, Snapshot, check_timeout,
};

// The server's own kinds, so that client and server cannot disagree on them.
pub use lorem::generate::Kind;

/// The header through which an instance names itself.
pub const INSTANCE_HEADER: &str = "x-instance-id";

/// How many distinct instances a client warns about for a mismatched
/// [`INSTANCE_HEADER`] (one warning each); bounds the memory it keeps.
const MAX_MISMATCH_WARNINGS: usize = 1024;

/// Default [`ClientOptions::attempts`].
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default [`ClientOptions::try_timeout`].
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`ClientOptions::retry_percent`].
pub const DEFAULT_RETRY_PERCENT: u32 = 20;
/// Default [`ClientOptions::min_retries_per_sec`].
pub const DEFAULT_MIN_RETRIES_PER_SEC: u32 = 10;

/// Settings of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Tries per request, the first included (at least 1): bounds the work a
    /// single request can cause when instances fail.
    pub attempts: u32,
    /// Deadline of one try, from connecting to the end of the body, so that a
    /// hung instance costs one try rather than the whole request. More than
    /// zero and at most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    pub try_timeout: Duration,
    /// Retries that cost budget may add this many percent of the requests
    /// (over [`RETRY_BUDGET_WINDOW`](crate::RETRY_BUDGET_WINDOW)); at most
    /// 1000.
    pub retry_percent: u32,
    /// Retries per second allowed on top of the percentage, so that a
    /// client sending few requests can still retry.
    pub min_retries_per_sec: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempts: DEFAULT_ATTEMPTS,
            try_timeout: DEFAULT_TRY_TIMEOUT,
            retry_percent: DEFAULT_RETRY_PERCENT,
            min_retries_per_sec: DEFAULT_MIN_RETRIES_PER_SEC,
        }
    }
}

/// What an instance answered, after any retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status: always below 500, since 5xx answers are retried and
    /// end as [`Error::Exhausted`].
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// The registry id of the instance that answered (the one the balancer
    /// picked): what counts and reports are keyed by.
    pub instance: String,
    /// The id the instance gave in its `x-instance-id` header, if any. It
    /// normally equals `instance`; a difference (logged once per instance)
    /// points at a misconfigured server.
    pub reported_id: Option<String>,
    /// How many tries failed before this answer.
    pub retries: u32,
    /// Time from the call to the end of the answer, retries and waiting for
    /// an instance included.
    pub latency: Duration,
}

/// Why one try failed: decides whether a retry costs budget.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The connection was refused or the host unreachable: nothing was sent.
    Connect(String),
    /// A pooled connection was found closed before the request was sent
    /// (hyper cancels it): the server never saw the request.
    ClosedBeforeSend(String),
    /// The connect or try deadline passed.
    Timeout(String),
    /// A 5xx answer.
    Status(u16, String),
    /// The connection closed or broke after the request was sent (the
    /// server may have acted on it), or the answer was too large.
    Broken(String),
}

impl Failure {
    /// True for failures whose retry costs no budget: the request never
    /// reached a server.
    fn is_free(&self) -> bool {
        matches!(self, Failure::Connect(_) | Failure::ClosedBeforeSend(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(text)
            | Failure::ClosedBeforeSend(text)
            | Failure::Timeout(text)
            | Failure::Broken(text) => f.write_str(text),
            Failure::Status(status, body) => write!(f, "HTTP {status}: {body}"),
        }
    }
}

/// A service-agnostic HTTP client over a [`Balancer`]. Cheap to clone:
/// clones share the HTTP connection pool and the retry budget.
#[derive(Clone)]
pub struct Client {
    balancer: Balancer,
    http: reqwest::Client,
    options: ClientOptions,
    budget: Arc<RetryBudget>,
    /// Registry ids already warned about for a mismatched header.
    warned: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("balancer", &self.balancer)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The HTTP client every try goes through: no proxy from the environment
/// (instances are reached directly), a connect deadline of `try_timeout`.
/// `lorem-client load --direct` uses the same one, so that the overhead
/// benchmark compares like with like.
///
/// # Errors
/// [`Error::Http`] if the client cannot be built.
pub fn http_client(try_timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(try_timeout)
        .build()
        .map_err(|e| Error::Http(Box::new(e)))
}

impl Client {
    /// A client sending through `balancer`.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for zero attempts, a zero try timeout, a try
    /// timeout over [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) or a retry
    /// percentage over 1000; [`Error::Http`] if the HTTP client cannot be
    /// built.
    pub fn new(balancer: Balancer, options: ClientOptions) -> Result<Self> {
        if options.attempts == 0 {
            return Err(Error::InvalidOptions(
                "attempts must be at least 1".to_owned(),
            ));
        }
        if options.try_timeout.is_zero() {
            return Err(Error::InvalidOptions(
                "the per-try timeout must be more than 0s".to_owned(),
            ));
        }
        check_timeout("the per-try timeout", options.try_timeout)?;
        if options.retry_percent > 1000 {
            return Err(Error::InvalidOptions(format!(
                "the retry budget must be from 0 to 1000 percent, got {}",
                options.retry_percent
            )));
        }
        let http = http_client(options.try_timeout)?;
        let budget = RetryBudget::new(options.retry_percent, options.min_retries_per_sec);
        Ok(Client {
            balancer,
            http,
            options,
            budget: Arc::new(budget),
            warned: Arc::default(),
        })
    }

    /// The balancer requests go through.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The live set of the service now.
    pub fn instances(&self) -> Snapshot {
        self.balancer.instances()
    }

    /// The options it was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// POSTs to `path` (which starts with `/`) on an instance, with retries.
    ///
    /// # Errors
    /// [`Error::NoInstance`] if no instance appeared within the wait;
    /// [`Error::Exhausted`] if every try failed with a failure that is
    /// retried (see the [module docs](self)) and no further try was allowed.
    /// A 4xx is an `Ok` answer here.
    pub async fn post(&self, path: &str) -> Result<Answer> {
        let started = Instant::now();
        let metrics = self.balancer.metrics();
        let service = self.balancer.service();
        self.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<(String, Failure)> = None;
        let mut gave_up = GaveUp::Attempts;
        for attempt in 1..=self.options.attempts {
            if let Some((_, failure)) = &last {
                // Before waiting for an instance: a refused retry must not
                // block first.
                if !failure.is_free() && !self.budget.withdraw() {
                    metrics.budget_exhausted.inc();
                    gave_up = GaveUp::Budget;
                    break;
                }
            }
            let endpoint = match self.balancer.acquire(&tried).await {
                Ok(Some(endpoint)) => endpoint,
                Ok(None) => {
                    gave_up = GaveUp::AllTried;
                    break;
                }
                // The set emptied after a failed try and nothing came back
                // in time: the request failed, and its last failure says why.
                Err(_) if last.is_some() => {
                    gave_up = GaveUp::NoneLeft;
                    break;
                }
                Err(error) => {
                    metrics.no_instance.inc();
                    return Err(error);
                }
            };
            if last.is_some() {
                metrics.retries.inc();
            }
            let tried_at = Instant::now();
            let outcome = {
                let _in_flight = endpoint.start();
                self.try_once(&endpoint, path).await
            };
            let took = tried_at.elapsed();
            let failure = match outcome {
                Ok((status, body, reported_id)) if status < 500 => {
                    endpoint.record_success(tried_at, took, self.balancer.tracks_latency());
                    let latency = started.elapsed();
                    if status < 400 {
                        metrics.ok.inc();
                        metrics.duration.observe(latency.as_secs_f64());
                    } else {
                        metrics.rejected.inc();
                    }
                    return Ok(Answer {
                        status,
                        body,
                        instance: endpoint.instance.id.clone(),
                        reported_id,
                        retries: attempt - 1,
                        latency,
                    });
                }
                Ok((status, body, _)) => Failure::Status(status, body.trim().to_owned()),
                Err(failure) => failure,
            };
            let instance = &endpoint.instance;
            if let Some(ejected) = endpoint.record_failure(took, &self.balancer.options().ejection)
            {
                metrics.ejections.inc();
                tracing::warn!(
                    service = %service,
                    instance = %instance.id,
                    addr = %instance.authority(),
                    ejected_for = ?ejected.duration,
                    ejections_in_a_row = ejected.nth,
                    "instance ejected after consecutive failures"
                );
            }
            tracing::warn!(
                service = %service,
                instance = %instance.id,
                addr = %instance.authority(),
                attempt,
                error = %failure,
                retry_is_free = failure.is_free(),
                "attempt failed"
            );
            tried.push(instance.id.clone());
            last = Some((instance.id.clone(), failure));
        }
        metrics.failed.inc();
        // The first try always has an instance, so `last` is set.
        let (instance, last) = match last {
            Some((instance, failure)) => (instance, failure.to_string()),
            None => (String::new(), "no try was made".to_owned()),
        };
        Err(Error::Exhausted {
            service: service.to_owned(),
            attempts: u32::try_from(tried.len()).unwrap_or(u32::MAX),
            gave_up,
            instance,
            last,
        })
    }

    /// One try on one instance: `(status, body, x-instance-id header)`, or
    /// why it failed.
    async fn try_once(
        &self,
        endpoint: &Endpoint,
        path: &str,
    ) -> std::result::Result<(u16, String, Option<String>), Failure> {
        let answer = try_post(
            &self.http,
            &endpoint.authority,
            path,
            self.options.try_timeout,
        )
        .await?;
        if let Some(reported) = &answer.2 {
            self.check_reported_id(&endpoint.instance, reported);
        }
        Ok(answer)
    }

    /// Warns, once per registry id, when an instance names itself otherwise
    /// than its registration: answers are still counted under the registry
    /// id, but the difference usually means a server was started with the
    /// wrong id or another process took over its address.
    fn check_reported_id(&self, instance: &Instance, reported: &str) {
        if reported == instance.id {
            return;
        }
        // Poisoning only risks a repeated warning.
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < MAX_MISMATCH_WARNINGS && warned.insert(instance.id.clone()) {
            tracing::warn!(
                service = %self.balancer.service(),
                instance = %instance.id,
                addr = %instance.authority(),
                header = %reported,
                "the instance's {INSTANCE_HEADER} header differs from its registry id; \
                 counting its answers under the registry id"
            );
        }
    }
}

/// POSTs `path` to `authority` once, reading at most [`MAX_BODY_BYTES`] of
/// the answer: `(status, body, x-instance-id header)`, or why it failed.
async fn try_post(
    http: &reqwest::Client,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> std::result::Result<(u16, String, Option<String>), Failure> {
    let url = format!("http://{authority}{path}");
    let mut response = http
        .post(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(&e, timeout))?;
    let status = response.status().as_u16();
    let reported_id = response
        .headers()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let body = read_body(&mut response, timeout).await?;
    Ok((status, body, reported_id))
}

/// Reads the body of `response` as text, refusing (without reading further)
/// one over [`MAX_BODY_BYTES`]: announced as such by its `Content-Length`, or
/// found to be so while reading it chunk by chunk.
async fn read_body(
    response: &mut reqwest::Response,
    timeout: Duration,
) -> std::result::Result<String, Failure> {
    let too_large = || {
        Failure::Broken(format!(
            "the answer body is larger than the {MAX_BODY_BYTES}-byte limit (1 MiB); \
             the instance is misbehaving"
        ))
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| match classify(&e, timeout) {
            // Once the answer has begun, nothing about it is free to retry.
            Failure::ClosedBeforeSend(text) | Failure::Connect(text) => Failure::Broken(text),
            other => other,
        })?
    {
        if chunk.len() > MAX_BODY_BYTES - body.len() {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    // As `Response::text` would: invalid UTF-8 is replaced, not refused.
    Ok(match String::from_utf8(body) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })
}

/// Sorts a transport error into a [`Failure`], with a message that names the
/// problem; `timeout` is the try's deadline, for the message.
fn classify(error: &reqwest::Error, timeout: Duration) -> Failure {
    if error.is_timeout() {
        return Failure::Timeout(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        ));
    }
    // reqwest's own message is generic and repeats the URL; the causes name
    // the problem ("Connection refused (os error 111)").
    let mut causes = Vec::new();
    let mut never_sent = false;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            // Canceled: hyper found the pooled connection closed before
            // writing the request. (An incomplete message, by contrast, is
            // an EOF after the request went out: not free.)
            never_sent |= hyper.is_canceled();
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    let cause = causes.last().cloned().unwrap_or_else(|| error.to_string());
    if error.is_connect() {
        Failure::Connect(format!("cannot connect: {cause}"))
    } else if never_sent {
        Failure::ClosedBeforeSend(format!(
            "the connection was closed before the request was sent: {cause}"
        ))
    } else if error.is_body() || error.is_decode() {
        Failure::Broken(format!("cannot read the answer: {cause}"))
    } else {
        Failure::Broken(format!("request failed: {cause}"))
    }
}

/// A plain HTTP client for [`LoremRequest`]s to fixed addresses, in turn,
/// without discovery, balancing state, retries or metrics: the baseline of
/// the overhead benchmark (`lorem-client load --direct`). It sends and reads
/// exactly as [`LoremClient`] does.
#[derive(Debug, Clone)]
pub struct DirectClient {
    http: reqwest::Client,
    addrs: Arc<[String]>,
    turn: Arc<AtomicUsize>,
    timeout: Duration,
}

impl DirectClient {
    /// A client sending to `addrs` (`host:port`) in turn, with `timeout`
    /// per request.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for no address or a zero timeout;
    /// [`Error::Http`] if the HTTP client cannot be built.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<Self> {
        if addrs.is_empty() {
            return Err(Error::InvalidOptions(
                "give at least one host:port to send to".to_owned(),
            ));
        }
        if timeout.is_zero() {
            return Err(Error::InvalidOptions(
                "the per-try timeout must be more than 0s".to_owned(),
            ));
        }
        check_timeout("the per-try timeout", timeout)?;
        Ok(DirectClient {
            http: http_client(timeout)?,
            addrs: addrs.into(),
            turn: Arc::default(),
            timeout,
        })
    }

    /// The addresses it sends to.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Sends one lorem request to the next address, once.
    ///
    /// # Errors
    /// [`Error::Exhausted`] (after its one attempt) for a transport failure
    /// or a 5xx; otherwise as [`LoremClient::lorem`].
    pub async fn lorem(&self, request: &LoremRequest) -> Result<Lorem> {
        let started = Instant::now();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let addr = &self.addrs[turn % self.addrs.len()];
        let failed = |last: String| Error::Exhausted {
            service: "direct".to_owned(),
            attempts: 1,
            gave_up: GaveUp::Attempts,
            instance: addr.clone(),
            last,
        };
        let (status, body, reported_id) = try_post(&self.http, addr, &request.path(), self.timeout)
            .await
            .map_err(|failure| failed(failure.to_string()))?;
        if status >= 500 {
            return Err(failed(format!("HTTP {status}: {}", body.trim())));
        }
        let instance = reported_id.clone().unwrap_or_else(|| addr.clone());
        decode_lorem(Answer {
            status,
            body,
            instance,
            reported_id,
            retries: 0,
            latency: started.elapsed(),
        })
    }
}

/// Parses a [`Kind`] as users of the client write it: in any case, singular
/// or plural (`word`, `Sentences`...). The server's path segment itself is
/// the singular ([`Kind::as_str`]).
///
/// # Errors
/// [`Error::InvalidOptions`] naming the text, for anything else.
pub fn parse_kind(text: &str) -> Result<Kind> {
    let trimmed = text.trim();
    let singular = trimmed.strip_suffix(['s', 'S']).unwrap_or(trimmed);
    Kind::ALL
        .into_iter()
        .find(|kind| kind.as_str().eq_ignore_ascii_case(singular))
        .ok_or_else(|| {
            Error::InvalidOptions(format!(
                "unknown kind {text:?}; expected word, sentence or paragraph"
            ))
        })
}

/// One lorem request: `kind` with a length between `min` and `max`.
///
/// The range is checked by the server (which answers 400 for a bad one), so
/// that every client sees the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoremRequest {
    /// What to generate.
    pub kind: Kind,
    /// Smallest length.
    pub min: u32,
    /// Largest length.
    pub max: u32,
}

impl LoremRequest {
    /// A request for `kind` between `min` and `max`.
    pub fn new(kind: Kind, min: u32, max: u32) -> Self {
        LoremRequest { kind, min, max }
    }

    /// The request's path on an instance.
    pub fn path(&self) -> String {
        format!("/lorem/{}/{}/{}", self.kind, self.min, self.max)
    }
}

impl Default for LoremRequest {
    fn default() -> Self {
        LoremRequest::new(Kind::Sentence, 5, 20)
    }
}

/// A successful lorem answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lorem {
    /// The generated text.
    pub message: String,
    /// The registry id of the instance that answered (see
    /// [`Answer::instance`]).
    pub instance: String,
    /// Its `x-instance-id` header, if any (see [`Answer::reported_id`]).
    pub reported_id: Option<String>,
    /// How many tries failed before this answer.
    pub retries: u32,
    /// Time from the call to the answer, retries included.
    pub latency: Duration,
}

#[derive(Deserialize)]
struct MessageBody {
    message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The lorem service's client: [`Client`] plus its API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoremClient {
    client: Client,
}

impl LoremClient {
    /// A lorem client over `balancer`.
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn new(balancer: Balancer, options: ClientOptions) -> Result<Self> {
        Ok(LoremClient {
            client: Client::new(balancer, options)?,
        })
    }

    /// The generic client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The balancer requests go through.
    pub fn balancer(&self) -> &Balancer {
        self.client.balancer()
    }

    /// Asks an instance for lorem ipsum.
    ///
    /// # Errors
    /// [`Error::Rejected`] for a 4xx (a bad range...), not retried;
    /// [`Error::BadResponse`] for a 2xx without a `message`; otherwise as
    /// [`Client::post`].
    pub async fn lorem(&self, request: &LoremRequest) -> Result<Lorem> {
        decode_lorem(self.client.post(&request.path()).await?)
    }
}

/// Turns an answer of the lorem route into a [`Lorem`] or the error it
/// stands for.
fn decode_lorem(answer: Answer) -> Result<Lorem> {
    match answer.status {
        200..=299 => match serde_json::from_str::<MessageBody>(&answer.body) {
            Ok(body) => Ok(Lorem {
                message: body.message,
                instance: answer.instance,
                reported_id: answer.reported_id,
                retries: answer.retries,
                latency: answer.latency,
            }),
            Err(error) => Err(Error::BadResponse {
                instance: answer.instance,
                reason: format!("expected {{\"message\": ...}}: {error}"),
            }),
        },
        400..=499 => {
            let message = serde_json::from_str::<ErrorBody>(&answer.body)
                .map(|b| b.error)
                .unwrap_or_else(|_| answer.body.trim().to_owned());
            Err(Error::Rejected {
                instance: answer.instance,
                status: answer.status,
                message,
                body: answer.body,
            })
        }
        status => Err(Error::BadResponse {
            instance: answer.instance,
            reason: format!("unexpected HTTP status {status}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_in_any_case_singular_or_plural() {
        for (text, kind) in [
            ("word", Kind::Word),
            (" WORDS ", Kind::Word),
            ("Sentence", Kind::Sentence),
            ("sentences", Kind::Sentence),
            ("PARAGRAPHs", Kind::Paragraph),
        ] {
            assert_eq!(parse_kind(text).ok(), Some(kind), "{text:?}");
        }
        for bad in ["poem", "", "s", "wordss", "word s"] {
            let error = parse_kind(bad).expect_err("refused");
            assert_eq!(
                error.to_string(),
                format!(
                    "invalid client options: unknown kind {bad:?}; expected word, sentence or paragraph"
                ),
                "{bad:?}"
            );
        }
    }
}
