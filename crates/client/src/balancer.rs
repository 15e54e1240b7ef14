//! The balancer: the live set of a service, fed by a registry watch, and the
//! choice of one instance per request.
//!
//! A background task follows [`Watcher::watch`]: every `Ok` snapshot
//! replaces the live set (and is logged as `service=lorem instances=N` when
//! it differs from the last one); an `Err` item is logged and the last good
//! set is kept, so a registry hiccup does not empty the client. The task
//! ends when the last clone of the [`Balancer`] is dropped.
//!
//! While the set is empty (at start-up before the first registration, or
//! when every instance is gone), [`Balancer::next`] waits for an instance up
//! to [`BalancerOptions::wait_timeout`] instead of failing at once.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use registry::{Instance, Watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::limits::{check_timeout, deadline_after};

/// The default [`BalancerOptions::wait_timeout`].
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A snapshot of the live set: sorted by instance id, cheap to clone.
pub type Snapshot = Arc<[Instance]>;

/// How the balancer spreads requests over the live set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Each instance in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin (nginx's): instance `i` gets
    /// `weight_i / sum(weights)` of the requests, interleaved rather than in
    /// bursts.
    WeightedRoundRobin,
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "round-robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "weighted" | "weighted-round-robin" | "wrr" => Ok(Strategy::WeightedRoundRobin),
            _ => Err(Error::InvalidOptions(format!(
                "unknown strategy {s:?}; expected round-robin or weighted"
            ))),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::WeightedRoundRobin => "weighted",
        })
    }
}

/// Settings of a [`Balancer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerOptions {
    /// How instances are chosen.
    pub strategy: Strategy,
    /// How long [`Balancer::next`] waits for an instance while the set is
    /// empty before giving up with [`Error::NoInstance`]: long enough to
    /// ride out a start-up race or a rolling restart. At most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    pub wait_timeout: Duration,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        BalancerOptions {
            strategy: Strategy::RoundRobin,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
        }
    }
}

/// The live instances of one service and the choice among them.
///
/// Cheap to clone; clones share the set and the round-robin position.
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    service: String,
    options: BalancerOptions,
    set: watch::Receiver<Snapshot>,
    picker: Mutex<Picker>,
    /// Calls of [`Balancer::next`] parked until an instance appears.
    waiting: AtomicUsize,
    /// Aborts the watch task when the last balancer clone goes away.
    _task: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
struct Picker {
    /// Position of plain round-robin.
    next: usize,
    /// Current weights of smooth weighted round-robin, by instance id.
    current: HashMap<String, i64>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.instances().iter().map(|i| i.id.clone()).collect();
        f.debug_struct("Balancer")
            .field("service", &self.shared.service)
            .field("options", &self.shared.options)
            .field("instances", &ids)
            .finish()
    }
}

