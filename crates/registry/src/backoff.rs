//! Retry pacing and outage logging, for every loop that retries: backoff
//! with jitter, and an outage logged once when it starts and once when it
//! ends rather than at every attempt.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter, for reconnect and re-register loops.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles each failure, never waits longer than `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The backoff used by reconnect loops: 100 ms doubling up to 5 s.
    pub(crate) fn reconnect() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay to wait: a random duration in [ceiling/2, ceiling].
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let ceiling = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// Waits for the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Forgets past failures after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Remembers since when a periodically retried operation has been failing,
/// so that an outage is logged once at warn when it starts and once at info
/// when it ends, rather than at every attempt.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    since: Option<tokio::time::Instant>,
}

impl Outage {
    /// Records a failure; true if it starts an outage (log it at warn).
    pub(crate) fn failed(&mut self) -> bool {
        let first = self.since.is_none();
        self.since.get_or_insert_with(tokio::time::Instant::now);
        first
    }

    /// Records a success; how long the outage lasted, if this ends one (log
    /// it at info).
    pub(crate) fn recovered(&mut self) -> Option<Duration> {
        self.since.take().map(|since| since.elapsed())
    }

    /// True between a failure and the next success.
    #[cfg(test)]
    pub(crate) fn is_failing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_when_it_starts_and_once_when_it_ends() {
        let mut outage = Outage::default();
        assert!(outage.recovered().is_none(), "no outage, nothing to report");
        assert!(outage.failed(), "the first failure starts the outage");
        assert!(!outage.failed(), "later failures are the same outage");
        assert!(outage.recovered().is_some(), "a success ends it");
        assert!(outage.recovered().is_none(), "and only once");
        assert!(outage.failed(), "the next failure starts a new one");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[7] >= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
