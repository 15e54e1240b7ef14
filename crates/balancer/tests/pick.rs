//! The pick-with-feedback API, selection and zone preference, over the
//! in-process registry (picking never connects: the addresses need no
//! server).

use std::collections::BTreeMap;
use std::time::Duration;

use balancer::{
    Balancer, BalancerOptions, EjectionOptions, FailureKind, Metrics, Selector, ZonePreference,
};
use registry::{Instance, MemoryRegistry, Registrar, Registration};

const DEADLINE: Duration = Duration::from_secs(20);

async fn register(registry: &MemoryRegistry, instance: Instance) -> Registration {
    registry.register(instance).await.expect("register")
}

fn instance(id: &str) -> Instance {
    Instance::new("lorem", id, "127.0.0.1", 9)
}

async fn wait_for(balancer: &Balancer, n: usize) {
    let mut set = balancer.subscribe();
    tokio::time::timeout(DEADLINE, set.wait_for(|set| set.len() == n))
        .await
        .expect("the set filled in time")
        .expect("the watch lives");
}

fn ids(balancer: &Balancer) -> Vec<String> {
    balancer.instances().iter().map(|i| i.id.clone()).collect()
}

/// Ejection after `n` failures, long enough to outlast the test.
fn ejecting(n: u32) -> EjectionOptions {
    EjectionOptions {
        consecutive_failures: n,
        base: Duration::from_secs(600),
        max: Duration::from_secs(600),
    }
}

#[tokio::test]
async fn a_pick_is_in_flight_until_reported_or_dropped_and_failures_eject() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let _a = register(&registry, instance("a")).await;
    let _b = register(&registry, instance("b")).await;
    let metrics = Metrics::new();
    let balancer = Balancer::with_metrics(
        registry.clone(),
        "lorem",
        BalancerOptions {
            ejection: ejecting(2),
            ..BalancerOptions::default()
        },
        &metrics,
    )
    .expect("valid options");
    wait_for(&balancer, 2).await;

    // Excluding what was tried; nothing left is Ok(None).
    let first = balancer.acquire(&[]).await.unwrap().expect("a pick");
    let other = balancer
        .acquire(&[first.instance().id.clone()])
        .await
        .unwrap()
        .expect("the other one");
    assert_ne!(first.instance().id, other.instance().id);
    assert_eq!(other.authority(), "127.0.0.1:9");
    assert!(
        balancer
            .acquire(&["a".to_owned(), "b".to_owned()])
            .await
            .unwrap()
            .is_none()
    );
    first.success(Duration::from_millis(1));
    drop(other);

    // Two failures of `a` eject it: every pick then goes to `b`.
    for _ in 0..2 {
        let pick = balancer.acquire(&["b".to_owned()]).await.unwrap().unwrap();
        assert_eq!(pick.instance().id, "a");
        pick.failure(FailureKind::WrongInstance, Duration::from_millis(1));
    }
    assert_eq!(balancer.ejected(), ["a"]);
    for _ in 0..4 {
        let pick = balancer.acquire(&[]).await.unwrap().unwrap();
        assert_eq!(pick.instance().id, "b");
    }

    let mut text = String::new();
    let mut exported = prometheus_client::registry::Registry::default();
    metrics.register(&mut exported, "orders_client");
    prometheus_client::encoding::text::encode(&mut text, &exported).unwrap();
    for line in [
        r#"orders_client_tries_failed_total{service="lorem",kind="wrong_instance"} 2"#,
        r#"orders_client_ejections_total{service="lorem"} 1"#,
        r#"orders_client_instances{service="lorem"} 2"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn an_overloaded_instance_backs_off_for_its_retry_after() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let _a = register(&registry, instance("a")).await;
    let _b = register(&registry, instance("b")).await;
    let balancer = Balancer::new(
        registry.clone(),
        "lorem",
        BalancerOptions {
            ejection: ejecting(1),
            ..BalancerOptions::default()
        },
    )
    .expect("valid options");
    wait_for(&balancer, 2).await;
    let pick = balancer.acquire(&["b".to_owned()]).await.unwrap().unwrap();
    pick.overloaded(Some(Duration::from_secs(300)));
    // Out of the candidates, although one failure would eject it: an
    // overload is not a failure.
    assert_eq!(balancer.ejected(), ["a"]);
    for _ in 0..4 {
        assert_eq!(balancer.pick(&[]).map(|i| i.id).as_deref(), Some("b"));
    }
    // A success of a try picked after the back-off began ends it.
    let pick = balancer.acquire(&["b".to_owned()]).await.unwrap().unwrap();
    pick.success(Duration::from_millis(1));
    assert!(balancer.ejected().is_empty());
}

