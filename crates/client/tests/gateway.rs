//! The gateway (`lorem-client gateway`) in front of a real lorem server.

mod common;

use std::time::Duration;

use client::{BalancerOptions, ClientOptions, gateway};
use common::{DEADLINE, default_client, lorem_client, memory_registry, start_lorem, wait_for_ids};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Gateway {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_gateway(client: client::LoremClient) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway::serve(listener, client, async move {
        let _ = stopped.await;
    }));
    Gateway { url, stop, task }
}

impl Gateway {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the gateway stops in time")
            .expect("no panic")
            .expect("the gateway exits cleanly");
    }
}

/// An HTTP client for the gateway, never through a proxy from the
/// environment.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GETs `url` and parses its JSON body.
async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> (u16, Option<String>, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let instance = response
        .headers()
        .get("x-instance-id")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body: Value = response.json().await.expect("a JSON body");
    (status, instance, body)
}

#[tokio::test]
async fn the_gateway_answers_from_a_discovered_instance() {
    let registry = memory_registry();
    let server = start_lorem(registry.clone(), "lorem", "g1").await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["g1"]).await;
    let gateway = start_gateway(client).await;
    let http = http_client();
    let sd = format!("{}/sd-lorem", gateway.url);

    let (status, instance, body) =
        post(&http, &sd, r#"{"requestType":"sentence","min":5,"max":20}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(instance.as_deref(), Some("g1"));
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );

    let (status, _, body) = post(&http, &sd, "{not json").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().is_some(), "{body}");

    let (status, _, body) = post(&http, &sd, r#"{"requestType":"poem","min":1,"max":2}"#).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("poem"), "{body}");

    let (status, _, body) = post(&http, &sd, r#"{"requestType":"word","min":-1,"max":2}"#).await;
    assert_eq!(status, 400, "{body}");

    // The instance's own 400 is passed through, with its id.
    let (status, instance, body) =
        post(&http, &sd, r#"{"requestType":"word","min":9,"max":2}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(instance.as_deref(), Some("g1"));
    assert!(body["error"].as_str().is_some(), "{body}");

    let instances = get_json(&http, &format!("{}/instances", gateway.url)).await;
    assert_eq!(instances["service"], "lorem", "{instances}");
    assert_eq!(instances["instances"][0]["id"], "g1", "{instances}");
    assert_eq!(
        instances["instances"].as_array().map(Vec::len),
        Some(1),
        "{instances}"
    );
    assert_eq!(instances["ejected"], json!([]), "{instances}");
    assert_eq!(instances["synced"], true, "{instances}");
    assert_eq!(instances["stale"], false, "{instances}");
    assert_eq!(instances["stale_ms"], 0, "{instances}");
    assert_eq!(instances["max_staleness_ms"], 300_000, "{instances}");

    let metrics = http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = metrics.text().await.unwrap();
    for line in [
        r#"lorem_client_requests_total{service="lorem",outcome="ok"} 1"#,
        r#"lorem_client_requests_total{service="lorem",outcome="rejected"} 1"#,
        r#"lorem_client_instances{service="lorem"} 1"#,
        r#"lorem_client_retries_total{service="lorem"} 0"#,
        r#"lorem_client_ejections_total{service="lorem"} 0"#,
        r#"lorem_client_registry_errors_total{service="lorem"} 0"#,
        r#"lorem_client_registry_stale_seconds{service="lorem"} 0.0"#,
        r#"lorem_client_request_duration_seconds_count{service="lorem"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(r#"lorem_client_registry_events_total{service="lorem",event="update"}"#),
        "{metrics}"
    );

    let health = get_json(&http, &format!("{}/health", gateway.url)).await;
    assert_eq!(health, json!({"status": true}));

    gateway.stop().await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_gateway_says_503_when_no_instance_appears() {
    let registry = memory_registry();
    let client = lorem_client(
        &registry,
        "lorem",
        BalancerOptions {
            wait_timeout: Duration::from_millis(200),
            ..BalancerOptions::default()
        },
        ClientOptions::default(),
    );
    let gateway = start_gateway(client).await;
    let http = http_client();
    let (status, instance, body) = post(
        &http,
        &format!("{}/sd-lorem", gateway.url),
        r#"{"requestType":"sentence","min":5,"max":20}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(instance, None);
    assert!(
        body["error"].as_str().unwrap().contains("no instance"),
        "{body}"
    );
    gateway.stop().await;
}
