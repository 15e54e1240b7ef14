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

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The window over which the retry budget counts requests and retries.
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Slots the window is cut into.
const SLOTS: usize = 10;

/// The origin of the slot numbers.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A retry budget, shared by the clones of a client: see the
/// [module docs](self). A client [deposits](Self::deposit) every request
/// and [withdraws](Self::withdraw) before each retry that costs budget.
///
/// Lock-free: each slot holds the number of the tenth of a window it
/// counts, and the first caller in a new tenth resets the slot it reuses.
/// A count racing with that reset may be lost, which makes the budget a
/// little generous or a little strict for a moment, never unbounded.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    /// Retries allowed over the window whatever the traffic.
    floor: u64,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// The slot number ([`slot_number`]) these counts belong to, plus one
    /// (0: never used).
    number: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The number of the tenth of a window that `now` falls in.
fn slot_number(now: Instant) -> u64 {
    let slot = RETRY_BUDGET_WINDOW / SLOTS as u32;
    u64::try_from(now.saturating_duration_since(*EPOCH).as_nanos() / slot.as_nanos())
        .unwrap_or(u64::MAX)
}

impl RetryBudget {
    /// Retries may add `percent` of the requests plus `min_per_sec` per
    /// second.
    pub fn new(percent: u32, min_per_sec: u32) -> Self {
        // Start the clock before the first slot number is taken.
        let _ = *EPOCH;
        RetryBudget {
            percent: u64::from(percent),
            floor: u64::from(min_per_sec).saturating_mul(RETRY_BUDGET_WINDOW.as_secs()),
            slots: Default::default(),
        }
    }

    /// The slot for `number`, reset if it last counted an older tenth.
    fn slot(&self, number: u64) -> &Slot {
        let slot = &self.slots[(number % SLOTS as u64) as usize];
        let tag = number.saturating_add(1);
        let seen = slot.number.load(Ordering::Acquire);
        if seen != tag
            && slot
                .number
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one request.
    pub fn deposit(&self) {
        self.slot(slot_number(Instant::now()))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false if it is spent.
    pub fn withdraw(&self) -> bool {
        let now = slot_number(Instant::now());
        let current = self.slot(now);
        // The window: this tenth and the nine before it (tags are numbers
        // plus one).
        let oldest_tag = now.saturating_sub(SLOTS as u64 - 1).saturating_add(1);
        let (requests, retries) = self
            .slots
            .iter()
            .filter(|slot| slot.number.load(Ordering::Acquire) >= oldest_tag)
            .fold((0u64, 0u64), |(q, r), slot| {
                (
                    q.saturating_add(slot.requests.load(Ordering::Relaxed)),
                    r.saturating_add(slot.retries.load(Ordering::Relaxed)),
                )
            });
        let allowed = self
            .floor
            .saturating_add(requests.saturating_mul(self.percent) / 100);
        if retries >= allowed {
            return false;
        }
        current.retries.fetch_add(1, Ordering::Relaxed);
        true
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
