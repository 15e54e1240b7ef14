//! `load` and `loop` in-process against real lorem servers.

mod common;

use std::time::Duration;

use client::LoremRequest;
use client::load::{self, LoadOptions};
use client::repeat::{self, RepeatOptions};
use common::{Stub, default_client, memory_registry, register_at, start_lorem, wait_for_ids};

#[tokio::test]
async fn load_reports_counts_latency_and_spread() {
    let registry = memory_registry();
    let a = start_lorem(registry.clone(), "lorem", "a").await;
    let b = start_lorem(registry.clone(), "lorem", "b").await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["a", "b"]).await;

    let report = load::run(
        &client,
        &LoadOptions {
            requests: Some(200),
            duration: Some(Duration::from_secs(60)),
            concurrency: 4,
            ..LoadOptions::default()
        },
    )
    .await
    .expect("valid options");
    assert_eq!((report.ok, report.failed), (200, 0), "{report}");
    assert_eq!(report.per_instance.values().sum::<u64>(), 200);
    assert_eq!(report.per_instance.len(), 2, "{report}");
    for count in report.per_instance.values() {
        assert!(*count >= 80, "round-robin spreads the load: {report}");
    }
    assert!(
        report.p50_ms > 0.0
            && report.p99_ms >= report.p50_ms
            && report.p999_ms >= report.p99_ms
            && report.max_ms >= report.p999_ms,
        "{report}"
    );
    assert!(report.to_string().contains(" p99.9="), "{report}");
    assert!(report.to_string().contains(" max="), "{report}");
    assert!(report.rps > 0.0);

    // A duration bound alone stops the run too.
    let report = load::run(
        &client,
        &LoadOptions {
            requests: None,
            duration: Some(Duration::from_millis(300)),
            concurrency: 2,
            ..LoadOptions::default()
        },
    )
    .await
    .expect("valid options");
    assert!(report.ok > 0 && report.failed == 0, "{report}");

    let error = load::run(
        &client,
        &LoadOptions {
            requests: None,
            duration: None,
            ..LoadOptions::default()
        },
    )
    .await
    .expect_err("one bound is required");
    assert!(error.to_string().contains("--requests"), "{error}");

    let summary = repeat::run(
        &client,
        &RepeatOptions {
            interval: Duration::from_millis(10),
            count: Some(4),
            request: LoremRequest::default(),
        },
    )
    .await;
    assert_eq!((summary.ok, summary.failed), (4, 0));

    a.shutdown().await.expect("clean shutdown");
    b.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn per_instance_counts_by_registry_id_not_by_header() {
    let registry = memory_registry();
    // Registered as "real", but names itself "impostor" in x-instance-id.
    let stub = Stub::lorem(|| async {
        (
            [("x-instance-id", "impostor")],
            axum::Json(serde_json::json!({ "message": "lorem ipsum" })),
        )
    })
    .await;
    let registration = register_at(&registry, "real", stub.addr.port()).await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["real"]).await;
    let report = load::run(
        &client,
        &LoadOptions {
            requests: Some(10),
            duration: None,
            concurrency: 2,
            ..LoadOptions::default()
        },
    )
    .await
    .expect("valid options");
    assert_eq!((report.ok, report.failed), (10, 0), "{report}");
    assert_eq!(
        report.per_instance.into_iter().collect::<Vec<_>>(),
        [("real".to_owned(), 10)]
    );
    registration.deregister().await.expect("deregister");
    stub.stop().await;
}

#[tokio::test]
async fn a_rate_paces_the_requests_and_a_stop_ends_the_run_with_its_report() {
    let registry = memory_registry();
    let a = start_lorem(registry.clone(), "lorem", "a").await;
    let client = default_client(&registry);
    wait_for_ids(client.balancer(), &["a"]).await;
    let load = common::paced_load(&client, 50);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report}");
    // 50 per second for about half a second: a count, not a timing.
    assert!(report.ok >= 5 && report.ok <= 60, "{report}");
    assert_eq!(report.instances, ["a"]);
    assert_eq!(report.set_changes.len(), 1, "{report:?}");
    assert_eq!(report.set_changes[0].instances, ["a"]);
    let refused = load::run(
        &client,
        &LoadOptions {
            rate: Some(0),
            ..LoadOptions::default()
        },
    )
    .await
    .expect_err("a zero rate is refused");
    assert!(
        refused
            .to_string()
            .contains("at least 1 request per second"),
        "{refused}"
    );
    a.shutdown().await.expect("clean shutdown");
}
