//! The balancer: the live set of a service, fed by a registry watch, and the
//! choice of one instance per try.
//!
//! A background task follows [`Watcher::watch_changes`]: the first state
//! and the state after an outage replace the live set; each change after
//! that is patched into it in place (a binary search by id), keeping the
//! load and health of the other instances, so a change costs about the
//! same at 100 instances and at 100,000. Each is logged at info as
//! `instances changed service=lorem instances=N added=.. removed=..`.
//! The task ends when the last clone of the [`Balancer`] is dropped.
//!
//! **Registry outages.** An `Err` item means the registry cannot be read
//! right now: the last known set is kept and served, the outage is logged
//! once at warn (and its end at info), and [`Balancer::freshness`] says how
//! stale the set is. After [`BalancerOptions::max_staleness`] without a good
//! snapshot the set is dropped (logged at error): past that point the old
//! addresses are more likely to be wrong than right.
//!
//! **Empty set.** While the set is empty (at start-up before the first
//! registration, or when every instance is gone), a request waits for an
//! instance up to [`BalancerOptions::wait_timeout`] instead of failing at
//! once.
//!
//! **Selecting.** Only the instances that match
//! [`BalancerOptions::selector`] (tags, metadata) enter the live set.
//!
//! **Choosing.** A try goes to an instance that this request has not tried
//! yet, skipping ejected instances (see [`EjectionOptions`]) unless all of
//! them are, preferring the local zone while it is healthy enough (see
//! [`ZonePreference`]), following the [`Strategy`] (or any [`Choose`]).
//!
//! **Feedback.** [`Balancer::acquire`] hands out a [`Pick`]; the caller
//! reports how the try went (see [`pick`](crate::pick)).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use registry::diff::Change;
use registry::{Instance, WatchEvent, Watcher};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::endpoint::{EjectionOptions, Endpoint, EndpointSet, InstanceTraffic};
use crate::error::{Error, Result};
use crate::limits::{check_timeout, deadline_after};
use crate::metrics::{Metrics, RequestMetrics, ServiceMetrics};
use crate::pick::Pick;
use crate::select::{Selector, ZonePreference};
use crate::strategy::{Candidates, Choose, Strategy};

/// The default [`BalancerOptions::wait_timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default [`BalancerOptions::max_staleness`].
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(300);

/// How many changes of the set a slow [`Balancer::changes`] receiver may
/// fall behind before it misses some.
const CHANGES_BUFFER: usize = 64;

/// One change of the live set, as [`Balancer::changes`] announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetChange {
    /// When, in milliseconds since the Unix epoch (so that a test or a
    /// report can line it up with other clocks).
    pub at_unix_ms: u64,
    /// The ids in the set from then on, sorted.
    pub instances: Vec<String>,
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A snapshot of the live set: sorted by instance id, cheap to clone.
pub type Snapshot = Arc<[Instance]>;

/// Settings of a [`Balancer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerOptions {
    /// How instances are chosen.
    pub strategy: Strategy,
    /// How long a request waits for an instance while the set is empty
    /// (the cold-start timeout) before giving up with
    /// [`Error::NoInstance`]: long enough to ride out a start-up race or a
    /// rolling restart. At most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    pub wait_timeout: Duration,
    /// How long the last known set is served while the registry cannot be
    /// read; after that it is dropped. At most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    pub max_staleness: Duration,
    /// Passive outlier ejection.
    pub ejection: EjectionOptions,
    /// Which instances of the service to use (tags, metadata); the default
    /// uses every one.
    pub selector: Selector,
    /// Prefer the instances of one zone while enough of them are healthy;
    /// `None` treats every zone alike.
    pub zone: Option<ZonePreference>,
    /// Seed of the random choices of [`Strategy::Random`] and
    /// [`Strategy::P2c`]; `None` seeds from the operating system. Tests fix
    /// it to get the same choices on every run.
    pub seed: Option<u64>,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        BalancerOptions {
            strategy: Strategy::RoundRobin,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            max_staleness: DEFAULT_MAX_STALENESS,
            ejection: EjectionOptions::default(),
            selector: Selector::default(),
            zone: None,
            seed: None,
        }
    }
}

