//! Random: uniformly at random.

use rand::Rng as _;

use super::{Candidate, Candidates, Choose, Rng};

/// Uniformly at random among the candidates.
pub struct Random {
    rng: Rng,
}

impl Random {
    /// A random chooser; `seed` fixes its choices (`None`: from the
    /// operating system).
    pub fn new(seed: Option<u64>) -> Self {
        Random {
            rng: Rng::new(seed),
        }
    }
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Random")
    }
}

impl Choose for Random {
    fn choose<'a>(&self, candidates: &Candidates<'a>, _first_try: bool) -> Candidate<'a> {
        let index = self.rng.lock().gen_range(0..candidates.len());
        candidates
            .get(index)
            .expect("a chooser is never given an empty set")
    }
}
