//! The client: requests through the balancer, retried when safe, with
//! every try's outcome fed back to the balancer. See the
//! [crate docs](crate) for the rules.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balancer::{Balancer, FailureKind, Pick, RetryBudget, Snapshot, check_timeout};
use registry::Instance;
use reqwest::Method;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::error::{Error, GaveUp, Result};
use crate::request::{Request, RequestBuilder, Response};
use crate::transport::{Answer, Failure, retry_after, send_once};

/// The metadata key through which a registration says which header its
/// instance names itself in (lorem-server registers
/// `instance-id-header=x-instance-id`): the instances the identity check
/// applies to.
pub const INSTANCE_ID_HEADER_KEY: &str = "instance-id-header";

/// The header read for [`Response::reported_id`] when a registration does
/// not name one: lorem's.
pub const INSTANCE_HEADER: &str = "x-instance-id";

/// How many distinct instances a client warns about for a mismatched
/// instance-id header that is not enforced (one warning each); bounds the
/// memory it keeps.
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
    /// zero and at most [`MAX_TIMEOUT`](balancer::MAX_TIMEOUT).
    pub try_timeout: Duration,
    /// Retries that cost budget may add this many percent of the requests
    /// (over [`RETRY_BUDGET_WINDOW`](balancer::RETRY_BUDGET_WINDOW)); at most
    /// 1000.
    pub retry_percent: u32,
    /// Retries per second allowed on top of the percentage, so that a
    /// client sending few requests can still retry.
    pub min_retries_per_sec: u32,
    /// Hold instances whose registration names an instance-id header
    /// ([`INSTANCE_ID_HEADER_KEY`]) to answering with their own id in it:
    /// see the [crate docs](crate#identity-check). Off by default, since it
    /// is a contract between a service and its clients.
    pub identity_check: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempts: DEFAULT_ATTEMPTS,
            try_timeout: DEFAULT_TRY_TIMEOUT,
            retry_percent: DEFAULT_RETRY_PERCENT,
            min_retries_per_sec: DEFAULT_MIN_RETRIES_PER_SEC,
            identity_check: false,
        }
    }
}

/// An HTTP client over a [`Balancer`]. Cheap to clone: clones share the
/// HTTP connection pool and the retry budget.
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

/// The reqwest client every try goes through: no proxy from the
/// environment (instances are reached directly), a connect deadline of
/// `try_timeout`. A baseline without discovery should use the same one.
///
/// # Errors
/// [`Error::Http`] if the client cannot be built.
pub fn reqwest_client(try_timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(try_timeout)
        .build()
        .map_err(|e| Error::Http(Box::new(e)))
}

/// How one try ended.
enum Tried {
    Answered(Answer, Option<String>),
    Failed(Failure),
}

impl Client {
    /// A client sending through `balancer`.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for zero attempts, a zero try timeout, a try
    /// timeout over [`MAX_TIMEOUT`](balancer::MAX_TIMEOUT) or a retry
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
        let http = reqwest_client(options.try_timeout)?;
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

