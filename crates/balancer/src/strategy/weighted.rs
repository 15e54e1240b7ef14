//! Smooth weighted round-robin (nginx's).

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::{Candidate, Candidates, Choose};

/// Smooth weighted round-robin on [`Instance::weight`](registry::Instance::weight):
/// instance `i` gets `weight_i / sum(weights)` of the picks, interleaved
/// rather than in bursts. Each candidate's current weight lives in its
/// [`Candidate::scratch`]; a lock serialises the read-modify-write.
#[derive(Debug, Default)]
pub struct Weighted {
    one_at_a_time: Mutex<()>,
}

impl Choose for Weighted {
    fn choose<'a>(&self, candidates: &Candidates<'a>, _first_try: bool) -> Candidate<'a> {
        let _one_at_a_time = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<(Candidate<'a>, i64)> = None;
        for candidate in candidates.iter() {
            let weight = i64::from(candidate.instance().weight.max(1));
            total += weight;
            let current = candidate.scratch().fetch_add(weight, Ordering::Relaxed) + weight;
            if best.is_none_or(|(_, w)| current > w) {
                best = Some((candidate, current));
            }
        }
        let (chosen, _) = best.expect("a chooser is never given an empty set");
        chosen.scratch().fetch_sub(total, Ordering::Relaxed);
        chosen
    }
}
