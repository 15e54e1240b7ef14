//! The in-process registry: the embedded default, needing no server.
//!
//! | operation   | memory                                                      |
//! |-------------|-------------------------------------------------------------|
//! | register    | insert into a shared map with an expiry of now + TTL        |
//! | keep alive  | a task per registration pushes the expiry out every TTL/3   |
//! | deregister  | remove the entry (only if it is still ours)                 |
//! | abandon     | stop the task; the entry expires after the TTL              |
//! | deregister_instance | remove the entry whoever owns it; a live owner puts it back at its next refresh |
//! | watch       | a change counter plus a timer on the next expiry            |
//!
//! It has the same semantics as the real backends, expiry included, so the
//! demo and the conformance suite behave alike on all of them. Every
//! [`MemoryRegistry::global`] handle shares one process-wide store (that is
//! what `REGISTRY=memory` gives); [`MemoryRegistry::new`] makes an isolated one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::discovery::{KeepAlive, Registrar, Registration, WatchStream, Watcher};
use crate::error::Result;
use crate::model::{Instance, validate_name};
use crate::util::spawn_watch;

/// Settings of the in-process backend: none besides the shared TTL (it has
/// no address); kept as a type so that every backend has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {}

/// An in-process registry. Cheap to clone; clones share the same store.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    store: Arc<Store>,
    ttl: Duration,
}

#[derive(Debug)]
struct Store {
    state: Mutex<State>,
    /// Bumped on every change; watchers wait on it.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    next_token: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    instance: Instance,
    expires_at: Instant,
    /// Which registration owns the entry, so that an old handle never
    /// removes or refreshes a newer registration of the same id.
    token: u64,
}

/// `now + ttl`, saturating far in the future instead of overflowing.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
}

impl State {
    /// Drops expired entries; returns true if any were dropped.
    fn purge(&mut self, now: Instant) -> bool {
        let mut purged = false;
        self.services.retain(|_, instances| {
            instances.retain(|_, entry| {
                let live = entry.expires_at > now;
                purged |= !live;
                live
            });
            !instances.is_empty()
        });
        purged
    }
}

impl Store {
    fn new() -> Self {
        Store {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // (every update is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The live instances of `service` and the earliest expiry among them.
    fn snapshot(&self, service: &str) -> (Vec<Instance>, Option<Instant>) {
        let now = Instant::now();
        let state = self.lock();
        let Some(entries) = state.services.get(service) else {
            return (Vec::new(), None);
        };
        let live: Vec<&Entry> = entries.values().filter(|e| e.expires_at > now).collect();
        let next = live.iter().map(|e| e.expires_at).min();
        (live.into_iter().map(|e| e.instance.clone()).collect(), next)
    }

    fn insert(&self, instance: Instance, ttl: Duration) -> u64 {
        let mut state = self.lock();
        state.purge(Instant::now());
        state.next_token += 1;
        let token = state.next_token;
        state
            .services
            .entry(instance.service.clone())
            .or_default()
            .insert(
                instance.id.clone(),
                Entry {
                    instance,
                    expires_at: expiry(Instant::now(), ttl),
                    token,
                },
            );
        drop(state);
        self.notify();
        token
    }

    /// Pushes the expiry of our entry out; re-inserts it if it was lost.
    /// Returns false if another registration now owns the id, or if the
    /// registration was stopped (checked under the lock, so a refresh racing
    /// a deregistration can never bring the entry back).
    fn refresh(
        &self,
        instance: &Instance,
        token: u64,
        ttl: Duration,
        stopped: &AtomicBool,
    ) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        if stopped.load(Ordering::SeqCst) {
            return false;
        }
        let purged = state.purge(now);
        let entries = state.services.entry(instance.service.clone()).or_default();
        let (still_ours, reinserted) = match entries.get_mut(&instance.id) {
            Some(entry) if entry.token == token => {
                entry.expires_at = expiry(now, ttl);
                (true, false)
            }
            Some(_) => (false, false),
            None => {
                entries.insert(
                    instance.id.clone(),
                    Entry {
                        instance: instance.clone(),
                        expires_at: expiry(now, ttl),
                        token,
                    },
                );
                (true, true)
            }
        };
        drop(state);
        if reinserted {
            tracing::warn!(backend = "memory", service = %instance.service, id = %instance.id,
                "registration had expired or was removed; registered it again");
        }
        if purged || reinserted {
            self.notify();
        }
        still_ours
    }

    /// Removes `service`/`id` whoever registered it; true if it was there
    /// (and live).
    fn remove_any(&self, service: &str, id: &str) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let removed = match state.services.get_mut(service) {
            Some(entries) => {
                let removed = entries.remove(id).is_some_and(|e| e.expires_at > now);
                if entries.is_empty() {
                    state.services.remove(service);
                }
                removed
            }
            None => false,
        };
        drop(state);
        if removed {
            self.notify();
        }
        removed
    }

