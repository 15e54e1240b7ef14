//! Prometheus metrics of the client side: what the gateway serves on
//! `GET /metrics` (Prometheus text format 0.0.4, via the `prometheus-client`
//! crate; no global registry, so several clients in one process keep their
//! own).
//!
//! | metric                                        | type      | labels              | what                                   |
//! |-----------------------------------------------|-----------|---------------------|----------------------------------------|
//! | `lorem_client_requests_total`                 | counter   | `service`, `outcome` | calls, by outcome: `ok`, `rejected` (a 4xx), `failed` (every try failed), `no_instance` (none appeared within the wait) |
//! | `lorem_client_request_duration_seconds`       | histogram | `service`           | time of successful calls, retries and waits included |
//! | `lorem_client_retries_total`                  | counter   | `service`           | tries after the first                  |
//! | `lorem_client_retry_budget_exhausted_total`   | counter   | `service`           | retries refused by the retry budget    |
//! | `lorem_client_ejections_total`                | counter   | `service`           | instances ejected by outlier detection |
//! | `lorem_client_instances`                      | gauge     | `service`           | instances in the live set now          |
//! | `lorem_client_registry_events_total`          | counter   | `service`, `event`  | what the registry watch delivered: `update` (a snapshot), `change` (the set changed), `error`, `discard` (the set was dropped after the maximum staleness) |
//! | `lorem_client_registry_errors_total`          | counter   | `service`           | registry watch errors                  |
//! | `lorem_client_registry_stale_seconds`         | gauge     | `service`           | how long the set has been served from the last known one while the registry is unreachable; 0 when fresh |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

/// The client-side metric families. Cheap to clone: clones share the
/// values. Register them with [`register`](Self::register); every
/// [`Balancer`](crate::Balancer) built with them counts under its service.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    requests: Family<OutcomeLabels, Counter>,
    duration: Family<ServiceLabels, Histogram, fn() -> Histogram>,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    instances: Family<ServiceLabels, Gauge>,
    registry_events: Family<EventLabels, Counter>,
    registry_errors: Family<ServiceLabels, Counter>,
    stale_seconds: Family<ServiceLabels, Gauge<f64, AtomicU64>>,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            instances: Family::default(),
            registry_events: Family::default(),
            registry_errors: Family::default(),
            stale_seconds: Family::default(),
        }
    }
}

impl ClientMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        ClientMetrics::default()
    }

    /// Adds every family to `registry`, under the names in the
    /// [module docs](self).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lorem_client_requests",
            "Calls through the balancer, by outcome",
            self.requests.clone(),
        );
        registry.register(
            "lorem_client_request_duration_seconds",
            "Time of successful calls, retries and waits included",
            self.duration.clone(),
        );
        registry.register(
            "lorem_client_retries",
            "Tries after the first",
            self.retries.clone(),
        );
        registry.register(
            "lorem_client_retry_budget_exhausted",
            "Retries refused by the retry budget",
            self.budget_exhausted.clone(),
        );
        registry.register(
            "lorem_client_ejections",
            "Instances ejected by passive outlier detection",
            self.ejections.clone(),
        );
        registry.register(
            "lorem_client_instances",
            "Instances in the live set",
            self.instances.clone(),
        );
        registry.register(
            "lorem_client_registry_events",
            "What the registry watch delivered: update, change, error, discard",
            self.registry_events.clone(),
        );
        registry.register(
            "lorem_client_registry_errors",
            "Registry watch errors",
            self.registry_errors.clone(),
        );
        registry.register(
            "lorem_client_registry_stale_seconds",
            "How long the live set has been the last known one while the registry is unreachable",
            self.stale_seconds.clone(),
        );
    }

    /// The handles of one service, resolved once so the request path does
    /// not look labels up.
    pub fn for_service(&self, service: &str) -> ServiceMetrics {
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
        ServiceMetrics {
            ok: outcome("ok"),
            rejected: outcome("rejected"),
            failed: outcome("failed"),
            no_instance: outcome("no_instance"),
            duration: self.duration.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&labels),
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

/// One service's metric handles (clones of the family members).
#[derive(Debug, Clone)]
#[doc(hidden)]
#[allow(missing_docs)]
pub struct ServiceMetrics {
    pub ok: Counter,
    pub rejected: Counter,
    pub failed: Counter,
    pub no_instance: Counter,
    pub duration: Histogram,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub ejections: Counter,
    pub instances: Gauge,
    pub updates: Counter,
    pub changes: Counter,
    pub errors_event: Counter,
    pub discards: Counter,
    pub registry_errors: Counter,
    pub stale_seconds: Gauge<f64, AtomicU64>,
}
