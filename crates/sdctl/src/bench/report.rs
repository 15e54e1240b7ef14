//! What the bench measured: the JSON of `--out` and the table on stdout.

use std::time::Duration;

use serde::Serialize;

use super::{Sizes, round};
use crate::table::{Align, Table};

/// The whole run. Every key is always present; a value that was not
/// measured (not applicable, or after a failure) is `null`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The sizes used.
    pub sizes: Sizes,
    /// How long the whole run took, in seconds.
    pub seconds: f64,
    /// One entry per backend, in the order of the table.
    pub backends: Vec<BackendReport>,
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub cpus: usize,
    /// `std::env::consts::OS`.
    pub os: &'static str,
    /// True if the servers were started on loopback by `--spawn`.
    pub spawned_on_loopback: bool,
}

impl Machine {
    /// This machine.
    pub fn this(spawned: bool) -> Self {
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: std::env::consts::OS,
            spawned_on_loopback: spawned,
        }
    }
}

/// p50 and p99 (nearest rank) of some latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Median.
    pub p50: f64,
    /// 99th percentile (the maximum when there are fewer than 100 samples).
    pub p99: f64,
    /// How many samples.
    pub n: usize,
}

impl Stat {
    /// The percentiles of `samples` (sorted here); `None` if empty.
    pub fn of(mut samples: Vec<Duration>) -> Option<Stat> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |q| round(client::load::percentile_ms(&samples, q), 3);
        Some(Stat {
            p50: ms(0.50),
            p99: ms(0.99),
            n: samples.len(),
        })
    }
}

/// The watcher-memory phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WatcherMemory {
    /// How many instances the loaded watcher synced to.
    pub instances: usize,
    /// Peak RSS of `sdctl watch` on an empty service, MiB.
    pub empty_mib: f64,
    /// Peak RSS of `sdctl watch` synced to `instances`, MiB.
    pub loaded_mib: f64,
    /// `loaded_mib - empty_mib`: what the instances cost a watcher.
    pub delta_mib: f64,
}

/// The bulk-registration phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bulk {
    /// Instances registered at once over one registrar.
    pub instances: usize,
    /// Until every `register()` returned, ms.
    pub registered_ms: f64,
    /// Until another connection's watch showed them all, ms.
    pub visible_ms: f64,
    /// `instances` per second of `registered_ms`.
    pub per_second: f64,
}

/// The lorem load phase (`lorem-client load`'s runner).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lorem {
    /// Requests answered.
    pub ok: u64,
    /// Requests failed.
    pub failed: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// One backend's row.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// `memory`, `etcd`, `zookeeper` or `consul`.
    pub backend: &'static str,
    /// The server's `REGISTRY_ADDR` (`null` for memory).
    pub addr: Option<String>,
    /// How long a registration outlives its last keep-alive, ms.
    pub expiry_ms: f64,
    /// `register()` latency.
    pub register_ms: Option<Stat>,
    /// Register on one connection -> seen by another's watch.
    pub propagation_ms: Option<Stat>,
    /// Deregister -> gone from the other watch.
    pub deregistration_ms: Option<Stat>,
    /// SIGKILL of the registering process -> gone from the watch.
    pub crash_detection_ms: Option<Stat>,
    /// A new watch of `sizes.bulk` instances -> first full snapshot.
    pub initial_sync_ms: Option<Stat>,
    /// What `sizes.watchers` instances cost an `sdctl watch` process.
    pub watcher_memory: Option<WatcherMemory>,
    /// Registration throughput over one registrar.
    pub bulk: Option<Bulk>,
    /// Lorem requests through the balancer.
    pub lorem: Option<Lorem>,
    /// The server's RSS at the end, MiB (`--spawn` only).
    pub server_rss_mib: Option<f64>,
    /// The scale rows: a watcher and a gateway at N instances under churn.
    pub scale: Vec<super::ScaleRow>,
    /// What does not apply, or was measured differently, and why.
    pub notes: Vec<String>,
    /// Why the row is incomplete, if it is.
    pub error: Option<String>,
    /// How long this backend took, in seconds (server start included).
    pub seconds: f64,
}