impl Balancer {
    /// Starts following `service` through `watcher`.
    ///
    /// The set starts empty and fills as soon as the watch delivers its first
    /// snapshot; [`next`](Self::next) waits for it.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] if `service` is not a valid service name
    /// (see [`registry::validate_name`]): no registry could ever list an
    /// instance of it, so failing here beats a wait per request; likewise
    /// for a wait timeout over [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    ///
    /// # Panics
    /// If called outside a Tokio runtime (the watch runs as a task).
    pub fn new<W: Watcher + 'static>(
        watcher: W,
        service: &str,
        options: BalancerOptions,
    ) -> Result<Self> {
        check_service(service)?;
        check_timeout("the wait timeout", options.wait_timeout)?;
        let (tx, rx) = watch::channel::<Snapshot>(Arc::from(Vec::new()));
        let task = tokio::spawn(follow(watcher, service.to_owned(), tx));
        Ok(Balancer {
            shared: Arc::new(Shared {
                service: service.to_owned(),
                options,
                set: rx,
                picker: Mutex::new(Picker::default()),
                waiting: AtomicUsize::new(0),
                _task: AbortOnDrop(task),
            }),
        })
    }

    /// How many calls of [`next`](Self::next) (requests) are parked right
    /// now, waiting for an instance of the service to appear.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// The service this balancer follows.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The options it was built with.
    pub fn options(&self) -> &BalancerOptions {
        &self.shared.options
    }

    /// The live set now, sorted by id.
    pub fn instances(&self) -> Snapshot {
        self.shared.set.borrow().clone()
    }

    /// A receiver that sees every change of the live set, for callers that
    /// wait for a condition (`receiver.wait_for(|set| set.len() == 2)`).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.set.clone()
    }

    /// Picks an instance whose id is not in `exclude`, following the
    /// strategy; `None` if the set is empty or every instance is excluded.
    /// Never waits. With round-robin, only picks with an empty `exclude`
    /// (first tries) move the turn on.
    pub fn pick(&self, exclude: &[String]) -> Option<Instance> {
        let set = self.instances();
        let candidates: Vec<&Instance> = set.iter().filter(|i| !exclude.contains(&i.id)).collect();
        if candidates.is_empty() {
            return None;
        }
        // A panic while holding the lock cannot leave the picker in a state
        // worse than an uneven turn, so poisoning is ignored.
        let mut picker = self.shared.picker.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = match self.shared.options.strategy {
            Strategy::RoundRobin => {
                let index = picker.next % candidates.len();
                // Only first tries take a turn: if retries did too, every
                // request after a crash would start on the dead instance.
                if exclude.is_empty() {
                    picker.next = picker.next.wrapping_add(1);
                }
                candidates[index]
            }
            Strategy::WeightedRoundRobin => {
                picker
                    .current
                    .retain(|id, _| set.iter().any(|i| i.id == *id));
                let total: i64 = candidates.iter().map(|i| i64::from(i.weight.max(1))).sum();
                let mut best: Option<(&Instance, i64)> = None;
                for instance in &candidates {
                    let current = picker.current.entry(instance.id.clone()).or_insert(0);
                    *current += i64::from(instance.weight.max(1));
                    if best.is_none_or(|(_, w)| *current > w) {
                        best = Some((instance, *current));
                    }
                }
                let (chosen, _) = best?;
                if let Some(current) = picker.current.get_mut(&chosen.id) {
                    *current -= total;
                }
                chosen
            }
        };
        Some(chosen.clone())
    }

    /// The instance for the next request: one not in `exclude` if there is
    /// any; if every live instance is excluded (they all failed this
    /// request already), one of them anyway, since retrying there beats
    /// failing. While the set is empty it waits up to the wait timeout.
    ///
    /// # Errors
    /// [`Error::NoInstance`] if the set stayed empty for the whole wait.
    pub async fn next(&self, exclude: &[String]) -> Result<Instance> {
        let waited_from = Instant::now();
        // Cannot overflow, even for a wait timeout that `new` would refuse.
        let deadline = deadline_after(self.shared.options.wait_timeout);
        let mut changes = self.shared.set.clone();
        let mut logged = false;
        // Counts this call in `waiting` from its first empty look until it
        // returns or is dropped.
        let mut parked: Option<Parked<'_>> = None;
        loop {
            changes.borrow_and_update();
            if let Some(instance) = self.pick(exclude).or_else(|| self.pick(&[])) {
                if logged {
                    tracing::info!(service = %self.shared.service, waited = ?waited_from.elapsed(),
                        "an instance appeared; sending the request");
                }
                return Ok(instance);
            }
            if parked.is_none() {
                parked = Some(Parked::new(&self.shared.waiting));
            }
            if !logged {
                tracing::info!(service = %self.shared.service,
                    wait_timeout = ?self.shared.options.wait_timeout,
                    "no instance available yet; waiting for one to register");
                logged = true;
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
        Err(Error::NoInstance {
            service: self.shared.service.clone(),
            waited: self.shared.options.wait_timeout,
        })
    }
}

/// Checks that `service` is a name a registry can hold.
pub(crate) fn check_service(service: &str) -> Result<()> {
    registry::validate_name("service", service).map_err(|error| {
        Error::InvalidOptions(match error {
            registry::Error::InvalidInstance(message) => message,
            other => other.to_string(),
        })
    })
}

/// One parked [`Balancer::next`] call, counted while it lives.
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

/// The watch task: turns snapshots into the live set.
async fn follow<W: Watcher>(watcher: W, service: String, tx: watch::Sender<Snapshot>) {
    let mut stream = watcher.watch(&service);
    let mut first = true;
    while let Some(item) = stream.next().await {
        match item {
            Ok(mut instances) => {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                let changed = **tx.borrow() != *instances;
                if changed || first {
                    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
                    tracing::info!(
                        service = %service,
                        instances = instances.len(),
                        ids = %ids.join(","),
                        "instances changed"
                    );
                }
                first = false;
                if changed {
                    tx.send_replace(Arc::from(instances));
                }
            }
            Err(error) => {
                tracing::warn!(
                    service = %service,
                    %error,
                    kept = tx.borrow().len(),
                    "discovery error; keeping the last known instances"
                );
            }
        }
    }
    tracing::error!(service = %service, "the registry watch ended; the instance set is frozen");
    // Keep the sender (and the watcher) alive so that the set stays readable.
    std::future::pending::<()>().await;
}
