//! What `lorem-client` runs once its arguments are parsed, so that tests can
//! call it: [`connect`] builds the client from [`AppOptions`], [`run_loop`],
//! [`run_gateway`] and [`run_load`] are its three commands, and
//! [`usage_error_json`] is the one JSON report `--json` promises even for
//! arguments clap refuses.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::load::{self, LoadOptions, LoadReport};
use crate::repeat::{self, RepeatOptions};
use crate::{
    Balancer, BalancerOptions, ClientMetrics, ClientOptions, DirectClient, LoremClient,
    LoremRequest, gateway,
};

/// Everything [`connect`] needs, from `lorem-client`'s flags and
/// environment variables.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// The service to discover (`--service`, `LOREM_SERVICE`).
    pub service: String,
    /// How the balancer picks, waits and ejects (`--strategy`,
    /// `--wait-timeout`, `--eject-after`, `--tags`, `--zone`...).
    pub balancer: BalancerOptions,
    /// Tries, their deadline and the retry budget (`--attempts`,
    /// `--try-timeout`, `--retry-budget`...).
    pub client: ClientOptions,
}

/// Connects to the registry of the environment (`REGISTRY`...) and builds
/// the lorem client with `options`, logging `client ready`.
///
/// # Errors
///
/// A service name no registry could list, unusable registry settings, a
/// registry that cannot be reached or options the balancer refuses.
pub async fn connect(options: &AppOptions) -> anyhow::Result<LoremClient> {
    // A bad name is refused before anything connects: no registry could list
    // an instance of it, so every request would wait in vain.
    registry::validate_name("service", &options.service)
        .map_err(|error| match error {
            registry::Error::InvalidInstance(message) => anyhow::anyhow!(message),
            other => anyhow::Error::from(other),
        })
        .context("--service (or LOREM_SERVICE) is not a usable service name")?;
    let settings = registry::Settings::from_env().context("reading the registry settings")?;
    if matches!(settings.backend, registry::BackendConfig::Memory(_)) {
        tracing::warn!(
            "REGISTRY is memory (the default): only instances registered in this same process \
             are visible; set REGISTRY=consul|etcd|zookeeper to discover lorem-server processes"
        );
    }
    let registry = registry::connect(&settings)
        .await
        .with_context(|| format!("connecting to the {} registry", settings.backend.name()))?;
    let balancer = Balancer::with_metrics(
        registry,
        &options.service,
        options.balancer.clone(),
        &ClientMetrics::new(),
    )?;
    let b = &options.balancer;
    let c = &options.client;
    tracing::info!(service = %options.service, strategy = %b.strategy, attempts = c.attempts,
        retry_budget_percent = c.retry_percent,
        eject_after = b.ejection.consecutive_failures,
        tags = %b.selector.tags.join(","),
        zone = b.zone.as_ref().map_or("", |zone| zone.zone.as_str()),
        "client ready");
    Ok(LoremClient::new(balancer, c.clone())?)
}

