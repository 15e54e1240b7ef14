//! The balancer's overhead, measured: the same load through discovery and
//! the balancer, and straight to the servers, in one run.
//!
//! Starts a real etcd (testkit) and two `lorem-server` processes registered
//! in it, then alternates, round after round, between
//!
//! - `lorem-client load` (discovery, balancer, retry bookkeeping, metrics),
//! - `lorem-client load --direct A,B` (the same HTTP client, the same
//!   requests and reading of the answers, to the same two servers in turn,
//!   without discovery),
//!
//! with the same request count and concurrency, and prints the median rps,
//! p50, p99 and client CPU time per request of each, and their ratios
//! (median of the per-round ratios: each pair of runs is back to back, so
//! the machine's drift cancels out, and each mode goes first in every other
//! round, so that the order does not favour one). Throughput on a shared 2-core machine
//! swings by 10-20% from run to run, so it also counts the client's
//! instructions per request under callgrind (`--no-instructions` skips it),
//! which is the same on every run.
//!
//! ```text
//! ./scripts/overhead.sh            # builds the release binaries, then runs this
//! cargo run --release -p client --example overhead -- --rounds 5 --requests 20000 --concurrency 16
//! ```
//!
//! Everything is bounded: `--rounds` (at most 50) runs of `--requests` (at
//! most 1,000,000) each.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use registry::{BackendConfig, Settings, Watcher, etcd};
use testkit::{EtcdServer, RegistryServer};

#[derive(Clone, Copy)]
struct Options {
    rounds: usize,
    requests: u64,
    concurrency: usize,
    /// Also count instructions per request under callgrind.
    instructions: bool,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        rounds: 5,
        requests: 20_000,
        concurrency: 16,
        instructions: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => options.rounds = value()?.parse().context("--rounds")?,
            "--requests" => options.requests = value()?.parse().context("--requests")?,
            "--concurrency" => options.concurrency = value()?.parse().context("--concurrency")?,
            "--no-instructions" => options.instructions = false,
            "-h" | "--help" => {
                println!(
                    "usage: overhead [--rounds N] [--requests N] [--concurrency N] [--no-instructions]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    if !(1..=50).contains(&options.rounds) {
        bail!("--rounds must be from 1 to 50");
    }
    if !(1..=1_000_000).contains(&options.requests) {
        bail!("--requests must be from 1 to 1000000");
    }
    if !(1..=1024).contains(&options.concurrency) {
        bail!("--concurrency must be from 1 to 1024");
    }
    Ok(options)
}

/// A binary of this workspace, built in the same profile as this example.
fn sibling_bin(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("where is this example")?;
    // target/<profile>/examples/overhead -> target/<profile>/<name>
    let dir = me
        .parent()
        .and_then(Path::parent)
        .context("the example is not in a cargo target directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing; build it in the same profile first: cargo build --release --bin lorem-server --bin lorem-client (scripts/overhead.sh does)",
            path.display()
        );
    }
    Ok(path)
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Client CPU time per request, in microseconds.
    cpu_us: f64,
}

fn load(client: &Path, etcd: &str, options: &Options, direct: Option<&str>) -> Result<Run> {
    let mut command = Command::new(client);
    load_command(&mut command, etcd, options, direct);
    let output = command.output().context("run lorem-client load")?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "lorem-client printed no JSON report: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if report["failed"].as_u64() != Some(0) {
        bail!("requests failed: {report}");
    }
    let number = |key: &str| report[key].as_f64().unwrap_or(0.0);
    Ok(Run {
        rps: number("rps"),
        p50_ms: number("p50_ms"),
        p99_ms: number("p99_ms"),
        cpu_us: number("cpu_ms") * 1000.0 / options.requests as f64,
    })
}

/// Instructions the client executes per request, counted by callgrind:
/// repeatable whatever else the machine does. Two runs of `n` and `2n`
/// requests; their difference divided by `n` leaves start-up out.
fn instructions_per_request(
    client: &Path,
    etcd: &str,
    options: &Options,
    direct: Option<&str>,
) -> Result<f64> {
    let n = 2000u64;
    let mut counts = Vec::new();
    for requests in [n, 2 * n] {
        let out = std::env::temp_dir().join(format!(
            "overhead-callgrind-{}-{requests}.out",
            std::process::id()
        ));
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(client);
        let counted = Options {
            requests,
            ..*options
        };
        load_command(&mut command, etcd, &counted, direct);
        let output = command
            .output()
            .context("run valgrind (apt install valgrind)")?;
        let _ = std::fs::remove_file(&out);
        let log = String::from_utf8_lossy(&output.stderr);
        let collected = log
            .lines()
            .find_map(|line| line.split("Collected :").nth(1))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .with_context(|| format!("no instruction count from callgrind: {log}"))?;
        counts.push(collected);
    }
    Ok((counts[1] - counts[0]) / n as f64)
}

