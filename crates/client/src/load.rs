//! Bounded load through the balancer: `lorem-client load`.
//!
//! `concurrency` workers send requests back to back until `requests` have
//! been issued or `duration` has passed, whichever comes first (at least
//! one bound is required, and the duration is capped at
//! [`MAX_DURATION`]). A request in flight at the deadline is allowed to
//! finish: it is bounded by the wait and retry timeouts.
//!
//! [`run`] goes through the balancer; [`run_direct`] sends the same requests
//! with the same HTTP client straight to fixed addresses, without discovery
//! or retries: the baseline the overhead benchmark compares with.
//!
//! Every issued request is counted, as `ok` or `failed`. A request that
//! panics (a bug) counts as failed and sets [`LoadReport::error`]; should a
//! worker die anyway, its lost requests count as at least one failure. Either
//! way the run does not look successful.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use serde::Serialize;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::client::{DirectClient, Lorem, LoremClient, LoremRequest};
use balancer::{Balancer, deadline_after};
use http_client::{Error, Result};

/// The longest run `load` accepts; longer durations are cut to it.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Default [`LoadOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The most requests `load` keeps in flight at once.
pub const MAX_CONCURRENCY: usize = 1024;
/// How many distinct error messages a report keeps.
const MAX_ERROR_KINDS: usize = 10;
/// How many changes of the live set a report keeps (the first ones).
pub const MAX_SET_CHANGES: usize = 1000;

/// What load to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Stop after this long (capped at [`MAX_DURATION`]).
    pub duration: Option<Duration>,
    /// Requests in flight at most at once.
    pub concurrency: usize,
    /// Requests started per second, all workers together; `None` sends
    /// back to back. A steady rate keeps a long run (a soak, a fault
    /// scenario) from saturating the machine.
    pub rate: Option<u32>,
    /// The request every worker sends.
    pub request: LoremRequest,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            requests: Some(100),
            duration: None,
            concurrency: DEFAULT_CONCURRENCY,
            rate: None,
            request: LoremRequest::default(),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The outcome of a load run. Serialises to the JSON that
/// `lorem-client load --json` prints: `ok`, `failed`, `retries`, `p50_ms`,
/// `p99_ms`, `p999_ms`, `max_ms`, `rps`, `per_instance`, `instances` and `set_changes`, plus
/// `error` when the run could not start or went wrong itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// Requests answered with a message.
    pub ok: u64,
    /// Requests that failed (no instance, retries exhausted, a 4xx...).
    pub failed: u64,
    /// Tries after the first, over the successful requests (a failed
    /// request's tries are in its error).
    pub retries: u64,
    /// Successful requests whose `x-instance-id` header did not name the
    /// instance the balancer picked (missing, or another id): answers from
    /// something other than the registered instance, counted as if they
    /// were its. Always 0 through the balancer against lorem servers,
    /// whose registrations ask for the identity check; in the JSON only
    /// when not 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub foreign: u64,
    /// Median latency of the successful requests, in milliseconds (0 if none).
    pub p50_ms: f64,
    /// 99th percentile latency of the successful requests, in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile latency of the successful requests, in milliseconds.
    pub p999_ms: f64,
    /// The slowest successful request, in milliseconds: a stall that the
    /// percentiles of a short run hide (4 requests of 2 s among 10,000 do
    /// not move the p99) shows here.
    pub max_ms: f64,
    /// Finished requests (ok and failed) per second of the run.
    pub rps: f64,
    /// Successful requests by the registry id of the instance that
    /// answered (the one the balancer picked, whatever its `x-instance-id`
    /// header says).
    pub per_instance: BTreeMap<String, u64>,
    /// The ids of the live set when the run ended (the addresses, for a
    /// direct run).
    pub instances: Vec<String>,
    /// Every change of the live set during the run (the first
    /// [`MAX_SET_CHANGES`]), the set at the start first: how long the client
    /// took to see a fault and to recover from it.
    pub set_changes: Vec<SetChange>,
    /// Why nothing could be sent (bad arguments, unusable registry
    /// settings...), or what went wrong with the run itself (a request that
    /// panicked, a worker that died: a bug, counted in `failed` too);
    /// `None` (and absent from the JSON) for a run that took place normally,
    /// however many of its requests failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// CPU time this process used during the run (user + system, all
    /// threads), in milliseconds, where the system tells it (Linux): what
    /// the overhead benchmark divides by the request count, since it is far
    /// steadier than throughput on a shared machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// How long the run took.
    #[serde(skip)]
    pub elapsed: Duration,
    /// Up to ten distinct error messages with their counts.
    #[serde(skip)]
    pub errors: BTreeMap<String, u64>,
}

