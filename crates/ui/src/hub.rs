//! The page's state and its fan-out: one [`Hub`] per process, fed by the
//! watch the process already holds, read by any number of viewers.
//!
//! Every change (a snapshot, an outage, a traffic reading) updates the
//! state, which is serialised to JSON once and put in a
//! [`tokio::sync::watch`] channel. Each viewer's event stream reads that
//! channel: a viewer costs one clone of an `Arc<str>` per change, and the
//! registry nothing. A slow viewer skips intermediate states rather than
//! queueing them (each state is complete, the timeline included).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use balancer::{Freshness, InstanceTraffic};
use registry::Instance;
use registry::diff::{Change, by_id, diff};
use serde::Serialize;
use tokio::sync::watch;

/// How many events the timeline keeps (the oldest go first).
pub const TIMELINE_LEN: usize = 200;

/// How many traffic readings the chart keeps per instance (two minutes at
/// the gateway's one reading a second).
pub const CHART_POINTS: usize = 120;

/// The metadata key that names an instance's zone (the balancer's).
const ZONE_KEY: &str = balancer::select::ZONE_KEY;

/// The shared state of one page; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("viewers", &self.inner.page.receiver_count())
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    /// The state as JSON, as sent to viewers: rendered at each change while
    /// someone views the page, else once someone asks (a gateway of 50,000
    /// instances nobody looks at does not serialise them at every change).
    page: watch::Sender<Arc<str>>,
    /// The state changed since `page` was last rendered.
    dirty: AtomicBool,
}

/// What the page shows, before serialisation.
struct State {
    title: String,
    /// `registry` (sdctl ui) or `gateway` (with traffic).
    source: &'static str,
    /// Whether the registry's list of services could be read (sdctl ui);
    /// the gateway follows one service and never lists them.
    listing: Health,
    services: BTreeMap<String, ServiceState>,
    events: VecDeque<Event>,
    next_seq: u64,
}

#[derive(Default)]
struct ServiceState {
    synced: bool,
    instances: BTreeMap<String, Instance>,
    health: Health,
    /// The last traffic reading of each instance, with what the page shows.
    traffic: BTreeMap<String, Reading>,
    /// Request rate per instance over time, for the chart.
    rates: BTreeMap<String, VecDeque<(u64, f64)>>,
}

/// Whether a registry read is current: fresh, or stale since a time, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// When the outage began (ms since the Unix epoch); `None` when fresh.
    pub stale_since_unix_ms: Option<u64>,
    /// The registry's last error during the outage.
    pub last_error: Option<String>,
    /// True when the last known set was dropped after the maximum
    /// staleness (the gateway's balancer).
    pub discarded: bool,
}

impl Health {
    /// Fresh: the last read succeeded.
    pub fn fresh() -> Self {
        Health::default()
    }

    /// What a balancer's [`Freshness`] says, read at `now_unix_ms`.
    pub fn from_freshness(freshness: &Freshness, now_unix_ms: u64) -> Self {
        Health {
            stale_since_unix_ms: freshness
                .stale
                .then(|| now_unix_ms.saturating_sub(freshness.stale_ms)),
            last_error: freshness.last_error.clone(),
            discarded: freshness.discarded,
        }
    }
}

struct Reading {
    at_unix_ms: u64,
    raw: InstanceTraffic,
    view: TrafficView,
}

/// One entry of the timeline.
#[derive(Debug, Clone, Serialize)]
struct Event {
    seq: u64,
    at_unix_ms: u64,
    /// `added`, `removed`, `changed`, `ejected`, `readmitted`,
    /// `outage-start`, `outage-end`.
    kind: &'static str,
    service: String,
    instance: Option<String>,
    detail: String,
}

/// What the page gets: the whole state, as JSON.
#[derive(Serialize)]
struct View<'a> {
    title: &'a str,
    source: &'static str,
    generated_unix_ms: u64,
    registry: RegistryView,
    services: Vec<ServiceView<'a>>,
    events: Vec<&'a Event>,
    chart: Vec<Series<'a>>,
}

#[derive(Serialize)]
struct RegistryView {
    synced: bool,
    stale: bool,
    stale_since_unix_ms: Option<u64>,
    /// Why it is stale, in the registry's words, naming the service.
    reason: Option<String>,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    count: usize,
    synced: bool,
    #[serde(flatten)]
    health: &'a Health,
    instances: Vec<InstanceView<'a>>,
}

