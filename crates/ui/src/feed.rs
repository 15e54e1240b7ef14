//! What fills a [`Hub`]: the registry's watches (`sdctl ui`) or a
//! balancer (the gateway). Either way one feed per process, whatever the
//! number of viewers.

use std::collections::BTreeSet;
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
pub async fn follow_registry<W: Watcher>(watcher: W, hub: Hub) {
    let mut watches = StreamMap::new();
    let mut empty = BTreeSet::new();
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rescan.tick() => match watcher.services().await {
                Ok(names) => {
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
                    tracing::warn!(%error, "cannot list the registry's services");
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
                    tracing::warn!(service = %name, %error, "registry watch failed; it retries");
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

/// Follows what `balancer` knows into `hub`: its live set at every change,
/// and its freshness and per-instance traffic every [`TRAFFIC_TICK`]. Runs
/// until dropped.
pub async fn follow_balancer(balancer: Balancer, hub: Hub) {
    let service = balancer.service().to_owned();
    let mut set = balancer.subscribe();
    let mut tick = tokio::time::interval(TRAFFIC_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut synced = false;
    loop {
        tokio::select! {
            changed = set.changed() => {
                if changed.is_err() {
                    return;
                }
                let instances = set.borrow_and_update().clone();
                synced = true;
                hub.instances(&service, &instances);
            }
            // Rates over whole ticks only: a reading right after a change of
            // the set would divide a handful of requests by a few
            // milliseconds.
            _ = tick.tick() => {
                let freshness = balancer.freshness();
                if freshness.synced && !synced {
                    // Synced to an empty set: no change to wake us.
                    synced = true;
                    hub.instances(&service, &balancer.instances());
                }
                hub.health(&service, Health::from_freshness(&freshness, balancer::unix_ms()));
                hub.traffic(&service, &balancer.traffic());
            }
        }
    }
}
