//! `local-topology consul|etcd|zk`: the topology of `docker-compose.<backend>.yml`
//! (the registry, `server1`, `server2` and the gateway) as processes on
//! 127.0.0.1, until Ctrl-C or SIGTERM; `deploy/local.sh` builds and runs it.
//!
//! ```text
//! local-topology etcd [--registry-ports 2379,22379,32379] [--server-ports 8081,8082]
//!                     [--gateway-port 8090] [--ephemeral] [--bin-dir DIR] [--quiet]
//! ```
//!
//! It prints what runs where once the gateway lists both servers, then
//! copies the lorem processes' logs to stdout and reports any process that
//! exits (nothing is restarted). Ctrl-C or SIGTERM stops everything in
//! order (gateway, servers, registry) and exits 0; a second one kills what
//! is left at once. If it is killed itself, every process it started is
//! killed by its watchdog.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use testkit::topology::{Backend, DEFAULT_GATEWAY_PORT, DEFAULT_SERVER_PORTS, Options, Topology};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Runs the lorem topology of `docker-compose.<backend>.yml` as processes on
/// 127.0.0.1: the registry from local binaries, server1, server2 and the
/// gateway, with the compose file's environment variables.
#[derive(Debug, Parser)]
#[command(name = "local-topology", version)]
struct Cli {
    /// The registry: consul (3 servers and a client agent per lorem
    /// process), etcd (3-member cluster) or zk (3-member ensemble).
    backend: Backend,

    /// The registry's client ports: for Consul six HTTP ports, the servers
    /// consul1-3 then the agents of server1, server2 and the gateway
    /// [default: 8500,18500,28500,8581,8582,8590] (the UI is on the first);
    /// three for etcd [default: 2379,22379,32379] or ZooKeeper [default:
    /// 2181,2182,2183]. 0 picks a free port.
    #[arg(long, env = "LOCAL_REGISTRY_PORTS", value_delimiter = ',')]
    registry_ports: Vec<u16>,

    /// The ports of server1 and server2 (0 picks a free port).
    #[arg(long, env = "LOCAL_SERVER_PORTS", value_delimiter = ',',
          default_values_t = DEFAULT_SERVER_PORTS)]
    server_ports: Vec<u16>,

    /// The gateway's port (0 picks a free port).
    #[arg(long, env = "LOCAL_GATEWAY_PORT", default_value_t = DEFAULT_GATEWAY_PORT)]
    gateway_port: u16,

    /// Pick a free port for everything, ignoring the port options: for
    /// several topologies side by side.
    #[arg(long)]
    ephemeral: bool,

    /// The directory holding lorem-server and lorem-client [default: the
    /// directory of this program, e.g. target/debug].
    #[arg(long, env = "LOREM_BIN_DIR")]
    bin_dir: Option<PathBuf>,

    /// Do not copy the lorem processes' logs to stdout.
    #[arg(long)]
    quiet: bool,

    /// A secured registry: one member with TLS, client certificates and a
    /// user (etcd, zk) or ACLs and a token (consul), certificates made at
    /// start, free ports; the lorem processes get REGISTRY_CA, REGISTRY_CERT,
    /// REGISTRY_KEY and REGISTRY_USER + REGISTRY_PASSWORD_FILE or
    /// REGISTRY_TOKEN_FILE (docs/secured-registries.md).
    #[arg(long)]
    secured: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init_from_env("LOCAL_TOPOLOGY_LOG", "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("local-topology: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("local-topology: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes one line to stdout; a closed stdout (`| head`) is not an error
/// worth dying for while processes need stopping.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// SIGTERM, SIGINT and SIGHUP (the terminal closed), listened for from
/// creation on.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.int.recv() => "SIGINT",
            Some(()) = self.hup.recv() => "SIGHUP",
            else => std::future::pending().await,
        }
    }
}

fn options(cli: &Cli) -> anyhow::Result<Options> {
    let bin_dir = match &cli.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot tell where this program is; pass --bin-dir")?
            .parent()
            .map(PathBuf::from)
            .context("this program has no parent directory; pass --bin-dir")?,
    };
    let mut options = Options::new(cli.backend, bin_dir);
    options.secured = cli.secured;
    if cli.ephemeral {
        return Ok(options.ephemeral());
    }
    if !cli.registry_ports.is_empty() {
        options.registry_ports = cli.registry_ports.clone();
    }
    options.server_ports = match cli.server_ports[..] {
        [a, b] => [a, b],
        _ => anyhow::bail!(
            "--server-ports takes two ports (server1,server2), got {:?}",
            cli.server_ports
        ),
    };
    options.gateway_port = cli.gateway_port;
    Ok(options)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // First, so that a signal during start-up stops what was started
    // instead of killing us (the watchdogs would clean up, but abruptly).
    let mut signals = Signals::install()?;
    let options = options(&cli)?;
    say(&format!(
        "starting {} and the lorem processes on 127.0.0.1...",
        if cli.secured {
            "a secured registry (one member, TLS, client certificates, a user)"
        } else {
            cli.backend.describe()
        }
    ));
    let mut start = tokio::task::spawn_blocking(move || Topology::start(&options));
    let mut stop_signal = None;
    let started = loop {
        tokio::select! {
            result = &mut start => break result,
            signal = signals.next() => {
                if stop_signal.is_some() {
                    // Start-up cannot be interrupted half-way; the
                    // watchdogs kill what it started once we are gone.
                    say(&format!("{signal} again: exiting now; the processes started so far are killed"));
                    std::process::exit(130);
                }
                say(&format!("{signal}: stopping once the start-up step under way has finished (again to exit now)"));
                stop_signal = Some(signal);
            }
        }
    };
    let mut topology = started.context("the start-up task failed")??;
    let signal = match stop_signal {
        Some(signal) => signal,
        None => {
            say(&topology.summary());
            if !cli.quiet {
                say("the lorem processes' logs follow (--quiet to leave them out):");
            }
            loop {
                tokio::select! {
                    signal = signals.next() => break signal,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        for line in topology.poll_exits() {
                            say(&line);
                        }
                        if !cli.quiet {
                            copy_logs(&mut topology);
                        }
                    }
                }
            }
        }
    };

    say(&format!(
        "{signal}: stopping the gateway, the servers, then the registry (again to kill at once)"
    ));
    let began = Instant::now();
    let hurry = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hurry);
    let mut stop = tokio::task::spawn_blocking(move || {
        let result = topology.stop(&flag);
        (topology, result)
    });
    let (mut topology, result) = loop {
        tokio::select! {
            done = &mut stop => break done.context("the stopping task failed")?,
            signal = signals.next() => {
                say(&format!("{signal}: killing what is left"));
                hurry.store(true, Ordering::Relaxed);
            }
        }
    };
    if !cli.quiet {
        copy_logs(&mut topology);
    }
    result.context("cannot stop every process")?;
    say(&format!(
        "stopped everything in {:.1} s",
        began.elapsed().as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}

fn copy_logs(topology: &mut Topology) {
    for (name, line) in topology.new_log_lines() {
        say(&format!("{name:>8} | {line}"));
    }
}
