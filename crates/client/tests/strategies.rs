//! How each balancing strategy spreads requests, on a fixed seed, over the
//! in-process registry.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use client::{Balancer, BalancerOptions, ClientOptions, Kind, LoremClient, LoremRequest, Strategy};
use common::{Stub, memory_registry, wait_for_ids};
use registry::{Instance, MemoryRegistry, Registrar, Registration};

/// Registers `(id, weight)` pairs at an address nothing listens on: picking
/// never connects.
async fn register_weighted(registry: &MemoryRegistry, ids: &[(&str, u32)]) -> Vec<Registration> {
    let mut registrations = Vec::new();
    for (id, weight) in ids {
        let instance = Instance::new("lorem", *id, "127.0.0.1", 9).with_weight(*weight);
        registrations.push(registry.register(instance).await.expect("register"));
    }
    registrations
}

fn balancer(registry: &MemoryRegistry, strategy: Strategy, seed: u64) -> Balancer {
    Balancer::new(
        registry.clone(),
        "lorem",
        BalancerOptions {
            strategy,
            seed: Some(seed),
            ..BalancerOptions::default()
        },
    )
    .expect("a valid service name")
}

fn picks(balancer: &Balancer, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let id = balancer.pick(&[]).expect("an instance").id;
        *counts.entry(id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn random_is_about_uniform_and_the_same_for_the_same_seed() {
    let registry = memory_registry();
    let _held = register_weighted(&registry, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)]).await;
    let first = balancer(&registry, Strategy::Random, 42);
    wait_for_ids(&first, &["a", "b", "c", "d"]).await;
    let counts = picks(&first, 4000);
    for (id, count) in &counts {
        // 1000 expected each; the binomial spread is about +-30.
        assert!((850..=1150).contains(count), "{id}: {counts:?}");
    }
    // The same seed makes the same choices.
    let second = balancer(&registry, Strategy::Random, 42);
    wait_for_ids(&second, &["a", "b", "c", "d"]).await;
    let sequence = |b: &Balancer| -> Vec<String> {
        (0..50)
            .map(|_| b.pick(&[]).expect("an instance").id)
            .collect()
    };
    let third = balancer(&registry, Strategy::Random, 42);
    wait_for_ids(&third, &["a", "b", "c", "d"]).await;
    assert_eq!(sequence(&second), sequence(&third));
}

#[tokio::test]
async fn weights_of_one_to_three_give_a_one_to_three_split() {
    let registry = memory_registry();
    let _held = register_weighted(&registry, &[("light", 1), ("heavy", 3)]).await;
    let balancer = balancer(&registry, Strategy::Weighted, 1);
    wait_for_ids(&balancer, &["heavy", "light"]).await;
    let counts = picks(&balancer, 400);
    // Smooth weighted round-robin is exact over whole rounds.
    assert_eq!(counts["light"], 100, "{counts:?}");
    assert_eq!(counts["heavy"], 300, "{counts:?}");
}

#[tokio::test]
async fn round_robin_ignores_weights() {
    let registry = memory_registry();
    let _held = register_weighted(&registry, &[("light", 1), ("heavy", 3)]).await;
    let balancer = balancer(&registry, Strategy::RoundRobin, 1);
    wait_for_ids(&balancer, &["heavy", "light"]).await;
    let counts = picks(&balancer, 400);
    assert_eq!((counts["light"], counts["heavy"]), (200, 200));
}

/// A lorem stub that takes `delay` to answer, naming itself `id`.
async fn slow_stub(id: &'static str, delay: Duration) -> Stub {
    Stub::lorem(move || async move {
        tokio::time::sleep(delay).await;
        (
            [("x-instance-id", id)],
            axum::Json(serde_json::json!({ "message": "lorem ipsum" })),
        )
    })
    .await
}

/// Sends `n` requests, `concurrency` at a time, and counts who served them.
async fn spread(client: &LoremClient, n: usize, concurrency: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let request = LoremRequest::new(Kind::Word, 3, 5);
    for _ in 0..n / concurrency {
        let batch: Vec<_> = (0..concurrency)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.lorem(&request).await })
            })
            .collect();
        for task in batch {
            let lorem = task.await.expect("no panic").expect("served");
            *counts.entry(lorem.instance).or_default() += 1;
        }
    }
    counts
}

async fn p2c_against_a_slow_instance(strategy: Strategy) -> BTreeMap<String, usize> {
    let registry = memory_registry();
    let fast = slow_stub("fast", Duration::ZERO).await;
    let slow = slow_stub("slow", Duration::from_millis(30)).await;
    let _fast = common::register_at(&registry, "fast", fast.addr.port()).await;
    let _slow = common::register_at(&registry, "slow", slow.addr.port()).await;
    let balancer = balancer(&registry, strategy, 7);
    wait_for_ids(&balancer, &["fast", "slow"]).await;
    let client = LoremClient::new(balancer, ClientOptions::default()).expect("valid options");
    let counts = spread(&client, 200, 4).await;
    fast.stop().await;
    slow.stop().await;
    counts
}

#[tokio::test]
async fn p2c_sends_less_to_an_instance_slowed_by_an_injected_delay() {
    let p2c = p2c_against_a_slow_instance(Strategy::P2c).await;
    let round_robin = p2c_against_a_slow_instance(Strategy::RoundRobin).await;
    let share = |counts: &BTreeMap<String, usize>| {
        let slow = counts.get("slow").copied().unwrap_or(0);
        slow as f64 / counts.values().sum::<usize>() as f64
    };
    // Round-robin gives the slow one half; p2c learns its latency and its
    // queue and sends it a small share (well under a quarter).
    assert!((share(&round_robin) - 0.5).abs() < 0.02, "{round_robin:?}");
    println!("p2c {p2c:?} vs round-robin {round_robin:?}");
    assert!(
        share(&p2c) < 0.25,
        "p2c {p2c:?} vs round-robin {round_robin:?}"
    );
    assert!(
        p2c.get("slow").copied().unwrap_or(0) > 0,
        "p2c still probes it: {p2c:?}"
    );
}
