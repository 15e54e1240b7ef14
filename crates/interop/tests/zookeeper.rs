//! ZooKeeper shared with Curator x-discovery 5.7.1, Spring Cloud Zookeeper
//! 4.1.2, go-kit v0.13 `sd/zk` and Kratos records, both ways, against a real
//! ZooKeeper; and a service with one Curator-registered and one of our
//! instances, balanced over by our client.

mod common;

use std::sync::{Mutex, OnceLock};

use common::{balance, hold, interop, list, list_fails, lorem_server, ours, peers, wait_instances};
use registry::interop::{Layout, Payload};
use registry::{BackendConfig, Instance, zookeeper};
use testkit::{RegistryServer, ZkServer};

/// One ZooKeeper for the whole file (every test uses its own service
/// names); testkit's watchdog stops it when the test process ends.
fn zk() -> String {
    static ZK: OnceLock<Mutex<ZkServer>> = OnceLock::new();
    ZK.get_or_init(|| {
        Mutex::new(ZkServer::start().expect("start ZooKeeper (see testkit for how to install it)"))
    })
    .lock()
    .unwrap_or_else(std::sync::PoisonError::into_inner)
    .registry_addr()
}

fn config(prefix: &str, interop: registry::interop::Interop) -> BackendConfig {
    BackendConfig::Zookeeper(zookeeper::Config {
        addr: vec![zk()],
        prefix: prefix.to_owned(),
        interop,
        ..zookeeper::Config::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_registrations_are_found_by_us() {
    let zk = zk();
    let peers = peers();
    let _held = hold(
        peers.curator(&[
            "register",
            &zk,
            "/services",
            "cur-a",
            "c1",
            "127.0.0.1",
            "18081",
            "zone=eu",
        ]),
        "Curator register",
    );
    let ours = ours(config("/services", Default::default())).await;
    let found = wait_instances(&ours, "cur-a", 1).await;
    assert_eq!(
        found,
        vec![Instance::new("cur-a", "c1", "127.0.0.1", 18081).with_metadata("zone", "eu")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_are_found_by_curator_with_name_address_and_port() {
    let zk = zk();
    let ours = ours(config("/services", Default::default())).await;
    let _registration = ours
        .register(Instance::new("cur-b", "ours:1", "127.0.0.1", 18090).with_metadata("zone", "eu"))
        .await
        .expect("register ours");
    let seen = list(
        peers().curator(&["list", &zk, "/services", "cur-b", "1"]),
        "Curator list",
    );
    assert_eq!(seen.as_array().map(Vec::len), Some(1), "{seen}");
    let one = &seen[0];
    assert_eq!(one["name"], "cur-b", "{seen}");
    assert_eq!(one["id"], "ours:1", "{seen}");
    assert_eq!(one["address"], "127.0.0.1", "{seen}");
    assert_eq!(one["port"], 18090, "{seen}");
    assert_eq!(one["serviceType"], "DYNAMIC", "{seen}");
    assert!(one["payload"].is_null(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spring_registrations_are_found_by_us_with_their_metadata() {
    let zk = zk();
    let _held = hold(
        peers().spring(&[
            "register",
            &zk,
            "/services",
            "spring-a",
            "5c3a8f2e-6b1d-4e0f-9a7c-2d4b6e8f0a1c",
            "127.0.0.1",
            "18083",
            "zone=eu",
        ]),
        "Spring register",
    );
    let ours = ours(config("/services", Default::default())).await;
    let found = wait_instances(&ours, "spring-a", 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let one = &found[0];
    assert_eq!(one.id, "5c3a8f2e-6b1d-4e0f-9a7c-2d4b6e8f0a1c");
    assert_eq!((one.address.as_str(), one.port), ("127.0.0.1", 18083));
    assert_eq!(
        one.metadata.get("zone").map(String::as_str),
        Some("eu"),
        "{one:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_are_found_by_spring_with_metadata_under_the_spring_payload() {
    let zk = zk();
    let spring = ours(config(
        "/services",
        interop(|i| i.payload = Payload::Spring),
    ))
    .await;
    let _with = spring
        .register(Instance::new("spring-b", "s1", "127.0.0.1", 18091).with_metadata("zone", "eu"))
        .await
        .expect("register ours with the spring payload");
    let plain = ours(config("/services", Default::default())).await;
    let _without = plain
        .register(Instance::new("spring-b", "s2", "127.0.0.1", 18092).with_metadata("zone", "us"))
        .await
        .expect("register ours without a payload");
    let seen = list(
        peers().spring(&["list", &zk, "/services", "spring-b", "2"]),
        "Spring DiscoveryClient",
    );
    let rows = seen.as_array().expect("an array");
    assert_eq!(rows.len(), 2, "{seen}");
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["instanceId"] == id)
            .unwrap_or_else(|| panic!("{id} in {seen}"))
    };
    let s1 = row("s1");
    assert_eq!(s1["serviceId"], "spring-b", "{seen}");
    assert_eq!(s1["host"], "127.0.0.1", "{seen}");
    assert_eq!(s1["port"], 18091, "{seen}");
    assert_eq!(s1["metadata"]["zone"], "eu", "{seen}");
    // Without the payload Spring still lists it, with no metadata.
    let s2 = row("s2");
    assert_eq!(
        (s2["host"].as_str(), s2["port"].as_u64()),
        (Some("127.0.0.1"), Some(18092)),
        "{seen}"
    );
}

// Why the Spring payload is opt-in: a plain Curator reader (without
// Spring's class) fails on the whole service once one record carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spring_payload_breaks_plain_curator_readers() {
    let zk = zk();
    let spring = ours(config(
        "/services",
        interop(|i| i.payload = Payload::Spring),
    ))
    .await;
    let _registration = spring
        .register(Instance::new("cur-c", "s1", "127.0.0.1", 18099))
        .await
        .expect("register ours with the spring payload");
    let stderr = list_fails(
        peers().curator(&["list", &zk, "/services", "cur-c", "1"]),
        "Curator list",
    );
    assert!(stderr.contains("ZookeeperInstance"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_kit_zk_both_ways() {
    let zk = zk();
    let peers = peers();
    // Theirs: a protected ephemeral sequential node holding host:port.
    let _held = hold(
        peers.go(&[
            "gokit-zk-register",
            &zk,
            "/services",
            "gk-a",
            "127.0.0.1:18082",
        ]),
        "go-kit zk register",
    );
    let plain = ours(config("/services", Default::default())).await;
    let found = wait_instances(&plain, "gk-a", 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].id.starts_with("_c_"), "{found:?}");
    assert_eq!(
        (found[0].address.as_str(), found[0].port),
        ("127.0.0.1", 18082)
    );

    // Ours, in go-kit's layout: its instancer hands out host:port.
    let gokit = ours(config("/services", interop(|i| i.layout = Layout::Gokit))).await;
    let _registration = gokit
        .register(Instance::new("gk-b", "127.0.0.1:18093", "127.0.0.1", 18093))
        .await
        .expect("register ours");
    let seen = list(
        peers.go(&["gokit-zk-list", &zk, "/services/gk-b", "1"]),
        "go-kit zk instancer",
    );
    assert_eq!(seen, serde_json::json!(["127.0.0.1:18093"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kratos_zk_both_ways() {
    let zk = zk();
    let peers = peers();
    let _held = hold(
        peers.go(&[
            "kratos-zk-register",
            &zk,
            "/microservices",
            "k1",
            "kr-a",
            "v1",
            "zone=eu",
            "http://127.0.0.1:18084,grpc://127.0.0.1:19084",
        ]),
        "Kratos zk register",
    );
    let reader = ours(config("/microservices", Default::default())).await;
    let found = wait_instances(&reader, "kr-a", 1).await;
    assert_eq!(
        found,
        vec![
            Instance::new("kr-a", "k1", "127.0.0.1", 18084)
                .with_metadata("zone", "eu")
                .with_metadata("version", "v1")
        ]
    );
    let grpc = ours(config(
        "/microservices",
        interop(|i| i.kratos_scheme = "grpc".into()),
    ))
    .await;
    assert_eq!(wait_instances(&grpc, "kr-a", 1).await[0].port, 19084);

    let writer = ours(config("/microservices", interop(|i| i.kratos = true))).await;
    let _registration = writer
        .register(
            Instance::new("kr-b", "o1", "127.0.0.1", 18094)
                .with_metadata("zone", "eu")
                .with_metadata("version", "v2"),
        )
        .await
        .expect("register ours");
    let seen = list(
        peers.go(&["kratos-zk-list", &zk, "/microservices", "kr-b", "1"]),
        "Kratos zk read",
    );
    assert_eq!(seen[0]["id"], "o1", "{seen}");
    assert_eq!(seen[0]["name"], "kr-b", "{seen}");
    assert_eq!(seen[0]["version"], "v2", "{seen}");
    assert_eq!(
        seen[0]["endpoints"],
        serde_json::json!(["http://127.0.0.1:18094"]),
        "{seen}"
    );
    assert_eq!(seen[0]["metadata"]["zone"], "eu", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_of_curator_and_our_instances_is_balanced_over_both() {
    let zk = zk();
    let theirs = lorem_server("curator-1").await;
    let mine = lorem_server("ours-1").await;
    let _held = hold(
        peers().curator(&[
            "register",
            &zk,
            "/services",
            "lorem-mixed",
            "curator-1",
            "127.0.0.1",
            &theirs.to_string(),
            "",
        ]),
        "Curator register",
    );
    let registry = ours(config("/services", Default::default())).await;
    let _registration = registry
        .register(Instance::new("lorem-mixed", "ours-1", "127.0.0.1", mine))
        .await
        .expect("register ours");
    let answers = balance(registry, "lorem-mixed", 2, 40).await;
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        ["curator-1", "ours-1"],
        "{answers:?}"
    );
}
