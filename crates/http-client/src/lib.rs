//! A discovery-aware HTTP client for any request: reqwest over a
//! [`balancer::Balancer`].
//!
//! Any method, headers and body, to a path on an instance of a service:
//!
//! ```no_run
//! use http_client::{Client, ClientOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = registry::connect(&registry::Settings::from_env()?).await?;
//! let orders = balancer::Balancer::new(registry, "orders", Default::default())?;
//! let client = Client::new(orders, ClientOptions::default())?;
//! let answer = client
//!     .put("/orders/7")
//!     .header("x-request-id", "42")
//!     .json(&serde_json::json!({"state": "shipped"}))?
//!     .send()
//!     .await?;
//! println!("{} from {}", answer.status, answer.instance);
//! # Ok(())
//! # }
//! ```
//!
//! **Why a crate of its own.** The balancer is for any protocol and
//! depends on no HTTP stack; this crate is the HTTP half (reqwest, hyper's
//! error kinds, HTTP's rules on which requests may be repeated). A feature
//! of the balancer would have carried those rules into a crate that should
//! not know them, and every user of the balancer would see the feature.
//! Separate, a gRPC or raw-TCP client can sit beside it on the same
//! balancer.
//!
//! # Layout
//!
//! - [`Client`]: the requests, the retries, the feedback to the balancer
//!   (`client`); [`RequestBuilder`] and [`Response`] (`request`).
//! - What one try does on the wire, and how its failures are sorted
//!   (`transport`), also used by [`send_direct`] for a baseline without
//!   discovery.
//! - [`Error`] and [`GaveUp`] (`error`).
//!
//! # Retries
//!
//! A failed try is retried on another instance (never one this request
//! tried), at most [`ClientOptions::attempts`] tries in all, when it is
//! safe:
//!
//! | failure of a try                                             | [`FailureKind`](balancer::FailureKind) | retried                | costs retry budget |
//! |--------------------------------------------------------------|-----------------|------------------------|--------------------|
//! | connection refused / unreachable; a pooled connection found closed before the request was sent | `unreachable` | always: nothing reached a server | no |
//! | an answer from something that is not the instance (identity check, below) | `wrong_instance` | always: nothing reached the service | yes |
//! | connect timeout, try timeout                                 | `timeout`       | if safe                | yes                |
//! | 429, 503: the instance backs off for its `Retry-After`       | `overloaded`    | if safe                | yes                |
//! | any other 5xx                                                | `server_error`  | if safe                | yes                |
//! | the connection broke after the request was sent, an answer over [`MAX_BODY_BYTES`] | `broken` | if safe | yes |
//! | any other answer (2xx, 3xx, 4xx)                             | none: returned as is |                   |                    |
//!
//! "If safe": the method is idempotent (`GET`, `HEAD`, `OPTIONS`, `TRACE`,
//! `PUT`, `DELETE`), or the request opted in with
//! [`RequestBuilder::idempotent`] (a `POST` without side effects, like
//! lorem's). Otherwise the request ends with [`GaveUp::NotSafe`]: repeating
//! it might do its work twice.
//!
//! Retries that cost budget are limited by a [`balancer::RetryBudget`]
//! ([`ClientOptions::retry_percent`] of the requests plus
//! [`ClientOptions::min_retries_per_sec`]), so that a sick service cannot
//! double the load on the healthy instances.
//!
//! # Identity check
//!
//! A registration is an address, and an address can change hands: a
//! crashed server's port is taken by another program before the
//! registration expires. With [`ClientOptions::identity_check`], an instance
//! whose registration carries the metadata [`INSTANCE_ID_HEADER_KEY`]
//! (`instance-id-header`, naming a header, lorem's `x-instance-id`) must
//! answer with that header set to its registry id; an answer without it,
//! or naming another instance, is a [`wrong_instance`](balancer::FailureKind::WrongInstance)
//! failure of that endpoint: retried elsewhere, and the endpoint heads for
//! ejection. Instances registered without the key (by other frameworks)
//! are not held to it.

#![forbid(unsafe_code)]

mod client;
mod error;
mod request;
mod transport;

pub use client::{
    Client, ClientOptions, DEFAULT_ATTEMPTS, DEFAULT_MIN_RETRIES_PER_SEC, DEFAULT_RETRY_PERCENT,
    DEFAULT_TRY_TIMEOUT, INSTANCE_HEADER, INSTANCE_ID_HEADER_KEY, reqwest_client,
};
pub use error::{Error, GaveUp, Result};
pub use request::{Request, RequestBuilder, Response};
pub use transport::{MAX_BODY_BYTES, send_direct};

/// The HTTP types requests are built from, re-exported so that callers
/// need no direct dependency on them.
pub use reqwest::{Method, StatusCode, header};