/// How current the live set is: what the gateway shows in
/// `GET /instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// True once the registry has delivered a first snapshot.
    pub synced: bool,
    /// True while the registry cannot be read: the set is the last known
    /// one.
    pub stale: bool,
    /// How long the registry has been unreachable (zero when fresh), in
    /// milliseconds.
    pub stale_ms: u64,
    /// The most stale the set may get before it is dropped, in milliseconds.
    pub max_staleness_ms: u64,
    /// True when the set was dropped for having been stale longer than the
    /// maximum; it fills again with the next good snapshot.
    pub discarded: bool,
    /// Milliseconds since the last good snapshot, if there was one.
    pub since_update_ms: Option<u64>,
    /// The last registry error of the current outage.
    pub last_error: Option<String>,
}

/// The live instances of one service and the choice among them.
///
/// Cheap to clone; clones share the set, the instances' load and health,
/// and the strategy's state.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    core: Arc<Core>,
    /// Aborts the watch task when the last balancer clone goes away.
    _task: AbortOnDrop,
}

/// What the watch task, the balancer and its picks share.
pub(crate) struct Core {
    pub(crate) service: String,
    pub(crate) options: BalancerOptions,
    /// The live set with each instance's state.
    live: watch::Sender<Arc<Live>>,
    /// The same set as plain instances, for [`Balancer::subscribe`].
    snapshots: watch::Sender<Snapshot>,
    /// Every change, for [`Balancer::changes`] (kept only while someone
    /// listens).
    changes: broadcast::Sender<SetChange>,
    /// True once a waiting request has said so, until the set fills: one
    /// log line per empty spell, not one per request.
    wait_announced: std::sync::atomic::AtomicBool,
    chooser: Box<dyn Choose>,
    /// Calls parked until an instance appears.
    waiting: AtomicUsize,
    sync: Mutex<SyncState>,
    /// Whether the chooser reads latency estimates (p2c).
    pub(crate) tracks_latency: bool,
    pub(crate) metrics: ServiceMetrics,
    /// The families `metrics` belong to, for exporters.
    families: Metrics,
}

/// The selected instances by id, in a persistent ordered map (as the
/// registry's snapshots): a change is patched in at O(log N) (a sorted
/// `Vec` moved half of 100,000 pointers per change, most of the gateway's
/// CPU per change at that size; `imbl::Vector`'s inserts in the middle
/// were slower still), and a pick that holds the old set while a change
/// comes costs the change an O(1) clone, not a copy of the set
/// ([`Arc::make_mut`]).
#[derive(Default, Clone)]
struct Live {
    endpoints: EndpointSet,
}

#[derive(Default)]
struct SyncState {
    synced: bool,
    last_update: Option<Instant>,
    outage_since: Option<Instant>,
    last_error: Option<String>,
    discarded: bool,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What [`Balancer::choose`] found.
enum Choice {
    /// An instance for this try.
    Picked(Arc<Endpoint>),
    /// The set has instances, but this request tried every one.
    AllTried,
    /// The set is empty.
    Empty,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.instances().iter().map(|i| i.id.clone()).collect();
        f.debug_struct("Balancer")
            .field("service", &self.shared.core.service)
            .field("options", &self.shared.core.options)
            .field("instances", &ids)
            .finish()
    }
}