/// The `lorem-client load` arguments and environment of one run.
fn load_command(command: &mut Command, etcd: &str, options: &Options, direct: Option<&str>) {
    command
        .env("REGISTRY", "etcd")
        .env("REGISTRY_ADDR", etcd)
        .env("RUST_LOG", "error")
        .env_remove("REGISTRY_CONFIG")
        .args([
            "load",
            "--json",
            "--requests",
            &options.requests.to_string(),
        ])
        .args(["--concurrency", &options.concurrency.to_string()])
        .stdin(Stdio::null());
    if let Some(addrs) = direct {
        command.args(["--direct", addrs]);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = parse_args()?;
    let server_bin = sibling_bin("lorem-server")?;
    let client_bin = sibling_bin("lorem-client")?;
    let etcd = tokio::task::spawn_blocking(EtcdServer::start).await??;
    let etcd_addr = etcd.registry_addr();

    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for id in ["a", "b"] {
        let port = testkit::free_port();
        let child = Command::new(&server_bin)
            .env("REGISTRY", "etcd")
            .env("REGISTRY_ADDR", &etcd_addr)
            .env("RUST_LOG", "error")
            .env_remove("REGISTRY_CONFIG")
            .args(["--listen", &format!("127.0.0.1:{port}"), "--id", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("spawn lorem-server")?;
        servers.push(Kill(child));
        addrs.push(format!("127.0.0.1:{port}"));
    }
    let watcher = registry::connect(&Settings {
        backend: BackendConfig::Etcd(etcd::Config {
            addr: vec![etcd_addr.clone()],
            ..etcd::Config::default()
        }),
        ..Settings::default()
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while watcher
        .instances("lorem")
        .await
        .map(|i| i.len())
        .unwrap_or(0)
        < 2
    {
        if Instant::now() > deadline {
            bail!("the two lorem servers did not register within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let direct = addrs.join(",");
    eprintln!(
        "2 lorem-server processes on etcd; {} rounds of {} requests, concurrency {}",
        options.rounds, options.requests, options.concurrency
    );
    // One unmeasured warm-up of each mode.
    let warm_up = Options {
        requests: options.requests.min(2000),
        ..options
    };
    load(&client_bin, &etcd_addr, &warm_up, None)?;
    load(&client_bin, &etcd_addr, &warm_up, Some(&direct))?;
    let mut balanced = Vec::new();
    let mut plain = Vec::new();
    for round in 1..=options.rounds {
        // Each mode goes first in every other round: whichever runs second
        // finds the machine warmer (or busier), and a fixed order biased the
        // ratio by several percent on a shared machine.
        let (b, d) = if round % 2 == 1 {
            let b = load(&client_bin, &etcd_addr, &options, None)?;
            (b, load(&client_bin, &etcd_addr, &options, Some(&direct))?)
        } else {
            let d = load(&client_bin, &etcd_addr, &options, Some(&direct))?;
            (load(&client_bin, &etcd_addr, &options, None)?, d)
        };
        eprintln!(
            "round {round}: balancer {:.0} rps p99 {:.2} ms {:.1} us CPU/req | direct {:.0} rps p99 {:.2} ms {:.1} us CPU/req",
            b.rps, b.p99_ms, b.cpu_us, d.rps, d.p99_ms, d.cpu_us
        );
        balanced.push(b);
        plain.push(d);
    }
    let summary = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.rps).collect()),
            median(runs.iter().map(|r| r.p50_ms).collect()),
            median(runs.iter().map(|r| r.p99_ms).collect()),
            median(runs.iter().map(|r| r.cpu_us).collect()),
        )
    };
    let (b_rps, b_p50, b_p99, b_cpu) = summary(&balanced);
    let (d_rps, d_p50, d_p99, d_cpu) = summary(&plain);
    // Per-round ratios: each pair ran back to back, so machine drift
    // between rounds cancels out.
    let rps_ratio = median(
        balanced
            .iter()
            .zip(&plain)
            .map(|(b, d)| b.rps / d.rps)
            .collect(),
    );
    let cpu_ratio = median(
        balanced
            .iter()
            .zip(&plain)
            .map(|(b, d)| b.cpu_us / d.cpu_us)
            .collect(),
    );
    println!(
        "lorem-client load, {} requests x {} rounds, concurrency {}, 2 lorem-server processes (medians)",
        options.requests, options.rounds, options.concurrency
    );
    println!("mode                       rps    p50 ms   p99 ms   client CPU us/request");
    println!("through the balancer {b_rps:>9.0} {b_p50:>9.2} {b_p99:>8.2} {b_cpu:>12.1}");
    println!("direct (no discovery){d_rps:>9.0} {d_p50:>9.2} {d_p99:>8.2} {d_cpu:>12.1}");
    println!(
        "throughput ratio balancer/direct (median of rounds): {rps_ratio:.3} ({:+.1}% overhead)",
        (1.0 - rps_ratio) * 100.0
    );
    println!(
        "client CPU per request ratio balancer/direct (median of rounds): {cpu_ratio:.3} ({:+.1}%)",
        (cpu_ratio - 1.0) * 100.0
    );
    if options.instructions {
        if Command::new("valgrind").arg("--version").output().is_ok() {
            eprintln!(
                "counting instructions per request under callgrind (4 runs of 2000-4000 requests)..."
            );
            let b = instructions_per_request(&client_bin, &etcd_addr, &options, None)?;
            let d = instructions_per_request(&client_bin, &etcd_addr, &options, Some(&direct))?;
            println!(
                "client instructions per request (callgrind): balancer {b:.0}, direct {d:.0}: ratio {:.3} ({:+.1}%)",
                b / d,
                (b / d - 1.0) * 100.0
            );
        } else {
            println!("(valgrind not found: no instruction counts; apt install valgrind)");
        }
    }
    drop(servers);
    drop(etcd);
    Ok(())
}
