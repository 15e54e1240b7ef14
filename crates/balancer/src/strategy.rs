//! How the balancer chooses among the candidates of one try.
//!
//! | strategy                 | choice                                                            |
//! |--------------------------|-------------------------------------------------------------------|
//! | [`Strategy::RoundRobin`] | each candidate in turn (the default)                              |
//! | [`Strategy::Random`]     | uniformly at random                                               |
//! | [`Strategy::Weighted`]   | smooth weighted round-robin (nginx's) on [`Instance::weight`](registry::Instance::weight) |
//! | [`Strategy::P2c`]        | power of two choices: two at random, the one with the lower peak-EWMA cost (latency x (in flight + 1)), as tower's `p2c` balancer over `PeakEwma` |
//!
//! Candidates are the live instances this request has not tried yet, minus
//! the ejected ones (unless all of them are). Random choices come from a
//! generator seeded by [`BalancerOptions::seed`](crate::BalancerOptions::seed)
//! when given, so tests can fix the outcome.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

/// How the balancer spreads requests over the live set: see the
/// [module docs](self). Written in settings and flags as `round_robin`,
/// `random`, `weighted` or `p2c`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Each instance in turn, ignoring weights.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Smooth weighted round-robin: instance `i` gets
    /// `weight_i / sum(weights)` of the requests, interleaved rather than in
    /// bursts.
    Weighted,
    /// Power of two choices on the peak-EWMA cost.
    P2c,
}

impl Strategy {
    /// Every strategy, in the order the docs list them.
    pub const ALL: [Strategy; 4] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
        Strategy::P2c,
    ];

    /// The name used in settings and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
            Strategy::P2c => "p2c",
        }
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let normal = s.trim().to_ascii_lowercase().replace('-', "_");
        match normal.as_str() {
            "round_robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            "weighted" | "weighted_round_robin" | "wrr" => Ok(Strategy::Weighted),
            "p2c" | "peak_ewma" | "least_loaded" => Ok(Strategy::P2c),
            _ => Err(Error::InvalidOptions(format!(
                "unknown strategy {s:?}; expected one of round_robin, random, weighted, p2c"
            ))),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state behind the choices: the round-robin turn (an atomic: plain
/// round-robin takes no lock) and the random generator (smooth weighted
/// round-robin keeps its weights in the endpoints, under `weighted`).
pub(crate) struct Picker {
    strategy: Strategy,
    /// Position of plain round-robin.
    turn: AtomicUsize,
    rng: Mutex<StdRng>,
    /// Serialises smooth weighted round-robin's read-modify-write of the
    /// endpoints' weights.
    weighted: Mutex<()>,
}

impl Picker {
    pub(crate) fn new(strategy: Strategy, seed: Option<u64>) -> Self {
        Picker {
            strategy,
            turn: AtomicUsize::new(0),
            rng: Mutex::new(match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_entropy(),
            }),
            weighted: Mutex::new(()),
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        // A generator is usable whatever a panicking holder left in it.
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chooses one of the `endpoints` that pass `admit` (at least one
    /// does), without allocating. `first_try` is false for retries: they do
    /// not take a round-robin turn, or every request after a crash would
    /// start on the dead instance.
    pub(crate) fn choose<'a>(
        &self,
        endpoints: &'a [Arc<Endpoint>],
        admit: &dyn Fn(&Endpoint) -> bool,
        first_try: bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let candidates = || endpoints.iter().filter(|e| admit(e));
        let n = candidates().count();
        if n == 0 {
            return None;
        }
        match self.strategy {
            Strategy::RoundRobin => {
                let turn = if first_try {
                    self.turn.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.turn.load(Ordering::Relaxed)
                };
                candidates().nth(turn % n)
            }
            Strategy::Random => {
                let index = self.rng().gen_range(0..n);
                candidates().nth(index)
            }
            Strategy::Weighted => {
                let _one_at_a_time = self.weighted.lock().unwrap_or_else(|e| e.into_inner());
                let mut total = 0i64;
                let mut best: Option<(&Arc<Endpoint>, i64)> = None;
                for endpoint in candidates() {
                    let weight = i64::from(endpoint.instance.weight.max(1));
                    total += weight;
                    let current =
                        endpoint.current_weight.fetch_add(weight, Ordering::Relaxed) + weight;
                    if best.is_none_or(|(_, w)| current > w) {
                        best = Some((endpoint, current));
                    }
                }
                let (chosen, _) = best?;
                chosen.current_weight.fetch_sub(total, Ordering::Relaxed);
                Some(chosen)
            }
            Strategy::P2c => {
                if n == 1 {
                    return candidates().next();
                }
                let (a, b) = {
                    let mut rng = self.rng();
                    let a = rng.gen_range(0..n);
                    // A second, distinct index.
                    (a, (a + rng.gen_range(1..n)) % n)
                };
                let (ea, eb) = (candidates().nth(a)?, candidates().nth(b)?);
                let now = Instant::now();
                Some(if eb.cost(now) < ea.cost(now) { eb } else { ea })
            }
        }
    }

    /// True when the strategy reads the latency estimates.
    pub(crate) fn tracks_latency(&self) -> bool {
        self.strategy == Strategy::P2c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::Instance;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.as_str().parse::<Strategy>().ok(), Some(strategy));
            assert_eq!(strategy.to_string(), strategy.as_str());
        }
        for (text, strategy) in [
            ("round-robin", Strategy::RoundRobin),
            (" RR ", Strategy::RoundRobin),
            ("wrr", Strategy::Weighted),
            ("Peak-EWMA", Strategy::P2c),
        ] {
            assert_eq!(text.parse::<Strategy>().ok(), Some(strategy), "{text}");
        }
        let error = "fastest".parse::<Strategy>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "invalid client options: unknown strategy \"fastest\"; expected one of round_robin, random, weighted, p2c"
        );
    }

    #[test]
    fn p2c_never_picks_the_costlier_of_two() {
        let cheap = Arc::new(Endpoint::new(Instance::new(
            "lorem",
            "cheap",
            "127.0.0.1",
            1,
        )));
        let dear = Arc::new(Endpoint::new(Instance::new(
            "lorem",
            "dear",
            "127.0.0.1",
            2,
        )));
        dear.record_success(Instant::now(), std::time::Duration::from_millis(100), true);
        let endpoints = [cheap, dear];
        let picker = Picker::new(Strategy::P2c, Some(7));
        for _ in 0..100 {
            let chosen = picker.choose(&endpoints, &|_| true, true).expect("one");
            assert_eq!(chosen.instance.id, "cheap");
        }
        // Only admitted endpoints are candidates.
        let chosen = picker
            .choose(&endpoints, &|e| e.instance.id == "dear", true)
            .expect("one");
        assert_eq!(chosen.instance.id, "dear");
        assert!(picker.choose(&endpoints, &|_| false, true).is_none());
    }
}
