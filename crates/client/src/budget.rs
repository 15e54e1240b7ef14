//! The retry budget: retries that cost budget may add at most a percentage
//! of the requests, plus a floor per second, over a sliding window.
//!
//! The window is [`RETRY_BUDGET_WINDOW`] long, kept as ten slots of a tenth
//! each; a slot older than the window is cleared before it is reused. A
//! retry is allowed while
//!
//! ```text
//! retries in the window < min_per_sec x window seconds + percent x requests in the window / 100
//! ```
//!
//! in whole numbers, so the percentage is what users set (tower's
//! `TpsBudget`, which this replaces, rounds the cost of a retry to a whole
//! number of deposits: 40% became 50%, anything over 50% became 100%).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window over which the retry budget counts requests and retries.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Slots the window is cut into.
const SLOTS: usize = 10;

/// A retry budget; shared by the clones of a [`Client`](crate::Client).
#[derive(Debug)]
pub(crate) struct RetryBudget {
    percent: u64,
    /// Retries allowed over the window whatever the traffic.
    floor: u64,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Requests and retries per slot.
    slots: [(u64, u64); SLOTS],
    /// The slot that `now` falls in, and when it began.
    current: usize,
    began: Instant,
}

impl RetryBudget {
    /// Retries may add `percent` of the requests plus `min_per_sec` per
    /// second.
    pub(crate) fn new(percent: u32, min_per_sec: u32) -> Self {
        RetryBudget {
            percent: u64::from(percent),
            floor: u64::from(min_per_sec).saturating_mul(RETRY_BUDGET_WINDOW.as_secs()),
            state: Mutex::new(Window {
                slots: [(0, 0); SLOTS],
                current: 0,
                began: Instant::now(),
            }),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counters only: a poisoned lock holds usable numbers.
        let mut window = self.state.lock().unwrap_or_else(|e| e.into_inner());
        window.advance(Instant::now());
        window
    }

    /// Counts one request.
    pub(crate) fn deposit(&self) {
        let mut window = self.window();
        let current = window.current;
        window.slots[current].0 = window.slots[current].0.saturating_add(1);
    }

    /// Takes one retry from the budget; false if it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let mut window = self.window();
        let (requests, retries) = window.slots.iter().fold((0u64, 0u64), |(q, r), (sq, sr)| {
            (q.saturating_add(*sq), r.saturating_add(*sr))
        });
        let allowed = self
            .floor
            .saturating_add(requests.saturating_mul(self.percent) / 100);
        if retries >= allowed {
            return false;
        }
        let current = window.current;
        window.slots[current].1 = window.slots[current].1.saturating_add(1);
        true
    }
}

impl Window {
    /// Moves the current slot up to `now`, clearing the slots it passes.
    fn advance(&mut self, now: Instant) {
        let slot = RETRY_BUDGET_WINDOW / SLOTS as u32;
        let elapsed = now.saturating_duration_since(self.began);
        let steps = (elapsed.as_nanos() / slot.as_nanos()).min(SLOTS as u128) as usize;
        for _ in 0..steps {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = (0, 0);
        }
        if steps > 0 {
            // Whole slots only, so that the slots keep their boundaries.
            let moved = slot * u32::try_from(steps).unwrap_or(u32::MAX);
            self.began = if elapsed >= RETRY_BUDGET_WINDOW {
                now
            } else {
                self.began + moved
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries_allowed(budget: &RetryBudget) -> u64 {
        let mut n = 0;
        while budget.withdraw() {
            n += 1;
            assert!(n < 1_000_000, "runaway budget");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn the_percentage_is_exact() {
        for percent in [15, 20, 40, 60, 100, 250] {
            let budget = RetryBudget::new(percent, 0);
            for _ in 0..1000 {
                budget.deposit();
            }
            assert_eq!(
                retries_allowed(&budget),
                u64::from(percent) * 10,
                "{percent}%"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_floor_allows_retries_without_traffic() {
        let budget = RetryBudget::new(20, 3);
        assert_eq!(retries_allowed(&budget), 30, "3 per second over 10 s");
        let none = RetryBudget::new(0, 0);
        for _ in 0..100 {
            none.deposit();
        }
        assert!(!none.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_leave_the_window() {
        let budget = RetryBudget::new(20, 0);
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(retries_allowed(&budget), 20);
        // Half a window later everything is still counted.
        tokio::time::advance(RETRY_BUDGET_WINDOW / 2).await;
        assert!(!budget.withdraw());
        // A full window later it is all gone: no requests, no budget...
        tokio::time::advance(RETRY_BUDGET_WINDOW).await;
        assert!(!budget.withdraw());
        // ...until new requests come.
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(retries_allowed(&budget), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_slot_by_slot() {
        let budget = RetryBudget::new(100, 0);
        for _ in 0..50 {
            budget.deposit();
        }
        tokio::time::advance(RETRY_BUDGET_WINDOW / 2).await;
        for _ in 0..50 {
            budget.deposit();
        }
        assert_eq!(retries_allowed(&budget), 100);
        // The first 50 requests leave; their retries' slot is the second
        // half, which stays: 50 allowed, 100 taken.
        tokio::time::advance(RETRY_BUDGET_WINDOW / 2 + Duration::from_millis(1)).await;
        assert!(!budget.withdraw());
    }

    #[test]
    fn huge_settings_do_not_overflow() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let budget = RetryBudget::new(u32::MAX, u32::MAX);
            budget.deposit();
            assert!(budget.withdraw());
        });
    }
}
