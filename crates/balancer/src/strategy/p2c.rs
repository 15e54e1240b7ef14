//! Power of two choices on the peak-EWMA cost.

use rand::Rng as _;
use tokio::time::Instant;

use super::{Candidate, Candidates, Choose, Rng};

/// Two candidates at random, the one with the lower peak-EWMA cost
/// (latency x (in flight + 1)), as tower's `p2c` balancer over `PeakEwma`.
pub struct P2c {
    rng: Rng,
}

impl P2c {
    /// A p2c chooser; `seed` fixes its random draws (`None`: from the
    /// operating system).
    pub fn new(seed: Option<u64>) -> Self {
        P2c {
            rng: Rng::new(seed),
        }
    }
}

impl std::fmt::Debug for P2c {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P2c")
    }
}

impl Choose for P2c {
    fn choose<'a>(&self, candidates: &Candidates<'a>, _first_try: bool) -> Candidate<'a> {
        let n = candidates.len();
        let first = || {
            candidates
                .get(0)
                .expect("a chooser is never given an empty set")
        };
        if n == 1 {
            return first();
        }
        let (a, b) = {
            let mut rng = self.rng.lock();
            let a = rng.gen_range(0..n);
            // A second, distinct index.
            (a, (a + rng.gen_range(1..n)) % n)
        };
        let (Some(ca), Some(cb)) = (candidates.get(a), candidates.get(b)) else {
            return first();
        };
        let now = Instant::now();
        if cb.cost(now) < ca.cost(now) { cb } else { ca }
    }

    fn tracks_latency(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use registry::Instance;

    use super::*;
    use crate::endpoint::Endpoint;

    #[test]
    fn p2c_never_picks_the_costlier_of_two() {
        let cheap = Arc::new(Endpoint::new(
            Arc::new(Instance::new("lorem", "cheap", "127.0.0.1", 1)),
            false,
        ));
        let dear = Arc::new(Endpoint::new(
            Arc::new(Instance::new("lorem", "dear", "127.0.0.1", 2)),
            false,
        ));
        dear.record_success(Instant::now(), Duration::from_millis(100), true);
        let endpoints: crate::endpoint::EndpointSet = [cheap, dear]
            .into_iter()
            .map(|e| (Arc::from(e.instance.id.as_str()), e))
            .collect();
        let chooser = P2c::new(Some(7));
        let all = |_: &Endpoint| true;
        for _ in 0..100 {
            let chosen = chooser.choose(&Candidates::new(&endpoints, &all), true);
            assert_eq!(chosen.instance().id, "cheap");
        }
        // Only admitted endpoints are candidates.
        let dear_only = |e: &Endpoint| e.instance.id == "dear";
        let chosen = chooser.choose(&Candidates::new(&endpoints, &dear_only), true);
        assert_eq!(chosen.instance().id, "dear");
        assert!(Candidates::new(&endpoints, &|_| false).is_empty());
    }
}
