//! `sdctl`: inspect and write any registry with the servers' settings, and
//! benchmark the backends side by side. Argument parsing and wiring only;
//! everything else is in the `sdctl` library.
//!
//! Exit status: 0 on success, 1 on an error (printed on stderr as
//! `sdctl: ...`), 2 for bad arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sdctl::Result;
use sdctl::bench::{Backend, BenchOptions, Sizes};
use sdctl::commands;
use sdctl::register::InstanceSpec;

/// One CLI for every registry backend: list, watch, register and
/// deregister instances, serve a live page of them, and benchmark the
/// backends side by side.
///
/// The registry comes from the same settings as the servers': REGISTRY
/// (memory, etcd, zookeeper or zk, consul), REGISTRY_ADDR, REGISTRY_CONFIG
/// (a TOML file), REGISTRY_PREFIX, REGISTRY_TTL, REGISTRY_TIMEOUT (the
/// deadline of every registry call, 5s by default), and for a secured
/// registry REGISTRY_CA, REGISTRY_CERT, REGISTRY_KEY, REGISTRY_USER,
/// REGISTRY_PASSWORD(_FILE), REGISTRY_TOKEN(_FILE) or Consul's CONSUL_*
/// variables (docs/secured-registries.md). Logs go to stderr (RUST_LOG;
/// default warn, error for the bench).
#[derive(Debug, Parser)]
#[command(name = "sdctl", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the services with live instances, or one service's instances.
    ///
    /// A service without live instances is an error (exit 1) that lists the
    /// services there are.
    Ls {
        /// The service whose instances to list.
        service: Option<String>,
        /// Print JSON: {"instances": [...]} for a service, {"services":
        /// [{"name", "instances"}]} without one.
        #[arg(long)]
        json: bool,
    },
    /// Print a service's changes as they happen, one line per change.
    ///
    /// First one "added" line per instance and a "synced SERVICE
    /// instances=N" line, then one "added", "removed" or "changed" line per
    /// change. Runs until SIGINT/SIGTERM or --count.
    Watch {
        /// The service to watch (it need not have instances yet).
        service: String,
        /// One JSON object per line: {"event": "added", "instance": {...}}.
        #[arg(long)]
        json: bool,
        /// Stop after this many change lines (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Register an instance and hold it while the command runs.
    ///
    /// Prints "registered SERVICE/ID HOST:PORT" once registered; on
    /// SIGINT/SIGTERM deregisters it, prints "deregistered SERVICE/ID" and
    /// exits 0. Killed outright, it leaves the instance to expire after the
    /// TTL (REGISTRY_TTL), like a crashed server.
    Register {
        /// The service name.
        service: String,
        /// The instance id, unique within the service.
        id: String,
        /// Where the instance serves: HOST:PORT, or [IPv6]:PORT.
        #[arg(value_parser = parse_addr)]
        addr: String,
        /// A tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Metadata as KEY=VALUE (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
        metadata: Vec<(String, String)>,
        /// Relative share of traffic for weighted balancing (default 1).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove an instance's record, whoever registered it.
    ///
    /// For records whose owner is gone: a crashed process, before its TTL
    /// or session runs out, or a record another tool wrote. A process that
    /// still holds the registration registers it again at its next check
    /// (about one TTL): stop that process to remove it for good.
    Deregister {
        /// The service name.
        service: String,
        /// The instance id.
        id: String,
    },
    /// Serve a live web page of the registry's services and instances.
    ///
    /// Services with instance counts, each service's instances (id,
    /// address, tags, metadata, weight, zone), whether the registry is
    /// synced or stale and why, and a timeline of changes, pushed to the
    /// browser as they happen (one watch per service, however many pages
    /// are open). Read-only. Prints "serving the page of REGISTRY at
    /// http://ADDR/" once listening; runs until SIGINT/SIGTERM.
    Ui {
        /// Where to serve the page. Keep it on loopback unless everyone who
        /// can reach the address may see the registry's contents.
        #[arg(long, default_value = "127.0.0.1:7070", value_name = "HOST:PORT")]
        listen: std::net::SocketAddr,
    },
    /// Run the same scenarios on several backends and print one table.
    ///
    /// Each real backend is started on loopback through the test kit
    /// (--spawn) or reached at --etcd-addr, --zookeeper-addr,
    /// --consul-addr. The table goes to stdout; --out writes JSON, --svg a
    /// chart of the latencies. Progress is shown on stderr when it is a
    /// terminal.
    Bench(Box<BenchArgs>),
    /// The bench's floor watcher: a bare etcd or ZooKeeper client watch of
    /// a service, one line per event (see sdctl's bench/floor.rs).
    #[command(hide = true)]
    BenchFloorWatch {
        /// The service to follow.
        service: String,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// The backends, comma-separated, in the order of the rows.
    #[arg(long, default_value = "memory,etcd,zookeeper,consul", value_parser = parse_backends)]
    backends: BackendList,
    /// Start etcd, ZooKeeper and Consul on 127.0.0.1 (ephemeral ports,
    /// temp dirs) through the test kit, and stop them afterwards.
    #[arg(long)]
    spawn: bool,
    /// The etcd cluster to measure, if not --spawn (comma-separated members).
    #[arg(long, value_name = "HOST:PORT")]
    etcd_addr: Option<String>,
    /// The ZooKeeper ensemble to measure, if not --spawn (comma-separated members).
    #[arg(long, value_name = "HOST:PORT")]
    zookeeper_addr: Option<String>,
    /// The Consul agent to measure, if not --spawn.
    #[arg(long, value_name = "HOST:PORT")]
    consul_addr: Option<String>,
    /// Smaller sizes (15 rounds, 2 crashes, 3 syncs, 2000 watched, 2000
    /// lorem requests): about a minute for all four backends with --spawn.
    #[arg(long)]
    quick: bool,
    /// TTL of the measured registrations, 1s to 60s [default: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Register/propagate/deregister rounds, 1 to 10000 [default: 100].
    #[arg(long)]
    rounds: Option<usize>,
    /// Pause before each round, at most 10s [default: 200ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    gap: Option<Duration>,
    /// Registering processes killed for crash detection, 1 to 50 [default: 5].
    #[arg(long)]
    crash: Option<usize>,
    /// Instances registered at once over one registrar, and watched by the
    /// initial-sync phase, 1 to 10000 [default: 1000].
    #[arg(long)]
    bulk: Option<usize>,
    /// Initial-sync samples, 1 to 100 [default: 10].
    #[arg(long)]
    sync: Option<usize>,
    /// Instances an `sdctl watch` process syncs to for its memory, 0 (skip)
    /// to 100000 [default: 10000].
    #[arg(long)]
    watchers: Option<usize>,
    /// Lorem requests through the balancer, 0 (skip) to 1000000 [default: 20000].
    #[arg(long)]
    load_requests: Option<u64>,
    /// Lorem requests in flight at once, 1 to 1024 [default: 16].
    #[arg(long)]
    load_concurrency: Option<usize>,
    /// The sizes of the scale rows (a watcher and a gateway following a
    /// service of N instances under churn), comma-separated, each 1 to
    /// 200000; `0` skips them [default: 1000,10000,100000; --quick: 1000].
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,
    /// Changes per scale row, 1 to 10000 [default: 200; --quick: 40].
    #[arg(long)]
    scale_changes: Option<usize>,
    /// Changes per second in the scale rows, 1 to 1000 [default: 40].
    #[arg(long)]
    scale_rate: Option<u32>,
    /// A directory with the `sdctl` and `lorem-client` of another build
    /// (e.g. an older commit's target/release): their children are
    /// measured too in the scale rows, for a before/after in one run.
    #[arg(long, value_name = "DIR")]
    scale_baseline: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// Write an SVG chart of the latencies to this file.
    #[arg(long, value_name = "FILE.svg")]
    svg: Option<PathBuf>,
    /// No progress on stderr, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

/// `--backends memory,etcd`, parsed as one value.
#[derive(Debug, Clone)]
struct BackendList(Vec<Backend>);

fn parse_backends(list: &str) -> std::result::Result<BackendList, String> {
    Backend::parse_list(list)
        .map(BackendList)
        .map_err(|e| e.to_string())
}

fn parse_addr(value: &str) -> std::result::Result<String, String> {
    sdctl::register::parse_host_port(value)
        .map(|_| value.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_meta(value: &str) -> std::result::Result<(String, String), String> {
    sdctl::register::parse_key_value(value).map_err(|e| e.to_string())
}

impl BenchArgs {
    fn options(&self) -> BenchOptions {
        let base = if self.quick {
            Sizes::quick()
        } else {
            Sizes::full()
        };
        let sizes = Sizes {
            ttl: self.ttl.unwrap_or(base.ttl),
            rounds: self.rounds.unwrap_or(base.rounds),
            gap: self.gap.unwrap_or(base.gap),
            crash: self.crash.unwrap_or(base.crash),
            bulk: self.bulk.unwrap_or(base.bulk),
            sync: self.sync.unwrap_or(base.sync),
            watchers: self.watchers.unwrap_or(base.watchers),
            load_requests: self.load_requests.unwrap_or(base.load_requests),
            load_concurrency: self.load_concurrency.unwrap_or(base.load_concurrency),
            scale: match &self.scale {
                Some(sizes) => sizes.iter().copied().filter(|n| *n > 0).collect(),
                None => base.scale,
            },
            scale_changes: self.scale_changes.unwrap_or(base.scale_changes),
            scale_rate: self.scale_rate.unwrap_or(base.scale_rate),
        };
        let mut addrs = BTreeMap::new();
        for (backend, addr) in [
            (Backend::Etcd, &self.etcd_addr),
            (Backend::Zookeeper, &self.zookeeper_addr),
            (Backend::Consul, &self.consul_addr),
        ] {
            if let Some(addr) = addr {
                addrs.insert(backend, addr.clone());
            }
        }
        BenchOptions {
            backends: self.backends.0.clone(),
            spawn: self.spawn,
            addrs,
            sizes,
            progress: !self.no_progress,
            scale_baseline: self.scale_baseline.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The bench kills servers that clients of finished phases may still be
    // reconnecting to: their warnings would only be noise there.
    logging::init(if matches!(cli.command, Command::Bench(_)) {
        "error"
    } else {
        "warn"
    });
    // One thread for the commands that follow one registry connection:
    // each change of a watch then wakes no other thread (a third less CPU
    // per change, measured); the page and the bench serve and spawn
    // concurrently, on every core.
    let runtime = if matches!(cli.command, Command::Ui { .. } | Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sdctl: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sdctl: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    let mut stdout = std::io::stdout();
    match command {
        Command::Ls { service, json } => commands::ls(service, json, &mut stdout).await?,
        Command::Watch {
            service,
            json,
            count,
        } => commands::watch(&service, json, count, &mut stdout).await?,
        Command::Register {
            service,
            id,
            addr,
            tags,
            metadata,
            weight,
        } => {
            let spec = InstanceSpec {
                service,
                id,
                addr,
                tags,
                metadata,
                weight,
            };
            commands::register(spec, &mut stdout).await?;
        }
        Command::Deregister { service, id } => {
            commands::deregister(&service, &id, &mut stdout).await?;
        }
        Command::Ui { listen } => commands::ui(listen, &mut stdout).await?,
        Command::BenchFloorWatch { service } => {
            commands::bench_floor_watch(&service, &mut stdout).await?;
        }
        Command::Bench(args) => {
            let (out, svg) = (args.out.as_deref(), args.svg.as_deref());
            return commands::bench(&args.options(), out, svg, &mut stdout).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