#[tokio::test]
async fn the_selector_keeps_only_instances_with_every_tag_and_pair() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let mut held = Vec::new();
    for (id, tags, version) in [
        ("both", &["lorem", "ru-rocker"][..], "v2"),
        ("one-tag", &["lorem"][..], "v2"),
        ("old", &["lorem", "ru-rocker"][..], "v1"),
        ("bare", &[][..], ""),
    ] {
        let mut instance = instance(id).with_metadata("version", version);
        instance.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        held.push(register(&registry, instance).await);
    }
    let tagged = |metadata: &[(&str, &str)]| BalancerOptions {
        selector: Selector {
            tags: vec!["lorem".into(), "ru-rocker".into()],
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        },
        ..BalancerOptions::default()
    };
    let by_tags = Balancer::new(registry.clone(), "lorem", tagged(&[])).unwrap();
    let by_both = Balancer::new(registry.clone(), "lorem", tagged(&[("version", "v2")])).unwrap();
    let all = Balancer::new(registry.clone(), "lorem", BalancerOptions::default()).unwrap();
    wait_for(&all, 4).await;
    wait_for(&by_tags, 2).await;
    wait_for(&by_both, 1).await;
    assert_eq!(ids(&by_tags), ["both", "old"]);
    assert_eq!(ids(&by_both), ["both"]);
    for _ in 0..4 {
        assert_eq!(by_both.pick(&[]).map(|i| i.id).as_deref(), Some("both"));
    }
}

#[tokio::test]
async fn changes_are_patched_into_the_set_one_by_one_through_the_selector() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let tagged = |id: &str, tag: &str| instance(id).with_tag(tag);
    let a = register(&registry, tagged("a", "v1")).await;
    let _b = register(&registry, tagged("b", "v1")).await;
    let options = BalancerOptions {
        selector: Selector {
            tags: vec!["v1".into()],
            metadata: BTreeMap::new(),
        },
        ..BalancerOptions::default()
    };
    let balancer = Balancer::new(registry.clone(), "lorem", options).unwrap();
    wait_for(&balancer, 2).await;
    // Added: selected or not.
    let _c = register(&registry, tagged("c", "v1")).await;
    let _x = register(&registry, tagged("x", "v2")).await;
    wait_for(&balancer, 3).await;
    assert_eq!(ids(&balancer), ["a", "b", "c"]);
    // Changed out of the selection, then removed.
    let _b = register(&registry, tagged("b", "v2")).await;
    wait_for(&balancer, 2).await;
    assert_eq!(ids(&balancer), ["a", "c"]);
    a.deregister().await.unwrap();
    wait_for(&balancer, 1).await;
    assert_eq!(ids(&balancer), ["c"]);
    // Changed into the selection.
    let _x = register(&registry, tagged("x", "v1")).await;
    wait_for(&balancer, 2).await;
    assert_eq!(ids(&balancer), ["c", "x"]);
    assert_eq!(
        balancer.pick(&["c".to_owned()]).map(|i| i.id).as_deref(),
        Some("x")
    );
}