#[derive(Serialize)]
struct InstanceView<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    authority: String,
    zone: Option<&'a str>,
    traffic: Option<&'a TrafficView>,
}

/// Traffic of one instance over the last reading interval (gateway only).
#[derive(Debug, Clone, Default, Serialize)]
struct TrafficView {
    /// Tries per second (answered and failed).
    rate_per_s: f64,
    /// Failed tries per second.
    errors_per_s: f64,
    /// Mean latency of the answered tries, in milliseconds.
    latency_ms: Option<f64>,
    answered_total: u64,
    failed_total: u64,
    in_flight: usize,
    ejected: bool,
}

#[derive(Serialize)]
struct Series<'a> {
    label: String,
    points: &'a VecDeque<(u64, f64)>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update leaves the state whole; a panic elsewhere cannot leave it
    // half-written in a way worth refusing to show.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub for a page titled `title`; `source` is `registry` (every
    /// service, no traffic) or `gateway` (one service, with traffic).
    pub fn new(title: impl Into<String>, source: &'static str) -> Self {
        let state = State {
            title: title.into(),
            source,
            listing: Health::fresh(),
            services: BTreeMap::new(),
            events: VecDeque::new(),
            next_seq: 1,
        };
        let (page, _) = watch::channel(Arc::from(render(&state).as_str()));
        Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                page,
                dirty: AtomicBool::new(false),
            }),
        }
    }

    /// The page state as JSON now and at every change: what each viewer's
    /// event stream reads.
    pub fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        let page = self.inner.page.subscribe();
        self.render_if_dirty();
        page
    }

    /// The page state as JSON now.
    pub fn current(&self) -> Arc<str> {
        self.render_if_dirty();
        self.inner.page.borrow().clone()
    }

    /// Renders the page if the state changed since it was last rendered.
    fn render_if_dirty(&self) {
        if self.inner.dirty.swap(false, Ordering::AcqRel) {
            let state = lock(&self.inner.state);
            self.inner
                .page
                .send_replace(Arc::from(render(&state).as_str()));
        }
    }

    /// How many viewers are connected.
    pub fn viewers(&self) -> usize {
        self.inner.page.receiver_count()
    }

    fn update(&self, apply: impl FnOnce(&mut State, u64)) {
        apply(&mut lock(&self.inner.state), balancer::unix_ms());
        // Marked before the viewers are counted: a viewer subscribing in
        // between finds the mark and renders (see `subscribe`).
        self.inner.dirty.store(true, Ordering::Release);
        if self.inner.page.receiver_count() > 0 {
            self.render_if_dirty();
        }
    }

    /// A new snapshot of `service`: the timeline gets one event per
    /// instance added, removed or changed since the last one.
    pub fn instances(&self, service: &str, instances: &[Instance]) {
        self.update(|state, now| {
            let entry = state.services.entry(service.to_owned()).or_default();
            entry.synced = true;
            let changes = diff(&entry.instances, instances);
            entry.instances = by_id(instances);
            let live = &entry.instances;
            entry.traffic.retain(|id, _| live.contains_key(id));
            entry.rates.retain(|id, _| live.contains_key(id));
            for change in changes {
                let instance = change.instance();
                let detail = match &change {
                    Change::Added(i) | Change::Changed(i) => i.authority(),
                    Change::Removed(i) => format!("{} left", i.authority()),
                };
                let id = Some(instance.id.clone());
                state.push(now, change.event(), service, id, detail);
            }
        });
    }

    /// Whether `service`'s watch is current: an outage starting or ending
    /// goes on the timeline.
    pub fn health(&self, service: &str, health: Health) {
        self.update(|state, now| {
            let entry = state.services.entry(service.to_owned()).or_default();
            let was_stale = entry.health.stale_since_unix_ms.is_some();
            let is_stale = health.stale_since_unix_ms.is_some();
            let event = match (was_stale, is_stale) {
                (false, true) => Some((
                    "outage-start",
                    format!(
                        "registry unreachable; the instances shown are the last known: {}",
                        health.last_error.as_deref().unwrap_or("no answer")
                    ),
                )),
                (true, false) => {
                    let lasted = entry
                        .health
                        .stale_since_unix_ms
                        .map(|since| now.saturating_sub(since))
                        .unwrap_or(0);
                    Some((
                        "outage-end",
                        format!(
                            "registry reachable again after {:.1} s",
                            lasted as f64 / 1e3
                        ),
                    ))
                }
                _ => None,
            };
            entry.health = health;
            if let Some((kind, detail)) = event {
                state.push(now, kind, service, None, detail);
            }
        });
    }

    /// Whether the registry's list of services could be read (`sdctl ui`);
    /// an outage keeps the time it began.
    pub fn listing(&self, mut health: Health) {
        self.update(|state, _| {
            if let (Some(was), Some(is)) = (
                state.listing.stale_since_unix_ms,
                health.stale_since_unix_ms,
            ) {
                health.stale_since_unix_ms = Some(was.min(is));
            }
            state.listing = health;
        });
    }

    /// Forgets `service` (it has no instances and the registry no longer
    /// lists it).
    pub fn forget(&self, service: &str) {
        self.update(|state, _| {
            state.services.remove(service);
        });
    }

    /// A traffic reading of `service`'s instances from its balancer: rates
    /// over the time since the last reading; an instance ejected or
    /// readmitted since goes on the timeline.
    pub fn traffic(&self, service: &str, readings: &[InstanceTraffic]) {
        self.update(|state, now| {
            let entry = state.services.entry(service.to_owned()).or_default();
            let mut events = Vec::new();
            for raw in readings {
                let previous = entry.traffic.get(&raw.id);
                let view = rates(previous, raw, now);
                let was_ejected = previous.is_some_and(|p| p.raw.ejected);
                if raw.ejected != was_ejected {
                    let (kind, detail) = if raw.ejected {
                        (
                            "ejected",
                            format!("after {} failed tries in all", raw.failed),
                        )
                    } else {
                        ("readmitted", "back among the candidates".to_owned())
                    };
                    events.push((kind, raw.id.clone(), detail));
                }
                let points = entry.rates.entry(raw.id.clone()).or_default();
                if previous.is_some() {
                    points.push_back((now, view.rate_per_s));
                    while points.len() > CHART_POINTS {
                        points.pop_front();
                    }
                }
                entry.traffic.insert(
                    raw.id.clone(),
                    Reading {
                        at_unix_ms: now,
                        raw: raw.clone(),
                        view,
                    },
                );
            }
            for (kind, id, detail) in events {
                state.push(now, kind, service, Some(id), detail);
            }
        });
    }
}

