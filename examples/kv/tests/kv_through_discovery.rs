//! The key-value example through discovery: two instances registered in
//! the in-process registry, PUT then GET round-trips through the
//! discovery-aware client, and both instances serve.

use std::collections::BTreeSet;
use std::time::Duration;

use kv_example::{KvClient, Store};
use registry::MemoryRegistry;
use serde_json::json;

#[tokio::test]
async fn put_then_get_round_trips_over_two_discovered_instances() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let store = Store::default();
    let one = kv_example::serve(registry.clone(), store.clone(), "kv", "kv-1")
        .await
        .expect("kv-1 starts");
    let two = kv_example::serve(registry.clone(), store, "kv", "kv-2")
        .await
        .expect("kv-2 starts");
    one.readiness().registered().await;
    two.readiness().registered().await;

    let client = KvClient::new(registry.clone(), "kv").expect("a kv client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.http().instances().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never saw both kv instances"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut served = BTreeSet::new();
    for i in 0..6 {
        let key = format!("key-{i}");
        let value = json!({"n": i, "tags": ["a", "b"]});
        served.insert(client.put(&key, &value).await.expect("PUT"));
        let (read, from) = client.get_from(&key).await.expect("GET");
        assert_eq!(read, Some(value), "GET {key} returns what was PUT");
        served.insert(from);
    }
    assert_eq!(
        served,
        BTreeSet::from(["kv-1".to_owned(), "kv-2".to_owned()]),
        "both instances served calls"
    );
    assert_eq!(client.get("missing").await.expect("GET missing"), None);

    one.shutdown().await.expect("kv-1 stops cleanly");
    two.shutdown().await.expect("kv-2 stops cleanly");
    assert!(
        registry::Watcher::instances(&registry, "kv")
            .await
            .expect("read the registry")
            .is_empty(),
        "both instances deregistered"
    );
}
