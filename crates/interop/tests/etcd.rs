//! etcd shared with go-kit v0.13 `sd/etcdv3` and Kratos records, both ways,
//! against a real etcd; and a service of one go-kit-registered and one of
//! our instances, balanced over by our client.

mod common;

use std::sync::{Mutex, OnceLock};

use common::{
    balance, hold, interop, list, lorem_server, lorem_server_named, ours, peers, wait_instances,
};
use registry::interop::Layout;
use registry::{BackendConfig, Instance, etcd};
use testkit::{EtcdServer, RegistryServer};

/// One etcd for the whole file (every test uses its own service names);
/// testkit's watchdog stops it when the test process ends.
fn etcd() -> String {
    static ETCD: OnceLock<Mutex<EtcdServer>> = OnceLock::new();
    ETCD.get_or_init(|| {
        Mutex::new(EtcdServer::start().expect("start etcd (see testkit for how to install it)"))
    })
    .lock()
    .unwrap_or_else(std::sync::PoisonError::into_inner)
    .registry_addr()
}

fn config(prefix: &str, interop: registry::interop::Interop) -> BackendConfig {
    BackendConfig::Etcd(etcd::Config {
        addr: vec![etcd()],
        prefix: prefix.to_owned(),
        interop,
        ..etcd::Config::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_kit_etcd_both_ways() {
    let etcd = etcd();
    let peers = peers();
    // Theirs: go-kit's usual key and plain value, on its lease.
    let _held = hold(
        peers.go(&[
            "gokit-etcd-register",
            &etcd,
            "/services/gk-a/127.0.0.1:18085",
            "127.0.0.1:18085",
        ]),
        "go-kit etcd register",
    );
    let plain = ours(config("/services", Default::default())).await;
    assert_eq!(
        wait_instances(&plain, "gk-a", 1).await,
        vec![Instance::new("gk-a", "127.0.0.1:18085", "127.0.0.1", 18085)]
    );

    // Ours in go-kit's layout, found by its instancer.
    let gokit = ours(config("/services", interop(|i| i.layout = Layout::Gokit))).await;
    let _registration = gokit
        .register(Instance::new("gk-b", "127.0.0.1:18095", "127.0.0.1", 18095))
        .await
        .expect("register ours");
    let seen = list(
        peers.go(&["gokit-etcd-list", &etcd, "/services/gk-b/", "1"]),
        "go-kit etcdv3 instancer",
    );
    assert_eq!(seen, serde_json::json!(["127.0.0.1:18095"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kratos_etcd_both_ways() {
    let etcd = etcd();
    let peers = peers();
    let _held = hold(
        peers.go(&[
            "kratos-etcd-register",
            &etcd,
            "/microservices",
            "k1",
            "kr-a",
            "v1",
            "zone=eu",
            "http://127.0.0.1:18086,grpc://127.0.0.1:19086",
        ]),
        "Kratos etcd register",
    );
    let reader = ours(config("/microservices", Default::default())).await;
    assert_eq!(
        wait_instances(&reader, "kr-a", 1).await,
        vec![
            Instance::new("kr-a", "k1", "127.0.0.1", 18086)
                .with_metadata("zone", "eu")
                .with_metadata("version", "v1")
        ]
    );
    let grpc = ours(config(
        "/microservices",
        interop(|i| i.kratos_scheme = "grpc".into()),
    ))
    .await;
    assert_eq!(wait_instances(&grpc, "kr-a", 1).await[0].port, 19086);

    let writer = ours(config("/microservices", interop(|i| i.kratos = true))).await;
    let _registration = writer
        .register(
            Instance::new("kr-b", "o1", "127.0.0.1", 18096)
                .with_metadata("zone", "eu")
                .with_metadata("version", "v2"),
        )
        .await
        .expect("register ours");
    let seen = list(
        peers.go(&["kratos-etcd-list", &etcd, "/microservices", "kr-b", "1"]),
        "Kratos etcd read",
    );
    assert_eq!(seen.as_array().map(Vec::len), Some(1), "{seen}");
    assert_eq!(seen[0]["id"], "o1", "{seen}");
    assert_eq!(seen[0]["name"], "kr-b", "{seen}");
    assert_eq!(seen[0]["version"], "v2", "{seen}");
    assert_eq!(
        seen[0]["endpoints"],
        serde_json::json!(["http://127.0.0.1:18096"]),
        "{seen}"
    );
    assert_eq!(seen[0]["metadata"]["zone"], "eu", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_of_go_kit_and_our_instances_is_balanced_over_both() {
    let etcd = etcd();
    // The id of a go-kit instance is its key's last segment: host:port.
    let theirs = lorem_server_named(|port| format!("127.0.0.1:{port}")).await;
    let their_id = format!("127.0.0.1:{theirs}");
    let mine = lorem_server("ours-1").await;
    let _held = hold(
        peers().go(&[
            "gokit-etcd-register",
            &etcd,
            &format!("/services/lorem-mixed/{their_id}"),
            &their_id,
        ]),
        "go-kit etcd register",
    );
    let registry = ours(config("/services", Default::default())).await;
    let _registration = registry
        .register(Instance::new("lorem-mixed", "ours-1", "127.0.0.1", mine))
        .await
        .expect("register ours");
    let answers = balance(registry, "lorem-mixed", 2, 40).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers.contains_key("ours-1") && answers.contains_key(&their_id),
        "{answers:?}"
    );
}
