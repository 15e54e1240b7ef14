//! `lorem-server`: the lorem-ipsum HTTP service, registered in the registry
//! chosen by `REGISTRY` (see `registry::Settings`).
//!
//! ```text
//! lorem-server [--listen 127.0.0.1:8080] [--advertise host:port] [--service lorem]
//!              [--tags a,b] [--metadata k=v,k2=v2] [--weight 1] [--id ID]
//!              [--drain-delay 2s] [--shutdown-timeout 10s]
//!              [--header-read-timeout 10s] [--idle-timeout 60s]
//!              [--max-connections N] [--max-body-size 1048576]
//! lorem-server healthcheck [--url http://127.0.0.1:8080/ready] [--timeout 2s]
//! ```
//!
//! SIGTERM or SIGINT shut it down gracefully (deregister, drain, finish
//! in-flight requests) and it exits 0 (non-zero if the HTTP server or the
//! registration task had died); a second one during the drain ends
//! the drain at once. The handlers are installed before anything else
//! starts, so a signal during start-up is a clean shutdown too.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lorem::server::{ServerOptions, start};
use registry::lifecycle::{ConnectOnDemand, Signals};

/// The lorem-ipsum service, registered in a service registry.
///
/// The registry is configured by REGISTRY (memory, consul, etcd, zookeeper),
/// REGISTRY_ADDR, REGISTRY_TTL, REGISTRY_TIMEOUT, REGISTRY_PREFIX and
/// REGISTRY_CONFIG; a secured registry by REGISTRY_CA, REGISTRY_CERT,
/// REGISTRY_KEY, REGISTRY_USER, REGISTRY_PASSWORD(_FILE), REGISTRY_TOKEN(_FILE)
/// (and Consul's CONSUL_* variables): docs/secured-registries.md;
/// REGISTRY_PAYLOAD, REGISTRY_KRATOS, REGISTRY_KRATOS_SCHEME and
/// REGISTRY_LAYOUT shape its record for Spring, Kratos and go-kit readers
/// (docs/interop.md). Logs go to stderr, filtered by RUST_LOG (default info).
#[derive(Debug, Parser)]
#[command(name = "lorem-server", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "LOREM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// host:port clients should use, if not the listen address (required
    /// when listening on 0.0.0.0 or ::).
    #[arg(long, env = "LOREM_ADVERTISE")]
    advertise: Option<String>,

    /// Service name to register under.
    #[arg(long, env = "LOREM_SERVICE", default_value = "lorem")]
    service: String,

    /// Tags to register, comma-separated.
    #[arg(long, env = "LOREM_TAGS", value_delimiter = ',')]
    tags: Vec<String>,

    /// Metadata to register, comma-separated key=value pairs (version=v2,zone=eu).
    #[arg(long, env = "LOREM_METADATA", value_delimiter = ',', value_parser = parse_pair)]
    metadata: Vec<(String, String)>,

    /// Relative share of traffic for clients balancing by weight (at least 1).
    #[arg(long, env = "LOREM_WEIGHT", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..))]
    weight: u32,

    /// Instance id [default: HOSTNAME-PID-RANDOM].
    #[arg(long, env = "LOREM_ID")]
    id: Option<String>,

    /// How long to keep serving after deregistering.
    #[arg(long, env = "LOREM_DRAIN_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,

    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "LOREM_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,

    /// How long a client may take to send a whole request head; slower
    /// (or silent) connections are closed.
    #[arg(long, env = "LOREM_HEADER_READ_TIMEOUT", default_value = "10s",
        value_parser = registry::lifecycle::http::parse_timeout)]
    header_read_timeout: Duration,

    /// How long a keep-alive connection may stay idle between requests.
    #[arg(long, env = "LOREM_IDLE_TIMEOUT", default_value = "60s",
        value_parser = registry::lifecycle::http::parse_timeout)]
    idle_timeout: Duration,

    /// The most connections open at once; at the limit the oldest idle or
    /// header-pending one is closed for each new one [default: 3/4 of the
    /// open-file limit, 768 under ulimit -n 1024, at most 10000].
    #[arg(long, env = "LOREM_MAX_CONNECTIONS",
        value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,

    /// The largest request body in bytes; a larger declared Content-Length
    /// is refused with 413 before the body is read.
    #[arg(long, env = "LOREM_MAX_BODY_SIZE", default_value_t = registry::lifecycle::http::DEFAULT_MAX_BODY_BYTES,
        value_parser = clap::value_parser!(u64).range(1..))]
    max_body_size: u64,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe /ready (registered in the registry); exit 0 if the answer is
    /// {"status":true}, else 1. --url .../health checks only that it serves.
    Healthcheck {
        /// URL to probe [default: http://LISTEN/ready, loopback if LISTEN is 0.0.0.0 or ::].
        /// The gateway's /health answers the same way.
        #[arg(long, env = "LOREM_HEALTHCHECK_URL")]
        url: Option<String>,

        /// How long to wait for the answer.
        #[arg(long, env = "LOREM_HEALTHCHECK_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init("info");

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Some(Command::Healthcheck { url, timeout }) => {
            let url = url
                .clone()
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| lorem::health::ready_url(cli.listen));
            return runtime.block_on(healthcheck(&url, *timeout));
        }
        None => runtime.block_on(serve(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    // First of all, so that a signal during start-up is a clean shutdown
    // rather than the default action (death by signal).
    let mut signals = Signals::install()?;
    tracing::debug!("signal handlers installed");

    let settings = registry::Settings::from_env().context("bad registry settings")?;
    tracing::info!(backend = settings.backend.name(), ttl = ?settings.ttl, "registry settings");
    if matches!(settings.backend, registry::BackendConfig::Memory(_)) {
        tracing::warn!(
            "REGISTRY is memory (the default): this registration is visible only inside this process; set REGISTRY=consul|etcd|zookeeper so clients can discover it"
        );
    }
    let id = cli.id.unwrap_or_else(lorem::server::default_id);
    let mut options = ServerOptions::new(id);
    options.listen = cli.listen;
    options.advertise = cli.advertise.filter(|a| !a.trim().is_empty());
    options.service = cli.service;
    options.tags = cli
        .tags
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    options.metadata = cli.metadata.into_iter().collect();
    options.weight = cli.weight;
    options.drain_delay = cli.drain_delay;
    options.shutdown_timeout = cli.shutdown_timeout;
    options.http.header_read_timeout = cli.header_read_timeout;
    options.http.idle_timeout = cli.idle_timeout;
    if let Some(max) = cli.max_connections {
        options.http.max_connections = max as usize;
    }
    options.http.max_body_bytes = cli.max_body_size;
    tracing::info!(header_read_timeout = ?options.http.header_read_timeout,
        idle_timeout = ?options.http.idle_timeout,
        max_connections = options.http.max_connections,
        max_body_bytes = options.http.max_body_bytes, "connection limits");

    let server = start(options, ConnectOnDemand::new(settings)).await?;
    let signal = signals.next().await;
    tracing::info!(signal, "shutting down");
    server
        .shutdown_with(async move {
            let signal = signals.next().await;
            tracing::info!(signal, "second signal: ending the drain now");
        })
        .await?;
    Ok(())
}

/// A `key=value` pair of `--metadata`.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not a key=value pair; write it like version=v2"
        )),
    }
}

async fn healthcheck(url: &str, timeout: Duration) -> ExitCode {
    match lorem::health::probe(url, timeout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("unhealthy: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}
