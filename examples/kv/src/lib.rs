//! A small key-value service built only on the workspace's public APIs:
//! the proof that a service other than lorem can adopt them.
//!
//! | side    | built on                                                                                   |
//! |---------|--------------------------------------------------------------------------------------------|
//! | server  | an axum [`router`] (`PUT /kv/{key}` and `GET /kv/{key}`, JSON bodies), served and registered by [`registry::lifecycle::Lifecycle::spawn`]: registered once listening, deregistered and drained on shutdown ([`serve`]) |
//! | client  | [`KvClient`]: an [`http_client::Client`] over a [`balancer::Balancer`] of the service, so every call goes to an instance found through discovery, with retries on another instance when a try fails |
//!
//! The instances of one process share a [`Store`], standing in for the
//! database a real key-value service would keep its data in: a value PUT
//! through one instance can be read through another.
//!
//! ```
//! use std::time::Duration;
//! use registry::MemoryRegistry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = MemoryRegistry::new(Duration::from_secs(10));
//! let store = kv_example::Store::default();
//! let server = kv_example::serve(registry.clone(), store, "kv", "kv-1").await?;
//! let client = kv_example::KvClient::new(registry, "kv")?;
//! client.put("colour", &serde_json::json!("blue")).await?;
//! assert_eq!(client.get("colour").await?, Some(serde_json::json!("blue")));
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use registry::lifecycle::{Lifecycle, LifecycleError, Server};
use registry::{Instance, Registrar, Watcher};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The keys and values, shared by the instances of one process (a
/// stand-in for a database).
#[derive(Debug, Clone, Default)]
pub struct Store(Arc<Mutex<HashMap<String, Value>>>);

impl Store {
    fn put(&self, key: String, value: Value) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
    }

    fn get(&self, key: &str) -> Option<Value> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

/// The body of a `PUT /kv/{key}` and of a `GET /kv/{key}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Any JSON value.
    pub value: Value,
}

#[derive(Clone)]
struct AppState {
    store: Store,
    id: HeaderValue,
}

/// The routes of one instance `id` over `store`. Every answer carries
/// [`http_client::INSTANCE_HEADER`] with the instance's id, so that the
/// client's identity check can tell it from whatever else took its port.
///
/// | route            | answer                                          |
/// |------------------|-------------------------------------------------|
/// | `PUT /kv/{key}`  | `204` once stored; `{"value": ...}` as the body |
/// | `GET /kv/{key}`  | `200` with `{"value": ...}`, or `404`           |
pub fn router(store: Store, id: &str) -> axum::Router {
    let id = HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    axum::Router::new()
        .route("/kv/{key}", get(get_entry).put(put_entry))
        .with_state(AppState { store, id })
}

fn identified(state: &AppState) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http_client::INSTANCE_HEADER, state.id.clone());
    headers
}

async fn put_entry(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Json(entry): Json<Entry>,
) -> impl IntoResponse {
    state.store.put(key, entry.value);
    (StatusCode::NO_CONTENT, identified(&state))
}

async fn get_entry(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> axum::response::Response {
    match state.store.get(&key) {
        Some(value) => (identified(&state), Json(Entry { value })).into_response(),
        None => (StatusCode::NOT_FOUND, identified(&state)).into_response(),
    }
}

/// Serves instance `id` of `service` over `store` on `127.0.0.1:0`, and
/// registers it through `registrar` once it listens (metadata
/// `instance-id-header` so clients check who answers). Stop it with
/// [`Server::shutdown`]: deregister, drain, stop.
///
/// # Errors
/// [`LifecycleError::Serve`] if no port can be bound on 127.0.0.1.
pub async fn serve<R: Registrar + 'static>(
    registrar: R,
    store: Store,
    service: &str,
    id: &str,
) -> Result<Server, LifecycleError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| LifecycleError::Serve { source })?;
    let port = listener
        .local_addr()
        .map_err(|source| LifecycleError::Serve { source })?
        .port();
    let instance = Instance::new(service, id, "127.0.0.1", port).with_metadata(
        http_client::INSTANCE_ID_HEADER_KEY,
        http_client::INSTANCE_HEADER,
    );
    Lifecycle::new(registrar, instance)
        .drain_delay(Duration::from_millis(100))
        .spawn(listener, router(store, id))
}

/// Why a key-value call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// No instance answered: see [`http_client::Error`].
    #[error("key-value call failed: {0}")]
    Http(#[from] http_client::Error),
    /// An instance answered with a status the protocol does not use.
    #[error("key-value instance {instance} answered {status} to {what}")]
    Unexpected {
        /// The call.
        what: String,
        /// The status.
        status: u16,
        /// Which instance answered.
        instance: String,
    },
    /// The balancer could not be built (an invalid service name).
    #[error(transparent)]
    Balancer(#[from] balancer::Error),
}

/// A client of the key-value service, found through discovery.
#[derive(Debug, Clone)]
pub struct KvClient {
    http: http_client::Client,
}

impl KvClient {
    /// A client of `service`'s live instances as `watcher` sees them, with
    /// the HTTP client's defaults (identity check on, three tries).
    ///
    /// # Errors
    /// [`KvError::Balancer`] for a service name no registry can hold.
    pub fn new<W: Watcher + 'static>(watcher: W, service: &str) -> Result<Self, KvError> {
        let balancer = balancer::Balancer::new(watcher, service, Default::default())?;
        let http = http_client::Client::new(balancer, Default::default())?;
        Ok(KvClient { http })
    }

    /// The HTTP client underneath, for its balancer and live set.
    pub fn http(&self) -> &http_client::Client {
        &self.http
    }

    /// Stores `value` under `key`; returns the id of the instance that
    /// stored it. A `PUT` is idempotent, so a failed try is retried on
    /// another instance.
    ///
    /// # Errors
    /// [`KvError::Http`] if no instance answered; [`KvError::Unexpected`]
    /// for an answer other than 204.
    pub async fn put(&self, key: &str, value: &Value) -> Result<String, KvError> {
        let answer = self
            .http
            .put(&format!("/kv/{key}"))
            .json(&Entry {
                value: value.clone(),
            })?
            .send()
            .await?;
        if answer.status != 204 {
            return Err(KvError::Unexpected {
                what: format!("PUT /kv/{key}"),
                status: answer.status,
                instance: answer.instance,
            });
        }
        Ok(answer.instance)
    }

    /// The value under `key`, `None` if there is none.
    ///
    /// # Errors
    /// As [`put`](Self::put), for an answer other than 200 or 404.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, KvError> {
        Ok(self.get_from(key).await?.0)
    }

    /// [`get`](Self::get), with the id of the instance that answered.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_from(&self, key: &str) -> Result<(Option<Value>, String), KvError> {
        let answer = self.http.get(&format!("/kv/{key}")).send().await?;
        match answer.status {
            200 => {
                let entry: Entry = answer.json()?;
                Ok((Some(entry.value), answer.instance))
            }
            404 => Ok((None, answer.instance)),
            status => Err(KvError::Unexpected {
                what: format!("GET /kv/{key}"),
                status,
                instance: answer.instance,
            }),
        }
    }
}
