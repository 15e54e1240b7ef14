//! The tower adapter: a watch as a `Discover` stream under tower's p2c
//! balancer, following registrations, deregistrations and changed records.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use registry::{Instance, MemoryRegistry, Registrar, ServiceDiscover};
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Service, ServiceExt};

const DEADLINE: Duration = Duration::from_secs(20);

type Named = tower::util::BoxService<(), String, Infallible>;

/// A tower service per instance that answers with the instance's id and
/// port, as if it had sent the request there.
fn naming(instance: &Instance) -> Named {
    let name = format!("{}@{}", instance.id, instance.port);
    tower::util::BoxService::new(tower::service_fn(move |_request: ()| {
        let name = name.clone();
        async move { Ok::<_, Infallible>(name) }
    }))
}

#[tokio::test]
async fn the_stream_inserts_removes_and_replaces() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let a = registry
        .register(Instance::new("lorem", "a", "127.0.0.1", 1001))
        .await
        .expect("register");
    let mut discover = ServiceDiscover::new(&registry, "lorem", naming).expect("a valid name");
    let mut next = async || {
        tokio::time::timeout(DEADLINE, discover.next())
            .await
            .expect("a change in time")
            .expect("the stream goes on")
            .expect("never an error")
    };
    assert!(matches!(next().await, Change::Insert(id, _) if id == "a"));
    let b = registry
        .register(Instance::new("lorem", "b", "127.0.0.1", 1002))
        .await
        .expect("register");
    assert!(matches!(next().await, Change::Insert(id, _) if id == "b"));
    a.deregister().await.expect("deregister");
    assert!(matches!(next().await, Change::Remove(id) if id == "a"));
    // The same id on a new port: inserted again under the same key.
    let b2 = registry
        .register(Instance::new("lorem", "b", "127.0.0.1", 2002))
        .await
        .expect("register");
    match next().await {
        Change::Insert(id, mut service) => {
            assert_eq!(id, "b");
            assert_eq!(
                service.ready().await.unwrap().call(()).await.unwrap(),
                "b@2002"
            );
        }
        Change::Remove(id) => panic!("unexpected removal of {id}"),
    }
    drop(b);
    b2.deregister().await.expect("deregister");
}

#[test]
fn an_invalid_service_name_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let error = ServiceDiscover::new(&registry, "no/slash", naming).expect_err("refused");
    assert!(error.to_string().contains("no/slash"), "{error}");
}

/// Calls the balancer `n` times and counts the answers.
async fn spread<S>(balance: &mut S, n: usize) -> BTreeMap<String, usize>
where
    S: Service<(), Response = String, Error = tower::BoxError>,
{
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let name = tokio::time::timeout(DEADLINE, balance.ready())
            .await
            .expect("ready in time")
            .expect("the balancer is ready")
            .call(())
            .await
            .expect("answered");
        *counts.entry(name).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn tower_p2c_balances_over_the_registry_and_follows_it() {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let a = registry
        .register(Instance::new("lorem", "a", "127.0.0.1", 1001))
        .await
        .expect("register");
    let b = registry
        .register(Instance::new("lorem", "b", "127.0.0.1", 1002))
        .await
        .expect("register");
    let discover = ServiceDiscover::new(&registry, "lorem", naming).expect("a valid name");
    let mut balance = Balance::new(PendingRequestsDiscover::new(
        discover,
        CompleteOnResponse::default(),
    ));
    // Give the balancer both instances before counting.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while balance.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "p2c never saw both");
        let _ = balance.ready().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let counts = spread(&mut balance, 200).await;
    assert_eq!(counts.values().sum::<usize>(), 200);
    assert!(
        counts.get("a@1001").copied().unwrap_or(0) > 20,
        "{counts:?}"
    );
    assert!(
        counts.get("b@1002").copied().unwrap_or(0) > 20,
        "{counts:?}"
    );

    a.deregister().await.expect("deregister");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while balance.len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "p2c never dropped a"
        );
        let _ = balance.ready().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let counts = spread(&mut balance, 50).await;
    assert_eq!(counts, BTreeMap::from([("b@1002".to_owned(), 50)]));
    b.deregister().await.expect("deregister");
}
