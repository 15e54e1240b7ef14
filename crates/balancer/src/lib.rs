//! A client-side load balancer fed by service discovery, for any protocol.
//!
//! The balancer only picks; the caller does the I/O and reports back
//! (pingora's `BackendSelection`, tower's `p2c` over a `Discover`): the
//! same picks serve an HTTP client, a gRPC channel or a raw TCP protocol.
//! It depends on the [`registry`] traits and nothing of any HTTP stack.
//!
//! # Layout
//!
//! - [`Balancer`]: the live set of a service, kept by a
//!   [`registry::Watcher`] watch, filtered by a [`Selector`]; survives
//!   registry outages up to a maximum staleness; waits while the set is
//!   empty (`balancer`).
//! - [`pick`]: pick with feedback: [`Balancer::acquire`] hands out a
//!   [`Pick`], reported as a success (with its latency), a failure (with
//!   its [`FailureKind`]) or an overload (with a retry-after).
//! - [`strategy`]: the [`Choose`] trait and one file per strategy (round
//!   robin, random, smooth weighted, p2c with peak EWMA), named by
//!   [`Strategy`] in settings.
//! - [`select`]: the [`Selector`] (tags, metadata) and the
//!   [`ZonePreference`].
//! - [`endpoint`]: per-instance load and passive health
//!   ([`EjectionOptions`]).
//! - [`budget`]: how many retries the clients over a balancer may add
//!   ([`RetryBudget`]).
//! - [`metrics`]: Prometheus metrics under a prefix the caller chooses
//!   ([`Metrics`]).
//! - `tower` (feature `tower`): the balancer as a tower `Service` and
//!   `Layer` (`balancer::tower::BalanceLayer`), the same picks, ejection
//!   and retries for hyper and tonic stacks.
//! - [`Error`] (`error`); bounds on user-given durations (`limits`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Instant;
//! use balancer::{Balancer, BalancerOptions, FailureKind, Selector};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = registry::connect(&registry::Settings::from_env()?).await?;
//! let options = BalancerOptions {
//!     selector: Selector { tags: vec!["lorem".into()], ..Selector::default() },
//!     ..BalancerOptions::default()
//! };
//! let balancer = Balancer::new(registry, "lorem", options)?;
//! if let Some(pick) = balancer.acquire(&[]).await? {
//!     let started = Instant::now();
//!     match std::net::TcpStream::connect(pick.authority()) {
//!         Ok(_) => pick.success(started.elapsed()),
//!         Err(_) => pick.failure(FailureKind::Unreachable, started.elapsed()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod balancer;
pub mod budget;
pub mod endpoint;
mod error;
mod limits;
pub mod metrics;
pub mod pick;
pub mod select;
pub mod strategy;
#[cfg(feature = "tower")]
pub mod tower;

pub use balancer::{
    Balancer, BalancerOptions, DEFAULT_MAX_STALENESS, DEFAULT_WAIT_TIMEOUT, Freshness, SetChange,
    Snapshot, check_service, unix_ms,
};
pub use budget::{RETRY_BUDGET_WINDOW, RetryBudget};
pub use endpoint::{
    DEFAULT_EJECT_AFTER, DEFAULT_EJECT_BASE, DEFAULT_EJECT_MAX, DEFAULT_RTT, EWMA_DECAY,
    EjectionOptions, InstanceTraffic,
};
pub use error::{Error, Result};
pub use limits::{MAX_TIMEOUT, check_timeout, deadline_after, parse_timeout};
pub use metrics::{Metrics, RequestMetrics};
pub use pick::{FailureKind, Pick};
pub use select::{Selector, ZonePreference, parse_key_value};
pub use strategy::{Choose, Strategy};
