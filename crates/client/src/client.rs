//! The lorem service's API over the discovery-aware HTTP client:
//! `POST /lorem/{kind}/{min}/{max}` answering `{"message": "..."}`.
//!
//! [`LoremClient`] sends through [`http_client::Client`] (retries on other
//! instances, overload back-off, feedback to the balancer) with two lorem
//! choices: its `POST` opts in to retries, since generating lorem ipsum has
//! no side effect, and the identity check is on, since every lorem-server
//! registers `instance-id-header=x-instance-id` and names itself in that
//! header: an answer from whatever else holds a crashed server's port is a
//! failure of that endpoint, retried elsewhere, never counted as lorem's.
//! [`DirectClient`] is the baseline without discovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use balancer::{Balancer, check_timeout};
use http_client::{
    Client, ClientOptions, Error, GaveUp, Method, Request, Response, Result, reqwest_client,
};
use serde::Deserialize;
use tokio::time::Instant;

// The server's own kinds, so that client and server cannot disagree on them.
pub use lorem::generate::Kind;

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
            http: reqwest_client(timeout)?,
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
        let (status, headers, body) =
            http_client::send_direct(&self.http, addr, &request.http(), self.timeout)
                .await
                .map_err(failed)?;
        if status >= 500 {
            let text = String::from_utf8_lossy(&body);
            return Err(failed(format!("HTTP {status}: {}", text.trim())));
        }
        let reported_id = headers
            .get(http_client::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let instance = reported_id.clone().unwrap_or_else(|| addr.clone());
        decode_lorem(Response {
            status,
            headers,
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

    /// The HTTP request: a `POST` of [`path`](Self::path) without a body,
    /// safe to repeat on another instance (it has no side effect).
    pub fn http(&self) -> Request {
        let mut request = Request::new(Method::POST, self.path());
        request.set_idempotent(true);
        request
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
    /// [`Response::instance`]).
    pub instance: String,
    /// Its `x-instance-id` header, if any (see [`Response::reported_id`]).
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

/// The lorem service's client: [`Client`] plus its API, with the identity
/// check on. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoremClient {
    client: Client,
}

impl LoremClient {
    /// A lorem client over `balancer`, with the identity check on whatever
    /// `options` says (lorem servers register for it).
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn new(balancer: Balancer, options: ClientOptions) -> Result<Self> {
        let options = ClientOptions {
            identity_check: true,
            ..options
        };
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
    /// [`Client::send`].
    pub async fn lorem(&self, request: &LoremRequest) -> Result<Lorem> {
        decode_lorem(self.client.send(request.http()).await?)
    }
}

/// Turns an answer of the lorem route into a [`Lorem`] or the error it
/// stands for.
fn decode_lorem(answer: Response) -> Result<Lorem> {
    match answer.status {
        // Checked as UTF-8 in one go, then parsed as text: cheaper than
        // parsing bytes, which checks each string on its own.
        200..=299 => match std::str::from_utf8(&answer.body)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<MessageBody>(text).map_err(|e| e.to_string()))
        {
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
            let body = answer.text().into_owned();
            let message = serde_json::from_str::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| body.trim().to_owned());
            Err(Error::Rejected {
                instance: answer.instance,
                status: answer.status,
                message,
                body,
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
