//! `sdctl`: one command line for every registry backend, and a benchmark
//! that runs the same work on all of them.
//!
//! # Layout
//!
//! - [`ls`]: the services, or one service's instances, as a table or JSON
//!   (`sdctl ls [SERVICE] [--json]`).
//! - [`watch`]: a live stream of a service's changes, one line per change
//!   (`sdctl watch SERVICE`).
//! - [`register`]: hold a registration while the command runs, and the
//!   operator's removal of any instance (`sdctl register`, `sdctl deregister`).
//! - `sdctl ui`: the live page of every service (crate `ui`), served by
//!   [`commands::ui`](commands::ui()).
//! - [`bench`](mod@bench): the same scenarios on memory, etcd, ZooKeeper and Consul,
//!   one table row per backend, JSON and an SVG chart (`sdctl bench`).
//! - [`commands`]: each command as one function, behind the binary's
//!   argument parsing.
//! - [`table`]: the plain-text tables every command prints.
//! - [`Error`]: every failure, in domain words (`error`).
//!
//! Every command reads the registry settings the servers read
//! ([`registry::Settings::from_env`]: `REGISTRY`, `REGISTRY_ADDR`,
//! `REGISTRY_CONFIG`, `REGISTRY_TTL`, `REGISTRY_TIMEOUT`, ...), and every
//! registry call is bounded by `REGISTRY_TIMEOUT`. The binary (`main.rs`)
//! only parses arguments and wires these modules together.

#![forbid(unsafe_code)]

mod error;

pub mod bench;
pub mod commands;
pub mod ls;
pub mod register;
pub mod table;
pub mod watch;

pub use error::{Error, Result};

use registry::{BackendConfig, Settings};

/// How error messages name the registry the settings point at:
/// `etcd at 127.0.0.1:2379`, `the memory registry of this process`.
pub fn describe(settings: &Settings) -> String {
    let addrs = match &settings.backend {
        BackendConfig::Memory(_) => return "the memory registry of this process".to_owned(),
        BackendConfig::Consul(c) => &c.addr,
        BackendConfig::Etcd(c) => &c.addr,
        BackendConfig::Zookeeper(c) => &c.addr,
    };
    let name = settings.backend.name();
    if addrs.is_empty() {
        format!("{name} at its default address")
    } else {
        format!("{name} at {}", addrs.join(","))
    }
}

/// The warning every command gives on the `memory` backend (what an unset
/// `REGISTRY` selects): it lives inside one process, so `sdctl` can only
/// ever see its own, empty, registry.
pub const MEMORY_WARNING: &str = "REGISTRY is memory (the default when unset): the memory registry \
     lives inside one process, so sdctl sees only its own, empty one; set REGISTRY to etcd, \
     zookeeper or consul and REGISTRY_ADDR to the servers' address";
