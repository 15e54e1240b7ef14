//! How the balancer chooses among the candidates of one try: the
//! [`Choose`] trait, and one implementation per file.
//!
//! | strategy                 | implementation   | choice                                               |
//! |--------------------------|------------------|------------------------------------------------------|
//! | [`Strategy::RoundRobin`] | [`RoundRobin`]   | each candidate in turn (the default)                 |
//! | [`Strategy::Random`]     | [`Random`]       | uniformly at random                                  |
//! | [`Strategy::Weighted`]   | [`Weighted`]     | smooth weighted round-robin (nginx's) on [`Instance::weight`] |
//! | [`Strategy::P2c`]        | [`P2c`]          | power of two choices: two at random, the one with the lower peak-EWMA cost (latency x (in flight + 1)), as tower's `p2c` balancer over `PeakEwma` |
//!
//! Candidates are the live instances this request has not tried yet, minus
//! the ejected ones (unless all of them are), minus the other zones' when
//! the zone preference holds (see [`ZonePreference`](crate::ZonePreference)).
//! Random choices come from a generator seeded by
//! [`BalancerOptions::seed`](crate::BalancerOptions::seed) when given, so
//! tests can fix the outcome.
//!
//! A strategy of one's own implements [`Choose`] and is given to
//! [`Balancer::with_chooser`](crate::Balancer::with_chooser).

mod p2c;
mod random;
mod round_robin;
mod weighted;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::SeedableRng;
use rand::rngs::StdRng;
use registry::Instance;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::endpoint::{Endpoint, EndpointSet};
use crate::error::{Error, Result};

pub use p2c::P2c;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::Weighted;

/// A way of choosing one candidate per try. Implementations hold their own
/// state (a turn, a generator) behind `&self`: one chooser serves every
/// request of a balancer at once.
pub trait Choose: Send + Sync + 'static {
    /// Chooses one of `candidates`, which is never empty. `first_try` is
    /// false for retries: a turn-taking strategy should not advance on them,
    /// or every request after a crash would start on the dead instance.
    fn choose<'a>(&self, candidates: &Candidates<'a>, first_try: bool) -> Candidate<'a>;

    /// True when the choice reads [`Candidate::cost`]: only then does the
    /// balancer keep latency estimates up to date, which costs a lock per
    /// answer.
    fn tracks_latency(&self) -> bool {
        false
    }
}

/// The candidates of one try: a filtered view of the live set, built
/// without allocating.
pub struct Candidates<'a> {
    all: &'a EndpointSet,
    admit: &'a dyn Fn(&Endpoint) -> bool,
    len: usize,
}

impl<'a> Candidates<'a> {
    /// The endpoints of `all` that pass `admit`.
    pub(crate) fn new(all: &'a EndpointSet, admit: &'a dyn Fn(&Endpoint) -> bool) -> Self {
        let len = all.values().filter(|e| admit(e)).count();
        Candidates { all, admit, len }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is none (a chooser is never given such a set).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The candidates, in the order of their instance ids.
    pub fn iter(&self) -> impl Iterator<Item = Candidate<'a>> + '_ {
        let admit = self.admit;
        self.all
            .values()
            .filter(move |e| admit(e))
            .map(|endpoint| Candidate { endpoint })
    }

    /// The `index`th candidate (from 0), if there are that many.
    pub fn get(&self, index: usize) -> Option<Candidate<'a>> {
        let admit = self.admit;
        self.all
            .values()
            .filter(move |e| admit(e))
            .nth(index)
            .map(|endpoint| Candidate { endpoint })
    }
}

/// One instance a strategy may choose, with what the balancer knows of it.
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    endpoint: &'a Arc<Endpoint>,
}

impl fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Candidate")
            .field(&self.endpoint.instance.id)
            .finish()
    }
}

impl<'a> Candidate<'a> {
    /// Its registration.
    pub fn instance(&self) -> &'a Instance {
        &self.endpoint.instance
    }

    /// Requests picked for it and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.endpoint.in_flight()
    }

    /// The peak-EWMA cost at `now`: the latency estimate times one more
    /// than the requests in flight. Kept up to date only for choosers that
    /// ask for it ([`Choose::tracks_latency`]).
    pub fn cost(&self, now: Instant) -> f64 {
        self.endpoint.cost(now)
    }

    /// A number per instance that a strategy may keep across picks (smooth
    /// weighted round-robin's current weight); it starts at 0 and starts
    /// over when the instance's record changes.
    pub fn scratch(&self) -> &'a AtomicI64 {
        &self.endpoint.scratch
    }

    pub(crate) fn endpoint(&self) -> &'a Arc<Endpoint> {
        self.endpoint
    }
}

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

    /// The chooser that implements it; `seed` fixes the random choices
    /// (`None` seeds from the operating system).
    pub fn chooser(self, seed: Option<u64>) -> Box<dyn Choose> {
        match self {
            Strategy::RoundRobin => Box::new(RoundRobin::default()),
            Strategy::Random => Box::new(Random::new(seed)),
            Strategy::Weighted => Box::new(Weighted::default()),
            Strategy::P2c => Box::new(P2c::new(seed)),
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

/// A seeded (or entropy-seeded) generator behind a lock, for the random
/// strategies.
pub(crate) struct Rng(Mutex<StdRng>);

impl Rng {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        Rng(Mutex::new(match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, StdRng> {
        // A generator is usable whatever a panicking holder left in it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "invalid balancer options: unknown strategy \"fastest\"; expected one of round_robin, random, weighted, p2c"
        );
    }
}