impl BackendReport {
    /// An empty row for `backend`.
    pub fn new(backend: &'static str) -> Self {
        BackendReport {
            backend,
            addr: None,
            expiry_ms: 0.0,
            register_ms: None,
            propagation_ms: None,
            deregistration_ms: None,
            crash_detection_ms: None,
            initial_sync_ms: None,
            watcher_memory: None,
            bulk: None,
            lorem: None,
            server_rss_mib: None,
            scale: Vec::new(),
            notes: Vec::new(),
            error: None,
            seconds: 0.0,
        }
    }
}

/// A latency for the table: 2 decimals under 10, 1 under 100, else none.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".to_owned())
}

/// The number of columns of [`Report::table`].
pub const TABLE_COLUMNS: usize = 17;

impl Report {
    /// The table printed on stdout: a title line, two header lines, one row
    /// per backend (`-` for what was not measured), then one line per note
    /// and per error.
    pub fn table(&self) -> String {
        let s = &self.sizes;
        let mut out = format!(
            "sdctl bench: the same work on every backend (TTL {}; {} rounds, {} crashes, {} bulk, {} watched, {} lorem requests); {} CPUs, {}\n",
            humantime::format_duration(s.ttl),
            s.rounds,
            s.crash,
            s.bulk,
            s.watchers,
            s.load_requests,
            self.machine.cpus,
            if self.machine.spawned_on_loopback {
                "servers spawned on loopback"
            } else {
                "servers given by address"
            }
        );
        let bulk = format!("sync {}", s.bulk);
        let watched = format!("@{}", s.watchers);
        let mut table = Table::new(
            &[
                "backend", "expiry", "p50", "p99", "p50", "p99", "p50", "p99", "p50", "p99", "p50",
                "p99", &watched, "reg/s", "rps", "p99 ms", "MiB",
            ],
            &[&[Align::Left][..], &[Align::Right; TABLE_COLUMNS - 1][..]].concat(),
        )
        .groups(&[
            ("", 1),
            ("", 1),
            ("register ms", 2),
            ("propagate ms", 2),
            ("deregister ms", 2),
            ("crash ms", 2),
            (&bulk, 2),
            ("watcher MiB", 1),
            ("bulk", 1),
            ("lorem", 2),
            ("server", 1),
        ]);
        for r in &self.backends {
            let stat = |s: &Option<Stat>| [opt(s.map(|s| s.p50), ms), opt(s.map(|s| s.p99), ms)];
            let mut row = vec![
                r.backend.to_owned(),
                format!("{}s", round(r.expiry_ms / 1000.0, 1)),
            ];
            for s in [
                &r.register_ms,
                &r.propagation_ms,
                &r.deregistration_ms,
                &r.crash_detection_ms,
                &r.initial_sync_ms,
            ] {
                row.extend(stat(s));
            }
            row.push(opt(r.watcher_memory.map(|m| m.delta_mib), |v| {
                format!("{v:.1}")
            }));
            row.push(opt(r.bulk.map(|b| b.per_second), |v| format!("{v:.0}")));
            row.push(opt(r.lorem.map(|l| l.rps), |v| format!("{v:.0}")));
            row.push(opt(r.lorem.map(|l| l.p99_ms), ms));
            row.push(opt(r.server_rss_mib, |v| format!("{v:.0}")));
            table.row(row);
        }
        out.push_str(&table.render());
        out.push_str(&self.scale_table());
        for r in &self.backends {
            for note in &r.notes {
                out.push_str(&format!("{}: {note}\n", r.backend));
            }
            if let Some(error) = &r.error {
                out.push_str(&format!("{}: FAILED: {error}\n", r.backend));
            }
        }
        out
    }