/// The rates between `previous` and `raw`; counts that went down belong
/// to a new record of the instance (the balancer starts them again).
fn rates(previous: Option<&Reading>, raw: &InstanceTraffic, now: u64) -> TrafficView {
    let mut view = TrafficView {
        answered_total: raw.answered,
        failed_total: raw.failed,
        in_flight: raw.in_flight,
        ejected: raw.ejected,
        ..TrafficView::default()
    };
    let Some(previous) = previous else {
        return view;
    };
    let seconds = now.saturating_sub(previous.at_unix_ms) as f64 / 1e3;
    if seconds <= 0.0 {
        return previous.view.clone();
    }
    let restarted = raw.answered < previous.raw.answered || raw.failed < previous.raw.failed;
    let (answered, failed, latency) = if restarted {
        (raw.answered, raw.failed, raw.latency_total)
    } else {
        (
            raw.answered - previous.raw.answered,
            raw.failed - previous.raw.failed,
            raw.latency_total.saturating_sub(previous.raw.latency_total),
        )
    };
    view.rate_per_s = (answered + failed) as f64 / seconds;
    view.errors_per_s = failed as f64 / seconds;
    view.latency_ms = (answered > 0).then(|| latency.as_secs_f64() * 1e3 / answered as f64);
    view
}

impl State {
    fn push(
        &mut self,
        now: u64,
        kind: &'static str,
        service: &str,
        instance: Option<String>,
        detail: String,
    ) {
        self.events.push_back(Event {
            seq: self.next_seq,
            at_unix_ms: now,
            kind,
            service: service.to_owned(),
            instance,
            detail,
        });
        self.next_seq += 1;
        while self.events.len() > TIMELINE_LEN {
            self.events.pop_front();
        }
    }
}

