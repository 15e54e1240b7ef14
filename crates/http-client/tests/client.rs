//! The HTTP client against small axum stubs registered in the in-process
//! registry: any request, the retry rules, overloads and the identity
//! check.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response as AxumResponse};
use balancer::{Balancer, BalancerOptions, EjectionOptions};
use http_client::{Client, ClientOptions, Error, GaveUp};
use registry::{Instance, MemoryRegistry, Registrar, Registration};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

/// A stub serving every path with `answer`, counting its hits; stops when
/// dropped.
struct Stub {
    port: u16,
    hits: Arc<AtomicU64>,
    _stop: oneshot::Sender<()>,
}

async fn stub<F>(answer: F) -> Stub
where
    F: Fn(Method, HeaderMap, String) -> AxumResponse + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let router =
        axum::Router::new().fallback(move |method: Method, headers: HeaderMap, body: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            async move { answer(method, headers, body) }
        });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Stub {
        port,
        hits,
        _stop: stop,
    }
}

/// A stub that answers `status` naming itself `id` in `x-instance-id`
/// (`None`: no header).
async fn named(status: StatusCode, id: Option<&'static str>) -> Stub {
    stub(move |_, _, _| {
        let mut response = (status, "{\"message\":\"hello\"}").into_response();
        if let Some(id) = id {
            response
                .headers_mut()
                .insert("x-instance-id", id.parse().unwrap());
        }
        response
    })
    .await
}

async fn register(registry: &MemoryRegistry, instance: Instance) -> Registration {
    registry.register(instance).await.expect("register")
}

fn at(id: &str, port: u16) -> Instance {
    Instance::new("orders", id, "127.0.0.1", port)
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn client(registry: &MemoryRegistry, n: usize, options: ClientOptions) -> Client {
    let balancer = Balancer::new(
        registry.clone(),
        "orders",
        BalancerOptions {
            ejection: EjectionOptions {
                consecutive_failures: 2,
                base: Duration::from_secs(600),
                max: Duration::from_secs(600),
            },
            ..BalancerOptions::default()
        },
    )
    .expect("valid options");
    let mut set = balancer.subscribe();
    tokio::time::timeout(DEADLINE, set.wait_for(|set| set.len() == n))
        .await
        .expect("the set filled")
        .expect("the watch lives");
    Client::new(balancer, options).expect("valid options")
}

#[tokio::test]
async fn any_method_headers_and_json_body_reach_an_instance() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let echo = stub(|method, headers, body| {
        axum::Json(serde_json::json!({
            "method": method.as_str(),
            "request_id": headers.get("x-request-id").and_then(|v| v.to_str().ok()),
            "content_type": headers.get("content-type").and_then(|v| v.to_str().ok()),
            "body": body,
        }))
        .into_response()
    })
    .await;
    let _a = register(&registry, at("a", echo.port)).await;
    let client = client(&registry, 1, ClientOptions::default()).await;
    let answer = client
        .put("/orders/7")
        .header("x-request-id", "42")
        .json(&serde_json::json!({"state": "shipped"}))
        .expect("serialises")
        .send()
        .await
        .expect("answered");
    assert_eq!((answer.status, answer.instance.as_str()), (200, "a"));
    let echoed: serde_json::Value = answer.json().expect("JSON");
    assert_eq!(
        echoed,
        serde_json::json!({
            "method": "PUT",
            "request_id": "42",
            "content_type": "application/json",
            "body": "{\"state\":\"shipped\"}",
        })
    );
    // A header that is not HTTP is refused before anything is sent.
    let error = client
        .get("/orders/7")
        .header("bad header", "x")
        .await
        .expect_err("refused");
    assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_post_is_retried_only_when_safe() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let broken = named(StatusCode::INTERNAL_SERVER_ERROR, None).await;
    let fine = named(StatusCode::OK, None).await;
    let _a = register(&registry, at("a-broken", broken.port)).await;
    let _b = register(&registry, at("b-fine", fine.port)).await;
    let client = client(&registry, 2, ClientOptions::default()).await;
    // Round-robin starts on a-broken: a POST that reached it may have done
    // its work, so it is not repeated...
    let error = client.post("/orders").await.expect_err("not repeated");
    assert!(
        matches!(
            error,
            Error::Exhausted {
                attempts: 1,
                gave_up: GaveUp::NotSafe,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("not safe to repeat"), "{error}");
    // ...unless it opts in, or the method is idempotent.
    let _ = client.get("/skip-a-turn").await;
    let answer = client
        .post("/orders")
        .idempotent(true)
        .await
        .expect("retried");
    assert_eq!((answer.instance.as_str(), answer.retries), ("b-fine", 1));
}

#[tokio::test]
async fn a_post_that_never_reached_a_server_is_retried() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let fine = named(StatusCode::OK, None).await;
    let _a = register(&registry, at("a-dead", closed_port().await)).await;
    let _b = register(&registry, at("b-fine", fine.port)).await;
    let client = client(&registry, 2, ClientOptions::default()).await;
    let answer = client.post("/orders").await.expect("retried for free");
    assert_eq!((answer.instance.as_str(), answer.retries), ("b-fine", 1));
}

#[tokio::test]
async fn an_overloaded_instance_is_left_for_its_retry_after() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let busy = stub(|_, _, _| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "120")],
            "slow down",
        )
            .into_response()
    })
    .await;
    let fine = named(StatusCode::OK, None).await;
    let _a = register(&registry, at("a-busy", busy.port)).await;
    let _b = register(&registry, at("b-fine", fine.port)).await;
    let client = client(&registry, 2, ClientOptions::default()).await;
    let answer = client.get("/orders/7").await.expect("served elsewhere");
    assert_eq!((answer.instance.as_str(), answer.retries), ("b-fine", 1));
    assert_eq!(client.balancer().ejected(), ["a-busy"]);
    for _ in 0..6 {
        let answer = client.get("/orders/7").await.expect("served");
        assert_eq!((answer.instance.as_str(), answer.retries), ("b-fine", 0));
    }
    assert_eq!(busy.hits.load(Ordering::SeqCst), 1, "backed off");
}

