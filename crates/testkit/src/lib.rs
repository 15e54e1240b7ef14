//! Real registry servers (etcd, ZooKeeper, Consul) on loopback, for tests,
//! benches and scripts.
//!
//! # Layout
//!
//! - [`RegistryServer`]: what every server and cluster offers (its backend
//!   name, the `REGISTRY_ADDR` value, stop and start), so a conformance
//!   suite can be generic over backends.
//! - [`EtcdServer`], [`EtcdCluster`] (`etcd`), [`ZkServer`], [`ZkEnsemble`]
//!   (`zookeeper`), [`ConsulAgent`], [`ConsulCluster`] (`consul`): one
//!   module per backend;
//!   the member handling an etcd cluster and a ZooKeeper ensemble share
//!   (lookup, stop, kill, start with the quorum rule) is in `cluster`.
//! - [`etcd_bin`], [`etcdctl_bin`], [`java_bin`], [`zk_classpath`],
//!   [`consul_bin`]: where the binaries are; a missing one is an error
//!   saying how to install it (`bins`); [`sdctl_bin`]: this workspace's
//!   `sdctl`, for tests of other packages that spawn it.
//! - [`browser`]: a headless Chromium driven over WebDriver
//!   (`chromedriver` as a process like the servers, a small async
//!   WebDriver client), for the live page's tests; [`chromium_bin`],
//!   [`chromedriver_bin`] find them.
//! - [`Pki`], [`SecuredEtcd`], [`SecuredConsul`], [`SecuredZk`]: secured
//!   servers (TLS with certificates made at test time, users, tokens,
//!   ACLs) for the secured-registry tests (`secured`).
//! - [`free_port`] and the process plumbing: spawn with a clean
//!   environment, stop by PID, ready probes (`process`).
//! - [`flood`]: hostile clients (idle and half-sent connections held
//!   against a server), new requests timed meanwhile, a process's RSS and
//!   the open-file limit a flooding test needs.
//! - [`topology`]: the lorem topology of the compose files (a registry,
//!   two `lorem-server`s, the gateway) as processes on 127.0.0.1, run by
//!   the `local-topology` binary (`deploy/local.sh`).
//!
//! Everything but the browser session is synchronous (`std::process`), so it works from `#[test]`,
//! `#[tokio::test]` (call it before the runtime work, or from
//! `spawn_blocking`), benches and scripts.
//!
//! # Behaviour common to every server
//!
//! - Listens on 127.0.0.1 only, on ports from [`free_port`]; the first start
//!   retries on fresh ports if the process exits (a port taken meanwhile),
//!   later starts reuse the same ports and data.
//! - Data and the server's log live in a temp dir; an error for a server
//!   that exits or is not ready in time quotes the end of its log.
//! - Spawned with stdin closed and without any `ETCD_*` variable (etcd reads
//!   those as flags).
//! - [`RegistryServer::stop`] sends SIGTERM, SIGKILLs after 10 s and returns
//!   once the PID has exited, so its ports can be reused; dropping a server
//!   SIGKILLs it and removes its temp dir.
//! - Every server and its watchdog run in a process group of their own, so
//!   a Ctrl-C in the terminal reaches only the test or script, which stops
//!   them in order (or dies, and the watchdog cleans up).
//! - [`RegistryServer::pause`] (and `pause_member` on a cluster) SIGSTOPs
//!   the process: it keeps its ports, and the kernel still accepts
//!   connections, but it answers nothing, like a hung server;
//!   [`RegistryServer::resume`] SIGCONTs it. Stopping or dropping a paused
//!   server works too.
//! - A small `sh` watchdog per server process SIGKILLs the server and removes
//!   its temp dir if the test process dies without stopping it (killed by a
//!   timeout, or a server kept in a `static` that is never dropped), so no
//!   etcd or JVM outlives a test run.
//!
//! ```no_run
//! use testkit::{EtcdServer, RegistryServer};
//!
//! let mut etcd = EtcdServer::start()?;
//! let addr = etcd.registry_addr(); // "127.0.0.1:PORT"
//! etcd.restart()?; // same port, same data
//! assert_eq!(etcd.registry_addr(), addr);
//! # anyhow::Ok(())
//! ```

#![forbid(unsafe_code)]

mod bins;
pub mod browser;
mod cluster;
mod consul;
mod etcd;
pub mod flood;
mod process;
mod secured;
pub mod topology;
mod zookeeper;

pub use bins::{
    chromedriver_bin, chromium_bin, consul_bin, etcd_bin, etcdctl_bin, java_bin, sdctl_bin,
    zk_classpath,
};
pub use consul::{ConsulAgent, ConsulCluster, ConsulRole};
pub use etcd::{EtcdCluster, EtcdServer};
pub use process::free_port;
pub use secured::{
    CONSUL_SERVICE_PREFIX, ETCD_PREFIX, ETCD_READER, ETCD_ROOT, ETCD_USER, Pki, SecuredConsul,
    SecuredEtcd, SecuredZk,
};
pub use zookeeper::{DEFAULT_HEAP_MIB as ZK_DEFAULT_HEAP_MIB, ZkEnsemble, ZkServer};

/// A registry server (or cluster) this kit started; implemented by every
/// server type so suites can be written once for all backends.
pub trait RegistryServer: Send {
    /// The backend's name as `REGISTRY` takes it: `"etcd"`, `"zookeeper"`
    /// or `"consul"`.
    fn backend(&self) -> &'static str;

    /// The value for `REGISTRY_ADDR`: every member's client address,
    /// `127.0.0.1:p1,127.0.0.1:p2`.
    fn registry_addr(&self) -> String;

    /// Stops every process: SIGTERM, SIGKILL after a grace period, and
    /// returns once every PID has exited. Ports and data are kept.
    ///
    /// # Errors
    ///
    /// If a process cannot be waited for.
    fn stop(&mut self) -> anyhow::Result<()>;

    /// Starts every stopped process again on the same ports and data
    /// directories and waits until the server is ready (for Consul, a fresh
    /// dev agent: it keeps no data). Does nothing to members that run.
    ///
    /// # Errors
    ///
    /// If a process exits or is not ready within the deadline; the message
    /// quotes its log.
    fn start(&mut self) -> anyhow::Result<()>;

    /// Pauses every process with SIGSTOP: the server keeps its ports, and
    /// the kernel still accepts connections on them, but it answers
    /// nothing, like a hung process or a frozen VM. Undo with
    /// [`resume`](Self::resume); stopping or dropping a paused server works
    /// too.
    ///
    /// # Errors
    ///
    /// If a process is not running.
    fn pause(&mut self) -> anyhow::Result<()>;

    /// Resumes every process paused by [`pause`](Self::pause) (SIGCONT).
    ///
    /// # Errors
    ///
    /// If a process is not running.
    fn resume(&mut self) -> anyhow::Result<()>;

    /// [`stop`](Self::stop), then [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// As either.
    fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.start()
    }
}

/// Prints a measurement and appends it to `<target_tmpdir>/timings.txt`.
///
/// Cargo hides the output of passing tests, so `scripts/test.sh` prints that
/// file at the end of the run. Tests pass `env!("CARGO_TARGET_TMPDIR")`.
/// Failing to write the file is not a test failure: the line is printed.
pub fn record_timing(target_tmpdir: &str, line: &str) {
    use std::io::Write as _;
    println!("{line}");
    let path = std::path::Path::new(target_tmpdir).join("timings.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}
