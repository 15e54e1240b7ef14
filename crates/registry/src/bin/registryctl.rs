//! `registryctl`: look at and write to whichever registry `REGISTRY` selects.
//!
//! ```text
//! registryctl services                        services with live instances
//! registryctl list <service>                  live instances, one JSON per line
//! registryctl watch <service> [--count N]     print each snapshot as it changes
//! registryctl register <service> <id> <host:port> [--tag T]... [--meta K=V]... [--weight W]
//!                                             register and hold until SIGINT/SIGTERM
//! ```
//!
//! The settings come from the environment (`REGISTRY`, `REGISTRY_ADDR`, ...),
//! as for every binary of the project. `register` prints `registered <id>`
//! once the registration is in place, which scripts and crash tests wait for.

use std::process::ExitCode;

use futures::StreamExt;
use registry::{Instance, Settings};

const USAGE: &str = "usage:
  registryctl services
  registryctl list <service>
  registryctl watch <service> [--count N]
  registryctl register <service> <id> <host:port> [--tag T]... [--meta K=V]... [--weight W]
settings come from REGISTRY, REGISTRY_ADDR, REGISTRY_TTL, REGISTRY_TIMEOUT, REGISTRY_CONFIG";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("registryctl: {message}");
            ExitCode::FAILURE
        }
    }
}

fn tracing_subscriber_init() {
    // Logs go to stderr so stdout stays machine-readable.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(args: &[String]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or_else(|| USAGE.to_owned())?;
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    let registry = registry::connect(&settings)
        .await
        .map_err(|e| e.to_string())?;
    match (command.as_str(), rest) {
        ("services", []) => {
            for name in registry.services().await.map_err(|e| e.to_string())? {
                println!("{name}");
            }
            Ok(())
        }
        ("list", [service]) => {
            for instance in registry
                .instances(service)
                .await
                .map_err(|e| e.to_string())?
            {
                println!("{}", String::from_utf8_lossy(&instance.to_json()));
            }
            Ok(())
        }
        ("watch", [service, options @ ..]) => {
            let count = match options {
                [] => u64::MAX,
                [flag, n] if flag == "--count" => n
                    .parse()
                    .map_err(|_| format!("--count {n:?} is not a number"))?,
                _ => return Err(USAGE.to_owned()),
            };
            let mut stream = registry.watch(service);
            let mut seen = 0;
            // One listener for the whole loop: a signal that arrives between
            // two snapshots is not lost.
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            while seen < count {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(Ok(instances)) => {
                            seen += 1;
                            let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
                            println!("{service} instances={} [{}]", ids.len(), ids.join(","));
                        }
                        Some(Err(error)) => eprintln!("registryctl: watch error (retrying): {error}"),
                        None => return Err("watch ended".to_owned()),
                    },
                    () = &mut shutdown => return Ok(()),
                }
            }
            Ok(())
        }
        ("register", [service, id, addr, options @ ..]) => {
            let instance = parse_instance(service, id, addr, options)?;
            // Listen before registering, so a signal during registration
            // still leads to a clean deregistration.
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            let registration = registry
                .register(instance)
                .await
                .map_err(|e| e.to_string())?;
            println!("registered {id}");
            shutdown.await;
            registration.deregister().await.map_err(|e| e.to_string())?;
            Ok(())
        }
        _ => Err(USAGE.to_owned()),
    }
}

fn parse_instance(
    service: &str,
    id: &str,
    addr: &str,
    options: &[String],
) -> Result<Instance, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} must be host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} in {addr:?} is not 1-65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut instance = Instance::new(service, id, host, port);
    let mut options = options.iter();
    while let Some(flag) = options.next() {
        let value = options
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tag" => instance.tags.push(value.clone()),
            "--meta" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--meta {value:?} must be KEY=VALUE"))?;
                instance.metadata.insert(k.to_owned(), v.to_owned());
            }
            "--weight" => {
                instance.weight = value
                    .parse()
                    .map_err(|_| format!("--weight {value:?} is not a number"))?;
            }
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    instance.validate().map_err(|e| e.to_string())?;
    Ok(instance)
}

/// Installs the SIGINT/SIGTERM listeners now (not on first poll) and
/// returns a future that completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
