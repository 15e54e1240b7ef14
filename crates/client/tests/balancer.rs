//! The balancer and the retrying client against real lorem servers (and
//! small stubs where a server must misbehave), over the in-process registry.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::response::IntoResponse;
use client::{
    Balancer, BalancerOptions, ClientOptions, EjectionOptions, Error, GaveUp, Kind, LoremClient,
    LoremRequest, MAX_BODY_BYTES, MAX_TIMEOUT, Strategy,
};
use common::{
    DEADLINE, Stub, closed_port, default_client, lorem_client, memory_registry, register_at,
    start_lorem, wait_for_ids,
};
use futures::StreamExt;
use registry::{Instance, Registrar, WatchStream, Watcher};

fn sentence() -> LoremRequest {
    LoremRequest::new(Kind::Sentence, 5, 20)
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_instances() {
    let registry = memory_registry();
    let mut servers = Vec::new();
    for id in ["a", "b", "c"] {
        servers.push(start_lorem(registry.clone(), "lorem", id).await);
    }
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["a", "b", "c"]).await;

    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..30 {
        let lorem = client.lorem(&sentence()).await.expect("request succeeds");
        assert_eq!(lorem.retries, 0);
        assert!(!lorem.message.is_empty());
        *served.entry(lorem.instance).or_default() += 1;
    }
    assert_eq!(
        served,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
    for server in servers {
        server.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let registry = memory_registry();
    let mut registrations = Vec::new();
    for (id, weight) in [("a", 1), ("b", 2), ("c", 3)] {
        // Picking never connects, so the addresses need no server.
        let instance = Instance::new("lorem", id, "127.0.0.1", 9).with_weight(weight);
        registrations.push(registry.register(instance).await.expect("register"));
    }
    let balancer = Balancer::new(
        registry.clone(),
        "lorem",
        BalancerOptions {
            strategy: Strategy::Weighted,
            ..BalancerOptions::default()
        },
    )
    .expect("a valid service name");
    wait_for_ids(&balancer, &["a", "b", "c"]).await;

    let mut picks = Vec::new();
    for _ in 0..60 {
        picks.push(balancer.pick(&[]).expect("an instance").id);
    }
    let count = |id: &str| picks.iter().filter(|p| *p == id).count();
    assert_eq!((count("a"), count("b"), count("c")), (10, 20, 30));
    // Smooth: c never gets more than two turns in a row.
    assert!(
        !picks.windows(3).any(|w| w.iter().all(|p| p == "c")),
        "{picks:?}"
    );
    // Excluding an id skips it.
    for _ in 0..10 {
        let id = balancer.pick(&["c".to_owned()]).expect("an instance").id;
        assert_ne!(id, "c");
    }
    assert!(
        balancer
            .pick(&["a".to_owned(), "b".to_owned(), "c".to_owned()])
            .is_none()
    );
    assert_eq!("weighted".parse::<Strategy>().unwrap(), Strategy::Weighted);
    assert!("fastest".parse::<Strategy>().is_err());
    for registration in registrations {
        registration.deregister().await.expect("deregister");
    }
}

/// The request failed after one try because the only live instance had
/// been tried (a retry never goes back to it).
fn assert_tried_the_only_instance_once(error: &Error) {
    assert!(
        matches!(
            error,
            Error::Exhausted {
                attempts: 1,
                gave_up: GaveUp::AllTried,
                ..
            }
        ),
        "{error:?}"
    );
}

/// Client options for the dead-instance tests: ejection as given, and an
/// ejection long enough that it cannot end during the test.
fn ejecting_after(failures: u32) -> BalancerOptions {
    BalancerOptions {
        ejection: EjectionOptions {
            consecutive_failures: failures,
            base: Duration::from_secs(600),
            max: Duration::from_secs(600),
        },
        ..BalancerOptions::default()
    }
}

/// 20 requests over a live server and a registered instance nothing
/// listens on (like a crashed server whose registration has not expired),
/// with ejection after `failures` failures: the retries they needed and the
/// instances ejected at the end. No request may fail.
async fn dead_and_live(failures: u32) -> (u32, Vec<String>) {
    let registry = memory_registry();
    let live = start_lorem(registry.clone(), "lorem", "live").await;
    let dead = register_at(&registry, "dead", closed_port().await).await;
    let client = lorem_client(
        &registry,
        "lorem",
        ejecting_after(failures),
        ClientOptions::default(),
    );
    wait_for_ids(client.balancer(), &["dead", "live"]).await;
    let mut retries = 0;
    for _ in 0..20 {
        let lorem = client
            .lorem(&sentence())
            .await
            .expect("no request fails: the dead instance is retried away from");
        assert_eq!(lorem.instance, "live");
        retries += lorem.retries;
    }
    let ejected = client.balancer().ejected();
    dead.deregister().await.expect("deregister");
    live.shutdown().await.expect("clean shutdown");
    (retries, ejected)
}

#[tokio::test]
async fn requests_retry_away_from_a_dead_instance_until_it_is_ejected() {
    // Round-robin sends every other first try to the dead instance until its
    // third failure ejects it; after that only `live` is tried.
    assert_eq!(dead_and_live(3).await, (3, vec!["dead".to_owned()]));
}

#[tokio::test]
async fn without_ejection_every_other_request_retries() {
    // A retry does not take a round-robin turn, so exactly half the
    // requests started on the dead instance.
    assert_eq!(dead_and_live(0).await, (10, vec![]));
}

#[tokio::test]
async fn when_every_instance_is_ejected_they_are_still_tried() {
    let registry = memory_registry();
    let flaky_hits = Arc::new(AtomicU64::new(0));
    let counted = flaky_hits.clone();
    // Fails its first three requests, then serves.
    let flaky = Stub::lorem(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 3 {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
            } else {
                axum::Json(serde_json::json!({"message": "lorem"})).into_response()
            }
        }
    })
    .await;
    let _flaky = register_at(&registry, "flaky", flaky.addr.port()).await;
    let client = lorem_client(
        &registry,
        "lorem",
        ejecting_after(3),
        ClientOptions::default(),
    );
    wait_for_ids(client.balancer(), &["flaky"]).await;
    for _ in 0..3 {
        let error = client.lorem(&sentence()).await.expect_err("503");
        assert_tried_the_only_instance_once(&error);
    }
    assert_eq!(client.balancer().ejected(), ["flaky"]);
    // Ejected, but the only one: tried anyway rather than failing fast.
    let lorem = client.lorem(&sentence()).await.expect("served");
    assert_eq!(lorem.instance, "flaky");
    assert!(
        client.balancer().ejected().is_empty(),
        "a success readmits it"
    );
    flaky.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_on_another_instance() {
    let registry = memory_registry();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let broken = Stub::lorem(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }
    })
    .await;
    let _broken = register_at(&registry, "broken", broken.addr.port()).await;
    let live = start_lorem(registry.clone(), "lorem", "live").await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["broken", "live"]).await;

    for _ in 0..6 {
        let lorem = client.lorem(&sentence()).await.expect("5xx is retried");
        assert_eq!(lorem.instance, "live");
    }
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "the broken stub was tried"
    );

    // With only a broken instance left, the request fails after trying it
    // once: a retry never goes back to an instance that failed it.
    live.shutdown().await.expect("clean shutdown");
    wait_for_ids(client.balancer(), &["broken"]).await;
    let before = hits.load(Ordering::SeqCst);
    let error = client
        .lorem(&sentence())
        .await
        .expect_err("every try fails");
    assert_tried_the_only_instance_once(&error);
    assert!(error.to_string().contains("HTTP 500"), "{error}");
    assert!(
        error.to_string().contains("every live instance was tried"),
        "{error}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst) - before,
        1,
        "one try per instance"
    );
    broken.stop().await;
}