impl Balancer {
    /// Starts following `service` through `watcher`, with metrics of its own
    /// (see [`with_metrics`](Self::with_metrics) to export them).
    ///
    /// The set starts empty and fills as soon as the watch delivers its first
    /// snapshot; requests wait for it.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if `service` is not a valid service name
    /// (see [`registry::validate_name`]): no registry could ever list an
    /// instance of it, so failing here beats a wait per request; likewise
    /// for a wait timeout or maximum staleness over
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT), or an ejection maximum shorter
    /// than its base.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (the watch runs as a task).
    pub fn new<W: Watcher + 'static>(
        watcher: W,
        service: &str,
        options: BalancerOptions,
    ) -> Result<Self> {
        Balancer::with_metrics(watcher, service, options, &Metrics::new())
    }

    /// [`new`](Self::new), counting into `metrics` under the label
    /// `service`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Panics
    /// If called outside a Tokio runtime (the watch runs as a task).
    pub fn with_metrics<W: Watcher + 'static>(
        watcher: W,
        service: &str,
        options: BalancerOptions,
        metrics: &Metrics,
    ) -> Result<Self> {
        let chooser = options.strategy.chooser(options.seed);
        Balancer::with_chooser(watcher, service, options, metrics, chooser)
    }

    /// [`with_metrics`](Self::with_metrics), choosing with `chooser` (a
    /// strategy of one's own) instead of [`BalancerOptions::strategy`].
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Panics
    /// If called outside a Tokio runtime (the watch runs as a task).
    pub fn with_chooser<W: Watcher + 'static>(
        watcher: W,
        service: &str,
        options: BalancerOptions,
        metrics: &Metrics,
        chooser: Box<dyn Choose>,
    ) -> Result<Self> {
        check_service(service)?;
        check_timeout("the wait timeout", options.wait_timeout)?;
        check_timeout("the maximum staleness", options.max_staleness)?;
        check_timeout("the ejection time", options.ejection.max)?;
        if options.ejection.max < options.ejection.base {
            return Err(Error::InvalidOptions(format!(
                "the longest ejection ({}) is shorter than the first ({})",
                humantime::format_duration(options.ejection.max),
                humantime::format_duration(options.ejection.base)
            )));
        }
        let (live, _) = watch::channel(Arc::new(Live::default()));
        let (snapshots, _) = watch::channel::<Snapshot>(Arc::from(Vec::new()));
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        if let Some(zone) = &options.zone {
            if zone.min_healthy_percent > 100 {
                return Err(Error::InvalidOptions(format!(
                    "the zone's healthy share must be from 0 to 100 percent, got {}",
                    zone.min_healthy_percent
                )));
            }
        }
        let core = Arc::new(Core {
            service: service.to_owned(),
            tracks_latency: chooser.tracks_latency(),
            chooser,
            options,
            live,
            snapshots,
            changes,
            wait_announced: std::sync::atomic::AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            sync: Mutex::new(SyncState::default()),
            metrics: metrics.for_service(service),
            families: metrics.clone(),
        });
        let task = tokio::spawn(follow(watcher, core.clone()));
        Ok(Balancer {
            shared: Arc::new(Shared {
                core,
                _task: AbortOnDrop(task),
            }),
        })
    }

    fn core(&self) -> &Core {
        &self.shared.core
    }

    /// How many requests are parked right now, waiting for an instance of
    /// the service to appear.
    pub fn waiting(&self) -> usize {
        self.core().waiting.load(Ordering::SeqCst)
    }

    /// The service this balancer follows.
    pub fn service(&self) -> &str {
        &self.core().service
    }

    /// The options it was built with.
    pub fn options(&self) -> &BalancerOptions {
        &self.core().options
    }

    /// The live set now, sorted by id (O(N): built when asked).
    pub fn instances(&self) -> Snapshot {
        self.core().instances()
    }

    /// A receiver that sees every change of the live set, for callers that
    /// wait for a condition (`receiver.wait_for(|set| set.len() == 2)`).
    /// While one is open, each change costs O(N) to build the set it sees.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        let core = self.core();
        let receiver = core.snapshots.subscribe();
        core.snapshots.send_replace(core.instances());
        receiver
    }

    /// A receiver of every change of the live set from now on (a
    /// receiver more than 64 changes behind misses the oldest; see
    /// [`broadcast::Receiver::recv`]).
    pub fn changes(&self) -> broadcast::Receiver<SetChange> {
        self.core().changes.subscribe()
    }

    /// How current the live set is.
    pub fn freshness(&self) -> Freshness {
        let now = Instant::now();
        let sync = self.core().sync();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let stale_for = sync
            .outage_since
            .map(|since| now.saturating_duration_since(since));
        Freshness {
            synced: sync.synced,
            stale: stale_for.is_some(),
            stale_ms: stale_for.map(ms).unwrap_or(0),
            max_staleness_ms: ms(self.core().options.max_staleness),
            discarded: sync.discarded,
            since_update_ms: sync
                .last_update
                .map(|at| ms(now.saturating_duration_since(at))),
            last_error: sync.last_error.clone(),
        }
    }

    /// The ids of the instances ejected right now.
    pub fn ejected(&self) -> Vec<String> {
        let now = Instant::now();
        let live = self.core().live.borrow().clone();
        live.endpoints
            .values()
            .filter(|e| e.is_ejected(now))
            .map(|e| e.instance.id.clone())
            .collect()
    }

    /// What each instance of the live set has had from this balancer
    /// (answered and failed tries, latency, in flight, ejected), in id
    /// order: the per-instance view the live page charts. See
    /// [`InstanceTraffic`] for when the counts start.
    pub fn traffic(&self) -> Vec<InstanceTraffic> {
        let now = Instant::now();
        let live = self.core().live.borrow().clone();
        live.endpoints.values().map(|e| e.traffic(now)).collect()
    }

    /// The metrics this balancer (and the clients over it) count into:
    /// register them, under a prefix, to export them.
    pub fn metrics(&self) -> &Metrics {
        &self.core().families
    }

    /// The request-level metrics of this balancer's service, for the client
    /// that makes the calls to count into.
    pub fn requests(&self) -> &RequestMetrics {
        &self.core().metrics.requests
    }

    /// Picks an instance whose id is not in `exclude`, following the
    /// strategy and skipping ejected instances unless all are; `None` if
    /// the set is empty or every instance is excluded. Never waits. Only
    /// picks with an empty `exclude` (first tries) take a round-robin turn.
    pub fn pick(&self, exclude: &[String]) -> Option<Instance> {
        match self.choose(exclude) {
            Choice::Picked(endpoint) => Some(Instance::clone(&endpoint.instance)),
            Choice::AllTried | Choice::Empty => None,
        }
    }

    /// The instance for the next request: one not in `exclude` if there is
    /// any; if every live instance is excluded, one of them anyway. While
    /// the set is empty it waits up to the wait timeout. (Retries through
    /// [`acquire`](Self::acquire) never go back to an instance they tried.)
    ///
    /// # Errors
    /// [`Error::NoInstance`] if the set stayed empty for the whole wait.
    pub async fn next(&self, exclude: &[String]) -> Result<Instance> {
        let endpoint = match self.acquire_endpoint(exclude).await? {
            Some(endpoint) => endpoint,
            // Every live instance is excluded: any of them (this waits only
            // if the set emptied in between).
            None => self
                .acquire_endpoint(&[])
                .await?
                .ok_or_else(|| self.no_instance())?,
        };
        Ok(Instance::clone(&endpoint.instance))
    }

    /// Chooses an instance for one try, without waiting or allocating.
    fn choose(&self, tried: &[String]) -> Choice {
        let live = self.core().live.borrow().clone();
        if live.endpoints.is_empty() {
            return Choice::Empty;
        }
        let untried = |e: &Endpoint| !tried.contains(&e.instance.id);
        if !tried.is_empty() && !live.endpoints.values().any(|e| untried(e)) {
            return Choice::AllTried;
        }
        let now = Instant::now();
        let admitted = |e: &Endpoint| untried(e) && !e.is_ejected(now);
        let local_admitted = |e: &Endpoint| e.local && admitted(e);
        // The local zone while it is healthy enough and has an untried
        // instance; otherwise every zone.
        let local = self.core().options.zone.as_ref().is_some_and(|zone| {
            let (mut total, mut healthy, mut usable) = (0, 0, false);
            for e in live.endpoints.values().filter(|e| e.local) {
                total += 1;
                if !e.is_ejected(now) {
                    healthy += 1;
                    usable |= untried(e);
                }
            }
            usable && zone.holds(healthy, total)
        });
        // Every candidate ejected: trying one beats failing fast.
        let admit: &dyn Fn(&Endpoint) -> bool = if local {
            &local_admitted
        } else if live.endpoints.values().any(|e| admitted(e)) {
            &admitted
        } else {
            &untried
        };
        let candidates = Candidates::new(&live.endpoints, admit);
        if candidates.is_empty() {
            return Choice::AllTried;
        }
        let chosen = self.core().chooser.choose(&candidates, tried.is_empty());
        Choice::Picked(chosen.endpoint().clone())
    }

    /// An instance for one try, not one of `tried` (ids), counted in flight
    /// until the returned [`Pick`] is reported or dropped: see
    /// [`pick`](crate::pick). While the set is empty it waits up to the
    /// wait timeout. `Ok(None)` when the set has instances but every one
    /// is in `tried`: the request has nowhere left to go.
    ///
    /// # Errors
    /// [`Error::NoInstance`] if the set stayed empty for the whole wait.
    pub async fn acquire(&self, tried: &[String]) -> Result<Option<Pick>> {
        Ok(self
            .acquire_endpoint(tried)
            .await?
            .map(|endpoint| Pick::new(endpoint, self.shared.core.clone())))
    }

    /// [`acquire`](Self::acquire), before the in-flight count.
    async fn acquire_endpoint(&self, tried: &[String]) -> Result<Option<Arc<Endpoint>>> {
        match self.choose(tried) {
            Choice::Picked(endpoint) => return Ok(Some(endpoint)),
            Choice::AllTried => return Ok(None),
            Choice::Empty => {}
        }
        let core = self.core();
        let waited_from = Instant::now();
        // Cannot overflow, even for a wait timeout that `new` would refuse.
        let deadline = deadline_after(core.options.wait_timeout);
        let mut changes = core.live.subscribe();
        // Counts this call in `waiting` from its first empty look until it
        // returns or is dropped.
        let _parked = Parked::new(&core.waiting);
        if !core.wait_announced.swap(true, Ordering::SeqCst) {
            tracing::info!(service = %core.service, wait_timeout = ?core.options.wait_timeout,
                "no instance available yet; requests wait for one to register");
        }
        loop {
            changes.borrow_and_update();
            match self.choose(tried) {
                Choice::Picked(endpoint) => {
                    tracing::debug!(service = %core.service, waited = ?waited_from.elapsed(),
                        "an instance appeared; sending the request");
                    return Ok(Some(endpoint));
                }
                Choice::AllTried => return Ok(None),
                Choice::Empty => {}
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    // The watch task is gone: nothing will ever change.
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Err(_) => break,
            }
        }
        Err(self.no_instance())
    }

    fn no_instance(&self) -> Error {
        Error::NoInstance {
            service: self.core().service.clone(),
            waited: self.core().options.wait_timeout,
        }
    }
}

