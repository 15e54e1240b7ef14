//! `sdctl bench`: the same scenarios on every backend, one table row each.
//!
//! Each backend is measured in turn, on a server started by the test kit
//! (`--spawn`: 127.0.0.1, ephemeral ports, a temp dir, stopped by PID) or
//! on one given by address (`--etcd-addr`, ...; the bench then registers
//! only under service names of its own, `sdbench-<run>-...`, and removes
//! what it registered). What is measured, in order:
//!
//! | column | what | samples |
//! |---|---|---|
//! | expiry | how long a registration outlives its last keep-alive: the TTL (etcd lease, Consul check, memory), or the ZooKeeper session timeout (at least 6 s by default) | - |
//! | register | `register()` until it returns | `--rounds` |
//! | propagation | from calling `register()` on one connection until a watch on another shows the instance | `--rounds` |
//! | deregistration | from calling `deregister()` until that watch drops it | `--rounds` |
//! | crash detection | `sdctl register` child processes are SIGKILLed one by one, spread over one keep-alive period (TTL/3) so the samples fall at different points of the keep-alive cycle; from each kill until the watch drops that instance (memory: `abandon()`, the registry being in-process) | `--crash` |
//! | initial sync | a new connection's watch of a service of `--bulk` instances, until its first full snapshot | `--sync` |
//! | watcher MiB | peak RSS (`VmHWM`) of an `sdctl watch` child process synced to `--watchers` instances, minus that of an `sdctl watch` of an empty service (memory: n/a, a separate process cannot see it; Consul: the instances are written into the catalog under 100 nodes, since one agent cannot take that many registrations in reasonable time, see `consul_catalog.rs`) | 1 |
//! | bulk reg/s | `--bulk` registrations at once over ONE registrar (one lease, one session, one agent connection), divided by the time until all returned | 1 |
//! | lorem rps, p99 | two lorem servers registered through the backend and `--load-requests` requests through the discovery-fed balancer and `lorem-client load`'s runner | 1 |
//! | server MiB | the server process's RSS at the end (`--spawn` only) | 1 |
//! | scale rows | per N of `--scale`: an `sdctl watch` child and a `lorem-client gateway` child (and, as their floor, a bare client watch: `floor.rs`) following N instances while `--scale-changes` changes are made at `--scale-rate`/s: initial sync, CPU ms per change, peak RSS, propagation p50/p99 under churn (see `scale.rs`; `--scale-baseline DIR` adds another build's children) | `--scale-changes` |
//!
//! Rounds are `--gap` apart, so each change is measured on a quiet registry
//! (Consul's watch paces its blocking queries: a burst of 5, then one per
//! 50 ms). The bulk, sync and watcher phases register with a 60 s TTL so
//! that keep-alives of thousands of instances do not compete with what is
//! measured. Every wait has a deadline; a phase that fails ends that
//! backend's row (its error is printed under the table) and the others go on.
//!
//! Sizes are bounded (see [`Sizes::check`]); `--quick` uses
//! [`Sizes::quick`], about a minute for all four backends with `--spawn`.

mod chart;
mod child;
mod consul_catalog;
pub mod floor;
mod progress;
mod report;
mod scale;
mod scenarios;
mod target;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

pub use chart::svg;
pub use report::{BackendReport, Bulk, Lorem, Machine, Report, Stat, TABLE_COLUMNS, WatcherMemory};
pub use scale::ScaleRow;

/// A backend the bench can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The in-process registry.
    Memory,
    /// etcd v3.
    Etcd,
    /// ZooKeeper.
    Zookeeper,
    /// A Consul agent.
    Consul,
}

impl Backend {
    /// Every backend, in the order of the table.
    pub const ALL: [Backend; 4] = [
        Backend::Memory,
        Backend::Etcd,
        Backend::Zookeeper,
        Backend::Consul,
    ];

