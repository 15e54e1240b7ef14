//! What the balancer knows about one instance beyond its registration:
//! requests in flight, a peak-EWMA latency estimate, and passive health
//! (consecutive failures and ejection).
//!
//! An instance's state lives as long as its instance is in the live set with the
//! same record; a changed record (new address, port, weight...) starts afresh.
//!
//! **Passive outlier ejection.** After
//! [`EjectionOptions::consecutive_failures`] failed tries in a row, an
//! instance is ejected for [`EjectionOptions::base`]; each further ejection
//! without a success in between doubles it, up to [`EjectionOptions::max`].
//! When the time is up the instance is admitted again; a success resets both
//! counts. The balancer skips ejected instances unless every candidate is
//! ejected, in which case it still tries them rather than failing fast.
//!
//! **Peak-EWMA latency** (the cost behind [`Strategy::P2c`](crate::Strategy::P2c),
//! as in tower's `PeakEwma` and Finagle's): a sample above the estimate
//! replaces it at once, a lower one is blended in with a weight that decays
//! with the time since the last sample ([`EWMA_DECAY`]). The cost of an
//! instance is the estimate times (requests in flight + 1).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use registry::Instance;
use tokio::time::Instant;

/// How quickly the latency estimate forgets a peak: the time constant of
/// the exponential decay.
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The latency assumed for an instance that has not answered yet: low, so
/// that a new instance gets traffic at once.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Default [`EjectionOptions::consecutive_failures`].
pub const DEFAULT_EJECT_AFTER: u32 = 3;
/// Default [`EjectionOptions::base`].
pub const DEFAULT_EJECT_BASE: Duration = Duration::from_secs(1);
/// Default [`EjectionOptions::max`].
pub const DEFAULT_EJECT_MAX: Duration = Duration::from_secs(30);

/// Passive outlier ejection settings: see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EjectionOptions {
    /// Failed tries in a row that eject an instance; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts.
    pub base: Duration,
    /// The longest an ejection lasts, however often it repeats.
    pub max: Duration,
}

impl Default for EjectionOptions {
    fn default() -> Self {
        EjectionOptions {
            consecutive_failures: DEFAULT_EJECT_AFTER,
            base: DEFAULT_EJECT_BASE,
            max: DEFAULT_EJECT_MAX,
        }
    }
}

impl EjectionOptions {
    /// No ejection at all: every instance in the registry is always a
    /// candidate.
    pub fn disabled() -> Self {
        EjectionOptions {
            consecutive_failures: 0,
            ..EjectionOptions::default()
        }
    }

