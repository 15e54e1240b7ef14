//! Pick with feedback: the balancer chooses, the caller does the I/O and
//! reports how it went.
//!
//! [`Balancer::acquire`](crate::Balancer::acquire) hands out a [`Pick`]: one
//! instance for one try, counted in flight (the load p2c weighs) until the
//! pick is reported or dropped. The caller then reports exactly one of
//!
//! | report                                  | what the balancer does                                         |
//! |-----------------------------------------|----------------------------------------------------------------|
//! | [`Pick::success`] with the latency      | resets the instance's failure count, ends an ejection that began before the try was picked, feeds the latency estimate (p2c) |
//! | [`Pick::failure`] with a [`FailureKind`] | counts a consecutive failure; enough of them eject the instance (see [`EjectionOptions`](crate::EjectionOptions)) |
//! | [`Pick::overloaded`] with a retry-after | keeps the instance out of the candidates for that long (or the first ejection time when the answer did not say), without counting it as broken |
//!
//! Dropping a pick without a report (the caller gave up, its future was
//! cancelled) only ends its in-flight count: nothing is learnt about the
//! instance.
//!
//! ```no_run
//! # async fn demo(balancer: balancer::Balancer) -> balancer::Result<()> {
//! use std::time::Instant;
//! let mut tried = Vec::new();
//! while let Some(pick) = balancer.acquire(&tried).await? {
//!     let started = Instant::now();
//!     let answered = pick.instance().port != 0; // the caller's own I/O here
//!     if answered {
//!         pick.success(started.elapsed());
//!         break;
//!     }
//!     tried.push(pick.instance().id.clone());
//!     pick.failure(balancer::FailureKind::Unreachable, started.elapsed());
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use registry::Instance;
use tokio::time::Instant;

use crate::balancer::Core;
use crate::endpoint::{Endpoint, InFlight};

/// Why a try failed, as the caller saw it: the label of the failure in
/// the metrics and the logs. Every kind counts towards ejection except
/// [`Overloaded`](Self::Overloaded), which [`Pick::overloaded`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The instance could not be reached (connection refused, no route): the
    /// request never got to a server.
    Unreachable,
    /// No answer within the try's deadline.
    Timeout,
    /// The instance answered that it failed (an HTTP 5xx, a gRPC
    /// `INTERNAL`...).
    ServerError,
    /// The exchange broke after the request was sent, or the answer was
    /// unusable (too large, cut short).
    Broken,
    /// Whatever answered is not the instance that was registered there (it
    /// names another one, or does not name itself although its
    /// registration says it does): the address now belongs to someone else.
    WrongInstance,
    /// The instance said it is too busy (an HTTP 429 or 503).
    Overloaded,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Unreachable,
        FailureKind::Timeout,
        FailureKind::ServerError,
        FailureKind::Broken,
        FailureKind::WrongInstance,
        FailureKind::Overloaded,
    ];

    /// The name used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::Timeout => "timeout",
            FailureKind::ServerError => "server_error",
            FailureKind::Broken => "broken",
            FailureKind::WrongInstance => "wrong_instance",
            FailureKind::Overloaded => "overloaded",
        }
    }

    /// Its position in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance for one try, counted in flight until reported or dropped:
/// see the [module docs](self).
#[must_use = "report how the try went (success, failure, overloaded), or drop the pick"]
pub struct Pick {
    endpoint: Arc<Endpoint>,
    core: Arc<Core>,
    picked_at: Instant,
    _in_flight: InFlight,
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("instance", &self.endpoint.instance.id)
            .field("authority", &self.endpoint.authority)
            .finish_non_exhaustive()
    }
}

impl Pick {
    pub(crate) fn new(endpoint: Arc<Endpoint>, core: Arc<Core>) -> Self {
        let in_flight = endpoint.start();
        Pick {
            endpoint,
            core,
            picked_at: Instant::now(),
            _in_flight: in_flight,
        }
    }

    /// When the pick was made: the start of the try, from which a caller
    /// that starts the try at once can measure its latency without reading
    /// the clock again.
    pub fn picked_at(&self) -> Instant {
        self.picked_at
    }

    /// The instance's registration.
    pub fn instance(&self) -> &Instance {
        &self.endpoint.instance
    }

    /// `host:port` of the instance, formatted once per instance rather
    /// than once per try.
    pub fn authority(&self) -> &str {
        &self.endpoint.authority
    }

    /// The try succeeded (the instance answered, whatever the answer meant
    /// for the caller) after `latency`.
    pub fn success(self, latency: Duration) {
        self.endpoint.count_answer(latency);
        self.endpoint
            .record_success(self.picked_at, latency, self.core.tracks_latency);
    }

    /// The try failed with `kind` after `latency`; enough failures in a row
    /// eject the instance (logged at warn, counted in the metrics).
    pub fn failure(self, kind: FailureKind, latency: Duration) {
        self.core.metrics.tries_failed[kind.index()].inc();
        self.endpoint.count_failure();
        if kind == FailureKind::Overloaded {
            self.back_off(None);
            return;
        }
        let instance = &self.endpoint.instance;
        if let Some(ejected) = self
            .endpoint
            .record_failure(latency, &self.core.options.ejection)
        {
            self.core.metrics.ejections.inc();
            tracing::warn!(
                service = %self.core.service,
                instance = %instance.id,
                addr = %self.endpoint.authority,
                ejected_for = ?ejected.duration,
                ejections_in_a_row = ejected.nth,
                last_failure = %kind,
                "instance ejected after consecutive failures"
            );
        }
    }

    /// The instance said it is too busy: it is kept out of the candidates
    /// for `retry_after` (its `Retry-After`), or for the first ejection time
    /// ([`EjectionOptions::base`](crate::EjectionOptions::base)) when it did
    /// not say, at most the longest ejection
    /// ([`EjectionOptions::max`](crate::EjectionOptions::max)). It does not
    /// count as a failure towards ejection: the instance is alive.
    pub fn overloaded(self, retry_after: Option<Duration>) {
        self.core.metrics.tries_failed[FailureKind::Overloaded.index()].inc();
        self.endpoint.count_failure();
        self.back_off(retry_after);
    }

    fn back_off(&self, retry_after: Option<Duration>) {
        let ejection = &self.core.options.ejection;
        let duration = retry_after.unwrap_or(ejection.base).min(ejection.max);
        tracing::debug!(
            service = %self.core.service,
            instance = %self.endpoint.instance.id,
            backed_off_for = ?duration,
            "instance overloaded; backing off"
        );
        self.endpoint.back_off(duration);
    }
}