#[tokio::test]
async fn client_errors_are_returned_without_retry() {
    let registry = memory_registry();
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let picky = Stub::lorem(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            (
                axum::http::StatusCode::BAD_REQUEST,
                [("x-instance-id", "picky-1")],
                r#"{"error":"nope"}"#,
            )
        }
    })
    .await;
    let registration = register_at(&registry, "picky", picky.addr.port()).await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["picky"]).await;
    let error = client
        .lorem(&sentence())
        .await
        .expect_err("a 400 is an error");
    match &error {
        Error::Rejected {
            instance,
            status,
            message,
            body,
        } => {
            // Named by its registry id, not by its x-instance-id header.
            assert_eq!(
                (instance.as_str(), *status, message.as_str(), body.as_str()),
                ("picky", 400, "nope", r#"{"error":"nope"}"#)
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 4xx is not retried");
    let answer = client
        .client()
        .post(&sentence().path())
        .await
        .expect("a 4xx is an answer");
    assert_eq!((answer.status, answer.retries), (400, 0));
    // The header is kept for debugging, beside the registry id.
    assert_eq!(answer.instance, "picky");
    assert_eq!(answer.reported_id.as_deref(), Some("picky-1"));
    registration.deregister().await.expect("deregister");
    picky.stop().await;

    // A real server refuses a bad range the same way.
    let live = start_lorem(registry.clone(), "lorem", "live").await;
    wait_for_ids(client.balancer(), &["live"]).await;
    let error = client
        .lorem(&LoremRequest::new(Kind::Word, 20, 5))
        .await
        .expect_err("min > max is refused");
    assert!(
        matches!(&error, Error::Rejected { status: 400, instance, .. } if instance == "live"),
        "{error:?}"
    );
    live.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_hung_instance_costs_one_try_timeout() {
    let registry = memory_registry();
    // Accepts connections, never answers.
    let hung = Stub::lorem(|| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        "never"
    })
    .await;
    let _hung = register_at(&registry, "hung", hung.addr.port()).await;
    let live = start_lorem(registry.clone(), "lorem", "live").await;
    let client = lorem_client(
        &registry,
        "lorem",
        BalancerOptions::default(),
        ClientOptions {
            try_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        },
    );
    wait_for_ids(client.balancer(), &["hung", "live"]).await;
    let mut retried = 0;
    for _ in 0..4 {
        let lorem = client
            .lorem(&sentence())
            .await
            .expect("timeouts are retried");
        assert_eq!(lorem.instance, "live");
        retried += lorem.retries;
    }
    assert!(retried >= 1, "the hung instance was tried and timed out");
    live.shutdown().await.expect("clean shutdown");
    drop(hung);
}

#[tokio::test]
async fn a_request_on_an_empty_set_waits_for_an_instance() {
    let registry = memory_registry();
    let client = lorem_client(
        &registry,
        "lorem",
        BalancerOptions {
            wait_timeout: DEADLINE,
            ..BalancerOptions::default()
        },
        ClientOptions::default(),
    );
    assert!(client.balancer().instances().is_empty());
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.lorem(&sentence()).await }
    });
    // The request is parked, not failed, while nothing is registered.
    let balancer = client.balancer().clone();
    common::wait_until("the request parked in the balancer", || {
        let parked = balancer.waiting() == 1;
        async move { parked }
    })
    .await;
    assert!(!waiting.is_finished(), "the request did not wait");
    let server = start_lorem(registry.clone(), "lorem", "late").await;
    let lorem = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the request finishes once an instance registers")
        .expect("no panic")
        .expect("the request succeeds");
    assert_eq!(lorem.instance, "late");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_request_fails_clearly_when_no_instance_appears() {
    let registry = memory_registry();
    let client = lorem_client(
        &registry,
        "nobody",
        BalancerOptions {
            wait_timeout: Duration::from_millis(200),
            ..BalancerOptions::default()
        },
        ClientOptions::default(),
    );
    let error = client
        .lorem(&sentence())
        .await
        .expect_err("nothing to call");
    assert!(error.is_unavailable(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "no instance of service \"nobody\" appeared within 200ms; is a server of it running and registered in the same registry?"
    );
}

#[tokio::test]
async fn the_set_follows_registrations() {
    let registry = memory_registry();
    let balancer = Balancer::new(registry.clone(), "lorem", BalancerOptions::default())
        .expect("a valid service name");
    wait_for_ids(&balancer, &[]).await;
    let x = register_at(&registry, "x", 1001).await;
    wait_for_ids(&balancer, &["x"]).await;
    let y = register_at(&registry, "y", 1002).await;
    // Another service does not leak in.
    let other = registry
        .register(Instance::new("other", "z", "127.0.0.1", 1003))
        .await
        .expect("register");
    wait_for_ids(&balancer, &["x", "y"]).await;
    x.deregister().await.expect("deregister");
    wait_for_ids(&balancer, &["y"]).await;
    // Same id, new port: the set changes.
    let y2 = register_at(&registry, "y", 2002).await;
    let mut set = balancer.subscribe();
    let moved = tokio::time::timeout(DEADLINE, set.wait_for(|s| s.iter().any(|i| i.port == 2002)))
        .await
        .map(|r| r.is_ok());
    assert!(matches!(moved, Ok(true)), "the new port was not seen");
    drop(y);
    y2.deregister().await.expect("deregister");
    wait_for_ids(&balancer, &[]).await;
    other.deregister().await.expect("deregister");
}

#[tokio::test]
async fn an_invalid_service_name_is_refused_at_once() {
    for bad in ["", "a/b", "..", "lorem service"] {
        let error = Balancer::new(memory_registry(), bad, BalancerOptions::default())
            .expect_err("an invalid name is refused");
        assert!(
            matches!(error, client::BalancerError::InvalidOptions(_)),
            "{bad:?}: {error:?}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("service {bad:?} must match")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn absurd_timeouts_are_refused_at_once() {
    // `--wait-timeout 18446744073709551615s` once overflowed an Instant.
    let error = Balancer::new(
        memory_registry(),
        "lorem",
        BalancerOptions {
            wait_timeout: Duration::from_secs(u64::MAX),
            ..BalancerOptions::default()
        },
    )
    .expect_err("a wait timeout over 24h is refused");
    assert!(
        matches!(error, client::BalancerError::InvalidOptions(_)),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the wait timeout must be at most 24h"),
        "{error}"
    );
    // A day is still fine.
    let balancer = Balancer::new(
        memory_registry(),
        "lorem",
        BalancerOptions {
            wait_timeout: MAX_TIMEOUT,
            ..BalancerOptions::default()
        },
    )
    .expect("24h is accepted");

    for (options, what) in [
        (
            ClientOptions {
                try_timeout: Duration::MAX,
                ..ClientOptions::default()
            },
            "the per-try timeout must be at most 24h",
        ),
        (
            ClientOptions {
                retry_percent: 1001,
                ..ClientOptions::default()
            },
            "the retry budget must be from 0 to 1000 percent, got 1001",
        ),
    ] {
        let error = LoremClient::new(balancer.clone(), options).expect_err("refused");
        assert!(matches!(error, Error::InvalidOptions(_)), "{error:?}");
        assert!(error.to_string().contains(what), "{error}");
    }
}

/// A stub that answers 200 with `size` bytes, in one piece with a
/// `Content-Length`, or streamed in 64 KiB chunks without one.
async fn sized_stub(size: usize, streamed: bool) -> Stub {
    Stub::lorem(move || async move {
        if !streamed {
            return axum::body::Body::from(vec![b'x'; size]);
        }
        const CHUNK: usize = 64 * 1024;
        let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
            let length = CHUNK.min(size - i * CHUNK);
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; length]))
        });
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    })
    .await
}

