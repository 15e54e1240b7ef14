//! Writing instances straight into a Consul catalog, for the
//! watcher-memory phase.
//!
//! Ten thousand registrations on ONE agent do not finish in reasonable
//! time: each one is slower than the last as the agent fills (measured
//! here with plain `curl`, 32 at a time: 500 registrations took 7 s on an
//! empty dev agent, 31 s once it held 3,500). In a real cluster that many
//! instances are spread over many agents. What the phase measures is the
//! watcher, which reads `/v1/health/service/<name>` whoever wrote it, so
//! the instances are written with `PUT /v1/catalog/register` under
//! [`NODES`] external nodes, as if registered through that many agents,
//! and removed afterwards with `PUT /v1/catalog/deregister` per node. Such
//! entries have no checks, which Consul counts as passing.

use std::time::Duration;

use futures::StreamExt;

/// How many nodes the instances are spread over.
pub(crate) const NODES: usize = 100;
/// Requests in flight at once.
const CONCURRENCY: usize = 32;

/// A Consul agent's catalog API.
pub(crate) struct Catalog {
    http: reqwest::Client,
    base: String,
}

impl Catalog {
    /// The catalog of the agent at `addr` (`REGISTRY_ADDR` form); sends
    /// `CONSUL_HTTP_TOKEN` if set, as the registry's Consul backend does.
    pub(crate) fn new(addr: &str, timeout: Duration) -> Result<Self, String> {
        let base = registry::Endpoint::parse(addr)
            .map_err(|e| e.to_string())?
            .url("http");
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            let value = reqwest::header::HeaderValue::from_str(token.trim())
                .map_err(|_| "CONSUL_HTTP_TOKEN is not a valid HTTP header value".to_owned())?;
            headers.insert("X-Consul-Token", value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Catalog { http, base })
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .http
            .put(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = answer.text().await.unwrap_or_default();
            Err(format!("PUT {url}: {status}: {}", text.trim()))
        }
    }

    /// Writes `n` instances `i0`.. of `service` (ports from 10000), spread
    /// over the nodes `<node_prefix>-0`..`<node_prefix>-99`.
    pub(crate) async fn register(
        &self,
        node_prefix: &str,
        service: &str,
        n: usize,
    ) -> Result<(), String> {
        self.register_range(node_prefix, service, 0, n).await
    }

    /// Writes the instances `i<from>`..`i<n - 1>` of `service`, as
    /// [`register`](Self::register) does.
    pub(crate) async fn register_range(
        &self,
        node_prefix: &str,
        service: &str,
        from: usize,
        n: usize,
    ) -> Result<(), String> {
        let results: Vec<Result<(), String>> = futures::stream::iter(from..n)
            .map(|i| {
                let body = serde_json::json!({
                    "Node": format!("{node_prefix}-{}", i % NODES),
                    "Address": "127.0.0.1",
                    "Service": {
                        "ID": format!("i{i}"),
                        "Service": service,
                        "Address": "127.0.0.1",
                        "Port": 10_000 + (i % 50_000),
                    },
                });
                async move { self.put("/v1/catalog/register", body).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Removes the nodes (and every instance on them) that
    /// [`register`](Self::register) wrote.
    pub(crate) async fn deregister(&self, node_prefix: &str) -> Result<(), String> {
        let results: Vec<Result<(), String>> = futures::stream::iter(0..NODES)
            .map(|k| {
                let body = serde_json::json!({ "Node": format!("{node_prefix}-{k}") });
                async move { self.put("/v1/catalog/deregister", body).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }
}
