//! `balancer::tower` over the in-process registry: one inner service per
//! instance, retries only when the policy gives a copy of the request,
//! overloads and failures reported to the balancer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use balancer::tower::{BalanceLayer, BoxError, Policy};
use balancer::{Balancer, BalancerOptions, FailureKind};
use registry::{Instance, MemoryRegistry, Registrar, Registration};
use tower::{Layer, Service, ServiceExt};

/// Requests are numbers; an instance whose id starts with `bad` fails
/// every call with `Err(id)`, the others answer with their id.
#[derive(Clone)]
struct Numbers {
    retry: bool,
}

impl Policy<u32, String, String> for Numbers {
    fn clone_request(&self, request: &u32) -> Option<u32> {
        self.retry.then_some(*request)
    }

    fn classify(&self, result: &Result<String, String>) -> Option<FailureKind> {
        result.as_ref().err().map(|_| FailureKind::ServerError)
    }
}

async fn setup(ids: &[&str]) -> (MemoryRegistry, Vec<Registration>, Balancer) {
    let registry = MemoryRegistry::new(Duration::from_secs(10));
    let mut registrations = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let port = 9000 + u16::try_from(i).expect("few instances");
        registrations.push(
            registry
                .register(Instance::new("numbers", *id, "127.0.0.1", port))
                .await
                .expect("register"),
        );
    }
    let balancer =
        Balancer::new(registry.clone(), "numbers", BalancerOptions::default()).expect("a balancer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while balancer.instances().len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the balancer never saw {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (registry, registrations, balancer)
}

/// A maker counting how many inner services it made.
fn counting_maker(
    made: Arc<AtomicUsize>,
) -> impl Fn(&Instance) -> tower::util::BoxCloneSyncService<u32, String, String> + Send + Sync + 'static
{
    move |instance: &Instance| {
        made.fetch_add(1, Ordering::SeqCst);
        let id = instance.id.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |_: u32| {
            let id = id.clone();
            async move {
                if id.starts_with("bad") {
                    Err(id)
                } else {
                    Ok(id)
                }
            }
        }))
    }
}

async fn call<S>(service: &mut S, request: u32) -> Result<String, BoxError>
where
    S: Service<u32, Response = String, Error = BoxError>,
{
    service.ready().await?.call(request).await
}

#[tokio::test]
async fn one_inner_service_per_instance_reused_by_every_call() {
    let (_registry, _registrations, balancer) = setup(&["a", "b"]).await;
    let made = Arc::new(AtomicUsize::new(0));
    let mut service =
        BalanceLayer::new(balancer, Numbers { retry: false }).layer(counting_maker(made.clone()));
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..20 {
        answered.insert(call(&mut service, i).await.expect("an answer"));
    }
    assert_eq!(answered.len(), 2, "both instances answered");
    assert_eq!(
        made.load(Ordering::SeqCst),
        2,
        "one inner service per instance"
    );
}

#[tokio::test]
async fn a_failed_call_is_retried_on_another_instance_when_the_policy_allows() {
    let (_registry, _registrations, balancer) = setup(&["bad", "good"]).await;
    let made = Arc::new(AtomicUsize::new(0));
    let mut service =
        BalanceLayer::new(balancer.clone(), Numbers { retry: true }).layer(counting_maker(made));
    for i in 0..10 {
        assert_eq!(call(&mut service, i).await.expect("retried"), "good");
    }
    assert!(
        balancer.ejected().contains(&"bad".to_owned()),
        "the failing instance was reported and ejected"
    );
}

#[tokio::test]
async fn a_failed_call_is_not_retried_when_the_request_cannot_be_copied() {
    let (_registry, _registrations, balancer) = setup(&["bad", "good"]).await;
    let made = Arc::new(AtomicUsize::new(0));
    let mut service =
        BalanceLayer::new(balancer, Numbers { retry: false }).layer(counting_maker(made));
    let mut failed = 0;
    // Round robin: one of the first two calls goes to `bad` first.
    for i in 0..2 {
        if let Err(error) = call(&mut service, i).await {
            assert_eq!(
                error.to_string(),
                "bad",
                "the inner error is returned as is"
            );
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "the call that went to `bad` was not retried");
}