fn render(state: &State) -> String {
    let stale = state
        .services
        .iter()
        .filter_map(|(name, s)| {
            s.health
                .stale_since_unix_ms
                .map(|since| (since, name.as_str(), &s.health))
        })
        .min_by_key(|(since, _, _)| *since);
    let registry = match (&state.listing.stale_since_unix_ms, stale) {
        (Some(since), _) => RegistryView {
            synced: true,
            stale: true,
            stale_since_unix_ms: Some(*since),
            reason: Some(format!(
                "listing the services failed: {}",
                state.listing.last_error.as_deref().unwrap_or("no answer")
            )),
        },
        (None, Some((since, name, health))) => RegistryView {
            synced: true,
            stale: true,
            stale_since_unix_ms: Some(since),
            reason: Some(format!(
                "watch of {name}: {}{}",
                health.last_error.as_deref().unwrap_or("no answer"),
                if health.discarded {
                    " (the last known set was dropped after the maximum staleness)"
                } else {
                    ""
                }
            )),
        },
        (None, None) => RegistryView {
            synced: !state.services.is_empty() && state.services.values().all(|s| s.synced),
            stale: false,
            stale_since_unix_ms: None,
            reason: None,
        },
    };
    let services = state
        .services
        .iter()
        .map(|(name, s)| ServiceView {
            name,
            count: s.instances.len(),
            synced: s.synced,
            health: &s.health,
            instances: s
                .instances
                .values()
                .map(|i| InstanceView {
                    instance: i,
                    authority: i.authority(),
                    zone: i.metadata.get(ZONE_KEY).map(String::as_str),
                    traffic: s.traffic.get(&i.id).map(|r| &r.view),
                })
                .collect(),
        })
        .collect();
    let chart = state
        .services
        .iter()
        .flat_map(|(name, s)| {
            s.rates.iter().map(move |(id, points)| Series {
                label: format!("{name}/{id}"),
                points,
            })
        })
        .collect();
    let view = View {
        title: &state.title,
        source: state.source,
        generated_unix_ms: balancer::unix_ms(),
        registry,
        services,
        events: state.events.iter().rev().collect(),
        chart,
    };
    serde_json::to_string(&view).unwrap_or_else(|error| {
        // Only maps with non-string keys fail to serialise; ours have none.
        serde_json::json!({ "title": "unrenderable state", "error": error.to_string() }).to_string()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lorem(id: &str, port: u16) -> Instance {
        Instance::new("lorem", id, "127.0.0.1", port)
    }

    fn state(hub: &Hub) -> serde_json::Value {
        serde_json::from_str(&hub.current()).unwrap()
    }

    #[test]
    fn snapshots_outages_and_ejections_go_on_the_timeline() {
        let hub = Hub::new("test", "gateway");
        let viewer = hub.subscribe();
        hub.instances("lorem", &[lorem("a", 1), lorem("b", 2)]);
        hub.instances("lorem", &[lorem("a", 1)]);
        hub.health(
            "lorem",
            Health {
                stale_since_unix_ms: Some(balancer::unix_ms()),
                last_error: Some("etcd at 127.0.0.1:1: connection refused".into()),
                discarded: false,
            },
        );
        let page = state(&hub);
        assert_eq!(page["registry"]["stale"], true);
        assert!(
            page["registry"]["reason"]
                .as_str()
                .unwrap()
                .contains("connection refused")
        );
        hub.health("lorem", Health::fresh());
        let traffic = |answered, failed, ejected| InstanceTraffic {
            id: "a".into(),
            answered,
            failed,
            latency_total: Duration::from_millis(answered * 2),
            in_flight: 0,
            ejected,
        };
        hub.traffic("lorem", &[traffic(0, 0, false)]);
        std::thread::sleep(Duration::from_millis(20));
        hub.traffic("lorem", &[traffic(10, 3, true)]);
        let page = state(&hub);
        let kinds: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "added",
                "added",
                "removed",
                "outage-start",
                "outage-end",
                "ejected"
            ]
        );
        let a = &page["services"][0]["instances"][0];
        assert_eq!(a["id"], "a");
        assert_eq!(a["traffic"]["ejected"], true);
        assert!(a["traffic"]["rate_per_s"].as_f64().unwrap() > 0.0);
        assert!((a["traffic"]["latency_ms"].as_f64().unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(page["chart"][0]["label"], "lorem/a");
        assert!(viewer.has_changed().unwrap());
    }

    #[test]
    fn the_timeline_is_bounded() {
        let hub = Hub::new("test", "registry");
        for port in 1..=u16::try_from(TIMELINE_LEN).unwrap() {
            hub.instances("lorem", &[lorem("a", port)]);
        }
        hub.instances("lorem", &[]);
        let page = state(&hub);
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), TIMELINE_LEN);
        assert_eq!(events[0]["kind"], "removed");
    }
}