    /// The name `REGISTRY` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Etcd => "etcd",
            Backend::Zookeeper => "zookeeper",
            Backend::Consul => "consul",
        }
    }

    /// Parses one name (`zk` is ZooKeeper), ignoring case.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] listing the accepted names.
    pub fn parse(name: &str) -> Result<Backend> {
        match name.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(Backend::Memory),
            "etcd" => Ok(Backend::Etcd),
            "zookeeper" | "zk" => Ok(Backend::Zookeeper),
            "consul" => Ok(Backend::Consul),
            _ => Err(Error::InvalidArgument(format!(
                "unknown backend {name:?}; expected one of memory, etcd, zookeeper (or zk), consul"
            ))),
        }
    }

    /// Parses a comma-separated list such as `memory,etcd`; duplicates are
    /// dropped, the order is kept.
    ///
    /// # Errors
    /// An unknown name, or an empty list.
    pub fn parse_list(list: &str) -> Result<Vec<Backend>> {
        let mut backends = Vec::new();
        for name in list.split(',').filter(|n| !n.trim().is_empty()) {
            let backend = Backend::parse(name)?;
            if !backends.contains(&backend) {
                backends.push(backend);
            }
        }
        if backends.is_empty() {
            return Err(Error::InvalidArgument(
                "no backend given; expected a list such as memory,etcd,zookeeper,consul".to_owned(),
            ));
        }
        Ok(backends)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How much work each scenario does. Serialised into the report (durations
/// in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// The TTL of the measured registrations (`REGISTRY_TTL`); also the
    /// ZooKeeper session timeout, but at least 6 s as by default.
    #[serde(rename = "ttl_ms", serialize_with = "millis")]
    pub ttl: Duration,
    /// Register/propagate/deregister rounds.
    pub rounds: usize,
    /// The pause before each round.
    #[serde(rename = "gap_ms", serialize_with = "millis")]
    pub gap: Duration,
    /// Processes killed in the crash-detection phase.
    pub crash: usize,
    /// Instances registered at once over one registrar; also the size of the
    /// service the initial-sync phase watches.
    pub bulk: usize,
    /// Initial-sync samples.
    pub sync: usize,
    /// Instances the watcher-memory phase syncs `sdctl watch` to (0 skips it).
    pub watchers: usize,
    /// Lorem requests through the balancer (0 skips the phase).
    pub load_requests: u64,
    /// Lorem requests in flight at once.
    pub load_concurrency: usize,
    /// The sizes of the scale rows (empty skips them): see `scale.rs`.
    pub scale: Vec<usize>,
    /// Changes per scale row.
    pub scale_changes: usize,
    /// Changes per second in the scale rows.
    pub scale_rate: u32,
}

fn millis<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Sizes {
    /// The defaults: the sizes (1,000 bulk, 10,000 watched).
    pub fn full() -> Self {
        Sizes {
            ttl: Duration::from_secs(2),
            rounds: 100,
            gap: Duration::from_millis(200),
            crash: 5,
            bulk: 1000,
            sync: 10,
            watchers: 10_000,
            load_requests: 20_000,
            load_concurrency: 16,
            scale: vec![1000, 10_000, 100_000],
            scale_changes: 200,
            scale_rate: 40,
        }
    }

    /// `--quick`: the same scenarios, smaller; about a minute for the four
    /// backends with `--spawn` on a 2-core machine.
    pub fn quick() -> Self {
        Sizes {
            rounds: 15,
            crash: 2,
            sync: 3,
            watchers: 2000,
            load_requests: 2000,
            scale: vec![1000],
            scale_changes: 40,
            ..Sizes::full()
        }
    }

    /// Checks every size against its bounds.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the flag and its bounds.
    pub fn check(&self) -> Result<()> {
        fn within<T: PartialOrd + fmt::Display>(flag: &str, v: T, lo: T, hi: T) -> Result<()> {
            if v < lo || v > hi {
                return Err(Error::InvalidArgument(format!(
                    "{flag} {v} is out of bounds; use {lo} to {hi}"
                )));
            }
            Ok(())
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(60) {
            return Err(Error::InvalidArgument(format!(
                "--ttl {} is out of bounds; use 1s to 60s",
                humantime::format_duration(self.ttl)
            )));
        }
        if self.gap > Duration::from_secs(10) {
            return Err(Error::InvalidArgument(format!(
                "--gap {} is out of bounds; use 0s to 10s",
                humantime::format_duration(self.gap)
            )));
        }
        within("--rounds", self.rounds, 1, 10_000)?;
        within("--crash", self.crash, 1, 50)?;
        within("--bulk", self.bulk, 1, 10_000)?;
        within("--sync", self.sync, 1, 100)?;
        within("--watchers", self.watchers, 0, 100_000)?;
        within("--load-requests", self.load_requests, 0, 1_000_000)?;
        for &n in &self.scale {
            within("--scale", n, 1, 200_000)?;
        }
        within("--scale-changes", self.scale_changes, 1, 10_000)?;
        within("--scale-rate", self.scale_rate, 1, 1000)?;
        within(
            "--load-concurrency",
            self.load_concurrency,
            1,
            client::load::MAX_CONCURRENCY,
        )?;
        Ok(())
    }
}

/// What to measure, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// The backends, in the order of the rows.
    pub backends: Vec<Backend>,
    /// Start each real server with the test kit instead of using `addrs`.
    pub spawn: bool,
    /// `REGISTRY_ADDR` of each real backend not spawned.
    pub addrs: BTreeMap<Backend, String>,
    /// The sizes.
    pub sizes: Sizes,
    /// Progress lines on stderr (only ever when it is a terminal).
    pub progress: bool,
    /// `--scale-baseline DIR`: the `sdctl` and `lorem-client` of another
    /// build, measured too in the scale rows.
    pub scale_baseline: Option<std::path::PathBuf>,
}

impl BenchOptions {
    /// Checks the sizes, and that every real backend has a server: spawned,
    /// or an address.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming what is missing.
    pub fn check(&self) -> Result<()> {
        self.sizes.check()?;
        if self.spawn {
            if let Some(backend) = self.addrs.keys().next() {
                return Err(Error::InvalidArgument(format!(
                    "--{backend}-addr and --spawn exclude each other: --spawn starts its own servers"
                )));
            }
            return Ok(());
        }
        for backend in &self.backends {
            if *backend != Backend::Memory && !self.addrs.contains_key(backend) {
                return Err(Error::InvalidArgument(format!(
                    "no {backend} server to measure: give --{backend}-addr HOST:PORT, or --spawn to start one on loopback"
                )));
            }
        }
        Ok(())
    }
}

/// Runs the bench and returns its report; each backend that failed has its
/// `error` set (the others are measured regardless).
///
/// `sdctl` is the binary that the crash and watcher-memory phases run as
/// child processes (`sdctl register`, `sdctl watch`): normally the running
/// executable.
///
/// # Errors
/// [`Error::InvalidArgument`] for unusable options, before anything runs.
pub async fn run(options: &BenchOptions, sdctl: &Path) -> Result<Report> {
    options.check()?;
    let progress = progress::Progress::new(options.progress);
    let started = Instant::now();
    let mut backends = Vec::new();
    for backend in &options.backends {
        backends.push(scenarios::measure(*backend, options, sdctl, &progress).await);
    }
    progress.clear();
    Ok(Report {
        machine: Machine::this(options.spawn),
        sizes: options.sizes.clone(),
        seconds: round(started.elapsed().as_secs_f64(), 1),
        backends,
    })
}

/// `v` rounded to `digits` decimals.
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_lists_parse_and_unknown_names_are_named() {
        assert_eq!(
            Backend::parse_list("memory, ETCD,zk,consul,etcd").unwrap(),
            Backend::ALL
        );
        let error = Backend::parse_list("etcd,etc").unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown backend \"etc\"; expected one of memory, etcd, zookeeper (or zk), consul"
        );
        assert!(Backend::parse_list(",").is_err());
    }

    #[test]
    fn sizes_are_bounded_and_servers_required() {
        assert!(Sizes::full().check().is_ok());
        assert!(Sizes::quick().check().is_ok());
        let error = Sizes {
            bulk: 0,
            ..Sizes::full()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert_eq!(error, "--bulk 0 is out of bounds; use 1 to 10000");
        let error = Sizes {
            ttl: Duration::from_millis(10),
            ..Sizes::full()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(error.contains("--ttl 10ms"), "{error}");

        let mut options = BenchOptions {
            backends: vec![Backend::Memory, Backend::Etcd],
            spawn: false,
            addrs: BTreeMap::new(),
            sizes: Sizes::quick(),
            progress: false,
            scale_baseline: None,
        };
        let error = options.check().unwrap_err().to_string();
        assert!(
            error.contains("--etcd-addr HOST:PORT, or --spawn"),
            "{error}"
        );
        options.addrs.insert(Backend::Etcd, "127.0.0.1:2379".into());
        assert!(options.check().is_ok());
        options.spawn = true;
        assert!(options.check().is_err());
    }
}
