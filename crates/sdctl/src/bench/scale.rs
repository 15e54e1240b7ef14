//! The scale rows: a watcher process and a gateway process following a
//! service of N instances while it changes at a fixed rate.
//!
//! For each N of `--scale` (ascending; the service grows from one size to
//! the next): the instances are registered over one registrar (etcd,
//! ZooKeeper; Consul: written into the catalog, see `consul_catalog.rs`),
//! then an `sdctl watch` child and a `lorem-client gateway` child are
//! started on the service, and once both are synced `--scale-changes`
//! changes are made at `--scale-rate` per second (new instances
//! registered, and once ten are live, the oldest deregistered every other
//! change, so that no watch coalesces an instance's add with its removal).
//! Measured:
//!
//! | column | what |
//! |---|---|
//! | sync ms | from starting `sdctl watch` until it prints its `synced` line (process start included) |
//! | CPU ms/change: floor | the same for `sdctl bench-floor-watch` (this build, etcd and ZooKeeper): a bare client watch of the service with no registry code, one line per event (see `floor.rs`); what the client libraries, the runtime and the socket cost per change |
//! | CPU ms/change: watch, gateway | the child's CPU time during the changes (and the second after them), summed over its threads from `/proc/PID/task/*/schedstat` (nanoseconds; `/proc/PID/stat`'s utime+stime tick every 10 ms, too coarse for 200 changes), divided by the number of changes |
//! | peak MiB | the child's `VmHWM` at the end: its peak RSS through sync and churn |
//! | propagate p50/p99 | from calling `register()` or `deregister()` until `sdctl watch` prints the line of that change |
//!
//! ZooKeeper at 100,000: a watch lists the service node's children in one
//! reply, about 2 MB with the ids used here (`instance-000000`, 15
//! characters), past the default `jute.maxbuffer` of 1 MiB. That limit is
//! checked where Java reads: by the server on requests (ours are small) and
//! by Java clients on replies (Curator or zkCli would need
//! `-Djute.maxbuffer` raised to list such a service); zookeeper-client,
//! which we use, sets no such limit, and the server sends the reply. What
//! failed at first was the server's heap: with the test kit's 64 MiB, a
//! server holding 100,000 instance nodes spends its time collecting garbage
//! and the listing did not complete within 10 minutes; `--spawn` starts it
//! with 512 MiB (`testkit::ZkServer::start_with_heap`), and the row then
//! completes (sync about 1.1 s). The nodes' data is read in multi-reads of
//! 256 (about 60 KB a reply), far below any limit.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use registry::{DynRegistry, Registration};
use serde::Serialize;
use tokio::time::Instant;

use super::child::{SdctlChild, proc_status_mib};
use super::consul_catalog::Catalog;
use super::report::Stat;
use super::target::{TIMEOUT, Target};
use super::{Backend, round};

/// The largest service Consul is measured at: its agent serves the whole
/// list on every change (O(N) per change by nature), and writing the
/// instances into its catalog takes about a minute per 10,000 here.
pub(crate) const CONSUL_MAX: usize = 10_000;
/// The largest size the `--scale-baseline` children are measured at: a
/// build whose watch costs O(N) per change takes minutes (and GiBs) at
/// 100,000.
const BASELINE_MAX: usize = 10_000;
/// Registrations in flight at once while the service grows.
const GROW_CONCURRENCY: usize = 512;
/// `REGISTRY_TIMEOUT` of the children: the first snapshot of 100,000
/// instances must fit in it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
/// Churn instances live at once (see the changes in `Scale::one`).
const WINDOW: usize = 10;
/// How long the watch may take to show the last changes once they are made.
const SETTLE: Duration = Duration::from_secs(30);
/// The deadline of a child's sync, and of the last change to be seen.
const DEADLINE: Duration = Duration::from_secs(180);