#[tokio::test]
async fn an_oversized_body_is_a_failed_try_retried_elsewhere() {
    let registry = memory_registry();
    // Refused from its Content-Length alone.
    let announced = sized_stub(MAX_BODY_BYTES + 1, false).await;
    // No Content-Length: refused while reading, after the first 1 MiB.
    let streamed = sized_stub(2 * MAX_BODY_BYTES, true).await;
    let announced_reg = register_at(&registry, "announced", announced.addr.port()).await;
    let _streamed = register_at(&registry, "streamed", streamed.addr.port()).await;
    let live = start_lorem(registry.clone(), "lorem", "live").await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["announced", "live", "streamed"]).await;

    let mut retries = 0;
    for _ in 0..6 {
        let lorem = client
            .lorem(&sentence())
            .await
            .expect("an oversized answer is retried on another instance");
        assert_eq!(lorem.instance, "live");
        retries += lorem.retries;
    }
    assert!(
        retries >= 4,
        "both oversized instances were tried: {retries}"
    );

    // With only misbehaving instances left, the request fails clearly.
    live.shutdown().await.expect("clean shutdown");
    announced_reg.deregister().await.expect("deregister");
    wait_for_ids(client.balancer(), &["streamed"]).await;
    let error = client
        .client()
        .post(&sentence().path())
        .await
        .expect_err("every try is oversized");
    assert!(
        matches!(&error, Error::Exhausted { attempts: 1, instance, .. } if instance == "streamed"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("larger than the 1048576-byte limit"),
        "{error}"
    );
    announced.stop().await;
    streamed.stop().await;
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_read_whole() {
    for streamed in [false, true] {
        let registry = memory_registry();
        let stub = sized_stub(MAX_BODY_BYTES, streamed).await;
        let registration = register_at(&registry, "full", stub.addr.port()).await;
        let client = default_client(&registry);
        wait_for_ids(client.balancer(), &["full"]).await;
        let answer = client
            .client()
            .post(&sentence().path())
            .await
            .expect("1 MiB is within the limit");
        assert_eq!(
            (answer.status, answer.body.len(), answer.retries),
            (200, MAX_BODY_BYTES, 0),
            "streamed: {streamed}"
        );
        registration.deregister().await.expect("deregister");
        stub.stop().await;
    }
}

/// A watcher whose stream the test drives by hand.
struct ScriptedWatcher {
    stream: std::sync::Mutex<Option<WatchStream>>,
}

/// Items the balancer has taken from a scripted stream, and how many of
/// them it has finished handling: it polls for the next item only after
/// handling the last one.
#[derive(Default)]
struct Progress {
    taken: AtomicU64,
    handled: AtomicU64,
}

/// A stream over `rx` that records its consumer's [`Progress`].
fn tracked(
    mut rx: futures::channel::mpsc::UnboundedReceiver<registry::Result<Vec<Instance>>>,
    progress: Arc<Progress>,
) -> WatchStream {
    futures::stream::poll_fn(move |cx| {
        // Being polled again means every item taken so far was handled.
        progress
            .handled
            .store(progress.taken.load(Ordering::SeqCst), Ordering::SeqCst);
        let item = rx.poll_next_unpin(cx);
        if let std::task::Poll::Ready(Some(_)) = &item {
            progress.taken.fetch_add(1, Ordering::SeqCst);
        }
        item
    })
    .boxed()
}

#[async_trait::async_trait]
impl Watcher for ScriptedWatcher {
    async fn instances(&self, _service: &str) -> registry::Result<Vec<Instance>> {
        Ok(Vec::new())
    }
    async fn services(&self) -> registry::Result<Vec<String>> {
        Ok(Vec::new())
    }
    fn watch(&self, _service: &str) -> WatchStream {
        self.stream
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| futures::stream::pending().boxed())
    }
}

