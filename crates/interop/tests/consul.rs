//! Consul shared with go-kit v0.13 `sd/consul` (both ways), Kratos' Consul
//! reader and Spring Cloud Consul's `Meta.secure`, against a real Consul
//! agent.

mod common;

use std::sync::{Mutex, OnceLock};

use common::{hold, interop, list, ours, peers, wait_instances};
use registry::interop::Payload;
use registry::{BackendConfig, Instance, consul};
use testkit::{ConsulAgent, RegistryServer};

/// One Consul dev agent for the whole file (every test uses its own
/// service names); testkit's watchdog stops it when the test process ends.
fn consul() -> String {
    static AGENT: OnceLock<Mutex<ConsulAgent>> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            Mutex::new(
                ConsulAgent::start()
                    .expect("start Consul (scripts/build-consul.sh builds it; or set CONSUL_BIN)"),
            )
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .registry_addr()
}

fn config(interop: registry::interop::Interop) -> BackendConfig {
    BackendConfig::Consul(consul::Config {
        addr: vec![consul()],
        interop,
        ..consul::Config::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_kit_consul_both_ways() {
    let consul = consul();
    let peers = peers();
    let _held = hold(
        peers.go(&[
            "gokit-consul-register",
            &consul,
            "gk-a",
            "gk-a-1",
            "127.0.0.1",
            "18087",
            "lorem,ru-rocker",
            "zone=eu",
        ]),
        "go-kit consul register",
    );
    let plain = ours(config(Default::default())).await;
    assert_eq!(
        wait_instances(&plain, "gk-a", 1).await,
        vec![
            Instance::new("gk-a", "gk-a-1", "127.0.0.1", 18087)
                .with_tag("lorem")
                .with_tag("ru-rocker")
                .with_metadata("zone", "eu")
        ]
    );

    // go-kit's instancer filters by tags (passing instances only).
    let _registration = plain
        .register(Instance::new("gk-b", "gk-b:1", "127.0.0.1", 18097).with_tag("lorem"))
        .await
        .expect("register ours");
    let seen = list(
        peers.go(&["gokit-consul-list", &consul, "gk-b", "lorem", "1"]),
        "go-kit consul instancer",
    );
    assert_eq!(seen, serde_json::json!(["127.0.0.1:18097"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kratos_registrations_are_found_by_us() {
    let consul = consul();
    let _held = hold(
        peers().go(&[
            "kratos-consul-register",
            &consul,
            "k1",
            "kr-d",
            "v1",
            "zone=eu",
            "http://127.0.0.1:18088,grpc://127.0.0.1:19088",
        ]),
        "Kratos consul register",
    );
    let plain = ours(config(Default::default())).await;
    assert_eq!(
        wait_instances(&plain, "kr-d", 1).await,
        vec![
            Instance::new("kr-d", "k1", "127.0.0.1", 18088)
                .with_tag("version=v1")
                .with_metadata("zone", "eu")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kratos_and_spring_conventions_on_consul() {
    let consul = consul();
    let registry = ours(config(interop(|i| {
        i.kratos = true;
        i.payload = Payload::Spring;
    })))
    .await;
    let _registration = registry
        .register(
            Instance::new("kr-c", "o1", "127.0.0.1", 18098)
                .with_metadata("zone", "eu")
                .with_metadata("version", "v3"),
        )
        .await
        .expect("register ours");
    let seen = list(
        peers().go(&["kratos-consul-list", &consul, "kr-c", "1"]),
        "Kratos consul read",
    );
    assert_eq!(seen.as_array().map(Vec::len), Some(1), "{seen}");
    assert_eq!(seen[0]["id"], "o1", "{seen}");
    assert_eq!(seen[0]["version"], "v3", "{seen}");
    assert_eq!(
        seen[0]["endpoints"],
        serde_json::json!(["http://127.0.0.1:18098"]),
        "{seen}"
    );
    assert_eq!(seen[0]["metadata"]["zone"], "eu", "{seen}");
    // Spring Cloud Consul's `secure`, as the catalog holds it.
    let catalog = list(
        peers().go(&["consul-meta", &consul, "kr-c"]),
        "Consul catalog",
    );
    assert_eq!(catalog[0]["meta"]["secure"], "false", "{catalog}");
}
