//! One request every interval, logging each answer: `lorem-client loop`,
//! like go-kit's lorem client.

use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::client::{LoremClient, LoremRequest};

/// What to send, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatOptions {
    /// Time between the starts of two requests (a slow request delays the
    /// next one rather than piling requests up). Kept within 1 ms and
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT): a longer one is cut to it.
    pub interval: Duration,
    /// Stop after this many requests; `None` runs until the future is dropped.
    pub count: Option<u64>,
    /// The request to send.
    pub request: LoremRequest,
}

impl Default for RepeatOptions {
    fn default() -> Self {
        RepeatOptions {
            interval: Duration::from_secs(1),
            count: None,
            request: LoremRequest::default(),
        }
    }
}

/// How a loop went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepeatSummary {
    /// Requests answered with a message.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
}

/// Sends `options.request` every `options.interval`, logging each answer
/// (instance id and message) at info and each failure at warn.
pub async fn run(client: &LoremClient, options: &RepeatOptions) -> RepeatSummary {
    let mut summary = RepeatSummary::default();
    // Tokio's interval adds the period to an instant at every tick: an
    // unbounded one would overflow.
    let interval = options
        .interval
        .clamp(Duration::from_millis(1), crate::MAX_TIMEOUT);
    if options.interval > crate::MAX_TIMEOUT {
        tracing::warn!(requested = ?options.interval, used = ?interval, "loop interval out of bounds");
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while options.count.is_none_or(|count| sent < count) {
        ticks.tick().await;
        sent += 1;
        match client.lorem(&options.request).await {
            Ok(lorem) => {
                summary.ok += 1;
                tracing::info!(
                    instance = %lorem.instance,
                    retries = lorem.retries,
                    latency = ?lorem.latency,
                    message = %lorem.message,
                    "response"
                );
            }
            Err(error) => {
                summary.failed += 1;
                tracing::warn!(%error, "request failed");
            }
        }
    }
    summary
}
