//! Prometheus metrics of the lorem server, served on `GET /metrics` in the
//! Prometheus text format (0.0.4), with the `prometheus-client` crate. Each
//! server owns its registry (no global one), so several servers in one
//! process, as in tests and the demo, keep their counts apart.
//!
//! | metric                              | type      | labels           | what                          |
//! |-------------------------------------|-----------|------------------|-------------------------------|
//! | `lorem_requests_total`              | counter   | `type`, `status` | HTTP requests, by lorem type (`word`, `sentence`, `paragraph`; `invalid` for an unknown one; `health`, `metrics` or `other` off the lorem route) and status code |
//! | `lorem_request_duration_seconds`    | histogram | `type`           | time to answer, same `type` labels |
//!
//! [`render`] turns any registry into such an answer; the client gateway
//! uses it for its own metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::generate::Kind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    r#type: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// The buckets of the latency histogram, in seconds: 50 us to about 1.6 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The server's metrics and the registry they are exported from. Cheap to
/// share behind an [`Arc`].
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<TypeLabels, Histogram, fn() -> Histogram>,
    /// Lorem requests per kind, whatever their status, in [`Kind::ALL`]
    /// order: what [`lorem_requests`](Self::lorem_requests) reads.
    per_kind: [std::sync::atomic::AtomicU64; 3],
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Family<TypeLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let mut registry = Registry::default();
        registry.register(
            "lorem_requests",
            "HTTP requests, by lorem type and status",
            requests.clone(),
        );
        registry.register(
            "lorem_request_duration_seconds",
            "Time to answer an HTTP request, by lorem type",
            duration.clone(),
        );
        ServerMetrics {
            registry,
            requests,
            duration,
            per_kind: Default::default(),
        }
    }
}

impl ServerMetrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Arc<Self> {
        Arc::new(ServerMetrics::default())
    }

    /// Counts one answered request of type `kind` (see [`request_type`])
    /// with `status` that took `elapsed`.
    pub fn observe(&self, kind: &'static str, status: StatusCode, elapsed: Duration) {
        if let Some(index) = Kind::ALL.iter().position(|k| k.as_str() == kind) {
            self.per_kind[index].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.requests
            .get_or_create(&RequestLabels {
                r#type: kind,
                status: status.as_u16(),
            })
            .inc();
        self.duration
            .get_or_create(&TypeLabels { r#type: kind })
            .observe(elapsed.as_secs_f64());
    }

    /// How many requests of lorem type `kind` were answered, all statuses
    /// together: what tests and the e2e scenarios read.
    pub fn lorem_requests(&self, kind: Kind) -> u64 {
        Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |index| {
                self.per_kind[index].load(std::sync::atomic::Ordering::Relaxed)
            })
    }

    /// The registry, for callers that add metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The `type` label of a request path: the lorem type for the lorem route,
/// a fixed word otherwise, so the label set stays small whatever clients
/// send.
pub fn request_type(path: &str) -> &'static str {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some("lorem"), Some(kind)) => Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(kind))
            .map_or("invalid", Kind::as_str),
        (Some("health"), None) => "health",
        (Some("metrics"), None) => "metrics",
        _ => "other",
    }
}

/// `registry` as a `GET /metrics` answer in the Prometheus text format.
pub fn render(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_labels_stay_in_a_small_set() {
        assert_eq!(request_type("/lorem/sentence/1/2"), "sentence");
        assert_eq!(request_type("/lorem/WORD/1/2"), "word");
        assert_eq!(request_type("/lorem/poem/1/2"), "invalid");
        assert_eq!(request_type("/health"), "health");
        assert_eq!(request_type("/metrics"), "metrics");
        assert_eq!(request_type("/anything/else"), "other");
        assert_eq!(request_type("/"), "other");
    }

    #[test]
    fn renders_the_prometheus_text_format() {
        let metrics = ServerMetrics::new();
        metrics.observe(
            request_type("/lorem/word/1/5"),
            StatusCode::OK,
            Duration::from_millis(2),
        );
        metrics.observe(
            request_type("/lorem/word/9/5"),
            StatusCode::BAD_REQUEST,
            Duration::ZERO,
        );
        assert_eq!(metrics.lorem_requests(Kind::Word), 2);
        assert_eq!(metrics.lorem_requests(Kind::Sentence), 0);
        let response = render(metrics.registry());
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, metrics.registry())
            .unwrap();
        assert!(
            text.contains(r#"lorem_requests_total{type="word",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lorem_request_duration_seconds_count{type="word"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE lorem_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
