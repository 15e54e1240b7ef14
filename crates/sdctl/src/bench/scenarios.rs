//! The scenarios, run on one backend (see the table in the module above).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use registry::{DynRegistry, Instance, Registration, WatchStream};
use tokio::time::Instant;

use super::child::{SdctlChild, proc_status_mib};
use super::consul_catalog::{Catalog, NODES};
use super::progress::Progress;
use super::report::{BackendReport, Bulk, Lorem, Stat, WatcherMemory};
use super::target::{TIMEOUT, Target};
use super::{Backend, BenchOptions, Sizes, round};

/// The deadline of any one wait of a phase (a change to be seen, a child
/// to answer, a bulk registration to be visible).
const PHASE_DEADLINE: Duration = Duration::from_secs(120);
/// The TTL of the bulk, sync and watcher-memory registrations: long enough
/// that no keep-alive of thousands of instances runs while they are
/// measured (Consul heartbeats each instance every TTL/3).
const BULK_TTL: Duration = Duration::from_secs(60);
/// `REGISTRY_TIMEOUT` of the bulk registrars: a thousand registrations
/// queued at once on one Consul agent take seconds, and each call's
/// deadline starts when it is queued.
const BULK_TIMEOUT: Duration = Duration::from_secs(60);
/// `REGISTRY_TIMEOUT` of the `sdctl watch` children: the first snapshot of
/// 10,000 instances must fit in it.
const WATCH_CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Deregistrations in flight at once when cleaning up.
const CLEANUP_CONCURRENCY: usize = 64;

/// Measures `backend`; never fails: a failure ends the row with its error.
pub(crate) async fn measure(
    backend: Backend,
    options: &BenchOptions,
    sdctl: &Path,
    progress: &Progress,
) -> BackendReport {
    let started = Instant::now();
    let mut row = BackendReport::new(backend.name());
    let has_server = backend != Backend::Memory;
    if has_server {
        progress.say(backend.name(), "starting the server");
    }
    match Target::start(backend, options).await {
        Ok(target) => {
            row.addr.clone_from(&target.addr);
            row.expiry_ms = ms(target.expiry());
            let cx = Cx {
                target: &target,
                sizes: &options.sizes,
                sdctl,
                progress,
                names: Names::new(),
                scale_baseline: options.scale_baseline.clone(),
            };
            if let Err((phase, error)) = cx.all(&mut row).await {
                row.error = Some(format!("{phase}: {error}"));
            }
            row.server_rss_mib = target.server_rss_mib().map(|m| round(m, 1));
            if has_server {
                progress.say(backend.name(), "stopping the server");
            }
            target.stop().await;
        }
        Err(error) => row.error = Some(format!("start: {error}")),
    }
    row.seconds = round(started.elapsed().as_secs_f64(), 1);
    row
}

/// Milliseconds, rounded to microseconds.
fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 3)
}

/// The service names of one run: `sdbench-<run>-<phase>`, so that a run
/// against a shared registry touches nothing else, and two runs do not
/// meet.
struct Names {
    rounds: String,
    crash: String,
    bulk: String,
    empty: String,
    watched: String,
    lorem: String,
    scale: String,
}

impl Names {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let run = format!("{:x}{:x}", std::process::id(), nanos);
        let name = |phase: &str| format!("sdbench-{run}-{phase}");
        Names {
            rounds: name("rounds"),
            crash: name("crash"),
            bulk: name("bulk"),
            empty: name("empty"),
            watched: name("watched"),
            lorem: name("lorem"),
            scale: name("scale"),
        }
    }
}

/// What every phase needs.
struct Cx<'a> {
    target: &'a Target,
    sizes: &'a Sizes,
    sdctl: &'a Path,
    progress: &'a Progress,
    names: Names,
    scale_baseline: Option<std::path::PathBuf>,
}

type Phase<T = ()> = Result<T, String>;

/// The instance `id` of `service`, on a port derived from `n`.
fn instance(service: &str, id: String, n: usize) -> Instance {
    let port = 10_000 + u16::try_from(n % 50_000).unwrap_or(0);
    Instance::new(service, id, "127.0.0.1", port)
}