#[tokio::test]
async fn the_local_zone_is_preferred_while_half_of_it_is_healthy() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let mut held = Vec::new();
    for (id, zone) in [
        ("eu-1", "eu"),
        ("eu-2", "eu"),
        ("eu-3", "eu"),
        ("us-1", "us"),
    ] {
        held.push(register(&registry, instance(id).with_metadata("zone", zone)).await);
    }
    let balancer = Balancer::new(
        registry.clone(),
        "lorem",
        BalancerOptions {
            zone: Some(ZonePreference::new("eu")),
            ejection: ejecting(1),
            ..BalancerOptions::default()
        },
    )
    .unwrap();
    wait_for(&balancer, 4).await;
    let zone_of = |id: &str| id[..2].to_owned();
    let eject = |id: &str| {
        let others: Vec<String> = ids(&balancer).into_iter().filter(|i| i != id).collect();
        let pick = balancer.pick(&others).expect("the instance");
        assert_eq!(pick.id, id);
    };
    let fail = |id: &'static str| {
        let balancer = balancer.clone();
        async move {
            let others: Vec<String> = ids(&balancer).into_iter().filter(|i| i != id).collect();
            let pick = balancer.acquire(&others).await.unwrap().unwrap();
            pick.failure(FailureKind::Unreachable, Duration::from_millis(1));
        }
    };
    // All three local ones healthy: only eu.
    for _ in 0..9 {
        assert_eq!(zone_of(&balancer.pick(&[]).unwrap().id), "eu");
    }
    // A retry after every local instance was tried goes elsewhere.
    let tried: Vec<String> = ["eu-1", "eu-2", "eu-3"].map(String::from).to_vec();
    assert_eq!(balancer.pick(&tried).unwrap().id, "us-1");
    // One of three ejected: 2/3 >= 50%, still local.
    eject("eu-1");
    fail("eu-1").await;
    for _ in 0..9 {
        let id = balancer.pick(&[]).unwrap().id;
        assert!(id == "eu-2" || id == "eu-3", "{id}");
    }
    // Two of three ejected: 1/3 < 50%: every zone shares the traffic.
    fail("eu-2").await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(balancer.pick(&[]).unwrap().id);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["eu-3", "us-1"],
        "healthy instances of both zones"
    );
}

#[tokio::test]
async fn traffic_counts_each_instance_tries_and_its_ejection() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let _a = register(&registry, instance("a")).await;
    let balancer = Balancer::new(
        registry.clone(),
        "lorem",
        BalancerOptions {
            ejection: ejecting(2),
            ..BalancerOptions::default()
        },
    )
    .expect("valid options");
    wait_for(&balancer, 1).await;
    for latency_ms in [2, 4] {
        let p = balancer.acquire(&[]).await.unwrap().expect("a pick");
        p.success(Duration::from_millis(latency_ms));
    }
    let in_flight = balancer.acquire(&[]).await.unwrap().expect("a pick");
    let traffic = balancer.traffic();
    assert_eq!(traffic.len(), 1);
    assert_eq!(
        (
            traffic[0].id.as_str(),
            traffic[0].answered,
            traffic[0].failed
        ),
        ("a", 2, 0)
    );
    assert_eq!(traffic[0].latency_total, Duration::from_millis(6));
    assert_eq!(traffic[0].in_flight, 1);
    assert!(!traffic[0].ejected);
    in_flight.failure(FailureKind::Unreachable, Duration::from_millis(1));
    assert!(!balancer.traffic()[0].ejected, "one failure does not eject");
    let p = balancer.acquire(&[]).await.unwrap().expect("a pick");
    p.failure(FailureKind::Timeout, Duration::from_millis(1));
    let traffic = balancer.traffic();
    assert_eq!((traffic[0].answered, traffic[0].failed), (2, 2));
    assert_eq!(traffic[0].in_flight, 0);
    assert!(traffic[0].ejected, "two failures in a row eject it");
    // An overload counts as a failed try too.
    let p = balancer.acquire(&[]).await.unwrap().expect("a pick");
    p.overloaded(None);
    assert_eq!(balancer.traffic()[0].failed, 3);
}
