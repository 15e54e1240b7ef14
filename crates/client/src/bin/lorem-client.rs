//! `lorem-client`: calls the lorem service through discovery.
//!
//! The registry comes from the environment (`REGISTRY`, `REGISTRY_ADDR`...,
//! see `registry::Settings`; a secured registry: `REGISTRY_CA`,
//! `REGISTRY_CERT`, `REGISTRY_KEY`, `REGISTRY_USER`, `REGISTRY_PASSWORD`,
//! `REGISTRY_TOKEN`..., docs/secured-registries.md); logs go to stderr,
//! filtered by `RUST_LOG`.
//!
//! With `--json` anywhere on the command line, stdout gets exactly one JSON
//! load report whatever happens (bad arguments and unusable settings
//! included: an all-failed report with an `error` key), and the exit status
//! is 0 or 1. Only `--help` and `--version` print their usual text.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use client::app::{self, AppOptions};
use client::load::{self, LoadOptions};
use client::{
    BalancerOptions, ClientOptions, EjectionOptions, Kind, LoremRequest, Selector, Strategy,
    ZonePreference,
};

/// Calls the lorem service through service discovery.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The service to discover.
    #[arg(long, global = true, default_value = "lorem", env = "LOREM_SERVICE")]
    service: String,
    /// How long a request waits for an instance while none is registered:
    /// the cold-start timeout (at most 24h).
    #[arg(long, global = true, default_value = "10s", env = "LB_WAIT_TIMEOUT",
        value_parser = client::parse_timeout)]
    wait_timeout: Duration,
    /// How long the last known instances are used while the registry is
    /// unreachable; after that they are dropped (at most 24h).
    #[arg(long, global = true, default_value = "5m", env = "LB_MAX_STALENESS",
        value_parser = client::parse_timeout)]
    max_staleness: Duration,
    /// Tries per request, the first included; a retry always goes to an
    /// instance the request has not tried.
    #[arg(long, global = true, default_value_t = client::DEFAULT_ATTEMPTS, env = "LB_ATTEMPTS")]
    attempts: u32,
    /// Deadline of one try (at most 24h).
    #[arg(long, global = true, default_value = "2s", env = "LB_TRY_TIMEOUT",
        value_parser = client::parse_timeout)]
    try_timeout: Duration,
    /// Retries (other than after a refused connection) may add at most this
    /// percentage of the requests, over 10 s (0 to 1000).
    #[arg(long, global = true, default_value_t = client::DEFAULT_RETRY_PERCENT,
        env = "LB_RETRY_BUDGET")]
    retry_budget: u32,
    /// Retries per second allowed on top of the budget's percentage.
    #[arg(long, global = true, default_value_t = client::DEFAULT_MIN_RETRIES_PER_SEC,
        env = "LB_MIN_RETRIES_PER_SEC")]
    min_retries_per_sec: u32,
    /// Consecutive failures that eject an instance (0: never eject).
    #[arg(long, global = true, default_value_t = client::DEFAULT_EJECT_AFTER,
        env = "LB_EJECT_AFTER")]
    eject_after: u32,
    /// How long a first ejection lasts; it doubles on each repeat.
    #[arg(long, global = true, default_value = "1s", env = "LB_EJECT_FOR",
        value_parser = client::parse_timeout)]
    eject_for: Duration,
    /// The longest an ejection lasts.
    #[arg(long, global = true, default_value = "30s", env = "LB_EJECT_MAX",
        value_parser = client::parse_timeout)]
    eject_max: Duration,
    /// How instances are chosen: round_robin, random, weighted or p2c.
    #[arg(
        long,
        global = true,
        default_value = "round_robin",
        env = "LB_STRATEGY"
    )]
    strategy: Strategy,
    /// Seed of the random and p2c strategies (default: from the system).
    #[arg(long, global = true, env = "LB_SEED")]
    seed: Option<u64>,
    /// Use only instances carrying all these tags, comma-separated (like
    /// go-kit's `tags="[lorem ru-rocker]"`).
    #[arg(long, global = true, env = "LB_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// Use only instances with all these metadata pairs, comma-separated
    /// key=value (`version=v2`).
    #[arg(long, global = true, env = "LB_METADATA", value_delimiter = ',',
        value_parser = client::parse_key_value)]
    metadata: Vec<(String, String)>,
    /// Prefer instances whose metadata `zone` is this one, while at least
    /// --zone-min-healthy percent of them (and at least one) are healthy.
    #[arg(long, global = true, env = "LB_ZONE")]
    zone: Option<String>,
    /// The share of the local zone's instances, in percent, that must be
    /// healthy for the zone preference to hold.
    #[arg(long, global = true, env = "LB_ZONE_MIN_HEALTHY",
        default_value_t = balancer::select::DEFAULT_ZONE_MIN_HEALTHY_PERCENT)]
    zone_min_healthy: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One request every interval, logging each answer (like go-kit's client).
    Loop {
        /// Time between two requests (at most 24h).
        #[arg(long, default_value = "1s", value_parser = client::parse_timeout)]
        interval: Duration,
        /// Stop after this many requests (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// An HTTP gateway: POST /sd-lorem, GET /instances, GET /metrics, GET /health,
    /// and the live page of its instances and traffic at GET /.
    Gateway {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "GATEWAY_LISTEN")]
        listen: SocketAddr,
        /// How long a client may take to send a whole request head; slower
        /// (or silent) connections are closed.
        #[arg(long, default_value = "10s", env = "GATEWAY_HEADER_READ_TIMEOUT",
            value_parser = registry::lifecycle::http::parse_timeout)]
        header_read_timeout: Duration,
        /// How long a keep-alive connection may stay idle between requests.
        #[arg(long, default_value = "60s", env = "GATEWAY_IDLE_TIMEOUT",
            value_parser = registry::lifecycle::http::parse_timeout)]
        idle_timeout: Duration,
        /// The most connections open at once; at the limit the oldest idle
        /// or header-pending one is closed for each new one [default: 3/4 of
        /// the open-file limit, 768 under ulimit -n 1024, at most 10000].
        #[arg(long, env = "GATEWAY_MAX_CONNECTIONS",
            value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: Option<u32>,
        /// The largest request body in bytes; a larger declared
        /// Content-Length is refused with 413 before the body is read.
        #[arg(long, env = "GATEWAY_MAX_BODY_SIZE",
            default_value_t = registry::lifecycle::http::DEFAULT_MAX_BODY_BYTES,
            value_parser = clap::value_parser!(u64).range(1..))]
        max_body_size: u64,
    },
    /// Bounded load through the balancer, with a latency and spread report
    /// (Ctrl-C or SIGTERM stops it early and still prints the report).
    Load {
        /// Stop after this many requests.
        #[arg(long, required_unless_present = "duration")]
        requests: Option<u64>,
        /// Stop after this long (at most 10 minutes).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Requests in flight at most at once.
        #[arg(long, default_value_t = load::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Requests started per second, all together (default: back to
        /// back).
        #[arg(long)]
        rate: Option<u32>,
        /// Print one JSON object on stdout instead of the text report.
        #[arg(long)]
        json: bool,
        /// Send straight to these comma-separated host:port addresses, in
        /// turn, with no discovery, balancing or retries: the baseline of
        /// the overhead benchmark.
        #[arg(long, value_delimiter = ',')]
        direct: Vec<String>,
        #[command(flatten)]
        request: RequestArgs,
    },
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// What to generate: word, sentence or paragraph.
    #[arg(long, default_value = "sentence", value_parser = client::parse_kind)]
    kind: Kind,
    /// Smallest length.
    #[arg(long, default_value_t = 5)]
    min: u32,
    /// Largest length.
    #[arg(long, default_value_t = 20)]
    max: u32,
}