#[tokio::test]
async fn a_watch_error_keeps_the_last_good_set() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<registry::Result<Vec<Instance>>>();
    let progress = Arc::new(Progress::default());
    let watcher = ScriptedWatcher {
        stream: std::sync::Mutex::new(Some(tracked(rx, progress.clone()))),
    };
    let balancer =
        Balancer::new(watcher, "lorem", BalancerOptions::default()).expect("a valid service name");
    let a = Instance::new("lorem", "a", "127.0.0.1", 1001);
    tx.unbounded_send(Ok(vec![a.clone()])).unwrap();
    wait_for_ids(&balancer, &["a"]).await;
    tx.unbounded_send(Err(registry::Error::Closed { backend: "memory" }))
        .unwrap();
    let b = Instance::new("lorem", "b", "127.0.0.1", 1002);
    // The error is followed by a good snapshot: only that one changes the set.
    tx.unbounded_send(Ok(vec![a.clone(), b])).unwrap();
    wait_for_ids(&balancer, &["a", "b"]).await;
    tx.unbounded_send(Err(registry::Error::Closed { backend: "memory" }))
        .unwrap();
    // Once the fourth item (the second error) is handled, the set must be
    // unchanged.
    common::wait_until("the balancer handled the second error", || {
        let handled = progress.handled.load(Ordering::SeqCst) >= 4;
        async move { handled }
    })
    .await;
    assert_eq!(balancer.instances().len(), 2);
    assert_eq!(
        balancer.pick(&[]).map(|i| i.service),
        Some("lorem".to_owned())
    );
}