pub use balancer::{SetChange, unix_ms};

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
            "requests: ok={} failed={} retries={} in {:.2}s",
            self.ok,
            self.failed,
            self.retries,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "latency: p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )?;
        writeln!(f, "throughput: {:.1} requests/s", self.rps)?;
        if self.foreign > 0 {
            writeln!(
                f,
                "answers not from the instance picked (x-instance-id differs): {}",
                self.foreign
            )?;
        }
        for (instance, count) in &self.per_instance {
            writeln!(f, "instance {instance}: {count}")?;
        }
        if self.set_changes.len() > 1 {
            writeln!(
                f,
                "live set changed {} time(s); at the end: {}",
                self.set_changes.len() - 1,
                self.instances.join(",")
            )?;
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
    retries: u64,
    foreign: u64,
    latencies: Vec<Duration>,
    per_instance: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// Requests that panicked (counted in `failed` too).
    panics: u64,
    /// What the first of them said.
    first_panic: Option<String>,
}

impl WorkerStats {
    /// Counts a failed request, keeping its message among the first
    /// [`MAX_ERROR_KINDS`] distinct ones.
    fn fail(&mut self, message: String) {
        self.failed += 1;
        if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&message) {
            *self.errors.entry(message).or_default() += 1;
        }
    }
}

/// What the sum of the workers knows so far.
#[derive(Default)]
struct Totals {
    report: LoadReport,
    latencies: Vec<Duration>,
    panics: u64,
    /// The first panic message, or the first dead worker's error.
    first_panic: Option<String>,
}

impl Totals {
    /// Adds one worker's outcome. A worker that died (it cannot, since
    /// requests that panic are caught, but a bug elsewhere could) lost its
    /// counts: it counts as one failure, so that the run cannot end with
    /// nothing failed and nothing counted.
    fn absorb(&mut self, joined: std::result::Result<WorkerStats, JoinError>) {
        let stats = match joined {
            Ok(stats) => stats,
            Err(error) => {
                tracing::error!(%error, "a load worker died; its requests are counted as one failure");
                let mut stats = WorkerStats::default();
                stats.fail(format!("a load worker died: {error}"));
                stats.panics = 1;
                stats.first_panic = Some(format!("a load worker died: {error}"));
                stats
            }
        };
        let report = &mut self.report;
        report.ok += stats.ok;
        report.failed += stats.failed;
        report.retries += stats.retries;
        report.foreign += stats.foreign;
        self.latencies.extend(stats.latencies);
        for (instance, count) in stats.per_instance {
            *report.per_instance.entry(instance).or_default() += count;
        }
        for (error, count) in stats.errors {
            if report.errors.len() < MAX_ERROR_KINDS || report.errors.contains_key(&error) {
                *report.errors.entry(error).or_default() += count;
            }
        }
        self.panics += stats.panics;
        if self.first_panic.is_none() {
            self.first_panic = stats.first_panic;
        }
    }

