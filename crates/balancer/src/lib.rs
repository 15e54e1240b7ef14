//! A client-side load balancer fed by service discovery.
//!
//! # Layout
//!
//! - [`Balancer`]: the live set of a service, kept by a
//!   [`registry::Watcher`] watch, and the choice of an instance
//!   ([`Strategy`]); waits while the set is empty (`balancer`).
//! - Per-instance load and passive health: [`EjectionOptions`] (`endpoint`).
//! - The retry budget (`budget`), the metrics ([`ClientMetrics`],
//!   `metrics`), bounds on durations and answers (`limits`).
//! - [`Error`]: every failure, in domain words (`error`).

#![forbid(unsafe_code)]

mod balancer;
mod budget;
mod endpoint;
mod error;
mod limits;
mod metrics;
mod strategy;

pub use balancer::{
    Balancer, BalancerOptions, DEFAULT_MAX_STALENESS, DEFAULT_WAIT_TIMEOUT, Freshness, SetChange,
    Snapshot, check_service, unix_ms,
};
pub use budget::{RETRY_BUDGET_WINDOW, RetryBudget};
pub use endpoint::{
    DEFAULT_EJECT_AFTER, DEFAULT_EJECT_BASE, DEFAULT_EJECT_MAX, DEFAULT_RTT, EWMA_DECAY,
    EjectionOptions, Endpoint,
};
pub use error::{Error, GaveUp, Result};
pub use limits::{MAX_BODY_BYTES, MAX_TIMEOUT, check_timeout, deadline_after, parse_timeout};
pub use metrics::{ClientMetrics, ServiceMetrics};
pub use strategy::Strategy;
