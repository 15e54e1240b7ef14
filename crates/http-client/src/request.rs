//! A request to a service, built once and sent to as many instances as the
//! retries need; the answer, with who gave it.

use std::borrow::Cow;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::{Error, Result};

/// One request: method, path, headers and body. Cheap to clone (the body
/// is shared), since every try sends it again.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) path: String,
    /// Boxed, and only once there is one: most requests have none, and
    /// every try's future carries the request.
    pub(crate) headers: Option<Box<HeaderMap>>,
    pub(crate) body: Option<Bytes>,
    pub(crate) idempotent: bool,
}

impl Request {
    /// `method` to `path` (which starts with `/`), no headers, no body;
    /// repeatable if the method is idempotent.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let idempotent = is_idempotent(&method);
        Request {
            method,
            path: path.into(),
            headers: None,
            body: None,
            idempotent,
        }
    }

    /// Its method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Its path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Declares whether it may be repeated after a try that may have
    /// reached the service (see [`RequestBuilder::idempotent`]).
    pub fn set_idempotent(&mut self, idempotent: bool) {
        self.idempotent = idempotent;
    }

    /// True when it may be sent again after a try that may have reached
    /// the service: its method is idempotent, or it opted in.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

/// The methods HTTP defines as idempotent (RFC 9110, 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A [`Request`] being built, sent by [`send`](Self::send) or by awaiting
/// it. A header or body that cannot be used is kept as an error and
/// returned by the send.
#[must_use = "a request does nothing until it is sent or awaited"]
#[derive(Debug)]
pub struct RequestBuilder<'a> {
    client: &'a Client,
    request: Result<Request>,
}

impl<'a> RequestBuilder<'a> {
    pub(crate) fn new(client: &'a Client, request: Request) -> Self {
        RequestBuilder {
            client,
            request: Ok(request),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Ok(request) = &mut self.request {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    request
                        .headers
                        .get_or_insert_with(Box::default)
                        .append(name, value);
                }
                _ => {
                    self.request = Err(Error::InvalidRequest(format!(
                        "header {name:?}: {value:?} is not valid HTTP"
                    )))
                }
            }
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        if let Ok(request) = &mut self.request {
            request.body = Some(body.into());
        }
        self
    }

    /// Sets a JSON body and its `content-type`.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] if `value` does not serialise.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::InvalidRequest(format!("the JSON body does not serialise: {e}")))?;
        if let Ok(request) = &mut self.request {
            request.body = Some(body.into());
            request.headers.get_or_insert_with(Box::default).insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Ok(self)
    }

    /// Declares whether the request may be repeated after a try that may
    /// have reached the service: `true` for a non-idempotent method whose
    /// request has no side effect (lorem's `POST`), `false` to forbid
    /// repeating even an idempotent one. Requests that never reached a
    /// server are retried either way.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        if let Ok(request) = &mut self.request {
            request.idempotent = idempotent;
        }
        self
    }

    /// The request as built.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for a header that is not valid HTTP.
    pub fn build(self) -> Result<Request> {
        self.request
    }

    /// Sends it: see [`Client::send`].
    ///
    /// # Errors
    /// As [`Client::send`], and [`Error::InvalidRequest`] for a request
    /// that could not be built.
    pub async fn send(self) -> Result<Response> {
        self.client.send(self.request?).await
    }
}

impl<'a> IntoFuture for RequestBuilder<'a> {
    type Output = Result<Response>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Response>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// What an instance answered, after any retries.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status. Failures are retried or end in an error (see the
    /// [crate docs](crate)), so it is never 429 or 5xx.
    pub status: u16,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The body, at most [`MAX_BODY_BYTES`](crate::MAX_BODY_BYTES).
    pub body: Bytes,
    /// The registry id of the instance that answered (the one the balancer
    /// picked): what counts and reports are keyed by.
    pub instance: String,
    /// The id the instance gave in its instance-id header (the one its
    /// registration names, else [`INSTANCE_HEADER`](crate::INSTANCE_HEADER)),
    /// if any. With the identity check on and the header registered, it
    /// equals `instance`; otherwise a difference is logged once per
    /// instance.
    pub reported_id: Option<String>,
    /// How many tries failed before this answer.
    pub retries: u32,
    /// Time from the call to the end of the answer, retries and waiting for
    /// an instance included.
    pub latency: Duration,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced, not refused).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body as JSON of type `T`.
    ///
    /// # Errors
    /// [`Error::BadResponse`] naming the instance, if it is not.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|error| Error::BadResponse {
            instance: self.instance.clone(),
            reason: format!("expected JSON of {}: {error}", std::any::type_name::<T>()),
        })
    }
}
