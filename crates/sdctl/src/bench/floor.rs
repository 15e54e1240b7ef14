//! The floor of the scale rows' CPU column: a bare client watch, the least
//! any watcher process built on the same client libraries does per change.
//!
//! `sdctl bench-floor-watch SERVICE` (hidden; the scale rows start it
//! beside `sdctl watch`, with the same settings and the same one-thread
//! runtime) follows `<prefix>/<service>/` with no registry code at all:
//!
//! - etcd: one etcd-client prefix watch; each event is printed as
//!   `put KEY` or `delete KEY` (the value arrives with the event);
//! - ZooKeeper: one zookeeper-client persistent recursive watch; a created
//!   or changed node's data is read (`get_data`, one round trip: a watcher
//!   cannot learn an address without it), then `created PATH` / `deleted
//!   PATH` is printed.
//!
//! No decoding, no set, no diff: what is left is the gRPC / jute client,
//! the Tokio runtime, the socket reads and one line written per event.
//! `sdctl watch` minus this is what the registry's watch costs per change.
//! Consul has no floor here (its watch is a blocking query answering with
//! the whole list, which is what the registry does already).

use std::io::Write;

use registry::{BackendConfig, Settings};

use crate::error::{Error, Result};

/// Follows `service` on the registry of `settings` with a bare client
/// watch, printing `synced` once it is in place and one line per event,
/// until the process is killed.
pub async fn run(settings: &Settings, service: &str, out: &mut (dyn Write + Send)) -> Result<()> {
    registry::validate_name("service", service)?;
    match &settings.backend {
        BackendConfig::Etcd(config) => {
            let prefix = format!("{}/{service}/", config.prefix);
            etcd(&config.addr, &prefix, out)
                .await
                .map_err(|e| unavailable("etcd", config.addr.join(","), e))
        }
        BackendConfig::Zookeeper(config) => {
            let path = format!("{}/{service}", config.prefix);
            let addr = config.addr.join(",");
            zookeeper(&addr, &path, out)
                .await
                .map_err(|e| unavailable("zookeeper", addr, e))
        }
        other => Err(Error::InvalidArgument(format!(
            "bench-floor-watch follows etcd or ZooKeeper, not {}",
            other.name()
        ))),
    }
}

/// Why the bare watch stopped: the client's own error, with what it was
/// doing.
enum Failed {
    Client(String),
    Output(Error),
}

fn failed(what: &str, error: impl std::fmt::Display) -> Failed {
    Failed::Client(format!("bench-floor-watch: {what}: {error}"))
}

/// A client failure is the registry's (unreachable, session ended); a
/// closed stdout stays an output error.
fn unavailable(backend: &'static str, addr: String, failed: Failed) -> Error {
    match failed {
        Failed::Client(reason) => {
            Error::Registry(registry::Error::unavailable(backend, addr, reason))
        }
        Failed::Output(error) => error,
    }
}

fn line(out: &mut (dyn Write + Send), text: std::fmt::Arguments<'_>) -> Result<(), Failed> {
    out.write_fmt(text)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(|e| Failed::Output(Error::io("stdout", e)))
}

async fn etcd(addr: &[String], prefix: &str, out: &mut (dyn Write + Send)) -> Result<(), Failed> {
    let mut client = etcd_client::Client::connect(addr, None)
        .await
        .map_err(|e| failed("connect", e))?;
    let mut stream = client
        .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| failed("watch", e))?;
    line(out, format_args!("synced"))?;
    while let Some(response) = stream.message().await.map_err(|e| failed("watch", e))? {
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let what = if kv.version() == 0 { "delete" } else { "put" };
            let key = String::from_utf8_lossy(kv.key());
            line(out, format_args!("{what} {key}"))?;
        }
    }
    Err(failed("watch", "the stream ended"))
}

async fn zookeeper(addr: &str, path: &str, out: &mut (dyn Write + Send)) -> Result<(), Failed> {
    let client = zookeeper_client::Client::connect(addr)
        .await
        .map_err(|e| failed("connect", e))?;
    let mut watcher = client
        .watch(path, zookeeper_client::AddWatchMode::PersistentRecursive)
        .await
        .map_err(|e| failed("watch", e))?;
    line(out, format_args!("synced"))?;
    loop {
        let event = watcher.changed().await;
        match event.event_type {
            zookeeper_client::EventType::NodeCreated
            | zookeeper_client::EventType::NodeDataChanged => {
                match client.get_data(&event.path).await {
                    Ok((data, _stat)) => {
                        line(out, format_args!("created {} {}", event.path, data.len()))?
                    }
                    // Gone again before the read: nothing to show.
                    Err(zookeeper_client::Error::NoNode) => {}
                    Err(error) => return Err(failed("get_data", error)),
                }
            }
            zookeeper_client::EventType::NodeDeleted => {
                line(out, format_args!("deleted {}", event.path))?
            }
            zookeeper_client::EventType::Session if event.session_state.is_terminated() => {
                return Err(failed("session", "ended"));
            }
            _ => {}
        }
    }
}
