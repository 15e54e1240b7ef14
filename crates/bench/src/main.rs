//! `compare-backends`: the same registry work on every backend, side by side.
//!
//! Starts each real server with the testkit on loopback (etcd, ZooKeeper,
//! Consul; memory needs none), runs the same bounded work through the
//! `registry` traits, and prints one table (or `--json`):
//!
//! - `register p50/p99`: latency of `register()` until it returns;
//! - `visible p50/p99`: from calling `register()` to a *separate*
//!   connection's watch showing the instance (rounds are 200 ms apart, so
//!   each change is measured on a quiet registry);
//! - `deregister->gone p50`: from `deregister()` to the watch dropping it;
//! - `crash detect`: from `abandon()` to the watch dropping the instance
//!   (TTL 2 s; ZooKeeper's session is at least 6 s);
//! - `200 concurrent`: 200 concurrent registrations until all are visible;
//! - `server RSS`: the server process's resident memory after the work;
//! - `lorem rps / p99`: two in-process lorem servers registered through the
//!   backend and `--load-requests` lorem requests through the discovery-fed
//!   balancer (concurrency 16). The registry is off the request path, so
//!   this should be the same on every backend: it checks that it is.
//!
//! Usage: `cargo run -p bench -- [--rounds N] [--load-requests N] [--json] [--only etcd,consul]`.
//! Every phase is bounded by a count and a deadline.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use registry::{
    BackendConfig, ConsulConfig, DynRegistry, EtcdConfig, Instance, MemoryRegistry, Settings,
    WatchStream, ZookeeperConfig,
};
use serde::Serialize;
use testkit::{ConsulAgent, EtcdServer, RegistryServer, ZkServer};

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(5);
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// The pause before each register/deregister round.
const ROUND_GAP: Duration = Duration::from_millis(200);

#[derive(Debug, Default, Serialize)]
struct Row {
    backend: &'static str,
    register_p50_ms: f64,
    register_p99_ms: f64,
    visible_p50_ms: f64,
    visible_p99_ms: f64,
    deregister_gone_p50_ms: f64,
    crash_detect_ms: f64,
    concurrent_200_ms: f64,
    server_rss_mb: Option<f64>,
    lorem_rps: f64,
    lorem_p99_ms: f64,
    lorem_failed: u64,
}

struct Target {
    backend: &'static str,
    settings: Settings,
    memory: Option<MemoryRegistry>,
    /// Kept so the server runs (and is stopped on drop) while measured.
    _server: Option<Box<dyn RegistryServer>>,
    pid: Option<u32>,
}

impl Target {
    fn start(backend: &str) -> Result<Target> {
        let settings = |backend| Settings {
            backend,
            ttl: TTL,
            timeout: TIMEOUT,
        };
        Ok(match backend {
            "memory" => Target {
                backend: "memory",
                settings: settings(BackendConfig::default()),
                memory: Some(MemoryRegistry::new(TTL)),
                _server: None,
                pid: None,
            },
            "etcd" => {
                let server = EtcdServer::start()?;
                let pid = server.pid();
                let config = EtcdConfig {
                    addr: vec![server.registry_addr()],
                    ..EtcdConfig::default()
                };
                Target {
                    backend: "etcd",
                    settings: settings(BackendConfig::Etcd(config)),
                    memory: None,
                    _server: Some(Box::new(server)),
                    pid,
                }
            }
            "zookeeper" => {
                let server = ZkServer::start()?;
                let pid = server.pid();
                let config = ZookeeperConfig {
                    addr: vec![server.registry_addr()],
                    ..ZookeeperConfig::default()
                };
                Target {
                    backend: "zookeeper",
                    settings: settings(BackendConfig::Zookeeper(config)),
                    memory: None,
                    _server: Some(Box::new(server)),
                    pid,
                }
            }
            "consul" => {
                let server = ConsulAgent::start()?;
                let pid = server.pid();
                let config = ConsulConfig {
                    addr: vec![server.registry_addr()],
                    token: None,
                };
                Target {
                    backend: "consul",
                    settings: settings(BackendConfig::Consul(config)),
                    memory: None,
                    _server: Some(Box::new(server)),
                    pid,
                }
            }
            other => bail!("unknown backend {other:?}; expected memory, etcd, zookeeper, consul"),
        })
    }

