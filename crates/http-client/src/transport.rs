//! One try on the wire: send a [`Request`] to one address, read at most
//! [`MAX_BODY_BYTES`] of the answer, and sort what went wrong.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use balancer::FailureKind;
use bytes::Bytes;
use reqwest::header::HeaderMap;

use crate::request::Request;

/// The largest answer body the client reads from an instance: 1 MiB. A
/// larger body is a failed try of that instance (`broken`), so that a
/// misbehaving instance cannot make a client or a gateway allocate without
/// bound.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What an instance sent back to one try.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
}

/// Why one try failed.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    /// What went wrong, in words, for logs and errors.
    pub(crate) message: String,
    /// True when the request never reached a server: its retry is always
    /// safe and costs no budget.
    pub(crate) never_sent: bool,
    /// What an overloaded instance asked for.
    pub(crate) retry_after: Option<Duration>,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: String) -> Self {
        Failure {
            kind,
            message,
            never_sent: false,
            retry_after: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Sends `request` to `authority` once. `inspect` looks at the status and
/// headers first: what it finds is returned with the answer, and the body
/// is read (bounded) only if it says so.
pub(crate) async fn send_once<R>(
    http: &reqwest::Client,
    authority: &str,
    request: &Request,
    timeout: Duration,
    inspect: impl FnOnce(u16, &HeaderMap) -> (R, bool),
) -> Result<(Answer, R), Failure> {
    let url = format!("http://{authority}{}", request.path);
    let mut builder = http.request(request.method.clone(), url).timeout(timeout);
    if let Some(headers) = &request.headers {
        builder = builder.headers(HeaderMap::clone(headers));
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.clone());
    }
    let mut response = builder.send().await.map_err(|e| classify(&e, timeout))?;
    let status = response.status().as_u16();
    let (found, keep_body) = inspect(status, response.headers());
    let body = if keep_body {
        Some(read_body(&mut response, timeout).await?)
    } else {
        None
    };
    Ok((
        Answer {
            status,
            headers: std::mem::take(response.headers_mut()),
            body,
        },
        found,
    ))
}

/// Sends `request` once to `authority` (`host:port`), without discovery,
/// balancing, retries or metrics, reading the answer exactly as
/// [`Client::send`](crate::Client::send) does: the baseline that the
/// overhead benchmark compares the client with. Returns the status, the
/// headers and the body.
///
/// # Errors
/// A message saying why the try failed (a transport failure, an answer
/// over [`MAX_BODY_BYTES`]).
pub async fn send_direct(
    http: &reqwest::Client,
    authority: &str,
    request: &Request,
    timeout: Duration,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let (answer, ()) = send_once(http, authority, request, timeout, |_, _| ((), true))
        .await
        .map_err(|failure| failure.message)?;
    Ok((
        answer.status,
        answer.headers,
        answer.body.unwrap_or_default(),
    ))
}

/// Reads the body of `response`, refusing (without reading further) one
/// over [`MAX_BODY_BYTES`]: announced as such by its `Content-Length`, or
/// found to be so while reading it chunk by chunk.
async fn read_body(response: &mut reqwest::Response, timeout: Duration) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            FailureKind::Broken,
            format!(
                "the answer body is larger than the {MAX_BODY_BYTES}-byte limit (1 MiB); \
                 the instance is misbehaving"
            ),
        )
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    // A body in one chunk (the usual small answer) is kept as it came;
    // more chunks are joined. Read to the end either way, so that the
    // connection goes back to the pool.
    let mut first: Option<Bytes> = None;
    let mut body: Vec<u8> = Vec::new();
    let mut length = 0;
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        let mut failure = classify(&e, timeout);
        // Once the answer has begun, nothing about it is free to retry.
        if failure.never_sent || failure.kind == FailureKind::Unreachable {
            failure.kind = FailureKind::Broken;
            failure.never_sent = false;
        }
        failure
    })? {
        if chunk.len() > MAX_BODY_BYTES - length {
            return Err(too_large());
        }
        length += chunk.len();
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            Some(earlier) => {
                body.extend_from_slice(&earlier);
                body.extend_from_slice(&chunk);
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(body)))
}

/// Sorts a transport error into a [`Failure`], with a message that names the
/// problem; `timeout` is the try's deadline, for the message.
fn classify(error: &reqwest::Error, timeout: Duration) -> Failure {
    if error.is_timeout() {
        return Failure::new(
            FailureKind::Timeout,
            format!("timed out after {}", humantime::format_duration(timeout)),
        );
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
        Failure {
            never_sent: true,
            ..Failure::new(FailureKind::Unreachable, format!("cannot connect: {cause}"))
        }
    } else if never_sent {
        Failure {
            never_sent: true,
            ..Failure::new(
                FailureKind::Unreachable,
                format!("the connection was closed before the request was sent: {cause}"),
            )
        }
    } else if error.is_body() || error.is_decode() {
        Failure::new(
            FailureKind::Broken,
            format!("cannot read the answer: {cause}"),
        )
    } else {
        Failure::new(FailureKind::Broken, format!("request failed: {cause}"))
    }
}

/// The delay a `Retry-After` header asks for, when it is in seconds (an
/// HTTP date is ignored: the clocks of client and server need not agree).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
