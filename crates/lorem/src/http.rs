//! The HTTP API, compatible with go-kit's lorem example.
//!
//! | request                          | answer                                   |
//! |----------------------------------|------------------------------------------|
//! | `POST /lorem/{type}/{min}/{max}` | 200 `{"message": "..."}`                 |
//! | bad type or bounds               | 400 `{"error": "..."}` naming the problem |
//! | `GET /health`                    | 200 `{"status": true}`: the process serves |
//! | `GET /ready`                     | 200 `{"status": true, "registered": true}` once the instance is registered, else 503 `{"status": false, "registered": false, "reason": "..."}` |
//! | `GET /metrics`                   | Prometheus text format (see [`metrics`](crate::metrics)) |
//! | unknown route                    | 404 `{"error": "..."}`                   |
//! | known route, wrong method        | 405 `{"error": "..."}`                   |
//!
//! Every answer, errors included, carries `x-instance-id: <id>` so a client
//! can tell which instance served it.

use axum::Json;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request};
use axum::http::header::HeaderName;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use registry::lifecycle::Readiness;
use serde_json::json;
use std::sync::Arc;
use tokio::time::Instant;

use crate::generate::{Generator, LoremRequest};
use crate::metrics::ServerMetrics;

/// The header naming the instance that answered.
pub const INSTANCE_ID_HEADER: &str = "x-instance-id";

/// The routes of the service, answering as instance `instance_id`, with
/// metrics of their own.
///
/// Characters that cannot appear in a header value are replaced by `_` in
/// the `x-instance-id` header.
pub fn router(instance_id: String) -> Router {
    router_with_metrics(instance_id, ServerMetrics::new())
}

/// [`router`], counting every request into `metrics` and serving them on
/// `GET /metrics`. Its `GET /ready` always says ready: a bare router has no
/// registration to wait for (a server's comes from [`router_with_readiness`]).
pub fn router_with_metrics(instance_id: String, metrics: Arc<ServerMetrics>) -> Router {
    router_with_readiness(instance_id, metrics, Readiness::always())
}

/// [`router_with_metrics`], with `GET /ready` answering from `registered`
/// (a server's [`Lifecycle::readiness`](registry::lifecycle::Lifecycle::readiness)):
/// 200 while the instance is registered, 503 while it is not.
///
/// Why a second probe next to `/health`: a server answers `/health` as soon
/// as it listens, but clients only find it once its registration has gone
/// through (a registry that is slow or unreachable can hold that up for
/// seconds). Whatever waits for "this server can be discovered" (compose's
/// `depends_on: service_healthy`, the container `HEALTHCHECK`, a load test)
/// probes `/ready`; a liveness check that must not fail during a registry
/// outage probes `/health`. During a graceful shutdown `/ready` is 503 again
/// from the deregistration on, while the drain still serves requests.
pub fn router_with_readiness(
    instance_id: String,
    metrics: Arc<ServerMetrics>,
    registered: Readiness,
) -> Router {
    let header_value = instance_header_value(&instance_id);
    let exported = metrics.clone();
    Router::new()
        .route("/lorem/{type}/{min}/{max}", post(lorem))
        .route("/health", get(health))
        .route(
            "/ready",
            get(move || {
                let registered = registered.is_registered();
                async move { ready(registered) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = exported.clone();
                async move { crate::metrics::render(metrics.registry()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let value = header_value.clone();
            let metrics = metrics.clone();
            async move {
                let started = Instant::now();
                let kind = crate::metrics::request_type(request.uri().path());
                let mut response = next.run(request).await;
                metrics.observe(kind, response.status(), started.elapsed());
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(INSTANCE_ID_HEADER), value);
                response
            }
        }))
}

fn instance_header_value(id: &str) -> HeaderValue {
    let cleaned: String = id
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn lorem(path: Result<Path<(String, String, String)>, PathRejection>) -> Response {
    let Path((kind, min, max)) = match path {
        Ok(path) => path,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad path: {}", rejection.body_text()),
            );
        }
    };
    match LoremRequest::parse(&kind, &min, &max) {
        Ok(request) => {
            let message = Generator::new().generate(&request, &mut rand::thread_rng());
            tracing::debug!(kind = %request.kind, min = request.min, max = request.max, "generated");
            Json(json!({ "message": message })).into_response()
        }
        Err(problem) => {
            tracing::debug!(%kind, %min, %max, error = %problem, "refused a lorem request");
            error(StatusCode::BAD_REQUEST, problem.to_string())
        }
    }
}

async fn health() -> Response {
    Json(json!({ "status": true })).into_response()
}

fn ready(registered: bool) -> Response {
    if registered {
        Json(json!({ "status": true, "registered": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": false,
                "registered": false,
                "reason": "this instance is not registered: its registration has not gone \
                           through yet (see the server's log), or it deregistered to shut down"
            })),
        )
            .into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}; try POST /lorem/{{type}}/{{min}}/{{max}}, GET /health, GET /ready or GET /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = if matches!(uri.path(), "/health" | "/ready" | "/metrics") {
        "GET"
    } else {
        "POST"
    };
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}; use {allowed}",
            uri.path()
        ),
    )
}
