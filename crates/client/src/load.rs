//! Bounded load through the balancer: `lorem-client load`.
//!
//! `concurrency` workers send requests back to back until `requests` have
//! been issued or `duration` has passed, whichever comes first (at least
//! one bound is required, and the duration is capped at
//! [`MAX_DURATION`]). A request in flight at the deadline is allowed to
//! finish: it is bounded by the wait and retry timeouts.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{LoremClient, LoremRequest};
use crate::error::{Error, Result};

/// The longest run `load` accepts; longer durations are cut to it.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Default [`LoadOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The most requests `load` keeps in flight at once.
pub const MAX_CONCURRENCY: usize = 1024;
/// How many distinct error messages a report keeps.
const MAX_ERROR_KINDS: usize = 10;

/// What load to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Stop after this long (capped at [`MAX_DURATION`]).
    pub duration: Option<Duration>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The request every worker sends.
    pub request: LoremRequest,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            requests: Some(100),
            duration: None,
            concurrency: DEFAULT_CONCURRENCY,
            request: LoremRequest::default(),
        }
    }
}

/// The outcome of a load run. Serialises to the JSON that
/// `lorem-client load --json` prints: `ok`, `failed`, `p50_ms`, `p99_ms`,
/// `rps` and `per_instance`, plus `error` when the run could not start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Requests answered with a message.
    pub ok: u64,
    /// Requests that failed (no instance, retries exhausted, a 4xx...).
    pub failed: u64,
    /// Median latency of the successful requests, in milliseconds (0 if none).
    pub p50_ms: f64,
    /// 99th percentile latency of the successful requests, in milliseconds.
    pub p99_ms: f64,
    /// Finished requests (ok and failed) per second of the run.
    pub rps: f64,
    /// Successful requests by the registry id of the instance that
    /// answered (the one the balancer picked, whatever its `x-instance-id`
    /// header says).
    pub per_instance: BTreeMap<String, u64>,
    /// Why nothing could be sent (bad arguments, unusable registry
    /// settings...); `None` (and absent from the JSON) for a run that took
    /// place, however many of its requests failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the run took.
    #[serde(skip)]
    pub elapsed: Duration,
    /// Up to ten distinct error messages with their counts.
    #[serde(skip)]
    pub errors: BTreeMap<String, u64>,
}

impl LoadReport {
    /// The report of a run where nothing could even start: every one of
    /// `requests` counted as failed, with `error` as the reason.
    pub fn all_failed(requests: u64, error: &str) -> Self {
        LoadReport {
            failed: requests,
            error: Some(error.to_owned()),
            ..LoadReport::default()
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // A struct of numbers and a string map always serialises.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests: ok={} failed={} in {:.2}s",
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "latency: p50={:.2}ms p99={:.2}ms",
            self.p50_ms, self.p99_ms
        )?;
        writeln!(f, "throughput: {:.1} requests/s", self.rps)?;
        for (instance, count) in &self.per_instance {
            writeln!(f, "instance {instance}: {count}")?;
        }
        for (error, count) in &self.errors {
            writeln!(f, "error x{count}: {error}")?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "error: {error}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct WorkerStats {
    ok: u64,
    failed: u64,
    latencies: Vec<Duration>,
    per_instance: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs the load and reports it.
///
/// # Errors
/// [`Error::InvalidOptions`] if neither bound is given, or for a
/// concurrency outside 1..=[`MAX_CONCURRENCY`]. Failed requests are counted in the report, not returned.
pub async fn run(client: &LoremClient, options: &LoadOptions) -> Result<LoadReport> {
    if options.requests.is_none() && options.duration.is_none() {
        return Err(Error::InvalidOptions(
            "give --requests, --duration or both".to_owned(),
        ));
    }
    if options.concurrency == 0 || options.concurrency > MAX_CONCURRENCY {
        return Err(Error::InvalidOptions(format!(
            "concurrency must be from 1 to {MAX_CONCURRENCY}, got {}",
            options.concurrency
        )));
    }
    let duration = match options.duration {
        Some(d) if d > MAX_DURATION => {
            tracing::warn!(requested = ?d, cap = ?MAX_DURATION, "load duration capped");
            MAX_DURATION
        }
        Some(d) => d,
        None => MAX_DURATION,
    };
    let started = Instant::now();
    let deadline = started + duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency {
        let client = client.clone();
        let issued = issued.clone();
        let limit = options.requests;
        let request = options.request;
        workers.spawn(async move {
            let mut stats = WorkerStats::default();
            loop {
                if let Some(limit) = limit {
                    if issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                match client.lorem(&request).await {
                    Ok(lorem) => {
                        stats.ok += 1;
                        stats.latencies.push(lorem.latency);
                        *stats.per_instance.entry(lorem.instance).or_default() += 1;
                    }
                    Err(error) => {
                        stats.failed += 1;
                        tracing::debug!(%error, "request failed");
                        let message = error.to_string();
                        if stats.errors.len() < MAX_ERROR_KINDS
                            || stats.errors.contains_key(&message)
                        {
                            *stats.errors.entry(message).or_default() += 1;
                        }
                    }
                }
            }
            stats
        });
    }
    let mut report = LoadReport::default();
    let mut latencies = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let stats = match joined {
            Ok(stats) => stats,
            Err(error) => {
                tracing::error!(%error, "a load worker died");
                continue;
            }
        };
        report.ok += stats.ok;
        report.failed += stats.failed;
        latencies.extend(stats.latencies);
        for (instance, count) in stats.per_instance {
            *report.per_instance.entry(instance).or_default() += count;
        }
        for (error, count) in stats.errors {
            if report.errors.len() < MAX_ERROR_KINDS || report.errors.contains_key(&error) {
                *report.errors.entry(error).or_default() += count;
            }
        }
    }
    report.elapsed = started.elapsed();
    if let Some(limit) = options.requests {
        let finished = report.ok + report.failed;
        if finished < limit && options.duration.is_none() {
            tracing::warn!(
                limit,
                finished,
                cap = ?MAX_DURATION,
                "stopped at the duration cap before every request was sent"
            );
        }
    }
    latencies.sort_unstable();
    report.p50_ms = percentile_ms(&latencies, 0.50);
    report.p99_ms = percentile_ms(&latencies, 0.99);
    let secs = report.elapsed.as_secs_f64();
    if secs > 0.0 {
        report.rps = (report.ok + report.failed) as f64 / secs;
    }
    Ok(report)
}

/// Nearest-rank percentile of sorted latencies, in milliseconds; 0 if empty.
pub fn percentile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (quantile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.saturating_sub(1).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile_ms(&sorted, 0.5), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[ms(7)], 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    fn keys(json: &str) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn the_json_has_exactly_the_promised_keys() {
        let report = LoadReport {
            ok: 2,
            failed: 1,
            per_instance: BTreeMap::from([("a".to_owned(), 2)]),
            errors: BTreeMap::from([("no instance".to_owned(), 1)]),
            ..LoadReport::default()
        };
        assert_eq!(
            keys(&report.to_json()),
            ["failed", "ok", "p50_ms", "p99_ms", "per_instance", "rps"]
        );
        // A run that could not start says why, in one more key.
        let report = LoadReport::all_failed(3, "bad arguments");
        assert_eq!(
            keys(&report.to_json()),
            [
                "error",
                "failed",
                "ok",
                "p50_ms",
                "p99_ms",
                "per_instance",
                "rps"
            ]
        );
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(value["failed"], 3);
        assert_eq!(value["error"], "bad arguments");
    }
}
