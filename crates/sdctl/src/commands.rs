//! The `sdctl` commands behind its argument parsing, one function each, so
//! that tests can call them: [`ls`], [`watch`], [`register`],
//! [`deregister`], [`ui`](ui()) and [`bench`](bench()). Each reads the registry settings from the
//! environment ([`settings`]) and writes its results to `stdout`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use registry::{BackendConfig, Settings};

use crate::bench::BenchOptions;
use crate::register::InstanceSpec;
use crate::watch::WatchOptions;
use crate::{Error, Result};

/// The settings of the environment (`REGISTRY`...), with the
/// [`MEMORY_WARNING`](crate::MEMORY_WARNING) on stderr when they select the
/// memory registry.
///
/// # Errors
///
/// Settings [`Settings::from_env`] refuses.
pub fn settings() -> Result<Settings> {
    let settings = Settings::from_env()?;
    if matches!(settings.backend, BackendConfig::Memory(_)) {
        eprintln!("sdctl: warning: {}", crate::MEMORY_WARNING);
    }
    Ok(settings)
}

/// `sdctl bench-floor-watch SERVICE` (hidden): the bench's bare client
/// watch, see [`crate::bench::floor`].
///
/// # Errors
///
/// Unusable settings, a backend other than etcd or ZooKeeper, an
/// unreachable registry, or stdout closed.
pub async fn bench_floor_watch(service: &str, stdout: &mut (dyn Write + Send)) -> Result<()> {
    crate::bench::floor::run(&settings()?, service, stdout).await
}

/// `sdctl ls [SERVICE] [--json]`.
///
/// # Errors
///
/// Unusable settings, an unreachable registry, a service without
/// instances, or stdout closed.
pub async fn ls(
    service: Option<String>,
    json: bool,
    stdout: &mut (dyn Write + Send),
) -> Result<()> {
    let settings = settings()?;
    let registry = registry::connect(&settings).await?;
    let text = match service {
        Some(service) => {
            let instances =
                crate::ls::instances(&*registry, &crate::describe(&settings), &service).await?;
            if json {
                crate::ls::instances_json(&instances) + "\n"
            } else {
                crate::ls::instances_table(&instances)
            }
        }
        None => {
            let services = crate::ls::services(&*registry).await?;
            if json {
                crate::ls::services_json(&services) + "\n"
            } else {
                crate::ls::services_table(&services)
            }
        }
    };
    write(stdout, &text)
}

/// `sdctl watch SERVICE [--json] [--count N]`, until SIGINT/SIGTERM or
/// `count` change lines.
///
/// # Errors
///
/// Unusable settings, an unreachable registry, a watch that fails, or
/// stdout closed.
pub async fn watch(
    service: &str,
    json: bool,
    count: Option<u64>,
    stdout: &mut (dyn Write + Send),
) -> Result<()> {
    let settings = settings()?;
    let registry = registry::connect(&settings).await?;
    let options = WatchOptions {
        json,
        count,
        timeout: settings.timeout,
    };
    let shutdown = registry::lifecycle::shutdown_signal();
    crate::watch::run(
        &*registry,
        settings.backend.name(),
        service,
        &options,
        stdout,
        &mut std::io::stderr(),
        shutdown,
    )
    .await
}

/// `sdctl register SERVICE ID ADDR ...`: holds the registration until
/// SIGINT/SIGTERM, then deregisters it.
///
/// # Errors
///
/// An invalid instance, unusable settings, an unreachable registry, a
/// failed registration, or stdout closed.
pub async fn register(spec: InstanceSpec, stdout: &mut (dyn Write + Send)) -> Result<()> {
    let instance = spec.to_instance()?;
    let settings = settings()?;
    // Listen before registering: a signal during the registration
    // still ends in a deregistration.
    let shutdown = registry::lifecycle::shutdown_signal();
    let registry = registry::connect(&settings).await?;
    crate::register::hold(&*registry, instance, stdout, shutdown).await
}

/// `sdctl deregister SERVICE ID`.
///
/// # Errors
///
/// Unusable settings, an unreachable registry, an unknown instance, or
/// stdout closed.
pub async fn deregister(service: &str, id: &str, stdout: &mut (dyn Write + Send)) -> Result<()> {
    let settings = settings()?;
    let registry = registry::connect(&settings).await?;
    crate::register::deregister(&*registry, &crate::describe(&settings), service, id, stdout).await
}

/// `sdctl ui --listen ADDR`: serves the live page of every service of the
/// registry (crate `ui`) on `listen` until SIGINT/SIGTERM. Prints `serving
/// the page of REGISTRY at http://ADDR/` once listening. The page reads one
/// watch per service, whatever the number of viewers.
///
/// # Errors
///
/// Unusable settings, an unreachable registry, an address it cannot listen
/// on, or stdout closed.
pub async fn ui(listen: std::net::SocketAddr, stdout: &mut (dyn Write + Send)) -> Result<()> {
    let settings = settings()?;
    if !listen.ip().is_loopback() {
        eprintln!(
            "sdctl: warning: serving the page on {listen}, beyond this machine: anyone who can \
             reach it sees every service, address and metadata value of the registry"
        );
    }
    let shutdown = registry::lifecycle::shutdown_signal();
    let registry = registry::connect(&settings).await?;
    // Fail now, with the registry's own words, rather than on the page.
    registry.services().await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: listen,
        source,
    })?;
    let described = crate::describe(&settings);
    let (page, closer) = ui::registry_page(registry, format!("services in {described}"));
    write(
        stdout,
        &format!("serving the page of {described} at http://{addr}/\n"),
    )?;
    // The same accept loop as lorem-server and the gateway: header-read and
    // idle timeouts (the event streams exempt), a connection cap, JSON errors.
    let server = registry::lifecycle::HttpServer::spawn(
        listener,
        page,
        registry::lifecycle::HttpLimits::default(),
    )
    .map_err(|source| Error::Listen { addr, source })?;
    shutdown.await;
    closer.close();
    server
        .shutdown(registry::lifecycle::DEFAULT_SHUTDOWN_TIMEOUT)
        .await
        .map_err(|e| Error::Listen {
            addr,
            source: std::io::Error::other(e),
        })
}

/// `sdctl bench`: runs `options`, prints the table, writes the JSON to
/// `out` and the chart to `svg` if given; exits 1 (after naming them on
/// stderr) if some backend did not finish.
///
/// # Errors
///
/// Options out of range, a bench that cannot start, or a file or stdout
/// that cannot be written.
pub async fn bench(
    options: &BenchOptions,
    out: Option<&Path>,
    svg: Option<&Path>,
    stdout: &mut (dyn Write + Send),
) -> Result<ExitCode> {
    options.check()?;
    let sdctl = std::env::current_exe()
        .map_err(|e| Error::io("the path of sdctl itself (for its child processes)", e))?;
    let report = crate::bench::run(options, &sdctl).await?;
    write(stdout, &report.table())?;
    if let Some(path) = out {
        std::fs::write(path, report.to_json() + "\n")
            .map_err(|e| Error::io(path.display().to_string(), e))?;
    }
    if let Some(path) = svg {
        std::fs::write(path, crate::bench::svg(&report)?)
            .map_err(|e| Error::io(path.display().to_string(), e))?;
    }
    if report.complete() {
        Ok(ExitCode::SUCCESS)
    } else {
        for row in report.backends.iter().filter(|r| r.error.is_some()) {
            eprintln!(
                "sdctl: bench {}: {}",
                row.backend,
                row.error.as_deref().unwrap_or_default()
            );
        }
        Ok(ExitCode::FAILURE)
    }
}

fn write(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("stdout", e))
}
