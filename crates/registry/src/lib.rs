//! Service registration and discovery behind one pair of traits, over
//! Consul, etcd, ZooKeeper, or an in-process registry.
//!
//! # Layout
//!
//! - [`Instance`]: the record every backend stores (`model`).
//! - [`Registrar`] puts instances in a registry and keeps them alive through
//!   a [`Registration`] handle; [`Watcher`] reads them and pushes full
//!   snapshots of the live set ([`WatchStream`]) (`traits`).
//! - [`Settings`] and [`connect`]: the backend is chosen at run time from
//!   `REGISTRY` / `REGISTRY_CONFIG` (`settings`); [`Timing`] (TTL and call
//!   deadline, `timing`) and [`Endpoint`] (address parsing, `endpoint`) are
//!   what every backend shares.
//! - One module per backend: [`memory`], [`consul`], [`etcd`], [`zookeeper`],
//!   each opening with a table that maps our operations to the backend's,
//!   and each owning its `Config` and a validating `Builder`. They depend on
//!   the shared pieces, never on `settings` (which depends on them).
//! - `registrar`: the one registration state machine every backend runs on
//!   (keep-alive, re-registration after a loss, undo, the duplicate-id
//!   rule); [`backend`]: what a backend author outside this crate needs.
//! - Shared plumbing: `record` (the stored JSON with the owner token, and
//!   decoding what other tools wrote), `watch_sink` (the sending side of
//!   every watch, which keeps the one error contract), `backoff` (retry
//!   pacing, outages logged once).
//! - [`ServiceDiscover`]: a service's watch as a tower `Discover` stream,
//!   for `tower::balance::p2c` and any tower, hyper or tonic stack
//!   (`tower_discover`).
//! - [`lifecycle`]: the life of a server in the registry (register once
//!   listening, retry while the registry is down, readiness, deregister,
//!   drain, stop), the axum serve helper (feature `axum`, on by default)
//!   and the one SIGTERM/SIGINT helper.
//! - [`changes`]: watches that carry changes ([`Watcher::watch_changes`]):
//!   a shared [`Snapshot`] per event, O(log N) per registry event in etcd
//!   and ZooKeeper, nothing queued for a slow consumer.
//! - [`diff`](mod@diff): what changed between two snapshots of a service
//!   (`sdctl watch` and the live page both use it).
//! - [`security`]: TLS files, users, passwords and tokens of secured
//!   registries, one [`Security`] in every backend's `Config`; secrets are
//!   [`Secret`]s, redacted in `Debug`.
//! - [`Error`]: every failure, in domain words (`error`).
//!
//! # Quick start
//!
//! Register an instance, watch its service, pick an instance:
//!
//! ```
//! use std::time::Duration;
//! use futures::StreamExt;
//! use registry::{Instance, MemoryRegistry, Registrar, Watcher};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), registry::Error> {
//! // `registry::connect(&registry::Settings::from_env()?)` picks the backend
//! // from the environment; the in-process one needs no server.
//! let registry = MemoryRegistry::new(Duration::from_secs(10));
//!
//! let registration = registry
//!     .register(Instance::new("lorem", "a", "127.0.0.1", 8080).with_tag("v1"))
//!     .await?;
//!
//! let mut live = registry.watch("lorem");
//! let snapshot = live.next().await.expect("watch streams do not end")?;
//! let picked = &snapshot[0];
//! assert_eq!(picked.authority(), "127.0.0.1:8080");
//!
//! registration.deregister().await?;
//! assert_eq!(live.next().await.unwrap()?, vec![]);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod backoff;
mod endpoint;
mod error;
pub mod interop;
mod model;
mod record;
mod registrar;
mod settings;
mod timing;
mod tower_discover;
mod traits;
mod watch_sink;

pub mod backend;
pub mod changes;
pub mod consul;
pub mod diff;
pub mod etcd;
pub mod lifecycle;
pub mod memory;
pub mod security;
pub mod zookeeper;

pub use changes::{ChangeStream, Snapshot, WatchEvent};
pub use consul::ConsulRegistry;
pub use endpoint::Endpoint;
pub use error::{BoxError, Error, Result};
pub use etcd::EtcdRegistry;
pub use memory::MemoryRegistry;
pub use model::{
    Instance, MAX_METADATA_KEY_LEN, MAX_METADATA_KEYS, MAX_METADATA_VALUE_LEN, MAX_NAME_LEN,
    MAX_TAG_LEN, MAX_TAGS, validate_id, validate_name,
};
pub use security::{Secret, Security};
pub use settings::{BACKEND_NAMES, BackendConfig, DynRegistry, Settings, connect};
pub use timing::{DEFAULT_TIMEOUT, DEFAULT_TTL, MAX_DURATION, Timing};
pub use tower_discover::ServiceDiscover;
pub use traits::{Registrar, Registration, RegistrationState, Registry, WatchStream, Watcher};
pub use zookeeper::ZookeeperRegistry;
