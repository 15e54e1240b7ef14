//! Requests through the balancer, with retries on another instance.
//!
//! [`Client`] is service-agnostic: it POSTs to a path on an instance chosen
//! by the [`Balancer`]. A connection error, a per-try timeout or a 5xx is
//! retried on a *different* instance than the ones that already failed this
//! request, up to [`ClientOptions::attempts`] tries in all; any other answer
//! (2xx, 4xx...) is returned as is. [`LoremClient`] adds the lorem API on
//! top: `POST /lorem/{kind}/{min}/{max}` answering `{"message": "..."}`.
//!
//! An answer whose body is larger than [`MAX_BODY_BYTES`] (whatever its
//! status) counts as a failed try of that instance, like a 5xx: the client
//! stops reading it, drops the connection and retries elsewhere, so that a
//! misbehaving instance costs one try rather than unbounded memory. When
//! every try fails that way, the request ends with [`Error::Exhausted`].

use std::collections::HashSet;
use std::error::Error as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::Instance;
use serde::Deserialize;
use tokio::time::Instant;

use crate::balancer::{Balancer, Snapshot};
use crate::error::{Error, Result};
use crate::limits::{MAX_BODY_BYTES, check_timeout};

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
    /// Pause before a retry that has to go back to an instance which already
    /// failed this request (every live instance has failed it), so that the
    /// attempts are not burnt in a tight loop. At most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    pub retry_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempts: DEFAULT_ATTEMPTS,
            try_timeout: DEFAULT_TRY_TIMEOUT,
            retry_backoff: Duration::from_millis(50),
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

/// A service-agnostic HTTP client over a [`Balancer`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    balancer: Balancer,
    http: reqwest::Client,
    options: ClientOptions,
    /// Registry ids already warned about for a mismatched header.
    warned: Arc<Mutex<HashSet<String>>>,
}

impl Client {
    /// A client sending through `balancer`.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for zero attempts, a zero try timeout, or a
    /// try timeout or retry backoff over [`MAX_TIMEOUT`](crate::MAX_TIMEOUT); [`Error::Http`] if
    /// the HTTP client cannot be built.
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
        check_timeout("the retry backoff", options.retry_backoff)?;
        let http = reqwest::Client::builder()
            // Instances are reached directly, never through an HTTP proxy
            // from the environment.
            .no_proxy()
            .connect_timeout(options.try_timeout)
            .build()
            .map_err(|e| Error::Http(Box::new(e)))?;
        Ok(Client {
            balancer,
            http,
            options,
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
    /// [`Error::Exhausted`] if every attempt failed with a connection error,
    /// a timeout, a 5xx or a body over [`MAX_BODY_BYTES`]. A 4xx is an `Ok`
    /// answer here.
    pub async fn post(&self, path: &str) -> Result<Answer> {
        let started = Instant::now();
        let service = self.balancer.service();
        let mut failed: Vec<String> = Vec::new();
        let mut last = String::new();
        let mut last_instance = String::new();
        for attempt in 1..=self.options.attempts {
            let instance = self.balancer.next(&failed).await?;
            if failed.contains(&instance.id) {
                tokio::time::sleep(self.options.retry_backoff).await;
            }
            match self.try_once(&instance, path).await {
                Ok((status, body, reported_id)) if status < 500 => {
                    return Ok(Answer {
                        status,
                        body,
                        instance: instance.id,
                        reported_id,
                        retries: attempt - 1,
                        latency: started.elapsed(),
                    });
                }
                Ok((status, body, _)) => {
                    last = format!("HTTP {status}: {}", body.trim());
                }
                Err(error) => {
                    last = error;
                }
            }
            last_instance.clone_from(&instance.id);
            let retrying = attempt < self.options.attempts;
            tracing::warn!(
                service = %service,
                instance = %instance.id,
                addr = %instance.authority(),
                attempt,
                error = %last,
                retrying,
                "attempt failed"
            );
            if !failed.contains(&instance.id) {
                failed.push(instance.id);
            }
        }
        Err(Error::Exhausted {
            service: service.to_owned(),
            attempts: self.options.attempts,
            instance: last_instance,
            last,
        })
    }

    /// One try on one instance: `(status, body, x-instance-id header)`, or a
    /// description of the transport failure (a body over [`MAX_BODY_BYTES`]
    /// included).
    async fn try_once(
        &self,
        instance: &Instance,
        path: &str,
    ) -> std::result::Result<(u16, String, Option<String>), String> {
        let url = format!("http://{}{}", instance.authority(), path);
        let mut response = self
            .http
            .post(&url)
            .timeout(self.options.try_timeout)
            .send()
            .await
            .map_err(|e| self.describe(&e))?;
        let status = response.status().as_u16();
        let reported_id = response
            .headers()
            .get(INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        if let Some(reported) = &reported_id {
            self.check_reported_id(instance, reported);
        }
        let body = self.read_body(&mut response).await?;
        Ok((status, body, reported_id))
    }

    /// Reads the body of `response` as text, refusing (without reading
    /// further) one over [`MAX_BODY_BYTES`]: announced as such by its
    /// `Content-Length`, or found to be so while reading it chunk by chunk.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
    ) -> std::result::Result<String, String> {
        let too_large = || {
            format!(
                "the answer body is larger than the {MAX_BODY_BYTES}-byte limit (1 MiB); \
                 the instance is misbehaving"
            )
        };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(&e))? {
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

    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            return format!(
                "timed out after {}",
                humantime::format_duration(self.options.try_timeout)
            );
        }
        // reqwest's own message is generic and repeats the URL; the causes
        // name the problem ("Connection refused (os error 111)").
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let what = if error.is_connect() {
            "cannot connect"
        } else if error.is_body() || error.is_decode() {
            "cannot read the answer"
        } else {
            "request failed"
        };
        match causes.last() {
            Some(cause) => format!("{what}: {cause}"),
            None => format!("{what}: {error}"),
        }
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
        let answer = self.client.post(&request.path()).await?;
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