impl Core {
    fn sync(&self) -> MutexGuard<'_, SyncState> {
        // Each update leaves the state consistent: poisoning is harmless.
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the set is to be dropped for staleness, if an outage is under
    /// way and the set has not been dropped yet.
    fn discard_at(&self) -> Option<Instant> {
        let sync = self.sync();
        if sync.discarded {
            return None;
        }
        let since = sync.outage_since?;
        Some(
            since
                .checked_add(self.options.max_staleness)
                .unwrap_or_else(|| deadline_after(self.options.max_staleness)),
        )
    }

    /// A good snapshot arrived.
    fn update(&self, snapshot: &registry::Snapshot, first: bool) {
        // In id order, as the snapshot keeps them.
        let instances: Vec<Arc<Instance>> = snapshot
            .iter_shared()
            .filter(|instance| self.options.selector.matches(instance))
            .cloned()
            .collect();
        let unselected = snapshot.len() - instances.len();
        self.metrics.updates.inc();
        let was_discarded = {
            let mut sync = self.sync();
            let now = Instant::now();
            if let Some(since) = sync.outage_since.take() {
                tracing::info!(
                    service = %self.service,
                    outage = ?now.saturating_duration_since(since),
                    instances = instances.len(),
                    "registry reachable again; the instance set is fresh"
                );
            }
            sync.synced = true;
            sync.last_update = Some(now);
            sync.last_error = None;
            std::mem::take(&mut sync.discarded)
        };
        self.metrics.stale_seconds.set(0.0);
        let current = self.live.borrow().clone();
        let unchanged = current.endpoints.len() == instances.len()
            && current
                .endpoints
                .values()
                .zip(&instances)
                .all(|(e, i)| e.instance == *i);
        if unchanged && !first && !was_discarded {
            return;
        }
        // By id, so that a set of thousands is diffed in linear time.
        let before = &current.endpoints;
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        let after: HashSet<&str> = ids.iter().copied().collect();
        let added: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !before.contains_key(*id))
            .collect();
        let removed: Vec<&str> = current
            .endpoints
            .values()
            .map(|e| e.instance.id.as_str())
            .filter(|id| !after.contains(id))
            .collect();
        tracing::info!(
            service = %self.service,
            instances = instances.len(),
            unselected,
            added = %IdList(&added),
            removed = %IdList(&removed),
            "instances changed"
        );
        tracing::debug!(service = %self.service, ids = %ids.join(","), "the synced set");
        if unchanged {
            return;
        }
        // Keep the load and health of instances whose record is the same.
        let endpoints: EndpointSet = instances
            .iter()
            .map(|instance| {
                let endpoint = match before.get(instance.id.as_str()) {
                    Some(kept) if kept.instance == *instance => Arc::clone(kept),
                    _ => Arc::new(self.endpoint(Arc::clone(instance))),
                };
                (Arc::from(instance.id.as_str()), endpoint)
            })
            .collect();
        self.metrics.changes.inc();
        self.metrics
            .instances
            .set(i64::try_from(endpoints.len()).unwrap_or(i64::MAX));
        let waiting = self.waiting.load(Ordering::SeqCst);
        if !endpoints.is_empty() && self.wait_announced.swap(false, Ordering::SeqCst) && waiting > 0
        {
            tracing::info!(service = %self.service, waiting, "an instance appeared; waiting requests go ahead");
        }
        self.live.send_replace(Arc::new(Live { endpoints }));
        self.announce_set();
    }

    /// Changes arrived (no outage under way: the stream sends the full
    /// state after one): each is patched into the live set in place, with
    /// the endpoints of the other instances (their load and health) kept.
    fn apply(&self, changes: &[Change], snapshot: &registry::Snapshot) {
        self.metrics.updates.inc();
        {
            let mut sync = self.sync();
            sync.synced = true;
            sync.last_update = Some(Instant::now());
        }
        let mut moved = false;
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        self.live.send_if_modified(|live| {
            let endpoints = &mut Arc::make_mut(live).endpoints;
            for change in changes {
                let instance = change.instance();
                // The snapshot's own instance, so that the set shares it.
                let shared = || {
                    snapshot
                        .get_shared(&instance.id)
                        .filter(|shared| ***shared == *instance)
                        .map_or_else(|| Arc::new(instance.clone()), Arc::clone)
                };
                let id = instance.id.as_str();
                let selected = !matches!(change, Change::Removed(_))
                    && self.options.selector.matches(instance);
                match (endpoints.get(id), selected) {
                    (Some(kept), true) if *kept.instance == *instance => continue,
                    (Some(_), true) => {
                        endpoints.insert(Arc::from(id), Arc::new(self.endpoint(shared())));
                    }
                    (None, true) => {
                        endpoints.insert(Arc::from(id), Arc::new(self.endpoint(shared())));
                        added.push(id);
                    }
                    (Some(_), false) => {
                        endpoints.remove(id);
                        removed.push(id);
                    }
                    (None, false) => continue,
                }
                moved = true;
            }
            moved
        });
        if !moved {
            return;
        }
        self.metrics.changes.inc();
        let len = self.live.borrow().endpoints.len();
        tracing::info!(service = %self.service, instances = len, added = %IdList(&added),
            removed = %IdList(&removed), "instances changed");
        self.metrics
            .instances
            .set(i64::try_from(len).unwrap_or(i64::MAX));
        let waiting = self.waiting.load(Ordering::SeqCst);
        if len > 0 && self.wait_announced.swap(false, Ordering::SeqCst) && waiting > 0 {
            tracing::info!(service = %self.service, waiting, "an instance appeared; waiting requests go ahead");
        }
        self.announce_set();
    }

    /// A fresh endpoint for `instance`.
    fn endpoint(&self, instance: Arc<Instance>) -> Endpoint {
        let local = self
            .options
            .zone
            .as_ref()
            .is_some_and(|zone| zone.is_local(&instance));
        Endpoint::new(instance, local)
    }

    /// The live set as plain instances, sorted by id: O(N).
    fn instances(&self) -> Snapshot {
        let live = self.live.borrow().clone();
        live.endpoints
            .values()
            .map(|e| Instance::clone(&e.instance))
            .collect()
    }

    /// Tells the listeners of [`Balancer::changes`] and
    /// [`Balancer::subscribe`], if any, about the new set (O(N) each, so
    /// only while someone listens).
    fn announce_set(&self) {
        if self.changes.receiver_count() > 0 {
            let ids = self
                .live
                .borrow()
                .endpoints
                .keys()
                .map(|id| id.to_string())
                .collect();
            self.announce(ids);
        }
        if self.snapshots.receiver_count() > 0 {
            self.snapshots.send_replace(self.instances());
        }
    }

    /// Tells [`Balancer::changes`] receivers, if any, about a new set.
    fn announce(&self, instances: Vec<String>) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(SetChange {
                at_unix_ms: unix_ms(),
                instances,
            });
        }
    }

    /// Brings the staleness gauge up to date.
    fn refresh_staleness(&self) {
        let stale = self
            .sync()
            .outage_since
            .map(|since| since.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.stale_seconds.set(stale);
    }

    /// The watch reported an error: keep the set, remember the outage.
    fn failed(&self, error: &registry::Error) {
        self.metrics.registry_errors.inc();
        self.metrics.errors_event.inc();
        let kept = self.live.borrow().endpoints.len();
        let mut sync = self.sync();
        if sync.outage_since.is_none() {
            sync.outage_since = Some(Instant::now());
            tracing::warn!(
                service = %self.service,
                %error,
                kept,
                max_staleness = ?self.options.max_staleness,
                "registry unreachable; serving the last known instances"
            );
        } else {
            tracing::debug!(service = %self.service, %error, kept, "registry still unreachable");
        }
        sync.last_error = Some(error.to_string());
    }

    /// The outage outlasted the maximum staleness: drop the set.
    fn discard(&self) {
        let stale_for = {
            let mut sync = self.sync();
            sync.discarded = true;
            sync.outage_since.map(|since| since.elapsed())
        };
        let dropped = self.live.borrow().endpoints.len();
        if dropped > 0 {
            tracing::error!(
                service = %self.service,
                stale_for = ?stale_for.unwrap_or_default(),
                max_staleness = ?self.options.max_staleness,
                dropped,
                "registry unreachable for longer than the maximum staleness; \
                 dropping the last known instances (requests wait for the registry)"
            );
        }
        self.metrics.discards.inc();
        self.metrics.instances.set(0);
        self.live.send_replace(Arc::new(Live::default()));
        self.announce_set();
    }
}