    /// The report, with `error` set if anything panicked.
    fn finish(mut self) -> LoadReport {
        if self.panics > 0 {
            self.report.error = Some(format!(
                "{} load request(s) panicked or a worker died, a bug in lorem-client; \
                 the first: {}",
                self.panics,
                self.first_panic.as_deref().unwrap_or("(no message)")
            ));
        }
        self.latencies.sort_unstable();
        self.report.p50_ms = percentile_ms(&self.latencies, 0.50);
        self.report.p99_ms = percentile_ms(&self.latencies, 0.99);
        self.report.p999_ms = percentile_ms(&self.latencies, 0.999);
        self.report.max_ms = percentile_ms(&self.latencies, 1.0);
        self.report
    }
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

/// Runs the load and reports it.
///
/// # Errors
/// [`Error::InvalidOptions`] if neither bound is given, or for a
/// concurrency outside 1..=[`MAX_CONCURRENCY`]. Failed requests are counted in the report, not returned.
pub async fn run(client: &LoremClient, options: &LoadOptions) -> Result<LoadReport> {
    run_until(client, options, std::future::pending()).await
}

/// [`run`], stopping early when `stop` completes (Ctrl-C in
/// `lorem-client load`): no new request is sent, those in flight finish, and
/// the report covers what was sent.
///
/// # Errors
/// As [`run`].
pub async fn run_until(
    client: &LoremClient,
    options: &LoadOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<LoadReport> {
    let recorder = SetRecorder::start(client.balancer());
    let sender = client.clone();
    let request = options.request;
    let result = run_with(options, stop, move || {
        let client = sender.clone();
        async move { client.lorem(&request).await }
    })
    .await;
    let (instances, set_changes) = recorder.finish(client.balancer()).await;
    result.map(|mut report| {
        report.instances = instances;
        report.set_changes = set_changes;
        report
    })
}

/// [`run`] without the balancer: every request goes once, in turn, to the
/// addresses of `client`, with the same HTTP client and the same reading of
/// the answer as [`run`]. The baseline of the overhead benchmark.
///
/// # Errors
/// As [`run`].
pub async fn run_direct(client: &DirectClient, options: &LoadOptions) -> Result<LoadReport> {
    let sender = client.clone();
    let request = options.request;
    let mut report = run_with(options, std::future::pending(), move || {
        let client = sender.clone();
        async move { client.lorem(&request).await }
    })
    .await?;
    report.instances = client.addrs().to_vec();
    Ok(report)
}

/// Records the changes of a balancer's live set while a run goes on.
struct SetRecorder {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<SetChange>>,
}

fn ids(set: &[registry::Instance]) -> Vec<String> {
    set.iter().map(|i| i.id.clone()).collect()
}

impl SetRecorder {
    fn start(balancer: &Balancer) -> Self {
        // Subscribed before the first look, so no change falls in between.
        let mut changes = balancer.changes();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let first = SetChange {
            at_unix_ms: unix_ms(),
            instances: ids(&balancer.instances()),
        };
        let task = tokio::spawn(async move {
            let mut seen = vec![first];
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(change) => {
                            if seen.len() < MAX_SET_CHANGES {
                                seen.push(change);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "the load report missed changes of the live set");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = &mut stopped => break,
                }
            }
            seen
        });
        SetRecorder { stop, task }
    }

    async fn finish(self, balancer: &Balancer) -> (Vec<String>, Vec<SetChange>) {
        let _ = self.stop.send(());
        let changes = self.task.await.unwrap_or_default();
        (ids(&balancer.instances()), changes)
    }
}

/// [`run`], with `send` making each request: tests give it one that
/// misbehaves.
async fn run_with<F, Fut>(
    options: &LoadOptions,
    stop: impl Future<Output = ()> + Send + 'static,
    send: F,
) -> Result<LoadReport>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Lorem>> + Send + 'static,
{
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
    if options.rate == Some(0) {
        return Err(Error::InvalidOptions(
            "the rate must be at least 1 request per second".to_owned(),
        ));
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
    let cpu_before = process_cpu();
    let deadline = deadline_after(duration);
    let issued = Arc::new(AtomicU64::new(0));
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        stop.await;
        tracing::info!("stopping the load: no new requests; waiting for those in flight");
        let _ = stopping.send(true);
    });
    let interval = options.rate.map(|rate| 1.0 / f64::from(rate));
    let mut workers = JoinSet::new();
    for _ in 0..options.concurrency {
        let send = send.clone();
        let issued = issued.clone();
        let limit = options.requests;
        let mut stopped = stopped.clone();
        workers.spawn(async move {
            let mut stats = WorkerStats::default();
            loop {
                let ticket = issued.fetch_add(1, Ordering::Relaxed);
                if limit.is_some_and(|limit| ticket >= limit) {
                    break;
                }
                if let Some(interval) = interval {
                    // Ticket n starts n intervals after the start.
                    let at = started
                        .checked_add(Duration::from_secs_f64(interval * ticket as f64))
                        .unwrap_or(deadline)
                        .min(deadline);
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                }
                if Instant::now() >= deadline || *stopped.borrow() {
                    break;
                }
                // A request that panics must not take the worker, and the
                // counts of every request it made, down with it.
                match AssertUnwindSafe(send()).catch_unwind().await {
                    Ok(Ok(lorem)) => {
                        stats.ok += 1;
                        stats.retries += u64::from(lorem.retries);
                        if lorem.reported_id.as_deref() != Some(lorem.instance.as_str()) {
                            stats.foreign += 1;
                        }
                        stats.latencies.push(lorem.latency);
                        *stats.per_instance.entry(lorem.instance).or_default() += 1;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "request failed");
                        stats.fail(error.to_string());
                    }
                    Err(payload) => {
                        let message = panic_message(payload.as_ref());
                        tracing::error!(panic = %message, "a load request panicked; counted as failed");
                        stats.fail(format!("the request panicked: {message}"));
                        stats.panics += 1;
                        if stats.first_panic.is_none() {
                            stats.first_panic = Some(message);
                        }
                    }
                }
            }
            stats
        });
    }
    let mut totals = Totals::default();
    while let Some(joined) = workers.join_next().await {
        totals.absorb(joined);
    }
    stopper.abort();
    let mut report = totals.finish();
    report.elapsed = started.elapsed();
    report.cpu_ms = match (cpu_before, process_cpu()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64() * 1000.0),
        _ => None,
    };
    if let Some(limit) = options.requests {
        let finished = report.ok + report.failed;
        if finished < limit && options.duration.is_none() && !*stopped.borrow() {
            tracing::warn!(
                limit,
                finished,
                cap = ?MAX_DURATION,
                "stopped at the duration cap before every request was sent"
            );
        }
    }
    let secs = report.elapsed.as_secs_f64();
    if secs > 0.0 {
        report.rps = (report.ok + report.failed) as f64 / secs;
    }
    Ok(report)
}