    /// How long the `nth` ejection in a row lasts (`nth` from 1).
    fn duration(&self, nth: u32) -> Duration {
        let factor = 1u32.checked_shl(nth.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// The traffic one instance of the live set has had from this balancer,
/// as [`Balancer::traffic`](crate::Balancer::traffic) reports it.
///
/// The counts run from when the instance entered the set with its current
/// record: a changed record (new address, tags, weight...) starts them
/// again from zero, so a reader computing rates from two readings takes a
/// drop as a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTraffic {
    /// The instance id.
    pub id: String,
    /// Tries that got an answer (any status below 500, 4xx included).
    pub answered: u64,
    /// Tries that failed (unreachable, timeout, 5xx, overloaded...).
    pub failed: u64,
    /// The summed latency of the answered tries.
    pub latency_total: Duration,
    /// Tries under way now.
    pub in_flight: usize,
    /// True while the instance is ejected (or backing off after an
    /// overload).
    pub ejected: bool,
}

/// The origin of [`Endpoint`]'s lock-free ejection clock.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds from [`EPOCH`] to `at` (at least 1, so 0 can mean "never").
fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One instance of the live set, with its load and health.
///
/// What every request reads (in flight, ejected, the weighted round-robin
/// weight) is atomic; the latency estimate and the failure counts sit
/// behind a lock that the request path takes only when there is something
/// to record (a failure, a latency for p2c, a success after failures).
/// A live set's endpoints by instance id, in id order.
pub(crate) type EndpointSet = imbl::OrdMap<Arc<str>, Arc<Endpoint>>;

pub(crate) struct Endpoint {
    /// Shared with the registry's snapshot: a set of 100,000 instances is
    /// held once in the process, not once per consumer.
    pub(crate) instance: Arc<Instance>,
    /// `host:port`, formatted once.
    pub(crate) authority: String,
    /// True when the instance is in the balancer's preferred zone.
    pub(crate) local: bool,
    in_flight: AtomicUsize,
    /// Tries that got an answer, failed tries, and the summed latency of
    /// the answered ones (nanoseconds): what [`Balancer::traffic`](crate::Balancer::traffic)
    /// reports. Plain counters, counted on every try whatever the strategy.
    answered: AtomicU64,
    failed: AtomicU64,
    latency_ns: AtomicU64,
    /// End of the current ejection, in [`nanos`]; 0 when not ejected.
    ejected_until: AtomicU64,
    /// True when there are failures or ejections for a success to reset.
    troubled: AtomicBool,
    /// A strategy's number for this instance (see
    /// [`Candidate::scratch`](crate::strategy::Candidate::scratch)).
    pub(crate) scratch: AtomicI64,
    state: Mutex<State>,
}

struct State {
    /// Peak-EWMA latency estimate, in nanoseconds.
    rtt_ns: f64,
    /// When `rtt_ns` was last updated.
    rtt_at: Instant,
    /// Failed tries since the last success or ejection.
    failures: u32,
    /// Ejections since the last success.
    ejections: u32,
    /// When the current (or last) ejection began.
    ejected_at: Option<Instant>,
}

/// An ejection that a failure caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejected {
    /// How long it lasts.
    pub(crate) duration: Duration,
    /// How many ejections in a row this one makes.
    pub(crate) nth: u32,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.instance.id)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The state of `instance`, new to the set; `local` when it is in the
    /// preferred zone.
    pub(crate) fn new(instance: Arc<Instance>, local: bool) -> Self {
        Endpoint {
            authority: instance.authority(),
            local,
            instance,
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            troubled: AtomicBool::new(false),
            scratch: AtomicI64::new(0),
            state: Mutex::new(State {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                rtt_at: Instant::now(),
                failures: 0,
                ejections: 0,
                ejected_at: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock (a
        // panic elsewhere while holding it) is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests sent to this instance and not finished yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts an answered try that took `latency`.
    pub(crate) fn count_answer(&self, latency: Duration) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts a failed try (overloaded included).
    pub(crate) fn count_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters for [`Balancer::traffic`](crate::Balancer::traffic).
    pub(crate) fn traffic(&self, now: Instant) -> InstanceTraffic {
        InstanceTraffic {
            id: self.instance.id.clone(),
            answered: self.answered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            latency_total: Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed)),
            in_flight: self.in_flight(),
            ejected: self.is_ejected(now),
        }
    }

    /// True while the instance is ejected.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > nanos(now)
    }

    /// The p2c cost: the latency estimate (decayed to `now`) times the
    /// requests in flight plus one.
    pub(crate) fn cost(&self, now: Instant) -> f64 {
        let rtt = {
            let state = self.state();
            decayed(
                state.rtt_ns,
                state.rtt_at,
                now,
                DEFAULT_RTT.as_nanos() as f64,
            )
        };
        rtt * (self.in_flight() as f64 + 1.0)
    }

    /// Records an answer (any status below 500) to a try sent at `sent`
    /// that took `latency`; the latency estimate is only kept up to date
    /// when `track_latency` (p2c is the strategy that reads it).
    ///
    /// A success resets the failure count. It ends an ejection, and the
    /// doubling of ejection times, only if its try was sent after the
    /// ejection began: an answer to a request sent before says nothing about
    /// the instance now.
    pub(crate) fn record_success(&self, sent: Instant, latency: Duration, track_latency: bool) {
        let troubled = self.troubled.load(Ordering::Relaxed);
        if !track_latency && !troubled {
            return;
        }
        let mut state = self.state();
        if track_latency {
            observe(&mut state, latency, Instant::now());
        }
        if troubled {
            state.failures = 0;
            if state.ejected_at.is_none_or(|at| sent >= at) {
                state.ejections = 0;
                state.ejected_at = None;
                self.ejected_until.store(0, Ordering::Relaxed);
                self.troubled.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Records a failed try that took `latency`; returns the ejection it
    /// caused, if any.
    pub(crate) fn record_failure(
        &self,
        latency: Duration,
        options: &EjectionOptions,
    ) -> Option<Ejected> {
        let now = Instant::now();
        let mut state = self.state();
        self.troubled.store(true, Ordering::Relaxed);
        // A failure is slow from the client's point of view: it keeps p2c
        // away from an instance that fails fast.
        observe(&mut state, latency.max(Duration::from_millis(100)), now);
        state.failures = state.failures.saturating_add(1);
        if options.consecutive_failures == 0 || state.failures < options.consecutive_failures {
            return None;
        }
        if self.is_ejected(now) {
            // Tries already under way when it was ejected: no new ejection.
            return None;
        }
        state.failures = 0;
        state.ejections = state.ejections.saturating_add(1);
        let duration = options.duration(state.ejections);
        let until = now.checked_add(duration).unwrap_or(now);
        state.ejected_at = Some(now);
        self.ejected_until.store(nanos(until), Ordering::Relaxed);
        Some(Ejected {
            duration,
            nth: state.ejections,
        })
    }
}

impl Endpoint {
    /// Keeps the instance out of the candidates for `duration` (an
    /// overloaded instance's `Retry-After`), without counting a failure
    /// towards ejection: it is alive, only busy. An ejection already
    /// lasting longer is kept.
    pub(crate) fn back_off(&self, duration: Duration) {
        let now = Instant::now();
        let until = nanos(now.checked_add(duration).unwrap_or(now));
        // An answer to a try sent before now says nothing against it.
        self.state().ejected_at = Some(now);
        self.troubled.store(true, Ordering::Relaxed);
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
    }
}

/// Applies one latency sample to the peak-EWMA estimate.
fn observe(state: &mut State, sample: Duration, now: Instant) {
    let sample_ns = sample.as_nanos() as f64;
    if sample_ns > state.rtt_ns {
        state.rtt_ns = sample_ns;
    } else {
        let elapsed = now.saturating_duration_since(state.rtt_at).as_secs_f64();
        let weight = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
        state.rtt_ns = state.rtt_ns * weight + sample_ns * (1.0 - weight);
    }
    state.rtt_at = now;
}

/// The estimate `rtt_ns` set at `at`, decayed towards `floor_ns` by `now`:
/// an instance that stopped getting traffic after a slow spell is given
/// another chance.
fn decayed(rtt_ns: f64, at: Instant, now: Instant, floor_ns: f64) -> f64 {
    let elapsed = now.saturating_duration_since(at).as_secs_f64();
    let weight = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
    (rtt_ns * weight + floor_ns * (1.0 - weight)).max(floor_ns.min(rtt_ns))
}

/// A request in flight on an [`Endpoint`]; dropping it ends the count.
pub(crate) struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            Arc::new(Instance::new("lorem", "a", "127.0.0.1", 1)),
            false,
        ))
    }

    #[test]
    fn ejection_doubles_up_to_the_max_and_a_success_resets_it() {
        let options = EjectionOptions {
            consecutive_failures: 2,
            base: Duration::from_secs(1),
            max: Duration::from_secs(3),
        };
        assert_eq!(options.duration(1), Duration::from_secs(1));
        assert_eq!(options.duration(2), Duration::from_secs(2));
        assert_eq!(options.duration(3), Duration::from_secs(3));
        assert_eq!(options.duration(40), Duration::from_secs(3));

        let a = endpoint();
        assert_eq!(a.record_failure(Duration::ZERO, &options), None);
        let first = a.record_failure(Duration::ZERO, &options).expect("ejected");
        assert_eq!((first.nth, first.duration), (1, Duration::from_secs(1)));
        assert!(a.is_ejected(Instant::now()));
        // Failures of tries already under way do not eject it again.
        assert_eq!(a.record_failure(Duration::ZERO, &options), None);
        let before_ejection = Instant::now() - Duration::from_secs(1);
        assert_eq!(a.record_failure(Duration::ZERO, &options), None);
        // An answer to a try sent before the ejection does not end it...
        a.record_success(before_ejection, Duration::from_millis(1), false);
        assert!(a.is_ejected(Instant::now()));
        // ...one sent after it does.
        a.record_success(Instant::now(), Duration::from_millis(1), false);
        assert!(!a.is_ejected(Instant::now()));
        assert_eq!(a.record_failure(Duration::ZERO, &options), None);
        let again = a.record_failure(Duration::ZERO, &options).expect("ejected");
        assert_eq!(again.nth, 1, "a success starts the count over");
    }

    #[test]
    fn ejection_can_be_turned_off() {
        let a = endpoint();
        for _ in 0..100 {
            assert_eq!(
                a.record_failure(Duration::ZERO, &EjectionOptions::disabled()),
                None
            );
        }
        assert!(!a.is_ejected(Instant::now()));
    }

    #[test]
    fn cost_grows_with_latency_and_requests_in_flight() {
        let fast = endpoint();
        let slow = endpoint();
        fast.record_success(Instant::now(), Duration::from_millis(1), true);
        slow.record_success(Instant::now(), Duration::from_millis(50), true);
        let now = Instant::now();
        assert!(slow.cost(now) > 10.0 * fast.cost(now));
        let idle = fast.cost(now);
        let _one = fast.start();
        let _two = fast.start();
        assert_eq!(fast.in_flight(), 2);
        assert!((fast.cost(now) - 3.0 * idle).abs() < idle * 0.01);
        drop(_one);
        assert_eq!(fast.in_flight(), 1);
    }

    #[test]
    fn a_peak_is_taken_at_once_and_forgotten_slowly() {
        let start = Instant::now();
        let mut state = State {
            rtt_ns: 1e6,
            rtt_at: start,
            failures: 0,
            ejections: 0,
            ejected_at: None,
        };
        observe(&mut state, Duration::from_millis(100), start);
        assert_eq!(state.rtt_ns, 1e8);
        observe(&mut state, Duration::from_millis(1), start + EWMA_DECAY);
        // One time constant later a low sample pulls it about 63% down.
        let expected = 1e8 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp());
        assert!((state.rtt_ns - expected).abs() < 1.0, "{}", state.rtt_ns);
    }
}
