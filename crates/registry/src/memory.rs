//! The in-process registry: the embedded default, needing no server.
//!
//! | operation   | memory                                                      |
//! |-------------|-------------------------------------------------------------|
//! | register    | insert into a shared map with an expiry of now + TTL and the registrar's owner token, unless a live entry holds another registrar's token ([`Error::AlreadyRegistered`]) |
//! | keep alive  | the registrar core's task pushes the expiry of every entry it keeps out every TTL/3; an entry that is gone (removed, or expired) or held by another registrar is reported forgotten, and put back (or given way) by the core |
//! | deregister  | remove the entry, only if it still holds our token          |
//! | abandon     | stop renewing it; the entry expires after the TTL           |
//! | deregister_instance | remove the entry whoever owns it; a live owner puts it back at its next renewal |
//! | watch       | a change counter plus a timer on the next expiry            |
//!
//! It has the same semantics as the real backends, expiry and the
//! duplicate-id rule included, so the demo and the conformance suite behave
//! alike on all of them. Registrations run on the registrar core
//! (`registrar/`) like every other backend's: each value made by
//! [`MemoryRegistry::new`], [`MemoryRegistry::global`] or
//! [`MemoryRegistry::with_ttl`] is one registrar with its own owner token,
//! and its clones share it. Every [`MemoryRegistry::global`] handle shares
//! one process-wide store (that is what `REGISTRY=memory` gives);
//! [`MemoryRegistry::new`] makes an isolated one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::model::{Instance, validate_name};
use crate::registrar::{self, Backend, Found, Record, Renewal};
use crate::timing::DEFAULT_TIMEOUT;
use crate::traits::{Registrar, Registration, WatchStream, Watcher};
use crate::watch_sink::spawn_watch;

/// The backend's name in errors and logs.
const BACKEND: &str = "memory";

/// Settings of the in-process backend: none besides the shared TTL (it has
/// no address); kept as a type so that every backend has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Config {}

/// An in-process registry. Cheap to clone; clones share the same store and
/// the same registrar.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    store: Arc<Store>,
    registrar: registrar::Registrar<Keeper>,
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
}

#[derive(Debug, Clone)]
struct Entry {
    instance: Instance,
    expires_at: Instant,
    /// The token of the registrar that wrote the entry: only it renews or
    /// removes it, and another registrar cannot take the id while it lives.
    owner: Arc<str>,
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

    /// Writes `record` with an expiry of now + `ttl`, unless a live entry
    /// of the id holds another registrar's token.
    fn put(&self, record: &Record, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut state = self.lock();
        state.purge(now);
        let instance = &record.instance;
        let entries = state.services.entry(instance.service.clone()).or_default();
        if let Some(held) = entries
            .get(&instance.id)
            .filter(|e| e.owner != record.owner)
        {
            return Err(Error::AlreadyRegistered {
                backend: BACKEND,
                service: instance.service.clone(),
                id: instance.id.clone(),
                holder: held.owner.to_string(),
            });
        }
        entries.insert(
            instance.id.clone(),
            Entry {
                instance: instance.clone(),
                expires_at: expiry(now, ttl),
                owner: record.owner.clone(),
            },
        );
        drop(state);
        self.notify();
        Ok(())
    }

    /// Pushes the expiry of each of `records` out to now + `ttl`; returns
    /// the indexes of those whose entry is gone (removed, or expired) or
    /// holds another registrar's token.
    fn renew(&self, records: &[Record], ttl: Duration) -> Vec<usize> {
        let now = Instant::now();
        let mut state = self.lock();
        let purged = state.purge(now);
        let mut forgotten = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let entry = state
                .services
                .get_mut(&record.instance.service)
                .and_then(|entries| entries.get_mut(&record.instance.id))
                .filter(|entry| entry.owner == record.owner);
            match entry {
                Some(entry) => entry.expires_at = expiry(now, ttl),
                None => forgotten.push(index),
            }
        }
        drop(state);
        if purged {
            self.notify();
        }
        forgotten
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

