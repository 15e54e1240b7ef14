//! Round-robin: each candidate in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, Candidates, Choose};

/// Each candidate in turn, ignoring weights. Lock-free: the turn is an
/// atomic. Retries do not take a turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    turn: AtomicUsize,
}

impl Choose for RoundRobin {
    fn choose<'a>(&self, candidates: &Candidates<'a>, first_try: bool) -> Candidate<'a> {
        let turn = if first_try {
            self.turn.fetch_add(1, Ordering::Relaxed)
        } else {
            self.turn.load(Ordering::Relaxed)
        };
        let index = turn % candidates.len();
        candidates
            .get(index)
            .or_else(|| candidates.get(0))
            .expect("a chooser is never given an empty set")
    }
}