/// Checks that `service` is a name a registry can hold, so that a caller
/// can refuse a bad name before anything connects.
///
/// # Errors
/// [`Error::InvalidOptions`] saying what the name must match.
pub fn check_service(service: &str) -> Result<()> {
    registry::validate_name("service", service).map_err(|error| {
        Error::InvalidOptions(match error {
            registry::Error::InvalidInstance(message) => message,
            other => other.to_string(),
        })
    })
}

/// One parked call, counted while it lives.
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Parked(counter)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The watch task: turns snapshots into the live set, and drops a set that
/// has been stale for too long.
async fn follow<W: Watcher>(watcher: W, core: Arc<Core>) {
    // The change stream: O(1)-ish work per change (see `Live`), the full
    // state only first and after an outage.
    let mut stream = watcher.watch_changes(&core.service);
    let mut first = true;
    loop {
        let discard_at = core.discard_at();
        let in_outage = core.sync().outage_since.is_some();
        let item = tokio::select! {
            item = stream.next() => item,
            () = sleep_until(discard_at), if discard_at.is_some() => {
                core.discard();
                continue;
            }
            // The staleness gauge grows while the outage lasts.
            () = tokio::time::sleep(Duration::from_secs(1)), if in_outage => {
                core.refresh_staleness();
                continue;
            }
        };
        match item {
            Some(WatchEvent::Synced(snapshot)) => {
                core.update(&snapshot, first);
                first = false;
            }
            Some(WatchEvent::Changed { changes, snapshot }) => core.apply(&changes, &snapshot),
            Some(WatchEvent::Outage(error)) => {
                core.failed(&error);
                core.refresh_staleness();
            }
            None => break,
        }
    }
    tracing::error!(service = %core.service, "the registry watch ended; the instance set is frozen");
    // Keep the watcher alive so that the set stays readable.
    let _watcher = watcher;
    std::future::pending::<()>().await;
}

/// Ids for a log line: the first few and how many more, so that the
/// first sync of a service of 100,000 instances logs one short line.
struct IdList<'a>(&'a [&'a str]);

impl fmt::Display for IdList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        let mut ids = self.0.iter();
        for (n, id) in ids.by_ref().take(SHOWN).enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            f.write_str(id)?;
        }
        match ids.len() {
            0 => Ok(()),
            more => write!(f, " and {more} more"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
