//! The lorem service's client side: [`LoremClient`] over the
//! discovery-aware HTTP client and the balancer, and what the
//! `lorem-client` and `lorem-demo` binaries do.
//!
//! # Layout
//!
//! - The general parts live in their own crates and are re-exported here:
//!   [`Balancer`] and its options, strategies and metrics (crate
//!   `balancer`: the live set from a registry watch, pick with feedback),
//!   [`Client`] and [`Error`] (crate `http-client`: any HTTP request,
//!   retried when safe).
//! - [`LoremClient`]: the lorem API on top, with the identity check on
//!   (`client`); [`DirectClient`], the baseline without discovery.
//! - What the binaries run, so that tests can call it: [`app`] (the
//!   `lorem-client` commands behind its argument parsing), [`repeat`]
//!   (`lorem-client loop`), [`gateway`] (`lorem-client gateway`), [`load`]
//!   (`lorem-client load`), [`demo`] (`lorem-demo`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use client::{Balancer, BalancerOptions, ClientOptions, Kind, LoremClient, LoremRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let registry = registry::connect(&registry::Settings::from_env()?).await?;
//! let balancer = Balancer::new(registry, "lorem", BalancerOptions::default())?;
//! let client = LoremClient::new(balancer, ClientOptions::default())?;
//! let lorem = client.lorem(&LoremRequest::new(Kind::Sentence, 5, 20)).await?;
//! println!("{} says: {}", lorem.instance, lorem.message);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod client;

pub mod app;
pub mod demo;
pub mod gateway;
pub mod load;
pub mod repeat;

/// The balancer's own error (building a [`Balancer`]); calls through the
/// client fail with [`Error`].
pub use balancer::Error as BalancerError;
/// The metric families of the balancer and its clients; the gateway
/// exports them under the prefix [`METRICS_PREFIX`].
pub use balancer::Metrics as ClientMetrics;
pub use balancer::{
    Balancer, BalancerOptions, DEFAULT_EJECT_AFTER, DEFAULT_EJECT_BASE, DEFAULT_EJECT_MAX,
    DEFAULT_MAX_STALENESS, DEFAULT_RTT, DEFAULT_WAIT_TIMEOUT, EWMA_DECAY, EjectionOptions,
    Freshness, MAX_TIMEOUT, RETRY_BUDGET_WINDOW, Selector, SetChange, Snapshot, Strategy,
    ZonePreference, parse_key_value, parse_timeout, unix_ms,
};
pub use client::{DirectClient, Kind, Lorem, LoremClient, LoremRequest, parse_kind};
/// What [`Client::send`] answers (named `Answer` before the HTTP client
/// had a crate of its own).
pub use http_client::Response as Answer;
pub use http_client::{
    Client, ClientOptions, DEFAULT_ATTEMPTS, DEFAULT_MIN_RETRIES_PER_SEC, DEFAULT_RETRY_PERCENT,
    DEFAULT_TRY_TIMEOUT, Error, GaveUp, INSTANCE_HEADER, MAX_BODY_BYTES, Result,
};

/// The prefix of the client's metric names (`lorem_client_requests_total`...),
/// kept from before the balancer had a crate of its own so that dashboards
/// keep working.
pub const METRICS_PREFIX: &str = "lorem_client";
