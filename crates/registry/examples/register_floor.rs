//! Register -> visible on another connection's watch, next to the raw
//! floor of the same registry: a plain etcd put -> watch event, a plain
//! ZooKeeper create -> persistent-watch event, measured in the same run on
//! the same servers (started by the test kit on loopback).
//!
//! ```sh
//! cargo run --release -p registry --example register_floor -- 200 2
//! ```
//!
//! Prints p50/p99 in ms per measure; the ratio register/raw is what the
//! registry adds. Bounded: N rounds (default 200, at most 2,000), GAP ms
//! apart (default 2, at most 1,000; `sdctl bench` rounds are 200 ms apart,
//! and an idle gap makes every step slower: threads parked, caches cold).

use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::{EtcdRegistry, Instance, Registrar, WatchEvent, Watcher, ZookeeperRegistry};
use zookeeper_client as zk;

/// The pause before each round (second argument, ms).
fn gap() -> Duration {
    let ms: u64 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    Duration::from_millis(ms.min(1000))
}

fn stat(name: &str, mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    println!(
        "{name:<44} p50 {:>6.3} ms  p99 {:>6.3} ms",
        at(0.5),
        at(0.99)
    );
    at(0.5)
}

/// Registers `rounds` instances one at a time; each until another
/// connection's change stream shows it; and each register() alone.
async fn registry_rounds(
    registrar: &dyn Registrar,
    watcher: &dyn Watcher,
    service: &str,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut stream = watcher.watch_changes(service);
    while !matches!(stream.next().await, Some(WatchEvent::Synced(_))) {}
    let (mut visible, mut register) = (Vec::new(), Vec::new());
    let mut held = Vec::new();
    for i in 0..rounds {
        tokio::time::sleep(gap()).await;
        let id = format!("f{i}");
        let started = Instant::now();
        let registration = registrar
            .register(Instance::new(service, &id, "127.0.0.1", 9))
            .await
            .expect("register");
        register.push(started.elapsed());
        loop {
            match stream.next().await {
                Some(WatchEvent::Changed { snapshot, .. }) | Some(WatchEvent::Synced(snapshot))
                    if snapshot.get(&id).is_some() =>
                {
                    break;
                }
                Some(_) => {}
                None => panic!("the watch ended"),
            }
        }
        visible.push(started.elapsed());
        held.push(registration);
    }
    for registration in held {
        let _ = registration.deregister().await;
    }
    (visible, register)
}

async fn etcd(rounds: usize) {
    let server = testkit::EtcdServer::start().expect("etcd (scripts/install-deps.sh test)");
    let endpoint = server.endpoint();
    // Raw: put -> the event on another client's watch.
    let mut writer = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    let mut reader = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    let mut events = reader
        .watch(
            "/raw/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    for i in 0..rounds {
        tokio::time::sleep(gap()).await;
        let started = Instant::now();
        writer.put(format!("/raw/k{i}"), "v", None).await.unwrap();
        loop {
            let message = events.message().await.unwrap().unwrap();
            if !message.events().is_empty() {
                break;
            }
        }
        raw.push(started.elapsed());
    }
    let connect = || async {
        EtcdRegistry::builder()
            .addr(endpoint.clone())
            .ttl(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    };
    let (registrar, watcher) = (connect().await, connect().await);
    let (visible, register) = registry_rounds(&registrar, &watcher, "floor", rounds).await;
    let raw = stat("etcd raw put -> watch event", raw);
    stat("etcd register() returns", register);
    let seen = stat("etcd register -> visible on another watch", visible);
    println!("etcd register -> visible / raw floor: {:.2}x", seen / raw);
}

async fn zookeeper(rounds: usize) {
    let server = testkit::ZkServer::start().expect("ZooKeeper (scripts/install-deps.sh test)");
    let connect_string = server.connect_string();
    let writer = zk::Client::connect(&connect_string).await.unwrap();
    let reader = zk::Client::connect(&connect_string).await.unwrap();
    writer
        .create(
            "/raw",
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .unwrap();
    let mut watcher = reader
        .watch("/raw", zk::AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    let mut raw = Vec::new();
    for i in 0..rounds {
        tokio::time::sleep(gap()).await;
        let started = Instant::now();
        writer
            .create(
                &format!("/raw/k{i}"),
                b"v",
                &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .unwrap();
        loop {
            let event = watcher.changed().await;
            if event.event_type == zk::EventType::NodeCreated {
                break;
            }
        }
        raw.push(started.elapsed());
    }
    let connect = || async {
        ZookeeperRegistry::builder()
            .addr(connect_string.clone())
            .ttl(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    };
    let (registrar, watcher) = (connect().await, connect().await);
    let (visible, register) = registry_rounds(&registrar, &watcher, "floor", rounds).await;
    let raw = stat("zookeeper raw create -> watch event", raw);
    stat("zookeeper register() returns", register);
    let seen = stat("zookeeper register -> visible on another watch", visible);
    println!(
        "zookeeper register -> visible / raw floor: {:.2}x",
        seen / raw
    );
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("a number of rounds"))
        .unwrap_or(200)
        .clamp(10, 2000);
    etcd(rounds).await;
    zookeeper(rounds).await;
}