/// `lorem-client loop`: one request every `interval`, `count` times or
/// until SIGINT/SIGTERM; fails if any request failed.
///
/// # Errors
///
/// As [`connect`].
pub async fn run_loop(
    options: &AppOptions,
    interval: Duration,
    count: Option<u64>,
    request: LoremRequest,
) -> anyhow::Result<ExitCode> {
    let client = connect(options).await?;
    let options = RepeatOptions {
        interval,
        count,
        request,
    };
    tokio::select! {
        summary = repeat::run(&client, &options) => {
            tracing::info!(ok = summary.ok, failed = summary.failed, "done");
            Ok(if summary.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        () = shutdown_signal() => {
            tracing::info!("interrupted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lorem-client gateway`: serves the gateway on `listen`, its connections
/// held to `limits`, until SIGINT/SIGTERM.
///
/// # Errors
///
/// As [`connect`], an address it cannot listen on, or a failed server.
pub async fn run_gateway(
    options: &AppOptions,
    listen: SocketAddr,
    limits: registry::lifecycle::HttpLimits,
) -> anyhow::Result<ExitCode> {
    let client = connect(options).await?;
    let listener = registry::lifecycle::http::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    gateway::serve_with(listener, client, limits, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `lorem-client load`: the load run, through discovery or, with `direct`
/// addresses, straight to them; prints the report (JSON with `json`) on
/// stdout whatever happens and exits 0 only if no request failed.
pub async fn run_load(
    options: &AppOptions,
    load: &LoadOptions,
    direct: &[String],
    json: bool,
) -> ExitCode {
    let report = if direct.is_empty() {
        match connect(options).await {
            // Ctrl-C or SIGTERM ends the run early, with its report.
            Ok(client) => load::run_until(&client, load, shutdown_signal())
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(error),
        }
    } else {
        match DirectClient::new(direct.to_vec(), options.client.try_timeout) {
            Ok(client) => load::run_direct(&client, load)
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(anyhow::Error::from(error).context("--direct")),
        }
    };
    let report = report.unwrap_or_else(|error| {
        tracing::error!("{error:#}");
        // Nothing could be sent: every request counts as failed (at least
        // one, so that the exit status says so).
        LoadReport::all_failed(load.requests.unwrap_or(1), &format!("{error:#}"))
    });
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    // A run that went wrong itself (a request panicked) fails even if its
    // counts somehow look clean.
    if report.failed == 0 && report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The JSON report for arguments clap refused (`rendered`: its message),
/// when `--json` is among the raw `args`: all failed, with clap's message
/// on one line as the reason. `None` without `--json`.
pub fn usage_error_json(args: &[String], rendered: &str) -> Option<String> {
    if !wants_json(args) {
        return None;
    }
    // clap's message without its usage and help hints, on one line.
    let message = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = match message.strip_prefix("error: ") {
        Some(rest) => rest.to_owned(),
        None if message.is_empty() => "invalid arguments".to_owned(),
        None => message,
    };
    let failed = requests_arg(args).unwrap_or(1).max(1);
    Some(LoadReport::all_failed(failed, &message).to_json())
}

/// True when `--json` is among the raw arguments (before any `--`).
pub fn wants_json(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--json" || arg.starts_with("--json="))
}

/// The value of `--requests`, if one is given and is a number.
pub fn requests_arg(args: &[String]) -> Option<u64> {
    let mut args = args.iter().take_while(|arg| *arg != "--");
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            return args.next().and_then(|value| value.parse().ok());
        }
        if let Some(value) = arg.strip_prefix("--requests=") {
            return value.parse().ok();
        }
    }
    None
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM: the workspace's one signal
/// helper, [`registry::lifecycle::shutdown_signal`], with the signal logged
/// at info as the gateway and load always did.
pub async fn shutdown_signal() {
    let mut signals = match registry::lifecycle::Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot listen for shutdown signals");
            return std::future::pending().await;
        }
    };
    let signal = signals.next().await;
    tracing::info!(signal, "{signal} received; shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn json_and_requests_are_found_before_the_separator_only() {
        assert!(wants_json(&args("load --json --requests 5")));
        assert!(!wants_json(&args("load -- --json")));
        assert_eq!(requests_arg(&args("load --requests 7 --json")), Some(7));
        assert_eq!(requests_arg(&args("load --requests=8")), Some(8));
        assert_eq!(requests_arg(&args("load --requests x")), None);
    }

    #[test]
    fn a_usage_error_becomes_one_report_only_with_json() {
        let rendered = "error: unexpected argument '--bogus' found\n\nUsage: lorem-client load\n";
        assert_eq!(usage_error_json(&args("load --bogus"), rendered), None);
        let json = usage_error_json(&args("load --bogus --json --requests 3"), rendered)
            .expect("a report with --json");
        assert!(
            json.contains("unexpected argument '--bogus' found"),
            "{json}"
        );
    }
}
