//! The gRPC example end to end: two greeter servers registered in a real
//! etcd through `registry::lifecycle`, a client balancing over both through
//! `balancer::tower`; a stopped server is no longer picked, and calls to a
//! crashed one (still registered) are retried on the other.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use balancer::{Balancer, BalancerOptions};
use grpc_example::proto::{HelloReply, HelloRequest};
use registry::EtcdRegistry;
use testkit::{EtcdServer, RegistryServer};
use tower::{Service, ServiceExt};

/// Generous bound on every wait.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `condition` every 10 ms until it holds; panics naming `what`
/// after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn hello<S>(client: &mut S, name: &str) -> HelloReply
where
    S: Service<HelloRequest, Response = HelloReply, Error = balancer::tower::BoxError>,
{
    let request = HelloRequest { name: name.into() };
    match client.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(error) => Err(error),
    }
    .unwrap_or_else(|error| panic!("SayHello({name}) failed: {error}"))
}

fn instance_ids(balancer: &Balancer) -> BTreeSet<String> {
    balancer.instances().iter().map(|i| i.id.clone()).collect()
}

#[test]
fn two_grpc_servers_in_etcd_balanced_through_the_tower_layer() {
    let mut etcd = EtcdServer::start().expect("start etcd (see BACKENDS.md to install it)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let registry = EtcdRegistry::builder()
            .addr(etcd.registry_addr())
            .ttl(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect to etcd");
        let a = grpc_example::serve(registry.clone(), "hello", "hello-a")
            .await
            .expect("server a starts");
        let b = grpc_example::serve(registry.clone(), "hello", "hello-b")
            .await
            .expect("server b starts");
        a.readiness().registered().await;
        b.readiness().registered().await;

        let balancer = Balancer::new(registry.clone(), "hello", BalancerOptions::default())
            .expect("a balancer");
        let mut client = grpc_example::client(balancer.clone());
        wait_until("both greeters in the balancer's live set", || {
            let n = balancer.instances().len();
            async move { n == 2 }
        })
        .await;

        // Both servers answer.
        let mut answered = BTreeSet::new();
        for i in 0..10 {
            let reply = hello(&mut client, &format!("call {i}")).await;
            assert_eq!(reply.message, format!("hello, call {i}"));
            answered.insert(reply.instance);
        }
        assert_eq!(
            answered,
            BTreeSet::from(["hello-a".to_owned(), "hello-b".to_owned()]),
            "round robin over two instances reaches both"
        );

        // A server that stops (deregister, then stop) is no longer picked.
        b.shutdown().await.expect("b stops cleanly");
        wait_until("hello-b leaves the live set", || {
            let ids = instance_ids(&balancer);
            async move { !ids.contains("hello-b") }
        })
        .await;
        for i in 0..10 {
            let reply = hello(&mut client, &format!("after stop {i}")).await;
            assert_eq!(reply.instance, "hello-a", "a stopped server was picked");
        }

        // A server that crashes (still registered) fails its tries; each
        // call is retried on the other instance, and the crashed one ends
        // up ejected.
        let c = grpc_example::serve(registry.clone(), "hello", "hello-c")
            .await
            .expect("server c starts");
        c.readiness().registered().await;
        wait_until("hello-c joins the live set", || {
            let n = balancer.instances().len();
            async move { n == 2 }
        })
        .await;
        a.crash().await.expect("a stops");
        let mut calls = 0;
        while !balancer.ejected().contains(&"hello-a".to_owned()) {
            calls += 1;
            assert!(
                calls <= 50,
                "hello-a was not ejected after 50 calls while it refused them"
            );
            let reply = hello(&mut client, &format!("after crash {calls}")).await;
            assert_eq!(reply.instance, "hello-c", "only c can answer");
        }
        assert!(
            instance_ids(&balancer).contains("hello-a"),
            "the crashed server is still registered: the retries, not the registry, kept calls working"
        );
        for i in 0..5 {
            let reply = hello(&mut client, &format!("after ejection {i}")).await;
            assert_eq!(reply.instance, "hello-c");
        }

        c.shutdown().await.expect("c stops cleanly");
    });
    drop(runtime);
    etcd.stop().expect("stop etcd");
}