    async fn connect(&self) -> Result<DynRegistry> {
        match &self.memory {
            Some(memory) => Ok(Arc::new(memory.clone())),
            None => registry::connect(&self.settings)
                .await
                .with_context(|| format!("connect to {}", self.backend)),
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn until(
    watch: &mut WatchStream,
    what: &str,
    done: impl Fn(&[Instance]) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(snapshot))) if done(&snapshot) => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => bail!("watch ended while waiting for {what}"),
            Err(_) => bail!("{what} did not happen within {PHASE_DEADLINE:?}"),
        }
    }
}

async fn measure(target: &Target, rounds: usize, load_requests: u64) -> Result<Row> {
    let registrar = target.connect().await?;
    let watcher = target.connect().await?;
    let mut row = Row {
        backend: target.backend,
        ..Row::default()
    };

    // Register, propagate, deregister: `rounds` times, one instance at a time.
    let mut watch = watcher.watch("bench");
    until(&mut watch, "the first snapshot", |_| true).await?;
    let (mut register, mut propagate, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        // A quiet registry between rounds: watch loops that pace bursts of
        // changes (Consul's blocking queries) are measured on one change,
        // as in service discovery, not on a change storm.
        tokio::time::sleep(ROUND_GAP).await;
        let id = format!("r{i}");
        let started = Instant::now();
        let registration = registrar
            .register(Instance::new("bench", &id, "127.0.0.1", 9000))
            .await?;
        register.push(started.elapsed());
        until(&mut watch, "the instance to appear", |s| {
            s.iter().any(|x| x.id == id)
        })
        .await?;
        propagate.push(started.elapsed());
        let started = Instant::now();
        registration.deregister().await?;
        until(&mut watch, "the instance to go", |s| {
            s.iter().all(|x| x.id != id)
        })
        .await?;
        gone.push(started.elapsed());
    }
    for v in [&mut register, &mut propagate, &mut gone] {
        v.sort();
    }
    row.register_p50_ms = millis(percentile(&register, 50.0));
    row.register_p99_ms = millis(percentile(&register, 99.0));
    row.visible_p50_ms = millis(percentile(&propagate, 50.0));
    row.visible_p99_ms = millis(percentile(&propagate, 99.0));
    row.deregister_gone_p50_ms = millis(percentile(&gone, 50.0));

    // Crash detection: one abandoned instance, through the TTL or session.
    let crashed = registrar
        .register(Instance::new("bench", "crashed", "127.0.0.1", 9000))
        .await?;
    until(&mut watch, "the crash victim", |s| {
        s.iter().any(|x| x.id == "crashed")
    })
    .await?;
    let started = Instant::now();
    crashed.abandon();
    until(&mut watch, "the crash to be noticed", |s| {
        s.iter().all(|x| x.id != "crashed")
    })
    .await?;
    row.crash_detect_ms = millis(started.elapsed());

    // 200 concurrent registrations until all are visible.
    let started = Instant::now();
    let registrations = futures::future::join_all((0..200u16).map(|i| {
        registrar.register(Instance::new(
            "bench200",
            format!("c{i}"),
            "127.0.0.1",
            10000 + i,
        ))
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut watch200 = watcher.watch("bench200");
    until(&mut watch200, "200 instances", |s| s.len() == 200).await?;
    row.concurrent_200_ms = millis(started.elapsed());
    futures::future::join_all(registrations.into_iter().map(|r| r.deregister())).await;

    row.server_rss_mb = target.pid.and_then(rss_mb);

    // The whole lorem stack over this backend.
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let mut options = lorem::server::ServerOptions::new(id);
        options.listen = "127.0.0.1:0".parse()?;
        options.drain_delay = Duration::ZERO;
        servers.push(lorem::server::start(options, target.connect().await?).await?);
    }
    let balancer =
        client::Balancer::new(watcher.clone(), "lorem", client::BalancerOptions::default())?;
    let deadline = Instant::now() + PHASE_DEADLINE;
    while balancer.instances().len() < 2 {
        if Instant::now() > deadline {
            bail!("the two lorem servers never became visible");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lorem_client = client::LoremClient::new(balancer, client::ClientOptions::default())?;
    let report = client::load::run(
        &lorem_client,
        &client::load::LoadOptions {
            requests: Some(load_requests),
            duration: Some(PHASE_DEADLINE),
            concurrency: 16,
            ..client::load::LoadOptions::default()
        },
    )
    .await?;
    row.lorem_rps = report.rps.round();
    row.lorem_p99_ms = (report.p99_ms * 100.0).round() / 100.0;
    row.lorem_failed = report.failed;
    for server in servers {
        server.shutdown().await?;
    }
    Ok(row)
}

/// Resident memory of a process, from /proc (Linux only).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

fn print_table(rows: &[Row], rounds: usize) {
    println!(
        "same work on every backend: {rounds} register/visible/deregister rounds, 1 crash, 200 concurrent registrations, then lorem load through the balancer (TTL {TTL:?}, loopback)"
    );
    println!(
        "{:<10} {:>13} {:>13} {:>14} {:>14} {:>12} {:>12} {:>14} {:>10} {:>10} {:>10}",
        "backend",
        "register p50",
        "register p99",
        "visible p50",
        "visible p99",
        "dereg->gone",
        "crash",
        "200 concurrent",
        "server RSS",
        "lorem rps",
        "lorem p99"
    );
    for r in rows {
        println!(
            "{:<10} {:>10.2} ms {:>10.2} ms {:>11.2} ms {:>11.2} ms {:>9.2} ms {:>9.0} ms {:>11.0} ms {:>10} {:>10.0} {:>7.2} ms{}",
            r.backend,
            r.register_p50_ms,
            r.register_p99_ms,
            r.visible_p50_ms,
            r.visible_p99_ms,
            r.deregister_gone_p50_ms,
            r.crash_detect_ms,
            r.concurrent_200_ms,
            r.server_rss_mb
                .map(|m| format!("{m:.0} MB"))
                .unwrap_or_else(|| "-".to_owned()),
            r.lorem_rps,
            r.lorem_p99_ms,
            if r.lorem_failed > 0 {
                format!(" ({} failed)", r.lorem_failed)
            } else {
                String::new()
            }
        );
    }
}

struct Options {
    rounds: usize,
    load_requests: u64,
    json: bool,
    only: Vec<String>,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        rounds: 100,
        load_requests: 20_000,
        json: false,
        only: ["memory", "etcd", "zookeeper", "consul"]
            .map(str::to_owned)
            .to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => options.json = true,
            "--rounds" => {
                let n = args.next().context("--rounds needs a number")?;
                options.rounds = n.parse().context("--rounds needs a number")?;
                if !(1..=10_000).contains(&options.rounds) {
                    bail!("--rounds must be 1-10000");
                }
            }
            "--load-requests" => {
                let n = args.next().context("--load-requests needs a number")?;
                options.load_requests = n.parse().context("--load-requests needs a number")?;
                if !(1..=1_000_000).contains(&options.load_requests) {
                    bail!("--load-requests must be 1-1000000");
                }
            }
            "--only" => {
                let list = args
                    .next()
                    .context("--only needs a list like etcd,consul")?;
                options.only = list.split(',').map(|s| s.trim().to_owned()).collect();
            }
            "-h" | "--help" => {
                println!(
                    "usage: compare-backends [--rounds N] [--json] [--only memory,etcd,zookeeper,consul]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_owned()))
        .with_writer(std::io::stderr)
        .try_init();
    let options = match parse_args() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("compare-backends: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for backend in &options.only {
        eprintln!("compare-backends: {backend}...");
        let result = match Target::start(backend) {
            Ok(target) => measure(&target, options.rounds, options.load_requests).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(row) => rows.push(row),
            Err(error) => {
                eprintln!("compare-backends: {backend} failed: {error:#}");
                failed = true;
            }
        }
    }
    if options.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
    } else {
        print_table(&rows, options.rounds);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
