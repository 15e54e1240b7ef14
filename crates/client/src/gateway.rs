//! The HTTP gateway: `lorem-client gateway`, go-kit's `/sd-lorem` endpoint
//! in front of the discovered instances.
//!
//! | route              | answer                                                          |
//! |--------------------|-----------------------------------------------------------------|
//! | `GET /`            | the live page (crate `ui`): the service's instances as this gateway routes to them, their traffic (rate, latency, errors, ejection), the registry's state and a timeline; `GET /ui/events` streams it |
//! | `POST /sd-lorem`   | `{"requestType":"sentence","min":5,"max":20}` -> `{"message": ...}` from an instance, with its `x-instance-id` |
//! | `GET /instances`   | the live set and how fresh it is (below)                        |
//! | `GET /metrics`     | the client's Prometheus metrics (see [`ClientMetrics`](crate::ClientMetrics)) |
//! | `GET /health`      | `{"status": true}`                                              |
//!
//! `GET /instances` answers
//! `{"service": "lorem", "instances": [...], "ejected": ["b"], "synced": true,
//! "stale": false, "stale_ms": 0, "max_staleness_ms": 300000,
//! "discarded": false, "since_update_ms": 1234, "last_error": null}`:
//! `stale` is true while the registry cannot be read and the set is the
//! last known one, `stale_ms` says for how long (see
//! [`Freshness`]).
//!
//! Errors are JSON `{"error": "..."}`: 400 for a body that is not such a
//! request (an instance's own 400 is passed through as is), 503 when no
//! instance appeared within the wait, 502 when every attempt failed, 404 for
//! an unknown route, 405 for a known route with the wrong method, and the
//! serve helper's own 413, 414 and 431 (see [`registry::lifecycle::http`]).
//!
//! It is served by the same accept loop as `lorem-server`
//! ([`registry::lifecycle::HttpServer`]): header-read and idle timeouts, a
//! connection cap, size limits, idle connections closed at once on shutdown.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use registry::lifecycle::{DEFAULT_SHUTDOWN_TIMEOUT, HttpLimits, HttpServer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::client::{LoremClient, LoremRequest, parse_kind};
use balancer::Freshness;
use http_client::Error;
use http_client::INSTANCE_HEADER;

/// The body of `POST /sd-lorem`, as go-kit's client sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewayRequest {
    request_type: String,
    min: u32,
    max: u32,
}

/// The answer of `GET /instances`.
#[derive(Debug, Serialize)]
struct InstancesBody {
    service: String,
    instances: Vec<registry::Instance>,
    ejected: Vec<String>,
    #[serde(flatten)]
    freshness: Freshness,
}

#[derive(Clone)]
struct Gateway {
    client: LoremClient,
    metrics: Arc<Registry>,
}

/// The gateway's routes, sending through `client`, with the live page at
/// `/` (whose feed, reading the client's balancer, stops with the router;
/// its event streams end when the router goes, or sooner through
/// [`serve`]'s shutdown).
///
/// # Panics
/// Outside a Tokio runtime (the page's feed runs as a task).
pub fn router(client: LoremClient) -> Router {
    routes(client).0
}

/// [`router`], and what ends the page's event streams.
fn routes(client: LoremClient) -> (Router, ui::Closer) {
    let (page, closer) = ui::balancer_page(
        client.balancer().clone(),
        format!("gateway: {}", client.balancer().service()),
    );
    let mut metrics = Registry::default();
    client
        .balancer()
        .metrics()
        .register(&mut metrics, crate::METRICS_PREFIX);
    let router = Router::new()
        .route("/sd-lorem", post(sd_lorem))
        .route("/instances", get(instances))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Gateway {
            client,
            metrics: Arc::new(metrics),
        })
        .merge(page);
    (router, closer)
}

/// Serves the gateway on `listener` with the default [`HttpLimits`] until
/// `shutdown` completes: [`serve_with`].
///
/// # Errors
/// As [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    client: LoremClient,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, client, HttpLimits::default(), shutdown).await
}

/// Serves the gateway on `listener` with `limits` until `shutdown`
/// completes, then ends the live page's event streams and closes idle
/// connections at once (an open page does not hold the gateway up), and
/// lets requests in flight finish (up to [`DEFAULT_SHUTDOWN_TIMEOUT`], then
/// cuts them).
///
/// # Errors
/// An I/O error if the listener's address cannot be read or the server's
/// task failed.
pub async fn serve_with(
    listener: TcpListener,
    client: LoremClient,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = client.balancer().service().to_owned();
    let (router, closer) = routes(client);
    let server = HttpServer::spawn(listener, router, limits)?;
    let addr = server.local_addr();
    let limits = server.limits();
    tracing::info!(%addr, %service,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        max_connections = limits.max_connections,
        max_body_bytes = limits.max_body_bytes,
        "gateway listening");
    shutdown.await;
    closer.close();
    server
        .shutdown(DEFAULT_SHUTDOWN_TIMEOUT)
        .await
        .map_err(std::io::Error::other)?;
    tracing::info!(%addr, "gateway stopped");
    Ok(())
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn with_instance(mut response: Response, instance: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(instance) {
        response.headers_mut().insert(INSTANCE_HEADER, value);
    }
    response
}

async fn sd_lorem(State(Gateway { client, .. }): State<Gateway>, body: Bytes) -> Response {
    let parsed: GatewayRequest = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON body like {{\"requestType\":\"sentence\",\"min\":5,\"max\":20}} \
                     with non-negative integers: {error}"
                ),
            );
        }
    };
    let kind = match parse_kind(&parsed.request_type) {
        Ok(kind) => kind,
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown requestType {:?}; expected word, sentence or paragraph",
                    parsed.request_type
                ),
            );
        }
    };
    let request = LoremRequest::new(kind, parsed.min, parsed.max);
    match client.lorem(&request).await {
        Ok(lorem) => {
            tracing::debug!(instance = %lorem.instance, retries = lorem.retries, "served");
            with_instance(
                axum::Json(json!({ "message": lorem.message })).into_response(),
                &lorem.instance,
            )
        }
        Err(Error::Rejected {
            instance,
            status,
            message,
            body,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let response = if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            } else {
                json_error(status, message)
            };
            with_instance(response, &instance)
        }
        Err(error) if error.is_unavailable() => {
            tracing::warn!(%error, "no instance for a gateway request");
            json_error(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        Err(error) => {
            tracing::warn!(%error, "gateway request failed");
            json_error(StatusCode::BAD_GATEWAY, error.to_string())
        }
    }
}

async fn instances(State(gateway): State<Gateway>) -> Response {
    let balancer = gateway.client.balancer();
    axum::Json(InstancesBody {
        service: balancer.service().to_owned(),
        instances: balancer.instances().to_vec(),
        ejected: balancer.ejected(),
        freshness: balancer.freshness(),
    })
    .into_response()
}

async fn metrics_text(State(gateway): State<Gateway>) -> Response {
    lorem::metrics::render(&gateway.metrics)
}

async fn health() -> Response {
    axum::Json(json!({ "status": true })).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}; try POST /sd-lorem, GET /instances, GET /metrics or GET /health",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed = if uri.path() == "/sd-lorem" {
        "POST"
    } else {
        "GET"
    };
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {}; use {allowed}",
            uri.path()
        ),
    )
}