    /// A request of `method` to `path` (which starts with `/`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder<'_> {
        RequestBuilder::new(self, Request::new(method, path))
    }

    /// A `GET` of `path`.
    pub fn get(&self, path: &str) -> RequestBuilder<'_> {
        self.request(Method::GET, path)
    }

    /// A `POST` to `path`: not retried once it may have reached the
    /// service, unless it opts in ([`RequestBuilder::idempotent`]).
    pub fn post(&self, path: &str) -> RequestBuilder<'_> {
        self.request(Method::POST, path)
    }

    /// A `PUT` to `path`.
    pub fn put(&self, path: &str) -> RequestBuilder<'_> {
        self.request(Method::PUT, path)
    }

    /// A `DELETE` of `path`.
    pub fn delete(&self, path: &str) -> RequestBuilder<'_> {
        self.request(Method::DELETE, path)
    }

    /// Sends `request` to an instance, retrying on others when a try fails
    /// and a retry is safe (see the [crate docs](crate#retries)).
    ///
    /// # Errors
    /// [`Error::NoInstance`] if no instance appeared within the wait;
    /// [`Error::Exhausted`] if every try failed and no further try was
    /// allowed. A 4xx is an `Ok` answer here.
    pub async fn send(&self, request: Request) -> Result<Response> {
        let started = Instant::now();
        let metrics = self.balancer.requests();
        let service = self.balancer.service();
        self.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        // Boxed: the future of every request carries it, most never fill it.
        let mut last: Option<Box<(String, Failure)>> = None;
        let mut gave_up = GaveUp::Attempts;
        for attempt in 1..=self.options.attempts {
            if let Some(last) = &last {
                let failure = &last.1;
                let reached_service =
                    !failure.never_sent && failure.kind != FailureKind::WrongInstance;
                if reached_service && !request.idempotent {
                    gave_up = GaveUp::NotSafe;
                    break;
                }
                // Before waiting for an instance: a refused retry must not
                // block first.
                if !failure.never_sent && !self.budget.withdraw() {
                    metrics.budget_exhausted();
                    gave_up = GaveUp::Budget;
                    break;
                }
            }
            let pick = match self.balancer.acquire(&tried).await {
                Ok(Some(pick)) => pick,
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
                    metrics.no_instance();
                    return Err(error.into());
                }
            };
            if last.is_some() {
                metrics.retry();
            }
            let tried_at = pick.picked_at();
            let outcome = self.try_once(&pick, &request).await;
            let took = tried_at.elapsed();
            let failure = match outcome {
                Tried::Answered(answer, reported_id) => {
                    let instance = pick.instance().id.clone();
                    pick.success(took);
                    let latency = started.elapsed();
                    if answer.status < 400 {
                        metrics.ok(latency);
                    } else {
                        metrics.rejected();
                    }
                    return Ok(Response {
                        status: answer.status,
                        headers: answer.headers,
                        body: answer.body.unwrap_or_default(),
                        instance,
                        reported_id,
                        retries: attempt - 1,
                        latency,
                    });
                }
                Tried::Failed(failure) => failure,
            };
            let instance = pick.instance().id.clone();
            tracing::warn!(
                service = %service,
                instance = %instance,
                addr = %pick.authority(),
                attempt,
                kind = %failure.kind,
                error = %failure,
                retry_is_free = failure.never_sent,
                "attempt failed"
            );
            if failure.kind == FailureKind::Overloaded {
                pick.overloaded(failure.retry_after);
            } else {
                pick.failure(failure.kind, took);
            }
            tried.push(instance.clone());
            last = Some(Box::new((instance, failure)));
        }
        metrics.failed();
        // The first try always has an instance, so `last` is set.
        let (instance, last) = match last.map(|last| *last) {
            Some((instance, failure)) => (instance, failure.message),
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

    /// One try on the picked instance: the answer with the id it reported,
    /// or why the try failed.
    async fn try_once(&self, pick: &Pick, request: &Request) -> Tried {
        let instance = pick.instance();
        let registered_header = instance
            .metadata
            .get(INSTANCE_ID_HEADER_KEY)
            .map(String::as_str);
        let enforced = self.options.identity_check && registered_header.is_some();
        let header = registered_header.unwrap_or(INSTANCE_HEADER);
        // Read the body only of an answer that will be used: the identity
        // check passes, and it is not an overload.
        let inspect = |status: u16, headers: &HeaderMap| {
            let reported = headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            let keep = (!enforced || reported.as_deref() == Some(instance.id.as_str()))
                && status != 429
                && status != 503;
            (reported, keep)
        };
        let (answer, reported_id) = match send_once(
            &self.http,
            pick.authority(),
            request,
            self.options.try_timeout,
            inspect,
        )
        .await
        {
            Ok(answer) => answer,
            Err(failure) => return Tried::Failed(failure),
        };
        if enforced && reported_id.as_deref() != Some(instance.id.as_str()) {
            let message = match &reported_id {
                Some(other) => format!(
                    "HTTP {} from instance {other:?}, not {:?}: the address now belongs to another instance",
                    answer.status, instance.id
                ),
                None => format!(
                    "HTTP {} without the {header} header that instance {:?} registered to send: \
                     something else answers at its address",
                    answer.status, instance.id
                ),
            };
            return Tried::Failed(Failure::new(FailureKind::WrongInstance, message));
        }
        if let Some(reported) = &reported_id {
            self.check_reported_id(instance, header, reported);
        }
        match answer.status {
            429 | 503 => Tried::Failed(Failure {
                retry_after: retry_after(&answer.headers),
                ..Failure::new(
                    FailureKind::Overloaded,
                    format!("HTTP {}: the instance is overloaded", answer.status),
                )
            }),
            status if status >= 500 => {
                let body = answer.body.as_deref().unwrap_or_default();
                Tried::Failed(Failure::new(
                    FailureKind::ServerError,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
                ))
            }
            _ => Tried::Answered(answer, reported_id),
        }
    }

    /// Warns, once per registry id, when an instance names itself otherwise
    /// than its registration and the identity check does not apply: answers
    /// are still counted under the registry id, but the difference usually
    /// means a server was started with the wrong id or another process took
    /// over its address.
    fn check_reported_id(&self, instance: &Instance, header: &str, reported: &str) {
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
                "the instance's {header} header differs from its registry id; \
                 counting its answers under the registry id"
            );
        }
    }
}