    /// The scale rows, if any: one line per backend and size.
    fn scale_table(&self) -> String {
        if self.backends.iter().all(|r| r.scale.is_empty()) {
            return String::new();
        }
        let s = &self.sizes;
        let mut out = format!(
            "scale: sdctl watch and lorem-client gateway following N instances (floor: a bare client watch), {} changes at {}/s\n",
            s.scale_changes, s.scale_rate
        );
        let mut table = Table::new(
            &[
                "backend", "children", "N", "sync ms", "floor", "watch", "gateway", "watch",
                "gateway", "p50", "p99", "seen",
            ],
            &[&[Align::Left; 2][..], &[Align::Right; 10][..]].concat(),
        )
        .groups(&[
            ("", 1),
            ("", 1),
            ("", 1),
            ("", 1),
            ("CPU ms/change", 3),
            ("peak MiB", 2),
            ("propagate ms", 2),
            ("", 1),
        ]);
        let cpu = |v: Option<f64>| opt(v, |v| format!("{v:.3}"));
        let mib = |v: Option<f64>| opt(v, |v| format!("{v:.0}"));
        for r in &self.backends {
            for x in &r.scale {
                table.row(vec![
                    r.backend.to_owned(),
                    x.children.to_owned(),
                    x.instances.to_string(),
                    ms(x.initial_sync_ms),
                    cpu(x.floor_cpu_ms_per_change),
                    cpu(x.watch_cpu_ms_per_change),
                    cpu(x.gateway_cpu_ms_per_change),
                    mib(x.watch_peak_mib),
                    mib(x.gateway_peak_mib),
                    opt(x.propagation_ms.map(|s| s.p50), ms),
                    opt(x.propagation_ms.map(|s| s.p99), ms),
                    format!("{}/{}", x.seen, x.changes),
                ]);
            }
        }
        out.push_str(&table.render());
        out
    }

    /// True if every backend was measured to the end.
    pub fn complete(&self) -> bool {
        self.backends.iter().all(|b| b.error.is_none())
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Numbers, strings and options only: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn stat(p50: f64, p99: f64) -> Option<Stat> {
        Some(Stat { p50, p99, n: 10 })
    }

    pub(crate) fn sample() -> Report {
        let mut etcd = BackendReport::new("etcd");
        etcd.expiry_ms = 2000.0;
        etcd.register_ms = stat(1.234, 4.5);
        etcd.propagation_ms = stat(1.5, 5.0);
        etcd.deregistration_ms = stat(1.1, 2.0);
        etcd.crash_detection_ms = stat(2100.0, 2400.0);
        etcd.initial_sync_ms = stat(12.0, 20.0);
        etcd.watcher_memory = Some(WatcherMemory {
            instances: 10_000,
            empty_mib: 10.0,
            loaded_mib: 30.5,
            delta_mib: 20.5,
        });
        etcd.bulk = Some(Bulk {
            instances: 1000,
            registered_ms: 100.0,
            visible_ms: 120.0,
            per_second: 10_000.0,
        });
        etcd.lorem = Some(Lorem {
            ok: 100,
            failed: 0,
            rps: 15000.0,
            p50_ms: 0.5,
            p99_ms: 1.5,
        });
        etcd.server_rss_mib = Some(31.0);
        let mut memory = BackendReport::new("memory");
        memory.expiry_ms = 2000.0;
        memory.notes.push("watcher memory: n/a".to_owned());
        memory.error = Some("something broke".to_owned());
        Report {
            machine: Machine::this(true),
            sizes: Sizes::full(),
            seconds: 1.0,
            backends: vec![memory, etcd],
        }
    }

    #[test]
    fn the_table_has_a_row_per_backend_and_a_dash_for_what_is_missing() {
        let report = sample();
        let text = report.table();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("sdctl bench: "), "{text}");
        assert!(lines[1].contains("register ms"), "{text}");
        assert!(lines[2].starts_with("backend"), "{text}");
        let memory: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(memory.len(), TABLE_COLUMNS, "{text}");
        assert_eq!(memory[..3], ["memory", "2s", "-"]);
        let etcd: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(etcd.len(), TABLE_COLUMNS, "{text}");
        assert_eq!(etcd[..4], ["etcd", "2s", "1.23", "4.50"]);
        assert_eq!(
            etcd[8..],
            [
                "2100", "2400", "12.0", "20.0", "20.5", "10000", "15000", "1.50", "31"
            ]
        );
        assert_eq!(lines[5], "memory: watcher memory: n/a");
        assert_eq!(lines[6], "memory: FAILED: something broke");
        assert!(!report.complete());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["backends"][1]["register_ms"]["p50"], 1.234);
        assert!(json["backends"][0]["register_ms"].is_null());
        assert_eq!(json["sizes"]["ttl_ms"], 2000);
    }
}