/// One scale row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleRow {
    /// Whose children: `this` build's, or `baseline` (the binaries of
    /// `--scale-baseline DIR`, e.g. an older build, measured in the same
    /// run against the same registry for a before/after ratio).
    pub children: &'static str,
    /// Instances of the watched service.
    pub instances: usize,
    /// Changes made (each a registration or a deregistration).
    pub changes: usize,
    /// The rate they were made at, per second.
    pub rate_per_s: u32,
    /// `sdctl watch` start -> its `synced` line, ms.
    pub initial_sync_ms: f64,
    /// CPU time per change of a bare client watch of the same service
    /// (`sdctl bench-floor-watch`, see `floor.rs`): the floor under the
    /// watch column. etcd and ZooKeeper, this build only.
    pub floor_cpu_ms_per_change: Option<f64>,
    /// CPU time of the `sdctl watch` child per change, ms.
    pub watch_cpu_ms_per_change: Option<f64>,
    /// CPU time of the `lorem-client gateway` child per change, ms.
    pub gateway_cpu_ms_per_change: Option<f64>,
    /// Peak RSS of the `sdctl watch` child, MiB.
    pub watch_peak_mib: Option<f64>,
    /// Peak RSS of the gateway child, MiB.
    pub gateway_peak_mib: Option<f64>,
    /// Change made -> printed by `sdctl watch`, under the churn.
    pub propagation_ms: Option<Stat>,
    /// Changes `sdctl watch` printed (fewer than `changes` if some were
    /// not seen before the deadline).
    pub seen: usize,
}

/// The CPU time of process `pid` so far, summed over its threads
/// (`/proc/PID/task/*/schedstat`, first field: ns on a CPU). Linux only.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue; // a thread that just ended
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// An `sdctl bench-floor-watch` child on `service` (see `floor.rs`),
/// its output drained by a task of its own; killed when dropped.
struct Floor {
    pid: u32,
    drain: tokio::task::JoinHandle<()>,
}

impl Floor {
    async fn spawn(sdctl: &Path, service: &str, env: &[(String, String)]) -> Result<Floor, String> {
        let args = ["bench-floor-watch".to_owned(), service.to_owned()];
        let mut child = SdctlChild::spawn(sdctl, &args, env)?;
        child
            .line(Instant::now() + DEADLINE, "its \"synced\" line", |l| {
                l == "synced"
            })
            .await?;
        let pid = child.pid().ok_or("sdctl bench-floor-watch ended")?;
        // Read every line, so that the child never blocks on a full pipe.
        let drain = tokio::spawn(async move {
            let far = Instant::now() + Duration::from_secs(24 * 3600);
            while child.line(far, "lines", |_| true).await.is_ok() {}
        });
        Ok(Floor { pid, drain })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // The task owns the child, which is killed when the task drops it.
        self.drain.abort();
    }
}

/// A `lorem-client gateway` child on `service`, killed when dropped.
struct Gateway {
    child: tokio::process::Child,
    metrics_url: String,
}

impl Gateway {
    async fn spawn(
        binary: &Path,
        service: &str,
        env: &[(String, String)],
    ) -> Result<Gateway, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for the gateway: {e}"))?
            .port();
        let child = tokio::process::Command::new(binary)
            .args(["--service", service, "gateway", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env_remove("REGISTRY_CONFIG")
            .env_remove("REGISTRY_PREFIX")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Gateway {
            child,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        })
    }