    fn remove(&self, service: &str, id: &str, token: u64) {
        let mut state = self.lock();
        let removed = match state.services.get_mut(service) {
            Some(entries) if entries.get(id).is_some_and(|e| e.token == token) => {
                entries.remove(id);
                if entries.is_empty() {
                    state.services.remove(service);
                }
                true
            }
            _ => false,
        };
        drop(state);
        if removed {
            self.notify();
        }
    }
}

impl MemoryRegistry {
    /// A new, isolated registry whose registrations expire `ttl` after their
    /// last keep-alive.
    pub fn new(ttl: Duration) -> Self {
        MemoryRegistry {
            store: Arc::new(Store::new()),
            ttl,
        }
    }

    /// A handle on the process-wide registry that `REGISTRY=memory` selects:
    /// every handle shares it, whatever its TTL.
    pub fn global(ttl: Duration) -> Self {
        static GLOBAL: OnceLock<Arc<Store>> = OnceLock::new();
        MemoryRegistry {
            store: GLOBAL.get_or_init(|| Arc::new(Store::new())).clone(),
            ttl,
        }
    }

    /// The same store, with another TTL for the registrations made through
    /// the returned handle.
    pub fn with_ttl(&self, ttl: Duration) -> Self {
        MemoryRegistry {
            store: self.store.clone(),
            ttl,
        }
    }
}

#[async_trait]
impl Registrar for MemoryRegistry {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        instance.validate()?;
        let ttl = self.ttl;
        let token = self.store.insert(instance.clone(), ttl);
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let stopped = Arc::new(AtomicBool::new(false));
        let store = self.store.clone();
        let kept = instance.clone();
        let task_stopped = stopped.clone();
        tokio::spawn(async move {
            let period = (ttl / 3).max(Duration::from_millis(10));
            let mut tick = tokio::time::interval_at(expiry(Instant::now(), period), period);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop_rx => return,
                    _ = tick.tick() => {
                        if !store.refresh(&kept, token, ttl, &task_stopped) {
                            if !task_stopped.load(Ordering::SeqCst) {
                                tracing::info!(backend = "memory", id = %kept.id,
                                    "instance re-registered elsewhere; this keep-alive stops");
                            }
                            return;
                        }
                    }
                }
            }
        });
        Ok(Registration::new(
            instance.clone(),
            Box::new(MemoryKeepAlive {
                store: self.store.clone(),
                instance,
                token,
                stop: stop_tx,
                stopped,
            }),
        ))
    }

    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        validate_name("service", service)?;
        validate_name("id", id)?;
        Ok(self.store.remove_any(service, id))
    }
}

struct MemoryKeepAlive {
    store: Arc<Store>,
    instance: Instance,
    token: u64,
    stop: oneshot::Sender<()>,
    /// Set before the entry is removed, so the keep-alive task cannot put
    /// it back (see [`Store::refresh`]).
    stopped: Arc<AtomicBool>,
}

#[async_trait]
impl KeepAlive for MemoryKeepAlive {
    async fn deregister(self: Box<Self>) -> Result<()> {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.stop.send(());
        self.store
            .remove(&self.instance.service, &self.instance.id, self.token);
        Ok(())
    }

    fn abandon(self: Box<Self>) {
        // No refresh after this point; dropping `stop` ends the keep-alive
        // task, and the entry expires one TTL after its last refresh.
        self.stopped.store(true, Ordering::SeqCst);
        drop(self.stop);
    }
}

