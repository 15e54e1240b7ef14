//! Our discovery under tower's own p2c balancer, without the lorem client.
//!
//! Starts two lorem servers registered in the in-process registry, turns the
//! service's watch into a tower `Discover` stream (`registry::ServiceDiscover`)
//! whose services POST to each instance with reqwest, and lets
//! `tower::balance::p2c::Balance` over peak-EWMA load spread 80 requests, 8 at
//! a time.
//!
//! ```text
//! cargo run -p client --example tower_p2c
//! ```
//!
//! With `REGISTRY=etcd REGISTRY_ADDR=...` the same `ServiceDiscover::new`
//! call works on `registry::connect(&Settings::from_env()?)`; hyper or
//! tonic users put their own connection per instance in the closure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use lorem::server::{ServerOptions, start};
use registry::{Instance, MemoryRegistry, ServiceDiscover};
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::{BoxError, Service, ServiceExt};

/// One instance's service: POST /lorem/{kind}/{min}/{max} there, answering
/// with the `x-instance-id` that served it.
#[derive(Clone)]
struct LoremInstance {
    http: reqwest::Client,
    base: String,
}

impl Service<&'static str> for LoremInstance {
    type Response = String;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<String, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, path: &'static str) -> Self::Future {
        let request = self.http.post(format!("{}{path}", self.base));
        Box::pin(async move {
            let response = request.send().await?.error_for_status()?;
            let id = response
                .headers()
                .get("x-instance-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            Ok(id)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let mut options = ServerOptions::new(id);
        options.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        options.drain_delay = Duration::ZERO;
        servers.push(start(options, registry.clone()).await?);
    }
    while servers.iter().any(|s| !s.is_registered()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let http = reqwest::Client::builder().no_proxy().build()?;
    let discover = ServiceDiscover::new(&registry, "lorem", move |instance: &Instance| {
        LoremInstance {
            http: http.clone(),
            base: format!("http://{}", instance.authority()),
        }
    })?;
    // Peak-EWMA load per instance, as our own p2c strategy uses.
    let load = PeakEwmaDiscover::new(
        discover,
        Duration::from_millis(1),
        Duration::from_secs(10),
        CompleteOnResponse::default(),
    );
    let mut balance = Balance::new(load);

    // 8 requests in flight at a time, so load, not only latency, counts.
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..10 {
        let mut batch = futures::stream::FuturesUnordered::new();
        for _ in 0..8 {
            batch.push(balance.ready().await?.call("/lorem/sentence/3/8"));
        }
        while let Some(id) = futures::StreamExt::next(&mut batch).await {
            *served.entry(id?).or_default() += 1;
        }
    }
    println!("tower p2c over registry::ServiceDiscover served: {served:?}");

    for server in servers {
        server.shutdown().await?;
    }
    Ok(())
}