    /// Removes `record`'s entry if it still holds `record`'s token.
    fn remove_owned(&self, record: &Record) {
        let (service, id) = (&record.instance.service, &record.instance.id);
        let mut state = self.lock();
        let removed = match state.services.get_mut(service) {
            Some(entries) if entries.get(id).is_some_and(|e| e.owner == record.owner) => {
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

/// The store as a backend of the registrar core: no lease, every entry
/// renewed on its own.
#[derive(Debug)]
struct Keeper {
    store: Arc<Store>,
    /// How long an entry lives without renewal.
    ttl: Duration,
}

#[async_trait]
impl Backend for Keeper {
    /// Nothing to hold: each entry carries its own expiry.
    type Lease = ();

    const NAME: &'static str = BACKEND;

    async fn open(&self) -> Result<()> {
        Ok(())
    }

    async fn put(&self, _lease: &(), record: &Record) -> Result<()> {
        self.store.put(record, self.ttl)
    }

    async fn delete(&self, _lease: &(), record: &Record) -> Result<()> {
        self.store.remove_owned(record);
        Ok(())
    }

    /// Nothing to do: the core no longer renews the entry, which expires
    /// one TTL after its last renewal.
    async fn abandon(&self, _lease: &(), _record: &Record) -> Result<()> {
        Ok(())
    }

    async fn renew(&self, _lease: &(), records: &[Record]) -> Result<Renewal> {
        let forgotten = self.store.renew(records, self.ttl);
        Ok(if forgotten.is_empty() {
            Renewal::Alive
        } else {
            Renewal::Forgotten(forgotten)
        })
    }

    /// Every renewal already looks at each entry and its token (a missing
    /// one or another registrar's is reported forgotten, and putting it
    /// back then finds the holder), and nothing but our own code writes
    /// the store, so there is nothing more to check.
    async fn verify(&self, _lease: &(), records: &[Record]) -> Result<Vec<Found>> {
        Ok(vec![Found::Ours; records.len()])
    }
}

impl MemoryRegistry {
    /// A new, isolated registry whose registrations expire `ttl` after their
    /// last keep-alive. Needs no runtime until it is first used.
    pub fn new(ttl: Duration) -> Self {
        MemoryRegistry::on(Arc::new(Store::new()), ttl)
    }

    /// A handle on the process-wide registry that `REGISTRY=memory` selects:
    /// every handle shares its store, whatever its TTL; each handle is a
    /// registrar of its own (its clones share it), so two of them cannot
    /// hold the same id at once.
    pub fn global(ttl: Duration) -> Self {
        static GLOBAL: OnceLock<Arc<Store>> = OnceLock::new();
        MemoryRegistry::on(GLOBAL.get_or_init(|| Arc::new(Store::new())).clone(), ttl)
    }

    /// The same store, with another TTL for the registrations made through
    /// the returned handle, which is a registrar of its own.
    pub fn with_ttl(&self, ttl: Duration) -> Self {
        MemoryRegistry::on(self.store.clone(), ttl)
    }

    /// A new registrar on `store`.
    fn on(store: Arc<Store>, ttl: Duration) -> Self {
        let keeper = Keeper {
            store: store.clone(),
            ttl,
        };
        MemoryRegistry {
            store,
            registrar: registrar::Registrar::new(keeper, ttl, DEFAULT_TIMEOUT),
        }
    }
}

#[async_trait]
impl Registrar for MemoryRegistry {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        instance.validate()?;
        self.registrar.register(instance).await
    }

    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        validate_name("service", service)?;
        validate_name("id", id)?;
        Ok(self.store.remove_any(service, id))
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
        crate::changes::snapshots(self.watch_changes(service))
    }

    fn watch_changes(&self, service: &str) -> crate::changes::ChangeStream {
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

    #[tokio::test(start_paused = true)]
    async fn an_id_another_registrar_holds_is_refused_until_it_is_free() {
        let ttl = Duration::from_secs(3);
        let first = MemoryRegistry::new(ttl);
        let second = first.with_ttl(ttl);
        let a = first.register(lorem("a").with_tag("first")).await.unwrap();
        let err = second.register(lorem("a")).await.unwrap_err();
        let holder = first.registrar.owner().to_owned();
        assert!(
            matches!(&err, Error::AlreadyRegistered { holder: h, .. } if *h == holder),
            "{err}"
        );
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains(&holder), "{err}");
        // The holder's record is untouched and kept alive past its TTL.
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(
            second.instances("lorem").await.unwrap(),
            vec![lorem("a").with_tag("first")]
        );
        // A clone is the same registrar: it replaces its own record.
        let a2 = first
            .clone()
            .register(lorem("a").with_tag("again"))
            .await
            .unwrap();
        drop(a);
        // Once the holder lets the id go (here: it crashed, and the record
        // expired), the other registrar gets in.
        a2.abandon();
        tokio::time::sleep(ttl + Duration::from_millis(10)).await;
        let b = second
            .register(lorem("a").with_tag("second"))
            .await
            .unwrap();
        assert_eq!(
            first.instances("lorem").await.unwrap(),
            vec![lorem("a").with_tag("second")]
        );
        b.deregister().await.unwrap();
    }

    #[test]
    fn a_registry_is_made_outside_a_runtime() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let a = registry.register(lorem("a")).await.unwrap();
            assert_eq!(registry.instances("lorem").await.unwrap(), vec![lorem("a")]);
            a.deregister().await.unwrap();
        });
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