/// The CPU time (user + system) this process has used so far, from
/// `/proc/self/stat`; `None` where there is no such file.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13
    // after the name; in clock ticks, 100 per second on Linux.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
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
    fn cpu_time_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let first = process_cpu().expect("/proc/self/stat");
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(process_cpu().expect("/proc/self/stat") >= first);
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile_ms(&sorted, 0.5), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&sorted, 1.0), 100.0);
        // 4 stalls of 2 s among 10,000 requests of 1 ms: p99 and p99.9 stay
        // at 1 ms (the stalls are the top 0.04 %), the max shows them.
        let mut stalled: Vec<Duration> = vec![ms(1); 9_996];
        stalled.extend([ms(2000); 4]);
        assert_eq!(percentile_ms(&stalled, 0.99), 1.0);
        assert_eq!(percentile_ms(&stalled, 0.999), 1.0);
        assert_eq!(percentile_ms(&stalled, 1.0), 2000.0);
        let mut stalled: Vec<Duration> = vec![ms(1); 990];
        stalled.extend([ms(2000); 10]);
        assert_eq!(percentile_ms(&stalled, 0.99), 1.0);
        assert_eq!(percentile_ms(&stalled, 0.999), 2000.0);
        assert_eq!(percentile_ms(&[ms(7)], 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    fn lorem(instance: &str) -> Lorem {
        Lorem {
            message: "lorem ipsum".to_owned(),
            instance: instance.to_owned(),
            reported_id: None,
            retries: 0,
            latency: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn a_request_that_panics_counts_as_failed_and_says_so() {
        let calls = Arc::new(AtomicU64::new(0));
        let options = LoadOptions {
            requests: Some(10),
            concurrency: 2,
            ..LoadOptions::default()
        };
        let report = run_with(&options, std::future::pending(), move || {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_ne!(call, 2, "a bug in the third request");
                Ok(lorem("a"))
            }
        })
        .await
        .expect("valid options");
        // Every issued request is counted; the panic is a failure, which is
        // what makes `lorem-client load` exit 1.
        assert_eq!((report.ok, report.failed), (9, 1), "{report}");
        assert_eq!(report.per_instance.get("a"), Some(&9));
        let error = report.error.as_deref().unwrap_or_default();
        assert!(
            error.contains("panicked") && error.contains("a bug in the third request"),
            "{report}"
        );
        assert!(
            report.to_json().contains("\"error\""),
            "{}",
            report.to_json()
        );
    }

    fn explode() -> WorkerStats {
        panic!("a worker bug")
    }

    #[tokio::test]
    async fn a_dead_worker_counts_as_a_failure() {
        let died = tokio::spawn(async { explode() })
            .await
            .err()
            .expect("the worker panicked");
        let mut totals = Totals::default();
        totals.absorb(Ok(WorkerStats::default()));
        totals.absorb(Err(died));
        let report = totals.finish();
        // Not ok=0 failed=0, which would exit 0.
        assert_eq!((report.ok, report.failed), (0, 1), "{report}");
        let error = report.error.as_deref().unwrap_or_default();
        assert!(error.contains("a load worker died"), "{report}");
        assert_eq!(report.errors.values().sum::<u64>(), 1, "{report}");
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
        let always = [
            "failed",
            "instances",
            "max_ms",
            "ok",
            "p50_ms",
            "p999_ms",
            "p99_ms",
            "per_instance",
            "retries",
            "rps",
            "set_changes",
        ];
        assert_eq!(keys(&report.to_json()), always);
        // A run that could not start says why, in one more key.
        let report = LoadReport::all_failed(3, "bad arguments");
        let mut with_error = vec!["error"];
        with_error.extend(always);
        assert_eq!(keys(&report.to_json()), with_error);
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(value["failed"], 3);
        assert_eq!(value["error"], "bad arguments");
    }
}
