//! What fills a [`Hub`]: the registry's watches (`sdctl ui`) or a
//! balancer (the gateway). Either way one feed per process, whatever the
//! number of viewers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use balancer::Balancer;
use futures::StreamExt;
use registry::Watcher;
use tokio_stream::StreamMap;

use crate::hub::{Health, Hub};

/// How often `sdctl ui` lists the registry's services to find new ones
/// (each known service is followed by its own watch, so changes within a
/// service show at once).
pub const RESCAN: Duration = Duration::from_secs(2);

/// How often the gateway reads its balancer's traffic (the chart's
/// resolution).
pub const TRAFFIC_TICK: Duration = Duration::from_secs(1);

/// Follows every service of `watcher`'s registry into `hub`: lists the
/// services every [`RESCAN`], keeps one watch per service, and forgets a
/// service once it has no instances and is no longer listed. Runs until
/// dropped.
///
/// The listing runs in a task of its own, so that a registry slow to
/// answer it (up to its timeout, during an outage) never delays the
/// watches' changes.
pub async fn follow_registry<W: Watcher + 'static>(watcher: W, hub: Hub) {
    let watcher = Arc::new(watcher);
    let (listed, mut listings) = tokio::sync::mpsc::channel(1);
    let lister = {
        let watcher = watcher.clone();
        crate::http::AbortOnDrop(tokio::spawn(async move {
            loop {
                if listed.send(watcher.services().await).await.is_err() {
                    return;
                }
                tokio::time::sleep(RESCAN).await;
            }
        }))
    };
    let _lister = lister;
    let mut watches = StreamMap::new();
    let mut empty = BTreeSet::new();
    let mut listing_failed = false;
    loop {
        tokio::select! {
            Some(listing) = listings.recv() => match listing {
                Ok(names) => {
                    if std::mem::take(&mut listing_failed) {
                        tracing::info!("the registry lists its services again");
                    }
                    hub.listing(Health::fresh());
                    for name in &names {
                        if !watches.contains_key(name) {
                            watches.insert(name.clone(), watcher.watch(name));
                        }
                    }
                    let gone: Vec<String> = empty
                        .iter()
                        .filter(|name| !names.contains(name))
                        .cloned()
                        .collect();
                    for name in gone {
                        watches.remove(&name);
                        empty.remove(&name);
                        hub.forget(&name);
                    }
                }
                Err(error) => {
                    // Once per outage; the page shows the error meanwhile.
                    if !std::mem::replace(&mut listing_failed, true) {
                        tracing::warn!(%error, "cannot list the registry's services; retrying");
                    }
                    hub.listing(stale(&error));
                }
            },
            Some((name, item)) = watches.next(), if !watches.is_empty() => match item {
                Ok(instances) => {
                    if instances.is_empty() {
                        empty.insert(name.clone());
                    } else {
                        empty.remove(&name);
                    }
                    hub.instances(&name, &instances);
                    hub.health(&name, Health::fresh());
                }
                Err(error) => {
                    // The registry's watch logs its outages itself.
                    tracing::debug!(service = %name, %error, "registry watch failed; it retries");
                    hub.health(&name, stale(&error));
                }
            },
        }
    }
}

fn stale(error: &registry::Error) -> Health {
    Health {
        stale_since_unix_ms: Some(balancer::unix_ms()),
        last_error: Some(error.to_string()),
        discarded: false,
    }
}

/// Follows what `balancer` knows into `hub` while someone views the page:
/// its live set at every change, its per-instance traffic every
/// [`TRAFFIC_TICK`]; its freshness (outages) every tick, viewed or not.
/// Runs until dropped.
///
/// Why only while viewed: each look at the set or the traffic costs O(N)
/// (the balancer builds the snapshot, the hub compares it), which a gateway
/// of 50,000 instances nobody looks at should not pay, per change or per
/// second. The first viewer finds the set within a tick; changes made while
/// nobody looked go on the timeline together when someone looks again.
pub async fn follow_balancer(balancer: Balancer, hub: Hub) {
    let service = balancer.service().to_owned();
    let mut set: Option<tokio::sync::watch::Receiver<balancer::Snapshot>> = None;
    let mut tick = tokio::time::interval(TRAFFIC_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = false;
    loop {
        let changed = async {
            match set.as_mut() {
                Some(set) => set.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = changed => {
                if !alive {
                    return;
                }
                if let Some(set) = set.as_mut() {
                    let instances = set.borrow_and_update().clone();
                    synced = true;
                    hub.instances(&service, &instances);
                }
            }
            // Rates over whole ticks only: a reading right after a change of
            // the set would divide a handful of requests by a few
            // milliseconds.
            _ = tick.tick() => {
                let viewed = hub.viewers() > 0;
                if viewed && set.is_none() {
                    // Announces the current set at once (see `changed`).
                    set = Some(balancer.subscribe());
                } else if !viewed {
                    set = None;
                    synced = false;
                }
                let freshness = balancer.freshness();
                hub.health(&service, Health::from_freshness(&freshness, balancer::unix_ms()));
                if viewed {
                    // A set synced empty, which no change announces.
                    if freshness.synced && !synced {
                        synced = true;
                        hub.instances(&service, &balancer.instances());
                    }
                    hub.traffic(&service, &balancer.traffic());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use registry::{Instance, MemoryRegistry, Registrar};

    use super::*;

    async fn until(hub: &Hub, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut page = hub.subscribe();
        loop {
            let state: serde_json::Value = serde_json::from_str(&page.borrow_and_update()).unwrap();
            if check(&state) {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, page.changed())
                    .await
                    .is_ok(),
                "{what}: not seen; last state {state}"
            );
        }
    }

    #[tokio::test]
    async fn the_registry_feed_finds_services_follows_them_and_forgets_them() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let a = registry
            .register(Instance::new("lorem", "a", "127.0.0.1", 1))
            .await
            .unwrap();
        let hub = Hub::new("test", "registry");
        let feed = tokio::spawn(follow_registry(registry.clone(), hub.clone()));
        until(&hub, "lorem with a", |s| {
            s["services"][0]["name"] == "lorem" && s["services"][0]["count"] == 1
        })
        .await;
        let b = registry
            .register(Instance::new("lorem", "b", "127.0.0.1", 2))
            .await
            .unwrap();
        until(&hub, "b added", |s| s["services"][0]["count"] == 2).await;
        a.deregister().await.unwrap();
        b.deregister().await.unwrap();
        until(&hub, "lorem forgotten after the next listing", |s| {
            s["services"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
        let state: serde_json::Value = serde_json::from_str(&hub.current()).unwrap();
        let kinds: Vec<&str> = state["events"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["added", "added", "removed", "removed"], "{state}");
        feed.abort();
    }
}