/// Reads `watch` until a snapshot satisfies `done`, or fails naming `what`
/// (with the last error the watch reported) once `deadline` passes.
async fn until(
    watch: &mut WatchStream,
    deadline: Instant,
    what: &str,
    done: impl Fn(&[Instance]) -> bool,
) -> Phase<Vec<Instance>> {
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(snapshot))) if done(&snapshot) => return Ok(snapshot),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => last_error = Some(error.to_string()),
            Ok(None) => return Err(format!("the watch ended while waiting for {what}")),
            Err(_) => {
                return Err(format!(
                    "{what} did not happen in time{}",
                    last_error.map_or(String::new(), |e| format!("; the watch reported: {e}"))
                ));
            }
        }
    }
}

/// Locks a mutex whose data cannot be left inconsistent (plain stores).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn after(d: Duration) -> Instant {
    Instant::now() + d
}

/// Deregisters everything, a bounded number at a time; errors are left to
/// the TTL (the registrar is dropped afterwards).
async fn cleanup(registrations: Vec<Registration>) {
    futures::stream::iter(registrations)
        .map(|r| async move {
            let _ = r.deregister().await;
        })
        .buffer_unordered(CLEANUP_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Registers `n` instances of `service` over `registrar`, `chunk` at a
/// time, each chunk all at once.
async fn register_many(
    registrar: &DynRegistry,
    service: &str,
    n: usize,
    chunk: usize,
) -> Phase<Vec<Registration>> {
    let mut registrations = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let end = (next + chunk).min(n);
        let results = futures::future::join_all(
            (next..end).map(|i| registrar.register(instance(service, format!("i{i}"), i))),
        )
        .await;
        for result in results {
            registrations.push(result.map_err(|e| format!("register: {e}"))?);
        }
        next = end;
    }
    Ok(registrations)
}

impl Cx<'_> {
    fn say(&self, what: &str) {
        self.progress.say(self.target.backend.name(), what);
    }

    /// A connection with the measured TTL and timeout.
    async fn connect(&self) -> Phase<DynRegistry> {
        self.target.connect(self.target.ttl(), TIMEOUT).await
    }

    /// A watch of `service` on a connection of its own (returned with it,
    /// to keep it open) that has delivered its first snapshot.
    async fn synced_watch(&self, service: &str) -> Phase<(DynRegistry, WatchStream)> {
        let watcher = self.connect().await?;
        let mut watch = watcher.watch(service);
        until(
            &mut watch,
            after(PHASE_DEADLINE),
            "the first snapshot",
            |_| true,
        )
        .await?;
        Ok((watcher, watch))
    }

    /// A registrar for thousands of instances (see [`BULK_TTL`],
    /// [`BULK_TIMEOUT`]).
    async fn bulk_registrar(&self) -> Phase<DynRegistry> {
        self.target.connect(BULK_TTL, BULK_TIMEOUT).await
    }

    async fn all(&self, row: &mut BackendReport) -> Result<(), (&'static str, String)> {
        self.rounds(row)
            .await
            .map_err(|e| ("register/deregister rounds", e))?;
        self.crash(row).await.map_err(|e| ("crash detection", e))?;
        self.bulk_and_sync(row)
            .await
            .map_err(|e| ("bulk registration and initial sync", e))?;
        self.watcher_memory(row)
            .await
            .map_err(|e| ("watcher memory", e))?;
        self.lorem(row).await.map_err(|e| ("lorem load", e))?;
        self.scale(row).await.map_err(|e| ("scale rows", e))?;
        Ok(())
    }

    /// The scale rows (see `scale.rs`); not for memory, whose registry a
    /// child process cannot see.
    async fn scale(&self, row: &mut BackendReport) -> Phase {
        if self.sizes.scale.is_empty() || self.target.backend == Backend::Memory {
            return Ok(());
        }
        let mut sizes = self.sizes.scale.clone();
        sizes.sort_unstable();
        sizes.dedup();
        let scale = super::scale::Scale {
            target: self.target,
            sdctl: self.sdctl,
            service: self.names.scale.clone(),
            sizes,
            changes: self.sizes.scale_changes,
            rate: self.sizes.scale_rate,
            baseline: self.scale_baseline.clone(),
        };
        let (rows, error) = scale.run(|what| self.say(what), &mut row.notes).await;
        row.scale = rows;
        error.map_or(Ok(()), Err)
    }

    /// Register, propagate, deregister: one instance at a time.
    async fn rounds(&self, row: &mut BackendReport) -> Phase {
        let registrar = self.connect().await?;
        let service = &self.names.rounds;
        let (_watcher, mut watch) = self.synced_watch(service).await?;
        let (mut register, mut propagate, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.sizes.rounds {
            self.say(&format!(
                "register/deregister round {}/{}",
                i + 1,
                self.sizes.rounds
            ));
            tokio::time::sleep(self.sizes.gap).await;
            let id = format!("r{i}");
            let started = Instant::now();
            let registration = registrar
                .register(instance(service, id.clone(), i))
                .await
                .map_err(|e| format!("register: {e}"))?;
            register.push(started.elapsed());
            until(
                &mut watch,
                after(PHASE_DEADLINE),
                "an instance to appear",
                |s| s.iter().any(|x| x.id == id),
            )
            .await?;
            propagate.push(started.elapsed());
            let started = Instant::now();
            registration
                .deregister()
                .await
                .map_err(|e| format!("deregister: {e}"))?;
            until(
                &mut watch,
                after(PHASE_DEADLINE),
                "an instance to go",
                |s| s.iter().all(|x| x.id != id),
            )
            .await?;
            gone.push(started.elapsed());
        }
        row.register_ms = Stat::of(register);
        row.propagation_ms = Stat::of(propagate);
        row.deregistration_ms = Stat::of(gone);
        Ok(())
    }

    /// Kill the registering processes; time until each instance is gone.
    async fn crash(&self, row: &mut BackendReport) -> Phase {
        let n = self.sizes.crash;
        let service = &self.names.crash;
        let (_watcher, mut watch) = self.synced_watch(service).await?;
        let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        self.say(&format!("crash detection: registering {n} instances"));

        // The registering side: `n` `sdctl register` processes, or, for the
        // in-process registry, `n` registrations to abandon.
        let mut children = Vec::new();
        let mut in_process = Vec::new();
        if self.target.backend == Backend::Memory {
            let registrar = self.connect().await?;
            for (i, id) in ids.iter().enumerate() {
                in_process.push(
                    registrar
                        .register(instance(service, id.clone(), i))
                        .await
                        .map_err(|e| format!("register: {e}"))?,
                );
            }
            row.notes.push(
                "crash detection by abandon(): the in-process registry dies with a killed process"
                    .to_owned(),
            );
        } else {
            let env = self.target.child_env(self.target.ttl(), TIMEOUT);
            for (i, id) in ids.iter().enumerate() {
                let addr = format!("127.0.0.1:{}", 20_000 + i);
                let args = ["register", service, id, &addr].map(str::to_owned);
                children.push(SdctlChild::spawn(self.sdctl, &args, &env)?);
            }
            let deadline = after(TIMEOUT * 2 + Duration::from_secs(10));
            for child in &mut children {
                child
                    .line(deadline, "its \"registered\" line", |l| {
                        l.starts_with("registered ")
                    })
                    .await?;
            }
        }
        until(
            &mut watch,
            after(PHASE_DEADLINE),
            "every crash victim to appear",
            |s| ids.iter().all(|id| s.iter().any(|x| &x.id == id)),
        )
        .await?;

        self.say(&format!(
            "crash detection: {n} killed, waiting for the expiry ({:?})",
            self.target.expiry()
        ));
        // The kills are spread over one keep-alive period (TTL/3), so that
        // the samples fall at different points of the keep-alive cycle
        // rather than all at the same one; each is timed from its own kill.
        let step = self.target.ttl() / 3 / u32::try_from(n).unwrap_or(u32::MAX);
        let killed_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
        let killer = {
            let killed_at = killed_at.clone();
            tokio::spawn(async move {
                let mut in_process = in_process.into_iter().map(Some).collect::<Vec<_>>();
                for i in 0..n {
                    if i > 0 {
                        tokio::time::sleep(step).await;
                    }
                    let now = Instant::now();
                    lock(&killed_at)[i] = Some(now);
                    if let Some(child) = children.get_mut(i) {
                        child.kill();
                    }
                    if let Some(registration) = in_process.get_mut(i).and_then(Option::take) {
                        registration.abandon();
                    }
                }
                children
            })
        };
        let mut gone: BTreeMap<usize, Duration> = BTreeMap::new();
        let deadline =
            after(self.target.ttl() / 3 + self.target.expiry() * 3) + Duration::from_secs(15);
        while gone.len() < n {
            let snapshot =
                until(&mut watch, deadline, "every crash to be noticed", |_| true).await?;
            let now = Instant::now();
            let killed_at = lock(&killed_at).clone();
            for (i, id) in ids.iter().enumerate() {
                if gone.contains_key(&i) || snapshot.iter().any(|x| &x.id == id) {
                    continue;
                }
                let Some(killed) = killed_at[i] else {
                    return Err(format!(
                        "{id} was gone before its registering side was killed"
                    ));
                };
                gone.insert(i, now - killed);
            }
        }
        let children = killer
            .await
            .map_err(|e| format!("the task killing the registering side failed: {e}"))?;
        for child in children {
            child.kill_and_wait().await;
        }
        row.crash_detection_ms = Stat::of(gone.into_values().collect());
        Ok(())
    }

    /// `bulk` registrations at once over one registrar, then fresh watches
    /// of that service until their first full snapshot.
    async fn bulk_and_sync(&self, row: &mut BackendReport) -> Phase {
        let n = self.sizes.bulk;
        let service = &self.names.bulk;
        let registrar = self.bulk_registrar().await?;
        let (_watcher, mut watch) = self.synced_watch(service).await?;
        self.say(&format!("registering {n} instances at once"));
        let started = Instant::now();
        let registrations = register_many(&registrar, service, n, n).await?;
        let registered = started.elapsed();
        until(
            &mut watch,
            after(PHASE_DEADLINE),
            "every bulk-registered instance to be visible",
            |s| s.len() == n,
        )
        .await?;
        let visible = started.elapsed();
        drop(watch);
        row.bulk = Some(Bulk {
            instances: n,
            registered_ms: ms(registered),
            visible_ms: ms(visible),
            per_second: round(n as f64 / registered.as_secs_f64().max(1e-9), 0),
        });

        let mut samples = Vec::new();
        for i in 0..self.sizes.sync {
            self.say(&format!(
                "initial sync of {n} instances {}/{}",
                i + 1,
                self.sizes.sync
            ));
            let fresh = self.connect().await?;
            let started = Instant::now();
            let mut watch = fresh.watch(service);
            until(
                &mut watch,
                after(PHASE_DEADLINE),
                "a new watch's full snapshot",
                |s| s.len() == n,
            )
            .await?;
            samples.push(started.elapsed());
        }
        row.initial_sync_ms = Stat::of(samples);
        self.say(&format!("deregistering {n} instances"));
        cleanup(registrations).await;
        Ok(())
    }

    /// Peak RSS of `sdctl watch` synced to `watchers` instances, minus an
    /// empty watch's.
    async fn watcher_memory(&self, row: &mut BackendReport) -> Phase {
        let n = self.sizes.watchers;
        if n == 0 {
            return Ok(());
        }
        if self.target.backend == Backend::Memory {
            row.notes.push(
                "watcher memory n/a: an sdctl watch process cannot see another process's memory registry"
                    .to_owned(),
            );
            return Ok(());
        }
        let service = &self.names.watched;
        self.say(&format!("registering {n} instances for the watcher"));
        let mut registrations = Vec::new();
        let mut catalog = None;
        if let (Backend::Consul, Some(addr)) = (self.target.backend, &self.target.addr) {
            let writer = Catalog::new(addr, TIMEOUT)?;
            let nodes = format!("{service}-node");
            writer.register(&nodes, service, n).await?;
            catalog = Some((writer, nodes));
            row.notes.push(format!(
                "watcher memory: the {n} instances were written into the catalog under {NODES} nodes, \
                 as one agent cannot take that many registrations in reasonable time"
            ));
        } else {
            let registrar = self.bulk_registrar().await?;
            registrations = register_many(&registrar, service, n, self.sizes.bulk).await?;
        }
        let watcher = self.connect().await?;
        let mut watch = watcher.watch(service);
        until(
            &mut watch,
            after(PHASE_DEADLINE),
            "every instance for the watcher to be visible",
            |s| s.len() == n,
        )
        .await?;
        drop(watch);
        self.say("sdctl watch of an empty service");
        let empty = self.watcher_peak(&self.names.empty, 0).await?;
        self.say(&format!("sdctl watch of {n} instances"));
        let loaded = self.watcher_peak(service, n).await?;
        row.watcher_memory = Some(WatcherMemory {
            instances: n,
            empty_mib: round(empty, 1),
            loaded_mib: round(loaded, 1),
            delta_mib: round(loaded - empty, 1),
        });
        self.say(&format!("deregistering {n} instances"));
        cleanup(registrations).await;
        if let Some((writer, nodes)) = catalog {
            writer.deregister(&nodes).await?;
        }
        Ok(())
    }

    /// Runs `sdctl watch service` until its `synced` line says `expected`
    /// instances, and returns its peak RSS (`VmHWM`) in MiB.
    async fn watcher_peak(&self, service: &str, expected: usize) -> Phase<f64> {
        let env = self
            .target
            .child_env(self.target.ttl(), WATCH_CHILD_TIMEOUT);
        let args = ["watch".to_owned(), service.to_owned()];
        let mut child = SdctlChild::spawn(self.sdctl, &args, &env)?;
        let synced = child
            .line(after(PHASE_DEADLINE), "its \"synced\" line", |l| {
                l.starts_with("synced ")
            })
            .await?;
        let got = synced
            .rsplit_once("instances=")
            .and_then(|(_, n)| n.trim().parse::<usize>().ok());
        let peak = child.pid().and_then(|pid| proc_status_mib(pid, "VmHWM"));
        child.kill_and_wait().await;
        if got != Some(expected) {
            return Err(format!(
                "sdctl watch {service} synced to {synced:?}, expected {expected} instances"
            ));
        }
        peak.ok_or_else(|| "cannot read VmHWM from /proc (Linux only)".to_owned())
    }

    /// Two lorem servers registered through the backend, and the load
    /// runner of `lorem-client load` through the discovery-fed balancer.
    async fn lorem(&self, row: &mut BackendReport) -> Phase {
        let requests = self.sizes.load_requests;
        if requests == 0 {
            return Ok(());
        }
        self.say("lorem servers");
        let service = &self.names.lorem;
        let mut servers = Vec::new();
        for id in ["a", "b"] {
            let mut options = lorem::server::ServerOptions::new(id);
            options.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            options.service.clone_from(service);
            options.drain_delay = Duration::ZERO;
            let registrar = self.connect().await?;
            servers.push(
                lorem::server::start(options, registrar)
                    .await
                    .map_err(|e| format!("lorem server {id}: {e}"))?,
            );
        }
        let watcher = self.connect().await?;
        let balancer = client::Balancer::new(watcher, service, client::BalancerOptions::default())
            .map_err(|e| e.to_string())?;
        let deadline = after(PHASE_DEADLINE);
        while balancer.instances().len() < 2 {
            if Instant::now() > deadline {
                return Err("the two lorem servers never became visible".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = client::LoremClient::new(balancer, client::ClientOptions::default())
            .map_err(|e| e.to_string())?;
        self.say(&format!("lorem load: {requests} requests"));
        let report = client::load::run(
            &client,
            &client::load::LoadOptions {
                requests: Some(requests),
                duration: Some(PHASE_DEADLINE),
                concurrency: self.sizes.load_concurrency,
                ..client::load::LoadOptions::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        row.lorem = Some(Lorem {
            ok: report.ok,
            failed: report.failed,
            rps: round(report.rps, 0),
            p50_ms: round(report.p50_ms, 3),
            p99_ms: round(report.p99_ms, 3),
        });
        if report.failed > 0 {
            row.notes.push(format!(
                "lorem load: {} of {requests} requests failed",
                report.failed
            ));
        }
        for server in servers {
            let _ = server.shutdown().await;
        }
        Ok(())
    }
}