    /// Waits until the gateway's balancer holds `n` instances (its
    /// `instances` gauge: reading it costs the gateway nothing per
    /// instance).
    async fn synced(&self, http: &reqwest::Client, service: &str, n: usize) -> Result<(), String> {
        let deadline = Instant::now() + DEADLINE;
        let label = format!("service=\"{service}\"");
        loop {
            if let Ok(answer) = http.get(&self.metrics_url).send().await {
                if let Ok(text) = answer.text().await {
                    let held = text
                        .lines()
                        .filter(|l| l.contains("_instances{") && l.contains(&label))
                        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
                    if held == Some(n as f64) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the gateway never held the {n} instances"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Grows `service` to `n` instances `s0`.. (from `have`).
async fn grow(
    target: &Target,
    registrar: &DynRegistry,
    catalog: Option<&Catalog>,
    service: &str,
    have: usize,
    n: usize,
    held: &mut Vec<Registration>,
) -> Result<(), String> {
    if let Some(catalog) = catalog {
        return catalog
            .register_range(&format!("{service}-node"), service, have, n)
            .await;
    }
    let _ = target;
    let results: Vec<_> = futures::stream::iter(have..n)
        .map(|i| {
            let port = 10_000 + u16::try_from(i % 50_000).unwrap_or(0);
            registrar.register(registry::Instance::new(
                service,
                // Ids of a realistic length: see the module docs on
                // ZooKeeper at 100,000.
                format!("instance-{i:06}"),
                "127.0.0.1",
                port,
            ))
        })
        .buffer_unordered(GROW_CONCURRENCY)
        .collect()
        .await;
    for result in results {
        held.push(result.map_err(|e| format!("register: {e}"))?);
    }
    Ok(())
}

/// What one scale run needs.
pub(crate) struct Scale<'a> {
    pub(crate) target: &'a Target,
    pub(crate) sdctl: &'a Path,
    pub(crate) service: String,
    pub(crate) sizes: Vec<usize>,
    pub(crate) changes: usize,
    pub(crate) rate: u32,
    /// A directory with the `sdctl` and `lorem-client` of another build,
    /// whose children are measured too, after this build's, at each size.
    pub(crate) baseline: Option<PathBuf>,
}

impl Scale<'_> {
    /// The rows, one per size; stops at the first failure.
    pub(crate) async fn run(
        &self,
        say: impl Fn(&str),
        notes: &mut Vec<String>,
    ) -> (Vec<ScaleRow>, Option<String>) {
        let mut rows = Vec::new();
        let registrar = match self
            .target
            .connect(Duration::from_secs(60), CHILD_TIMEOUT)
            .await
        {
            Ok(r) => r,
            Err(e) => return (rows, Some(e)),
        };
        let churn = match self.target.connect(self.target.ttl(), TIMEOUT).await {
            Ok(r) => r,
            Err(e) => return (rows, Some(e)),
        };
        let catalog = match (self.target.backend, &self.target.addr) {
            (Backend::Consul, Some(addr)) => match Catalog::new(addr, TIMEOUT) {
                Ok(c) => Some(c),
                Err(e) => return (rows, Some(e)),
            },
            _ => None,
        };
        let mut builds = vec![("this", self.sdctl.to_path_buf())];
        if let Some(dir) = &self.baseline {
            builds.push(("baseline", dir.join("sdctl")));
        }
        let mut gateways = Vec::new();
        for (_, sdctl) in &builds {
            let gateway_bin = sdctl.with_file_name("lorem-client");
            if !gateway_bin.exists() {
                notes.push(format!(
                    "scale: no lorem-client beside {} (cargo build --release -p client): gateway columns not measured",
                    sdctl.display()
                ));
            }
            gateways.push(gateway_bin.exists().then_some(gateway_bin));
        }
        let mut held = Vec::new();
        let mut have = 0;
        let mut error = None;
        for &n in &self.sizes {
            if catalog.is_some() && n > CONSUL_MAX {
                notes.push(format!(
                    "scale: consul measured up to {CONSUL_MAX} instances (its agent answers with the whole list on every change, and writing the catalog takes about a minute per 10,000)"
                ));
                break;
            }
            say(&format!("scale: growing the service to {n} instances"));
            let grown = grow(
                self.target,
                &registrar,
                catalog.as_ref(),
                &self.service,
                have,
                n,
                &mut held,
            )
            .await;
            if let Err(e) = grown {
                error = Some(format!("scale {n}: {e}"));
                break;
            }
            have = n;
            say(&format!("scale: {n} instances, {} changes", self.changes));
            for ((children, sdctl), gateway) in builds.iter().zip(&gateways) {
                let baseline = *children != "this";
                if baseline && n > BASELINE_MAX {
                    continue;
                }
                // The floor child is this build's (an older one may lack it).
                match self
                    .one(n, &churn, sdctl, gateway.as_deref(), !baseline)
                    .await
                {
                    Ok(row) => rows.push(ScaleRow { children, ..row }),
                    // Another build's trouble is a note, not this row's
                    // failure.
                    Err(e) if baseline => notes.push(format!("scale {n} (baseline): {e}")),
                    Err(e) => {
                        error = Some(format!("scale {n} ({children}): {e}"));
                        break;
                    }
                }
            }
            if error.is_some() {
                break;
            }
        }
        say("scale: removing the instances");
        futures::stream::iter(held)
            .for_each_concurrent(GROW_CONCURRENCY, |r| async move {
                let _ = r.deregister().await;
            })
            .await;
        if let Some(catalog) = &catalog {
            let _ = catalog.deregister(&format!("{}-node", self.service)).await;
        }
        (rows, error)
    }

    /// One row at `n` instances.
    async fn one(
        &self,
        n: usize,
        churn: &DynRegistry,
        sdctl: &Path,
        gateway_bin: Option<&Path>,
        with_floor: bool,
    ) -> Result<ScaleRow, String> {
        let env = self.target.child_env(self.target.ttl(), CHILD_TIMEOUT);
        let started = Instant::now();
        let args = ["watch".to_owned(), self.service.clone()];
        let mut watch = SdctlChild::spawn(sdctl, &args, &env)?;
        let synced = watch
            .line(started + DEADLINE, "its \"synced\" line", |l| {
                l.starts_with("synced ")
            })
            .await?;
        let initial_sync = started.elapsed();
        if !synced.ends_with(&format!("instances={n}")) {
            return Err(format!("sdctl watch synced to {synced:?}, expected {n}"));
        }
        let gateway = match gateway_bin {
            Some(bin) => {
                let gateway = Gateway::spawn(bin, &self.service, &env).await?;
                let http = reqwest::Client::new();
                gateway.synced(&http, &self.service, n).await?;
                Some(gateway)
            }
            None => None,
        };
        let floor = match (self.target.backend, with_floor) {
            (Backend::Etcd | Backend::Zookeeper, true) => {
                Some(Floor::spawn(sdctl, &self.service, &env).await?)
            }
            _ => None,
        };
        let watch_pid = watch.pid().ok_or("sdctl watch ended")?;
        let gateway_pid = gateway.as_ref().and_then(|g| g.child.id());
        let floor_pid = floor.as_ref().map(|f| f.pid);
        let cpu = |pid: Option<u32>| pid.and_then(cpu_time);
        let (watch_cpu0, gateway_cpu0) = (cpu(Some(watch_pid)), cpu(gateway_pid));
        let floor_cpu0 = cpu(floor_pid);

        // The changes, at a fixed rate, while the watch's lines are read.
        let mut sent: HashMap<String, Instant> = HashMap::new();
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let period = Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)));
        let churn_service = self.service.clone();
        let changes = self.changes;
        let make = async {
            let mut ticks = tokio::time::interval(period);
            // A window of live churn instances: each change adds one, or
            // removes the oldest once WINDOW are live, so an instance
            // lives WINDOW changes and no add and remove of one instance
            // can be coalesced by a watch that lags a little.
            let mut live: VecDeque<(String, Registration)> = VecDeque::new();
            for k in 0..changes {
                ticks.tick().await;
                if k % 2 == 1 && live.len() >= WINDOW {
                    if let Some((id, registration)) = live.pop_front() {
                        sent.insert(format!("removed {churn_service}/{id} "), Instant::now());
                        registration
                            .deregister()
                            .await
                            .map_err(|e| format!("deregister: {e}"))?;
                    }
                } else {
                    let id = format!("churn{k}");
                    sent.insert(format!("added {churn_service}/{id} "), Instant::now());
                    let registration = churn
                        .register(registry::Instance::new(&churn_service, &id, "127.0.0.1", 9))
                        .await
                        .map_err(|e| format!("register: {e}"))?;
                    live.push_back((id, registration));
                }
            }
            Ok::<_, String>(live)
        };
        let read = async {
            let deadline = Instant::now() + DEADLINE;
            while seen.len() < changes {
                let line = match watch.line(deadline, "the changes", |_| true).await {
                    Ok(line) => line,
                    Err(error) => {
                        tracing::debug!(%error, "scale: reading sdctl watch");
                        break;
                    }
                };
                let key = line
                    .split_once(' ')
                    .and_then(|(event, rest)| {
                        let (name, _) = rest.split_once(' ')?;
                        Some(format!("{event} {name} "))
                    })
                    .unwrap_or(line);
                seen.entry(key).or_insert_with(Instant::now);
            }
        };
        // A failed change ends the row at once; after the last change the
        // watch has a little while to show what is left.
        let live = {
            tokio::pin!(make);
            tokio::pin!(read);
            tokio::select! {
                made = &mut make => {
                    if made.is_ok() {
                        let _ = tokio::time::timeout(SETTLE, &mut read).await;
                    }
                    made
                }
                // Every change seen (or the watch ended: its count says).
                () = &mut read => make.await,
            }
        }?;
        // The window's last instances go after the measure (not counted).
        for (_, registration) in live {
            let _ = registration.deregister().await;
        }
        // Let the gateway finish what it received.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let per_change = |before: Option<Duration>, pid: Option<u32>| {
            let spent = cpu(pid)?.checked_sub(before?)?;
            Some(round(
                spent.as_secs_f64() * 1000.0 / changes.max(1) as f64,
                4,
            ))
        };
        let watch_cpu = per_change(watch_cpu0, Some(watch_pid));
        let gateway_cpu = per_change(gateway_cpu0, gateway_pid);
        let floor_cpu = per_change(floor_cpu0, floor_pid);
        drop(floor);
        let watch_peak = proc_status_mib(watch_pid, "VmHWM").map(|m| round(m, 1));
        let gateway_peak = gateway_pid
            .and_then(|pid| proc_status_mib(pid, "VmHWM"))
            .map(|m| round(m, 1));
        let samples: Vec<Duration> = sent
            .iter()
            .filter_map(|(key, at)| Some(seen.get(key)?.saturating_duration_since(*at)))
            .collect();
        let seen_count = samples.len();
        if seen_count < changes {
            let mut missed: Vec<&String> = sent.keys().filter(|k| !seen.contains_key(*k)).collect();
            missed.sort();
            missed.truncate(6);
            tracing::warn!(
                n,
                seen = seen_count,
                ?missed,
                "scale: changes not printed by sdctl watch"
            );
        }
        watch.kill_and_wait().await;
        drop(gateway);
        Ok(ScaleRow {
            children: "this",
            instances: n,
            changes,
            rate_per_s: self.rate,
            initial_sync_ms: round(initial_sync.as_secs_f64() * 1000.0, 1),
            floor_cpu_ms_per_change: floor_cpu,
            watch_cpu_ms_per_change: watch_cpu,
            gateway_cpu_ms_per_change: gateway_cpu,
            watch_peak_mib: watch_peak,
            gateway_peak_mib: gateway_peak,
            propagation_ms: Stat::of(samples),
            seen: seen_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_spent_cpu_time() {
        let spent = cpu_time(std::process::id()).expect("Linux /proc");
        assert!(spent > Duration::ZERO);
    }
}