#[async_trait]
impl Watcher for MemoryRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_name("service", service)?;
        let mut instances = self.store.snapshot(service).0;
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    async fn services(&self) -> Result<Vec<String>> {
        let now = Instant::now();
        let state = self.store.lock();
        Ok(state
            .services
            .iter()
            .filter(|(_, entries)| entries.values().any(|e| e.expires_at > now))
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn watch(&self, service: &str) -> WatchStream {
        let store = self.store.clone();
        let service = service.to_owned();
        spawn_watch(move |mut sink| async move {
            if let Err(error) = validate_name("service", &service) {
                sink.error(error).await;
                return;
            }
            let mut changes = store.changed.subscribe();
            loop {
                changes.borrow_and_update();
                let (instances, next_expiry) = store.snapshot(&service);
                if !sink.snapshot(instances).await {
                    return;
                }
                let expiry = async {
                    match next_expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = expiry => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn lorem(id: &str) -> Instance {
        Instance::new("lorem", id, "127.0.0.1", 8080)
    }

    #[tokio::test]
    async fn register_watch_deregister() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let mut watch = registry.watch("lorem");
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![]);
        let a = registry.register(lorem("a")).await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![lorem("a")]);
        assert_eq!(registry.services().await.unwrap(), vec!["lorem".to_owned()]);
        a.deregister().await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![]);
        assert!(registry.services().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_instances_expire_after_the_ttl_and_kept_ones_do_not() {
        let registry = MemoryRegistry::new(Duration::from_secs(2));
        let a = registry.register(lorem("a")).await.unwrap();
        let b = registry.register(lorem("b")).await.unwrap();
        let mut watch = registry.watch("lorem");
        assert_eq!(watch.next().await.unwrap().unwrap().len(), 2);
        let started = Instant::now();
        b.abandon();
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![lorem("a")]);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1300) && took <= Duration::from_secs(2),
            "{took:?}"
        );
        // `a` is still kept alive well past its TTL.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(registry.instances("lorem").await.unwrap(), vec![lorem("a")]);
        drop(a);
    }

    #[tokio::test]
    async fn a_huge_ttl_does_not_overflow() {
        let registry = MemoryRegistry::new(Duration::MAX);
        let a = registry.register(lorem("a")).await.unwrap();
        assert_eq!(registry.instances("lorem").await.unwrap(), vec![lorem("a")]);
        a.deregister().await.unwrap();
        assert!(registry.instances("lorem").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn invalid_instances_are_refused() {
        let registry = MemoryRegistry::new(Duration::from_secs(2));
        let err = registry.register(lorem("a b")).await.unwrap_err();
        assert!(err.to_string().contains("id \"a b\""), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_operator_removal_is_seen_at_once_and_undone_by_a_live_owner() {
        let registry = MemoryRegistry::new(Duration::from_secs(3));
        let operator = registry.with_ttl(Duration::from_secs(3));
        let a = registry.register(lorem("a")).await.unwrap();
        let mut watch = registry.watch("lorem");
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![lorem("a")]);
        assert!(operator.deregister_instance("lorem", "a").await.unwrap());
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![]);
        assert!(!operator.deregister_instance("lorem", "a").await.unwrap());
        assert!(!operator.deregister_instance("other", "a").await.unwrap());
        // The owner is alive: its next refresh (TTL/3) puts it back.
        assert_eq!(watch.next().await.unwrap().unwrap(), vec![lorem("a")]);
        let err = operator
            .deregister_instance("lorem", "a b")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("id \"a b\""), "{err}");
        a.deregister().await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_handle_does_not_remove_a_newer_registration() {
        let registry = MemoryRegistry::new(Duration::from_secs(5));
        let old = registry.register(lorem("a")).await.unwrap();
        let new = registry.register(lorem("a").with_tag("v2")).await.unwrap();
        old.deregister().await.unwrap();
        assert_eq!(
            registry.instances("lorem").await.unwrap(),
            vec![lorem("a").with_tag("v2")]
        );
        new.deregister().await.unwrap();
    }
}
