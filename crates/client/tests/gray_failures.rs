//! Gray failures: registry servers that hang (SIGSTOP) instead of dying,
//! and a second server started with an id that is already taken. Real
//! processes (`lorem-server`, `lorem-client` gateway and load, `sdctl`) on
//! real servers started by the testkit on loopback, `REGISTRY_TTL=2s`.
//!
//! 1. `leader_stopped::etcd`: a 3-member etcd cluster, two lorem-servers
//!    under load; the etcd leader is SIGSTOPped for 15 s. No registration
//!    may be lost (a watcher's set never changes) and no request may fail.
//! 2. `member_stopped::{etcd, zookeeper}`: one member of a 3-member cluster
//!    or ensemble is SIGSTOPped, then fresh processes start: 8 x
//!    `sdctl ls lorem` each answer within 2 s (asserted with margin:
//!    3 s), a fresh `lorem-client load` of 20 requests has 0 failures, a
//!    fresh lorem-server registers within one `REGISTRY_TIMEOUT` (plus a
//!    margin).
//! 3. `stale::{etcd, zookeeper, consul}`: the single registry server (for
//!    Consul, the agent) is SIGSTOPped while the gateway runs: its
//!    `GET /instances` says `stale: true` with a `last_error` naming the
//!    reason within max(2 x TTL, 5 s) plus a margin, requests still succeed
//!    from the last known set, and `stale: false` again after SIGCONT.
//! 4. `duplicate_id::{etcd, zookeeper, consul}`: a second lorem-server with
//!    the `--id` of a running one does not take the record (the gateway
//!    answers only from the first, told apart by port), logs the holder and
//!    that it keeps retrying, and is registered within about one TTL or
//!    session timeout (plus its retry backoff and a margin) after the
//!    first is SIGKILLed.
//!
//! Each scenario prints one line with its numbers and appends it to the
//! timings file (`common::procs::record`). Scenarios run one at a time; every
//! wait is bounded; each test starts and stops its own servers by PID, and a
//! frozen server is always sent SIGCONT (`common::freeze::Frozen`).

mod common;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::freeze::Frozen;
use common::procs::{Guard, env_for, lorem_server_bin, record, settings};
use futures::StreamExt;
use registry::{BackendConfig, DynRegistry, Settings};
use serde_json::Value;
use testkit::{ConsulAgent, EtcdCluster, EtcdServer, RegistryServer, ZkEnsemble, ZkServer};

/// One scenario at a time: they share two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous bound on waits that are not what a scenario measures.
const PATIENCE: Duration = Duration::from_secs(40);
/// Slack on top of a promised bound, for a loaded machine.
const MARGIN: Duration = Duration::from_secs(3);
/// `REGISTRY_TTL` of every process (`common::procs::TTL`).
const TTL: Duration = Duration::from_secs(2);
/// `REGISTRY_TIMEOUT` of every process (`common::procs::env_for`).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

