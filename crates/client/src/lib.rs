//! The lorem service's client side: a balancer fed by service discovery,
//! retries on another instance, and what the `lorem-client` and
//! `lorem-demo` binaries do.
//!
//! # Layout
//!
//! - [`Balancer`]: the live set of a service, kept by a
//!   [`registry::Watcher`] watch, and the choice of an instance
//!   ([`Strategy`]: round-robin or weighted); waits while the set is empty
//!   (`balancer`).
//! - [`Client`] and [`LoremClient`]: requests through the balancer, retried
//!   on a different instance after a connection error, a timeout or a 5xx
//!   (`client`).
//! - [`Error`]: every failure, in domain words (`error`).
//! - [`MAX_TIMEOUT`] and [`MAX_BODY_BYTES`]: bounds on user-given durations
//!   and on what an instance may send back (`limits`).
//! - What the binaries run, so that tests can call it: [`repeat`]
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

pub mod demo;
pub mod gateway;
pub mod load;
pub mod repeat;

pub use balancer::{
    Balancer, BalancerOptions, ClientMetrics, DEFAULT_EJECT_AFTER, DEFAULT_EJECT_BASE,
    DEFAULT_EJECT_MAX, DEFAULT_MAX_STALENESS, DEFAULT_RTT, DEFAULT_WAIT_TIMEOUT, EWMA_DECAY,
    EjectionOptions, Error, Freshness, GaveUp, MAX_BODY_BYTES, MAX_TIMEOUT, RETRY_BUDGET_WINDOW,
    Result, SetChange, Snapshot, Strategy, parse_timeout, unix_ms,
};
pub use client::{
    Answer, Client, ClientOptions, DEFAULT_ATTEMPTS, DEFAULT_MIN_RETRIES_PER_SEC,
    DEFAULT_RETRY_PERCENT, DEFAULT_TRY_TIMEOUT, DirectClient, INSTANCE_HEADER, Kind, Lorem,
    LoremClient, LoremRequest, http_client, parse_kind,
};

/// Installs the binaries' log subscriber: `tracing` fmt to stderr (stdout is
/// kept for results), filtered by `RUST_LOG`, `info` by default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (as in tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