#[tokio::test]
async fn the_identity_check_refuses_answers_from_another_instance() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let header = |instance: Instance| instance.with_metadata("instance-id-header", "x-instance-id");
    // Registered as "a" with the header, but something else answers there.
    let stranger = named(StatusCode::OK, Some("someone-else")).await;
    let silent = named(StatusCode::NOT_FOUND, None).await;
    let real = named(StatusCode::OK, Some("c-real")).await;
    let _a = register(&registry, header(at("a-taken", stranger.port))).await;
    let _b = register(&registry, header(at("b-silent", silent.port))).await;
    let _c = register(&registry, header(at("c-real", real.port))).await;
    let checked = client(
        &registry,
        3,
        ClientOptions {
            identity_check: true,
            ..ClientOptions::default()
        },
    )
    .await;
    for _ in 0..9 {
        let answer = checked.post("/lorem").await.expect("served by c");
        assert_eq!(answer.instance, "c-real");
        assert_eq!(answer.reported_id.as_deref(), Some("c-real"));
    }
    // Two failures each: both ejected.
    assert_eq!(checked.balancer().ejected(), ["a-taken", "b-silent"]);

    // Without the check, the stranger's answer passes for a-taken's.
    let unchecked = client(&registry, 3, ClientOptions::default()).await;
    let answer = unchecked.get("/lorem").await.expect("answered");
    assert_eq!(answer.instance, "a-taken");
    assert_eq!(answer.reported_id.as_deref(), Some("someone-else"));

    // An instance registered without the key is not held to it.
    let other = named(StatusCode::OK, None).await;
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let _d = register(&registry, at("d-other-framework", other.port)).await;
    let checked = client(
        &registry,
        1,
        ClientOptions {
            identity_check: true,
            ..ClientOptions::default()
        },
    )
    .await;
    let answer = checked.get("/").await.expect("not held to the header");
    assert_eq!(
        (answer.instance.as_str(), answer.reported_id),
        ("d-other-framework", None)
    );
}