#[tokio::test]
async fn an_outage_is_shown_as_staleness_and_ends_with_the_next_snapshot() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<registry::Result<Vec<Instance>>>();
    let progress = Arc::new(Progress::default());
    let watcher = ScriptedWatcher {
        stream: std::sync::Mutex::new(Some(tracked(rx, progress.clone()))),
    };
    let balancer =
        Balancer::new(watcher, "lorem", BalancerOptions::default()).expect("a valid service name");
    assert!(!balancer.freshness().synced);
    let a = Instance::new("lorem", "a", "127.0.0.1", 1001);
    tx.unbounded_send(Ok(vec![a.clone()])).unwrap();
    wait_for_ids(&balancer, &["a"]).await;
    let fresh = balancer.freshness();
    assert!(
        fresh.synced && !fresh.stale && fresh.last_error.is_none(),
        "{fresh:?}"
    );
    tx.unbounded_send(Err(registry::Error::Closed { backend: "etcd" }))
        .unwrap();
    common::wait_until("the balancer saw the outage", || {
        let stale = balancer.freshness().stale;
        async move { stale }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let stale = balancer.freshness();
    assert!(stale.stale_ms >= 30, "{stale:?}");
    assert!(
        stale
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("etcd")),
        "{stale:?}"
    );
    // The last known set is still served.
    assert_eq!(balancer.pick(&[]).map(|i| i.id), Some("a".to_owned()));
    tx.unbounded_send(Ok(vec![a])).unwrap();
    common::wait_until("the outage ended", || {
        let stale = balancer.freshness().stale;
        async move { !stale }
    })
    .await;
    assert_eq!(balancer.freshness().last_error, None);
}