fn unix_ms() -> u64 {
    client::load::unix_ms()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// How long a crashed process's record may outlive it: the TTL, or the
/// ZooKeeper session timeout (`registry::zookeeper::MIN_DEFAULT_SESSION` at
/// this TTL).
fn expiry(backend: &str) -> Duration {
    match backend {
        "zookeeper" => TTL.max(registry::zookeeper::MIN_DEFAULT_SESSION),
        _ => TTL,
    }
}

/// `settings` of `server`, but reaching only the members at `addrs`: a
/// checker that sees the registry's truth while another member hangs.
fn settings_on(backend: &str, server: &dyn RegistryServer, addrs: &[String]) -> Settings {
    let mut settings = settings(backend, server);
    match &mut settings.backend {
        BackendConfig::Etcd(c) => c.addr = addrs.to_vec(),
        BackendConfig::Zookeeper(c) => c.addr = addrs.to_vec(),
        BackendConfig::Consul(c) => c.addr = addrs.to_vec(),
        _ => {}
    }
    settings
}

async fn connect(settings: &Settings) -> DynRegistry {
    registry::connect(settings)
        .await
        .unwrap_or_else(|e| panic!("connect the test's checker: {e}"))
}

/// (id, port) of the live `lorem` instances `watcher` reads now.
async fn live(watcher: &dyn registry::Watcher) -> Result<Vec<(String, u16)>, String> {
    watcher
        .instances("lorem")
        .await
        .map(|found| found.into_iter().map(|i| (i.id, i.port)).collect())
        .map_err(|e| e.to_string())
}

/// Polls `watcher` until the `lorem` instances are exactly `want` (id,
/// port); returns how long that took.
async fn await_live(
    watcher: &dyn registry::Watcher,
    want: &[(&str, u16)],
    within: Duration,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let want: Vec<(String, u16)> = want.iter().map(|(i, p)| ((*i).to_owned(), *p)).collect();
    loop {
        let now = live(watcher).await;
        if now.as_ref() == Ok(&want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: the registry never listed {want:?} within {within:?}; last: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file under the target's temp dir for one process's stderr; removed
/// when the process stops cleanly, kept for a look after a failure.
fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gray-failures");
    std::fs::create_dir_all(&dir).expect("create the log dir");
    dir.join(format!("{name}-{}-{}.log", std::process::id(), unix_ms()))
}

/// A running `lorem-server` child, its stderr (logs at info) in a file.
struct Server {
    id: String,
    port: u16,
    guard: Guard,
    log: PathBuf,
}

impl Server {
    fn start(backend: &str, registry: &dyn RegistryServer, id: &str) -> Server {
        let port = testkit::free_port();
        let log = log_path(&format!("lorem-server-{id}-{port}"));
        let mut command = Command::new(lorem_server_bin());
        env_for(&mut command, backend, registry);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--id", id])
            .args(["--drain-delay", "200ms"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the server's log"));
        let child = command.spawn().expect("spawn lorem-server");
        Server {
            id: id.to_owned(),
            port,
            guard: Guard(Some(child)),
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The lorem requests it has answered, from its `/metrics` (0 if it
    /// does not answer).
    async fn served(&self, http: &reqwest::Client) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let Ok(response) = http.get(url).send().await else {
            return 0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with("lorem_requests_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn stop(self) {
        let Server { id, guard, log, .. } = self;
        let status = guard.terminate().await;
        assert!(
            status.success(),
            "lorem-server {id} exits 0 on SIGTERM: {status} (log: {})",
            log.display()
        );
        let _ = std::fs::remove_file(log);
    }
}

/// A running `lorem-client gateway` child.
struct Gateway {
    url: String,
    guard: Guard,
    log: PathBuf,
}

impl Gateway {
    async fn start(backend: &str, registry: &dyn RegistryServer, http: &reqwest::Client) -> Self {
        let port = testkit::free_port();
        let log = log_path("gateway");
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
        env_for(&mut command, backend, registry);
        command
            .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the gateway's log"));
        let gateway = Gateway {
            url: format!("http://127.0.0.1:{port}"),
            guard: Guard(Some(command.spawn().expect("spawn lorem-client gateway"))),
            log,
        };
        let started = Instant::now();
        while !http
            .get(format!("{}/health", gateway.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < PATIENCE,
                "the gateway never answered /health"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }

    /// `GET /instances`.
    async fn instances(&self, http: &reqwest::Client) -> Value {
        let response = http
            .get(format!("{}/instances", self.url))
            .send()
            .await
            .expect("the gateway answers GET /instances");
        response.json().await.expect("GET /instances is JSON")
    }

    /// The (id, port) pairs of `GET /instances`.
    async fn live(&self, http: &reqwest::Client) -> Vec<(String, u16)> {
        let body = self.instances(http).await;
        body["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or_default().to_owned(),
                    i["port"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap_or(0),
                )
            })
            .collect()
    }

    /// One `POST /sd-lorem`: the answering instance's id, or what failed.
    async fn lorem(&self, http: &reqwest::Client) -> Result<String, String> {
        let response = http
            .post(format!("{}/sd-lorem", self.url))
            .json(&serde_json::json!({"requestType": "sentence", "min": 5, "max": 10}))
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        let id = response
            .headers()
            .get("x-instance-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if status.is_success() {
            Ok(id)
        } else {
            Err(format!(
                "{status}: {}",
                response.text().await.unwrap_or_default()
            ))
        }
    }

    async fn stop(self) {
        let status = self.guard.terminate().await;
        assert!(
            status.success(),
            "the gateway exits 0 on SIGTERM: {status} (log: {})",
            self.log.display()
        );
        let _ = std::fs::remove_file(self.log);
    }
}

/// A `lorem-client load` child running until [`Load::stop`].
struct Load {
    guard: Guard,
    stdout: std::process::ChildStdout,
    log: PathBuf,
}

impl Load {
    /// 100 requests/s, 4 in flight, the client's default retries.
    fn start(backend: &str, registry: &dyn RegistryServer) -> Load {
        let log = log_path("load");
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
        env_for(&mut command, backend, registry);
        command
            .args(["load", "--duration", "300s"])
            .args(["--concurrency", "4", "--rate", "100", "--json"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the load's log"));
        let mut child = command.spawn().expect("spawn lorem-client load");
        let stdout = child.stdout.take().expect("piped stdout");
        Load {
            guard: Guard(Some(child)),
            stdout,
            log,
        }
    }

    /// SIGINT (in-flight requests finish), then the JSON report.
    async fn stop(self) -> Value {
        self.guard.signal("INT");
        let status = self.guard.wait(PATIENCE).await;
        let mut stdout = String::new();
        let mut pipe = self.stdout;
        pipe.read_to_string(&mut stdout).expect("read the report");
        let report: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("load must print one JSON object ({e}): {stdout}"));
        println!("  load exited {status}: {report}");
        if status.success() {
            let _ = std::fs::remove_file(self.log);
        }
        report
    }
}

/// What a bounded run of a command gave.
struct Ran {
    /// `None` if it was killed at the bound.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `command` to completion, SIGKILLing it after `within`. Blocking:
/// call it through `block_in_place`.
fn run_bounded(command: &mut Command, within: Duration) -> Ran {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        took,
    }
}

/// The index of the etcd member that reports itself leader in its metrics.
async fn etcd_leader(cluster: &EtcdCluster, http: &reqwest::Client) -> usize {
    let started = Instant::now();
    loop {
        for (i, endpoint) in cluster.endpoints().iter().enumerate() {
            let Ok(response) = http.get(format!("http://{endpoint}/metrics")).send().await else {
                continue;
            };
            let text = response.text().await.unwrap_or_default();
            if text.lines().any(|l| l.trim() == "etcd_server_is_leader 1") {
                return i;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no etcd member reports itself leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lease keep-alive streams open on the etcd member at `endpoint` (gRPC
/// streams started minus those handled, from its metrics).
async fn keepalive_streams(http: &reqwest::Client, endpoint: &str) -> u64 {
    let Ok(response) = http.get(format!("http://{endpoint}/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    let sum = |metric: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(metric) && l.contains("grpc_method=\"LeaseKeepAlive\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (sum("grpc_server_started_total{") - sum("grpc_server_handled_total{")).max(0.0) as u64
}

/// Makes the etcd member that carries the most lease keep-alive streams
/// the leader (`etcdctl move-leader`) and returns its index, the streams
/// per member, and the former leader if leadership moved.
async fn lead_where_keepalives_are(
    cluster: &EtcdCluster,
    http: &reqwest::Client,
) -> (usize, Vec<u64>, Option<usize>) {
    let endpoints = cluster.endpoints();
    let mut streams = Vec::new();
    for endpoint in &endpoints {
        streams.push(keepalive_streams(http, endpoint).await);
    }
    let leader = etcd_leader(cluster, http).await;
    let target = (0..endpoints.len())
        .max_by_key(|&i| (streams[i], i == leader))
        .unwrap_or(leader);
    if target == leader {
        return (leader, streams, None);
    }
    let etcdctl = testkit::etcdctl_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let run = |args: &[&str]| {
        let output = blocking(|| {
            Command::new(&etcdctl)
                .args(args)
                .env("ETCDCTL_API", "3")
                .output()
                .expect("run etcdctl")
        });
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let status: Value = serde_json::from_str(&run(&[
        "--endpoints",
        &endpoints[target],
        "endpoint",
        "status",
        "--write-out=json",
    ]))
    .expect("etcdctl endpoint status prints JSON");
    let id = status[0]["Status"]["header"]["member_id"]
        .as_u64()
        .expect("a member id");
    run(&[
        "--endpoints",
        &endpoints[leader],
        "move-leader",
        &format!("{id:x}"),
    ]);
    let started = Instant::now();
    while etcd_leader(cluster, http).await != target {
        assert!(
            started.elapsed() < PATIENCE,
            "etcd member m{target} never became leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (target, streams, Some(leader))
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn ids_of(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The etcd leader hangs for 15 s under load.
// ---------------------------------------------------------------------------

mod leader_stopped {
    use super::*;

    /// How long the leader stays frozen.
    const FROZEN: Duration = Duration::from_secs(15);

    /// What a watch delivered that was not the expected set.
    #[derive(Default)]
    struct Observed {
        changes: Vec<Vec<(String, u16)>>,
        errors: u32,
        snapshots: u32,
    }

    impl Observed {
        /// Reads `watch` until `until`, noting every snapshot other than
        /// `expected` and every error item.
        async fn observe(
            &mut self,
            watch: &mut registry::WatchStream,
            until: Instant,
            expected: &[(String, u16)],
        ) {
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, watch.next()).await {
                    Err(_) => return,
                    Ok(None) => panic!("the checker's watch ended"),
                    Ok(Some(Err(error))) => {
                        println!("  watch reported (and carries on): {error}");
                        self.errors += 1;
                    }
                    Ok(Some(Ok(set))) => {
                        self.snapshots += 1;
                        let set: Vec<(String, u16)> =
                            set.into_iter().map(|i| (i.id, i.port)).collect();
                        if set != expected {
                            self.changes.push(set);
                        }
                    }
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd() {
        let _serial = SERIAL.lock().await;
        let http = http();
        let cluster = blocking(|| EtcdCluster::start(3)).expect("start a 3-member etcd cluster");
        let a = Server::start("etcd", &cluster, "lead-a");
        let b = Server::start("etcd", &cluster, "lead-b");
        let both = [("lead-a", a.port), ("lead-b", b.port)];
        let all = connect(&settings("etcd", &cluster)).await;
        await_live(&*all, &both, PATIENCE, "both servers registered").await;
        drop(all);
        // The worst case, made deterministic: the leader is the member that
        // carries the servers' lease keep-alive streams.
        let (leader, streams, moved_from) = lead_where_keepalives_are(&cluster, &http).await;
        let pid = cluster.member_pid(leader).expect("the leader runs");
        // The checker reaches the two followers only, so that it reports what
        // the cluster holds whatever the leader does.
        let followers: Vec<String> = cluster
            .endpoints()
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| (i != leader).then_some(e))
            .collect();
        let checker = connect(&settings_on("etcd", &cluster, &followers)).await;
        await_live(&*checker, &both, PATIENCE, "both servers registered").await;
        let load = Load::start("etcd", &cluster);
        // Both servers get requests before the fault.
        let started = Instant::now();
        while a.served(&http).await == 0 || b.served(&http).await == 0 {
            assert!(
                started.elapsed() < PATIENCE,
                "the load never reached both servers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut watch = checker.watch("lorem");
        let expected: Vec<(String, u16)> =
            both.iter().map(|(i, p)| ((*i).to_owned(), *p)).collect();
        let etcd_version = etcd_version();
        let fault_ms = unix_ms();
        let frozen = Frozen::stop(pid, "the etcd leader");
        // Every snapshot the watcher delivers while the leader hangs must be
        // the same set.
        let mut seen = Observed::default();
        seen.observe(&mut watch, Instant::now() + FROZEN, &expected)
            .await;
        let frozen_for = frozen.thaw();
        let thaw_ms = unix_ms();
        // After the thaw, etcd before 3.4.28 / 3.5.11 may revoke every lease
        // from the old leader's stale view (etcd-io/etcd#15247, fixed by
        // etcd-io/etcd#16822): a server-side bug no client can prevent. The
        // registrar then puts both back at once; that is checked separately.
        let mut thawed = Observed::default();
        thawed
            .observe(
                &mut watch,
                Instant::now() + Duration::from_secs(1),
                &expected,
            )
            .await;
        let Observed {
            changes,
            errors,
            snapshots,
        } = seen;
        let after = live(&*checker).await;
        let report = load.stop().await;
        let count = |key: &str| report[key].as_u64().unwrap_or(0);
        let client_changes: Vec<Vec<String>> = report["set_changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let at = c["at_unix_ms"].as_u64().unwrap_or(0);
                at >= fault_ms && at < thaw_ms
            })
            .map(|c| ids_of(&c["instances"]))
            .collect();
        record(format!(
            "gray etcd | leader (member m{leader}, holding {} of the {} lease keep-alive \
             streams {streams:?}, {}) SIGSTOP {} ms under load | requests {} | \
             failed {} | retries {} | registry set changes {} | client set changes {} | \
             watch snapshots {snapshots}, errors {errors} | after the thaw: {} set changes \
             (etcd {etcd_version})",
            streams[leader],
            streams.iter().sum::<u64>(),
            moved_from.map_or_else(
                || "already leader".to_owned(),
                |from| format!("leadership moved from m{from}")
            ),
            frozen_for.as_millis(),
            count("ok") + count("failed"),
            count("failed"),
            count("retries"),
            changes.len(),
            client_changes.len(),
            thawed.changes.len(),
        ));
        assert!(
            changes.is_empty(),
            "no registration may be lost while the etcd leader hangs: the watcher's set \
             changed: {changes:?} (expected {expected:?} throughout)"
        );
        assert!(
            thawed.changes.is_empty() || revokes_from_a_stale_leader(&etcd_version),
            "no registration may be lost when the etcd leader comes back (etcd {etcd_version} \
             has the fix for etcd-io/etcd#15247): {:?}",
            thawed.changes
        );
        assert_eq!(
            after,
            Ok(expected.clone()),
            "both registrations are there after the thaw"
        );
        assert!(
            client_changes.is_empty(),
            "the client's set must not change while the etcd leader hangs: {client_changes:?}"
        );
        assert_eq!(
            count("failed"),
            0,
            "no request may fail while the etcd leader hangs: {report}"
        );
        a.stop().await;
        b.stop().await;
        drop(cluster);
    }
}

// ---------------------------------------------------------------------------
// 2. One member hangs; fresh processes must not.
// ---------------------------------------------------------------------------

mod member_stopped {
    use super::*;

    /// `sdctl ls` runs.
    const LS_RUNS: usize = 8;
    /// The promise for each: answered within 2 s.
    const LS_PROMISE: Duration = Duration::from_secs(2);
    /// What is asserted, with margin.
    const LS_BOUND: Duration = Duration::from_secs(3);
    /// Fresh-load requests.
    const LOAD_REQUESTS: u64 = 20;

    /// Freezes member 0 (the first address every fresh process is given)
    /// of `registry`, whose members are at `addrs`, once `quorum_ready` says
    /// the others serve without it; then runs the fresh processes.
    async fn scenario(
        backend: &'static str,
        registry: &dyn RegistryServer,
        pid: u32,
        role: String,
        quorum_ready: impl Fn() -> bool,
    ) {
        let addrs: Vec<String> = registry
            .registry_addr()
            .split(',')
            .map(str::to_owned)
            .collect();
        let stay = Server::start(backend, registry, "stay");
        let checker = connect(&settings_on(backend, registry, &addrs[1..])).await;
        await_live(
            &*checker,
            &[("stay", stay.port)],
            PATIENCE,
            "the first server",
        )
        .await;

        let frozen = Frozen::stop(pid, &format!("{backend} member 0"));
        // The others serve without it before any fresh process starts: the
        // scenario measures the hung member, not an election.
        let started = Instant::now();
        while !blocking(&quorum_ready) {
            assert!(
                started.elapsed() < PATIENCE,
                "the {backend} members 1 and 2 never served without member 0"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let quorum_after = started.elapsed();

        // 8 x sdctl ls lorem, one after the other.
        let sdctl = testkit::sdctl_bin().unwrap_or_else(|e| panic!("{e:#}"));
        let mut runs = Vec::new();
        for _ in 0..LS_RUNS {
            let mut command = Command::new(&sdctl);
            env_for(&mut command, backend, registry);
            command.args(["ls", "lorem"]).env("RUST_LOG", "warn");
            runs.push(blocking(|| run_bounded(&mut command, LS_BOUND * 3)));
        }
        let ls_ok = runs
            .iter()
            .filter(|r| r.status.is_some_and(|s| s.success()) && r.stdout.contains("stay"))
            .count();
        let ls_max = runs.iter().map(|r| r.took).max().unwrap_or_default();
        let ls_in_time = runs.iter().filter(|r| r.took <= LS_PROMISE).count();

        // A fresh load of 20 requests.
        let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
        env_for(&mut command, backend, registry);
        command
            .args(["load", "--requests", &LOAD_REQUESTS.to_string()])
            .args(["--concurrency", "4", "--json"])
            .env("RUST_LOG", "warn");
        let load = blocking(|| run_bounded(&mut command, PATIENCE));
        let report: Value = serde_json::from_str(load.stdout.trim()).unwrap_or(Value::Null);
        let load_ok = report["ok"].as_u64().unwrap_or(0);
        let load_failed = report["failed"].as_u64().unwrap_or(LOAD_REQUESTS);

        // A fresh server registers (checked through the healthy members).
        let fresh = Server::start(backend, registry, "fresh");
        let registered = Instant::now();
        // One registry call's deadline at most: a fresh process must not
        // spend more than one on the hung member.
        let bound = REGISTRY_TIMEOUT;
        let mut fresh_after = None;
        while registered.elapsed() < bound + MARGIN {
            if live(&*checker)
                .await
                .is_ok_and(|set| set.iter().any(|(id, p)| id == "fresh" && *p == fresh.port))
            {
                fresh_after = Some(registered.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let frozen_for = frozen.thaw();

        record(format!(
            "gray {backend} | member 0 ({role}) SIGSTOP {} ms, quorum without it after {} ms | \
             sdctl ls x{LS_RUNS}: {ls_ok} ok, {ls_in_time} within {LS_PROMISE:?}, max {} ms \
             ({:?}) | fresh load of {LOAD_REQUESTS}: ok {load_ok} failed {load_failed} in {} ms | \
             fresh lorem-server registered after {}",
            frozen_for.as_millis(),
            quorum_after.as_millis(),
            ls_max.as_millis(),
            runs.iter().map(|r| r.took.as_millis()).collect::<Vec<_>>(),
            load.took.as_millis(),
            fresh_after.map_or_else(
                || format!("never (> {bound:?} + {MARGIN:?})"),
                |d| { format!("{} ms", d.as_millis()) }
            ),
        ));
        for (i, run) in runs.iter().enumerate() {
            assert!(
                run.status.is_some_and(|s| s.success()) && run.stdout.contains("stay"),
                "fresh `sdctl ls lorem` #{} with {backend} member 0 hung must succeed and list \
                 the instance; it {} after {:?}; stdout: {}; stderr: {}",
                i + 1,
                run.status
                    .map_or_else(|| "was killed".to_owned(), |s| format!("exited {s}")),
                run.took,
                run.stdout.trim(),
                run.stderr.trim()
            );
            assert!(
                run.took <= LS_BOUND,
                "fresh `sdctl ls lorem` #{} with {backend} member 0 hung must answer within \
                 {LS_PROMISE:?} (asserted: {LS_BOUND:?}); it took {:?}",
                i + 1,
                run.took
            );
        }
        assert!(
            load.status.is_some_and(|s| s.success())
                && load_failed == 0
                && load_ok == LOAD_REQUESTS,
            "a fresh `lorem-client load` of {LOAD_REQUESTS} with {backend} member 0 hung must \
             have 0 failures; it {} after {:?}: {}; stderr: {}",
            load.status
                .map_or_else(|| "was killed".to_owned(), |s| format!("exited {s}")),
            load.took,
            load.stdout.trim(),
            load.stderr.lines().take(5).collect::<Vec<_>>().join(" | ")
        );
        assert!(
            fresh_after.is_some(),
            "a fresh lorem-server with {backend} member 0 hung must register within one \
             REGISTRY_TIMEOUT ({bound:?}, + {MARGIN:?}); the healthy members did not list it in \
             time. Its log ends: {}",
            fresh
                .logs()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        fresh.stop().await;
        stay.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd() {
        let _serial = SERIAL.lock().await;
        let cluster = blocking(|| EtcdCluster::start(3)).expect("start a 3-member etcd cluster");
        let leader = etcd_leader(&cluster, &http()).await;
        let role = if leader == 0 { "leader" } else { "follower" }.to_owned();
        let pid = cluster.member_pid(0).expect("member 0 runs");
        scenario("etcd", &cluster, pid, role, || {
            cluster.member_healthy(1) && cluster.member_healthy(2)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper() {
        let _serial = SERIAL.lock().await;
        let ensemble =
            blocking(|| ZkEnsemble::start(3)).expect("start a 3-member ZooKeeper ensemble");
        let role = ensemble
            .member_mode(0)
            .unwrap_or_else(|| "unknown".to_owned());
        let pid = ensemble.member_pid(0).expect("member 0 runs");
        scenario("zookeeper", &ensemble, pid, role, || {
            ensemble.member_mode(1).is_some() && ensemble.member_mode(2).is_some()
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// 3. The single registry server hangs: the gateway says its set is stale.
// ---------------------------------------------------------------------------

mod stale {
    use super::*;

    async fn scenario(backend: &'static str, registry: &dyn RegistryServer, pid: u32) {
        let http = http();
        let server = Server::start(backend, registry, "st-a");
        let gateway = Gateway::start(backend, registry, &http).await;
        let started = Instant::now();
        loop {
            let body = gateway.instances(&http).await;
            if body["synced"] == true
                && body["stale"] == false
                && gateway.live(&http).await == [("st-a".to_owned(), server.port)]
            {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the gateway never listed st-a fresh: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Said stale within max(2 x TTL, 5 s) plus a margin.
        let promise = (TTL * 2).max(Duration::from_secs(5));
        let bound = promise + MARGIN;
        let frozen = Frozen::stop(pid, &format!("the {backend} server"));
        let (mut ok, mut failed) = (0_u32, Vec::new());
        let mut stale_after = None;
        let mut stale_body = Value::Null;
        let mut set_while_stale = Vec::new();
        let mut last_body = Value::Null;
        // Until stale (or the bound), then 2 s more of requests.
        let mut until = Instant::now() + bound;
        while Instant::now() < until {
            match gateway.lorem(&http).await {
                Ok(_) => ok += 1,
                Err(error) => failed.push(error),
            }
            let body = gateway.instances(&http).await;
            if stale_after.is_none()
                && body["stale"] == true
                && body["last_error"].as_str().is_some_and(|e| !e.is_empty())
            {
                stale_after = Some(frozen.elapsed());
                stale_body = body.clone();
                set_while_stale = gateway.live(&http).await;
                until = Instant::now() + Duration::from_secs(2);
            }
            last_body = body;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let frozen_for = frozen.thaw();
        // Fresh again after the thaw.
        let thawed = Instant::now();
        let fresh_bound = expiry(backend) + REGISTRY_TIMEOUT + MARGIN;
        let mut fresh_after = None;
        while thawed.elapsed() < fresh_bound {
            let body = gateway.instances(&http).await;
            if body["stale"] == false {
                fresh_after = Some(thawed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last_error = stale_body["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        record(format!(
            "gray {backend} | registry SIGSTOP {} ms, gateway running | stale after {} (bound \
             {bound:?}) | requests while hung: ok {ok} failed {} | fresh again {} after SIGCONT | \
             last_error: {last_error}",
            frozen_for.as_millis(),
            stale_after.map_or_else(|| "never".to_owned(), |d| format!("{} ms", d.as_millis())),
            failed.len(),
            fresh_after.map_or_else(|| "never".to_owned(), |d| format!("{} ms", d.as_millis())),
        ));
        assert!(
            stale_after.is_some(),
            "with the {backend} server hung, the gateway's GET /instances must say stale: true \
             with a last_error within max(2 x TTL, 5 s) = {promise:?} (+ {MARGIN:?}); it said \
             {last_body}"
        );
        assert!(
            last_error.to_lowercase().contains(backend),
            "the gateway's last_error must name the reason (which registry failed and how): \
             {last_error:?}"
        );
        assert_eq!(
            set_while_stale,
            [("st-a".to_owned(), server.port)],
            "while stale, the gateway serves from the last known set"
        );
        assert!(
            failed.is_empty(),
            "requests through the gateway must still succeed from the last known set while the \
             {backend} server hangs: {} failed: {failed:?}",
            failed.len()
        );
        assert!(
            fresh_after.is_some(),
            "after SIGCONT the gateway's GET /instances must say stale: false again within \
             {fresh_bound:?}; it says {}",
            gateway.instances(&http).await
        );
        gateway.stop().await;
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd() {
        let _serial = SERIAL.lock().await;
        let server = blocking(EtcdServer::start).expect("start etcd");
        let pid = server.pid().expect("etcd runs");
        scenario("etcd", &server, pid).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper() {
        let _serial = SERIAL.lock().await;
        let server = blocking(ZkServer::start).expect("start ZooKeeper");
        let pid = server.pid().expect("ZooKeeper runs");
        scenario("zookeeper", &server, pid).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consul() {
        let _serial = SERIAL.lock().await;
        let agent = blocking(ConsulAgent::start).expect("start Consul");
        let pid = agent.pid().expect("the Consul agent runs");
        scenario("consul", &agent, pid).await;
    }
}

// ---------------------------------------------------------------------------
// 4. A second server with the id of a running one.
// ---------------------------------------------------------------------------

mod duplicate_id {
    use super::*;

    async fn scenario(backend: &'static str, registry: &dyn RegistryServer) {
        let http = http();
        let checker = connect(&settings(backend, registry)).await;
        let first = Server::start(backend, registry, "dup");
        await_live(
            &*checker,
            &[("dup", first.port)],
            PATIENCE,
            "the first server",
        )
        .await;
        let gateway = Gateway::start(backend, registry, &http).await;
        let started = Instant::now();
        while gateway.live(&http).await != [("dup".to_owned(), first.port)] {
            assert!(
                started.elapsed() < PATIENCE,
                "the gateway never listed the first server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let second = Server::start(backend, registry, "dup");

        // For 3 TTLs (and until the second has said why it waits): answers
        // only from the first, whose record stays.
        let quiet = TTL * 3;
        let holder = first.guard.pid().to_string();
        let said = |logs: &str| {
            logs.lines().any(|l| {
                l.contains("already registered") && l.contains(&holder) && l.contains("retrying")
            })
        };
        let watched = Instant::now();
        let (mut answers, mut failed, mut records) = (0_u32, Vec::new(), Vec::new());
        // Past the 3 TTLs, wait (bounded) for the log line only while the
        // record is still the first's.
        while watched.elapsed() < quiet
            || (records.is_empty() && !said(&second.logs()) && watched.elapsed() < PATIENCE / 2)
        {
            match gateway.lorem(&http).await {
                Ok(id) if id == "dup" => answers += 1,
                Ok(other) => failed.push(format!("answered by {other:?}")),
                Err(error) => failed.push(error),
            }
            let seen = gateway.live(&http).await;
            if seen != [("dup".to_owned(), first.port)] {
                records.push(format!("gateway {seen:?}"));
            }
            match live(&*checker).await {
                Ok(set) if set == [("dup".to_owned(), first.port)] => {}
                other => records.push(format!("registry {other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let served_by_second = second.served(&http).await;
        let served_by_first = first.served(&http).await;
        let second_said = said(&second.logs());

        // The first crashes: the second gets in.
        first.guard.signal("KILL");
        let _ = first.guard.wait(PATIENCE).await;
        let killed = Instant::now();
        let retry_cap = lorem::server::REGISTER_BACKOFF_MAX;
        let bound = expiry(backend) + retry_cap + MARGIN;
        let mut taken_after = None;
        while killed.elapsed() < bound {
            if live(&*checker).await == Ok(vec![("dup".to_owned(), second.port)]) {
                taken_after = Some(killed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The gateway then answers from the second.
        let mut second_answers_after = None;
        if taken_after.is_some() {
            while killed.elapsed() < bound + PATIENCE / 2 {
                let _ = gateway.lorem(&http).await;
                if second.served(&http).await > 0 {
                    second_answers_after = Some(killed.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        record(format!(
            "gray {backend} | duplicate --id, second started while the first runs | {} s: \
             answers {answers} (first served {served_by_first}, second {served_by_second}), \
             failed {}, record changes {} | second logged the holder and retrying: {second_said} \
             | after SIGKILL of the first: registered {} (bound {bound:?} = expiry {:?} + retry \
             backoff cap {retry_cap:?} + {MARGIN:?}), answering {}",
            watched.elapsed().as_secs(),
            failed.len(),
            records.len(),
            taken_after.map_or_else(
                || "never".to_owned(),
                |d| format!("after {} ms", d.as_millis())
            ),
            expiry(backend),
            second_answers_after.map_or_else(
                || "never".to_owned(),
                |d| format!("after {} ms", d.as_millis())
            ),
        ));
        assert!(
            records.is_empty(),
            "duplicate id on {backend}: the second lorem-server must not take the record of the \
             running one (port {}); {} of {} checks saw another record, the first: {:?}",
            first.port,
            records.len(),
            2 * (answers as usize + failed.len()),
            records.first()
        );
        assert!(
            failed.is_empty() && served_by_second == 0,
            "duplicate id on {backend}: the gateway must answer only from the first server \
             (second served {served_by_second}); failures: {failed:?}"
        );
        assert!(
            second_said,
            "duplicate id on {backend}: the second lorem-server's log must name the holder \
             (owner token starting with pid {holder}) and say it keeps retrying; its log ends: \
             {}",
            second
                .logs()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert!(
            taken_after.is_some(),
            "duplicate id on {backend}: after the first server's SIGKILL the second must be \
             registered within about one TTL/session timeout ({:?}) plus its retry backoff \
             ({retry_cap:?}) and {MARGIN:?}; the registry lists {:?}",
            expiry(backend),
            live(&*checker).await
        );
        assert!(
            second_answers_after.is_some(),
            "duplicate id on {backend}: once registered, the second server gets the gateway's \
             requests"
        );
        gateway.stop().await;
        second.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd() {
        let _serial = SERIAL.lock().await;
        let server = blocking(EtcdServer::start).expect("start etcd");
        scenario("etcd", &server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zookeeper() {
        let _serial = SERIAL.lock().await;
        let server = blocking(ZkServer::start).expect("start ZooKeeper");
        scenario("zookeeper", &server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consul() {
        let _serial = SERIAL.lock().await;
        let agent = blocking(ConsulAgent::start).expect("start Consul");
        scenario("consul", &agent).await;
    }
}

/// The etcd server's version, as `etcd --version` prints it (`3.4.23`).
fn etcd_version() -> String {
    let etcd = testkit::etcd_bin().expect("etcd (apt-get install -y etcd-server)");
    let output = Command::new(etcd)
        .arg("--version")
        .output()
        .expect("run etcd --version");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether this etcd may revoke every lease from a leader that resumes
/// after a hang (etcd-io/etcd#15247; fixed in 3.4.28 and 3.5.11 by
/// etcd-io/etcd#16822).
fn revokes_from_a_stale_leader(version: &str) -> bool {
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    match parts.as_slice() {
        [3, 4, patch, ..] => *patch < 28,
        [3, 5, patch, ..] => *patch < 11,
        [3, minor, ..] => *minor < 4,
        _ => false,
    }
}