impl RequestArgs {
    fn request(&self) -> LoremRequest {
        LoremRequest::new(self.kind, self.min, self.max)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init("info");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let options = cli.options();
    let outcome = match cli.command {
        Command::Load {
            requests,
            duration,
            concurrency,
            rate,
            json,
            direct,
            request,
        } => {
            let load = LoadOptions {
                requests,
                duration,
                concurrency,
                rate,
                request: request.request(),
            };
            return app::run_load(&options, &load, &direct, json).await;
        }
        Command::Loop {
            interval,
            count,
            request,
        } => app::run_loop(&options, interval, count, request.request()).await,
        Command::Gateway {
            listen,
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_body_size,
        } => {
            let mut limits = registry::lifecycle::HttpLimits::default();
            limits.header_read_timeout = header_read_timeout;
            limits.idle_timeout = idle_timeout;
            if let Some(max) = max_connections {
                limits.max_connections = max as usize;
            }
            limits.max_body_bytes = max_body_size;
            app::run_gateway(&options, listen, limits).await
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("lorem-client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `lorem-client` does with arguments clap refuses: with `--json` on
/// the command line, the one JSON report a script expects (all failed, with
/// the reason) and exit 1; otherwise clap's own message and status.
fn usage_error(error: &clap::Error) -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let wants_help = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    let rendered = error.render().to_string();
    match app::usage_error_json(&args, &rendered) {
        Some(report) if !wants_help => {
            eprint!("{rendered}");
            println!("{report}");
            ExitCode::FAILURE
        }
        _ => error.exit(),
    }
}

impl Cli {
    fn options(&self) -> AppOptions {
        AppOptions {
            service: self.service.clone(),
            balancer: BalancerOptions {
                strategy: self.strategy,
                wait_timeout: self.wait_timeout,
                max_staleness: self.max_staleness,
                ejection: EjectionOptions {
                    consecutive_failures: self.eject_after,
                    base: self.eject_for,
                    max: self.eject_max,
                },
                seed: self.seed,
                selector: Selector {
                    tags: self
                        .tags
                        .iter()
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .collect(),
                    metadata: self.metadata.iter().cloned().collect(),
                },
                zone: self
                    .zone
                    .as_deref()
                    .map(str::trim)
                    .filter(|zone| !zone.is_empty())
                    .map(|zone| ZonePreference {
                        zone: zone.to_owned(),
                        min_healthy_percent: self.zone_min_healthy,
                    }),
            },
            client: ClientOptions {
                attempts: self.attempts,
                try_timeout: self.try_timeout,
                retry_percent: self.retry_budget,
                min_retries_per_sec: self.min_retries_per_sec,
                // LoremClient turns it on: lorem servers register for it.
                identity_check: true,
            },
        }
    }
}