#[tokio::test]
async fn a_set_stale_for_longer_than_the_maximum_is_dropped() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<registry::Result<Vec<Instance>>>();
    let progress = Arc::new(Progress::default());
    let watcher = ScriptedWatcher {
        stream: std::sync::Mutex::new(Some(tracked(rx, progress.clone()))),
    };
    let balancer = Balancer::new(
        watcher,
        "lorem",
        BalancerOptions {
            max_staleness: Duration::from_millis(200),
            wait_timeout: DEADLINE,
            ..BalancerOptions::default()
        },
    )
    .expect("a valid service name");
    let a = Instance::new("lorem", "a", "127.0.0.1", 1001);
    tx.unbounded_send(Ok(vec![a.clone()])).unwrap();
    wait_for_ids(&balancer, &["a"]).await;
    tx.unbounded_send(Err(registry::Error::Closed { backend: "etcd" }))
        .unwrap();
    wait_for_ids(&balancer, &[]).await;
    let freshness = balancer.freshness();
    assert!(freshness.discarded && freshness.stale, "{freshness:?}");
    // A request now waits for the registry rather than failing...
    let waiting = tokio::spawn({
        let balancer = balancer.clone();
        async move { balancer.next(&[]).await }
    });
    common::wait_until("the request parked", || {
        let parked = balancer.waiting() == 1;
        async move { parked }
    })
    .await;
    // ...and the set comes back with the registry.
    tx.unbounded_send(Ok(vec![a])).unwrap();
    let picked = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the request ends")
        .expect("no panic")
        .expect("an instance");
    assert_eq!(picked.id, "a");
    let freshness = balancer.freshness();
    assert!(!freshness.discarded && !freshness.stale, "{freshness:?}");
}

#[tokio::test]
async fn a_spent_retry_budget_refuses_costly_retries_but_not_free_ones() {
    let registry = memory_registry();
    let broken = Stub::lorem(|| async { (axum::http::StatusCode::BAD_GATEWAY, "down") }).await;
    let _broken = register_at(&registry, "a-broken", broken.addr.port()).await;
    let live = start_lorem(registry.clone(), "lorem", "b-live").await;
    // No budget at all: 0% and no floor.
    let no_budget = ClientOptions {
        retry_percent: 0,
        min_retries_per_sec: 0,
        ..ClientOptions::default()
    };
    let client = lorem_client(&registry, "lorem", ejecting_after(0), no_budget.clone());
    wait_for_ids(client.balancer(), &["a-broken", "b-live"]).await;
    // Round-robin starts on a-broken: its 502 would need a costly retry.
    let error = client.lorem(&sentence()).await.expect_err("no budget");
    assert!(
        matches!(
            error,
            Error::Exhausted {
                attempts: 1,
                gave_up: GaveUp::Budget,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("the retry budget is spent"),
        "{error}"
    );
    broken.stop().await;
    // A refused connection is retried all the same: it costs nothing.
    let dead = register_at(&registry, "a-dead", closed_port().await).await;
    let client = lorem_client(&registry, "lorem", ejecting_after(0), no_budget);
    wait_for_ids(client.balancer(), &["a-broken", "a-dead", "b-live"]).await;
    let mut served = 0;
    for _ in 0..3 {
        // a-broken is a closed port now too: both refuse at once.
        let lorem = client.lorem(&sentence()).await.expect("free retries");
        assert_eq!(lorem.instance, "b-live");
        served += 1;
    }
    assert_eq!(served, 3);
    dead.deregister().await.expect("deregister");
    live.shutdown().await.expect("clean shutdown");
}
