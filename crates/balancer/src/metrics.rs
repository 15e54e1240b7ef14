//! Prometheus metrics of a balancer and of the clients over it (via the
//! `prometheus-client` crate; no global registry, so several balancers in
//! one process keep their own). Names start with a prefix the caller
//! chooses when registering them ([`Metrics::register`]): `lorem-client`'s
//! gateway uses `lorem_client`, which gives the names below.
//!
//! | metric (prefix `P`)                  | type      | labels               | what                                   |
//! |--------------------------------------|-----------|----------------------|----------------------------------------|
//! | `P_requests_total`                   | counter   | `service`, `outcome` | calls, by outcome: `ok`, `rejected` (a 4xx), `failed` (every try failed), `no_instance` (none appeared within the wait) |
//! | `P_request_duration_seconds`         | histogram | `service`            | time of successful calls, retries and waits included |
//! | `P_retries_total`                    | counter   | `service`            | tries after the first                  |
//! | `P_retry_budget_exhausted_total`     | counter   | `service`            | retries refused by the retry budget    |
//! | `P_tries_failed_total`               | counter   | `service`, `kind`    | failed tries, by [`FailureKind`] (`unreachable`, `timeout`, `server_error`, `broken`, `wrong_instance`, `overloaded`) |
//! | `P_ejections_total`                  | counter   | `service`            | instances ejected by outlier detection |
//! | `P_instances`                        | gauge     | `service`            | instances in the live set now (after the selector) |
//! | `P_registry_events_total`            | counter   | `service`, `event`   | what the registry watch delivered: `update` (a snapshot), `change` (the set changed), `error`, `discard` (the set was dropped after the maximum staleness) |
//! | `P_registry_errors_total`            | counter   | `service`            | registry watch errors                  |
//! | `P_registry_stale_seconds`           | gauge     | `service`            | how long the set has been served from the last known one while the registry is unreachable; 0 when fresh |
//!
//! The balancer counts the set's and the tries' metrics itself; the
//! request-level ones (`requests`, `request_duration_seconds`, `retries`,
//! `retry_budget_exhausted`) are counted by the client that makes the
//! calls, through [`Balancer::requests`](crate::Balancer::requests).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::pick::FailureKind;

/// The buckets of the duration histograms, in seconds: 0.25 ms to about 8 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    service: String,
    event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    service: String,
    kind: &'static str,
}

/// The metric families of balancers and their clients. Cheap to clone:
/// clones share the values. Register them with
/// [`register`](Self::register), under a prefix of your choosing; every
/// [`Balancer`](crate::Balancer) built with them counts under its service.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<OutcomeLabels, Counter>,
    duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    tries_failed: Family<KindLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    instances: Family<ServiceLabels, Gauge>,
    registry_events: Family<EventLabels, Counter>,
    registry_errors: Family<ServiceLabels, Counter>,
    stale_seconds: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            tries_failed: Family::default(),
            ejections: Family::default(),
            instances: Family::default(),
            registry_events: Family::default(),
            registry_errors: Family::default(),
            stale_seconds: Family::default(),
        }
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds every family to `registry`, named `{prefix}_...` as in the
    /// [module docs](self): the prefix says whose client this is
    /// (`lorem_client`, `orders_client`), since a process may export
    /// several.
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let registry = registry.sub_registry_with_prefix(prefix);
        registry.register(
            "requests",
            "Calls through the balancer, by outcome",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time of successful calls, retries and waits included",
            self.duration.clone(),
        );
        registry.register("retries", "Tries after the first", self.retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries refused by the retry budget",
            self.budget_exhausted.clone(),
        );
        registry.register(
            "tries_failed",
            "Failed tries, by kind",
            self.tries_failed.clone(),
        );
        registry.register(
            "ejections",
            "Instances ejected by passive outlier detection",
            self.ejections.clone(),
        );
        registry.register(
            "instances",
            "Instances in the live set",
            self.instances.clone(),
        );
        registry.register(
            "registry_events",
            "What the registry watch delivered: update, change, error, discard",
            self.registry_events.clone(),
        );
        registry.register(
            "registry_errors",
            "Registry watch errors",
            self.registry_errors.clone(),
        );
        registry.register(
            "registry_stale_seconds",
            "How long the live set has been the last known one while the registry is unreachable",
            self.stale_seconds.clone(),
        );
    }

    /// The handles of one service, resolved once so the request path does
    /// not look labels up.
    pub(crate) fn for_service(&self, service: &str) -> ServiceMetrics {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        let outcome = |outcome| {
            self.requests.get_or_create_owned(&OutcomeLabels {
                service: service.to_owned(),
                outcome,
            })
        };
        let event = |event| {
            self.registry_events.get_or_create_owned(&EventLabels {
                service: service.to_owned(),
                event,
            })
        };
        let kind = |kind: FailureKind| {
            self.tries_failed.get_or_create_owned(&KindLabels {
                service: service.to_owned(),
                kind: kind.as_str(),
            })
        };
        ServiceMetrics {
            requests: RequestMetrics {
                ok: outcome("ok"),
                rejected: outcome("rejected"),
                failed: outcome("failed"),
                no_instance: outcome("no_instance"),
                duration: self.duration.get_or_create_owned(&labels),
                retries: self.retries.get_or_create_owned(&labels),
                budget_exhausted: self.budget_exhausted.get_or_create_owned(&labels),
            },
            tries_failed: FailureKind::ALL.map(kind),
            ejections: self.ejections.get_or_create_owned(&labels),
            instances: self.instances.get_or_create_owned(&labels),
            updates: event("update"),
            changes: event("change"),
            errors_event: event("error"),
            discards: event("discard"),
            registry_errors: self.registry_errors.get_or_create_owned(&labels),
            stale_seconds: self.stale_seconds.get_or_create_owned(&labels),
        }
    }
}

/// The request-level metrics of one service, counted by the client that
/// makes the calls (the balancer only sees tries): see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestMetrics {
    ok: Counter,
    rejected: Counter,
    failed: Counter,
    no_instance: Counter,
    duration: Histogram,
    retries: Counter,
    budget_exhausted: Counter,
}

impl RequestMetrics {
    /// A call succeeded after `latency` (retries and waits included).
    pub fn ok(&self, latency: Duration) {
        self.ok.inc();
        self.duration.observe(latency.as_secs_f64());
    }

    /// A call ended with an answer that refuses it (a 4xx).
    pub fn rejected(&self) {
        self.rejected.inc();
    }

    /// A call failed: every try it was allowed failed.
    pub fn failed(&self) {
        self.failed.inc();
    }

    /// A call failed because no instance appeared within the wait.
    pub fn no_instance(&self) {
        self.no_instance.inc();
    }

    /// A call made one more try.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// The retry budget refused a call's retry.
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }
}

/// One service's metric handles (clones of the family members).
#[derive(Debug, Clone)]
pub(crate) struct ServiceMetrics {
    pub(crate) requests: RequestMetrics,
    /// By [`FailureKind::index`].
    pub(crate) tries_failed: [Counter; FailureKind::ALL.len()],
    pub(crate) ejections: Counter,
    pub(crate) instances: Gauge,
    pub(crate) updates: Counter,
    pub(crate) changes: Counter,
    pub(crate) errors_event: Counter,
    pub(crate) discards: Counter,
    pub(crate) registry_errors: Counter,
    pub(crate) stale_seconds: Gauge<f64, AtomicU64>,
}
