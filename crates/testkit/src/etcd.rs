//! etcd: one node ([`EtcdServer`]) or an N-member cluster ([`EtcdCluster`]).
//!
//! Each member listens on 127.0.0.1 only, with its own client and peer port
//! and data directory under one temp dir. A member is ready when
//! `GET /health` on its client port answers 200 (which needs a leader).
//! Restarting a member on its existing data directory reuses the same
//! command line: etcd ignores the `--initial-cluster*` flags once its data
//! directory holds a member.

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tempfile::TempDir;
use tracing::info;

use crate::RegistryServer;
use crate::bins::etcd_bin;
use crate::cluster::{Kind, Member, Members};
use crate::process::{Proc, Spec, StartFailure, free_port, http_get, or_free, temp_dir};

/// How long a single node may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a cluster may take to elect a leader and become healthy.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(40);

/// Distinguishes clusters started by one process (the cluster token).
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// etcd members are ready when healthy.
static ETCD: Kind = Kind {
    name: "etcd",
    group: "cluster",
    ready: healthy,
};

/// Whether `GET /health` on `port` answers 200.
fn healthy(port: u16) -> bool {
    matches!(http_get(port, "/health"), Ok((200, _)))
}

/// A throwaway etcd cluster of N members on loopback.
///
/// Members use `--heartbeat-interval=50 --election-timeout=500`, fast yet
/// steady on a loaded two-core machine. Dropping the cluster kills every
/// member and removes the data.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Members,
}

impl EtcdCluster {
    /// Starts `nodes` members and waits until every one is healthy.
    ///
    /// # Errors
    ///
    /// If etcd is missing (the message says how to install it), `nodes` is
    /// 0, or the cluster is not healthy within 40 s (the message quotes the
    /// members' logs).
    pub fn start(nodes: usize) -> Result<Self> {
        if nodes == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        Self::start_with(&vec![0; nodes], (50, 500), CLUSTER_READY_TIMEOUT)
    }

    /// Starts one member per entry of `client_ports`, each listening for
    /// clients on that port of 127.0.0.1 (0: a free port), and waits until
    /// every one is healthy; peer ports are always free ones. For scripts
    /// that print fixed addresses (`local-topology`).
    ///
    /// # Errors
    ///
    /// As [`Self::start`]; a fixed port that is taken makes etcd exit with
    /// "address already in use", quoted in the message.
    pub fn start_on(client_ports: &[u16]) -> Result<Self> {
        if client_ports.is_empty() {
            bail!("an etcd cluster needs at least one member");
        }
        Self::start_with(client_ports, (50, 500), CLUSTER_READY_TIMEOUT)
    }

    fn start_with(
        client_ports: &[u16],
        timing: (u32, u32),
        ready_timeout: Duration,
    ) -> Result<Self> {
        let bin = etcd_bin()?;
        let nodes = client_ports.len();
        let members = Members::start(&ETCD, nodes, ready_timeout, || {
            Self::prepare(&bin, client_ports, timing)
        })?;
        let cluster = Self { members };
        info!(
            endpoints = %cluster.endpoints().join(","),
            dir = %cluster.dir().display(),
            "etcd started"
        );
        Ok(cluster)
    }

    /// Creates the temp dir and the members' command lines with fresh ports.
    fn prepare(
        bin: &Path,
        client_ports: &[u16],
        (heartbeat_ms, election_ms): (u32, u32),
    ) -> std::result::Result<(TempDir, Vec<Member>), StartFailure> {
        let dir = temp_dir("testkit-etcd-", "etcd")?;
        let nodes = client_ports.len();
        let ports: Vec<(u16, u16)> = client_ports
            .iter()
            .map(|&client| (or_free(client), free_port()))
            .collect();
        let names: Vec<String> = (0..nodes).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "testkit-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let members = names
            .iter()
            .zip(&ports)
            .map(|(name, &(client, peer))| {
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args: Vec<OsString> = vec![
                    "--name".into(),
                    name.into(),
                    "--data-dir".into(),
                    dir.path().join(format!("{name}.data")).into(),
                    "--listen-client-urls".into(),
                    client_url.clone().into(),
                    "--advertise-client-urls".into(),
                    client_url.into(),
                    "--listen-peer-urls".into(),
                    peer_url.clone().into(),
                    "--initial-advertise-peer-urls".into(),
                    peer_url.into(),
                    "--initial-cluster".into(),
                    initial_cluster.clone().into(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    token.clone().into(),
                    "--logger=zap".into(),
                    "--log-level=warn".into(),
                    format!("--heartbeat-interval={heartbeat_ms}").into(),
                    format!("--election-timeout={election_ms}").into(),
                ];
                Member {
                    client_port: client,
                    proc: Proc::new(Spec {
                        label: ETCD.label(nodes, name, client),
                        program: bin.to_owned(),
                        args,
                        cwd: dir.path().to_owned(),
                        log: dir.path().join(format!("{name}.log")),
                        env: Vec::new(),
                        clear_env: false,
                        cleanup: Some(dir.path().to_owned()),
                    }),
                }
            })
            .collect();
        Ok((dir, members))
    }

    /// The members' client endpoints, `127.0.0.1:port` each (no scheme;
    /// etcd-client and etcdctl accept that form).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.addrs()
    }

    /// The temp directory holding every member's data directory and log.
    pub fn dir(&self) -> &Path {
        self.members.dir()
    }

    /// Stops member `i` (SIGTERM, SIGKILL after 10 s) and waits for its PID
    /// to exit. Its data directory and ports are kept for [`Self::start_member`].
    ///
    /// # Errors
    ///
    /// If `i` is out of range or the process cannot be waited for.
    pub fn stop_member(&mut self, i: usize) -> Result<()> {
        self.members.stop_member(i)
    }

    /// SIGKILLs member `i` (a crash) and waits for its PID to exit.
    ///
    /// # Errors
    ///
    /// As [`Self::stop_member`].
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        self.members.kill_member(i)
    }

    /// Starts member `i` again on its ports and data directory. Waits until
    /// it is healthy if a majority of members is then running; otherwise
    /// (it cannot be healthy alone) only until its client port accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// If `i` is out of range, or the member exits or is not ready within
    /// the deadline (the message quotes its log).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        self.members.start_member(i)
    }

    /// Pauses member `i` with SIGSTOP: it keeps its ports and connections
    /// but answers nothing (a hung member), until [`Self::resume_member`].
    ///
    /// # Errors
    ///
    /// If `i` is out of range or the member is not running.
    pub fn pause_member(&mut self, i: usize) -> Result<()> {
        self.members.pause_member(i, true)
    }

    /// Resumes member `i` after [`Self::pause_member`] (SIGCONT).
    ///
    /// # Errors
    ///
    /// As [`Self::pause_member`].
    pub fn resume_member(&mut self, i: usize) -> Result<()> {
        self.members.pause_member(i, false)
    }

    /// The PID of member `i` while it runs.
    pub fn member_pid(&self, i: usize) -> Option<u32> {
        self.members.member_pid(i)
    }

    /// Whether member `i` runs (false once it has exited, however it
    /// ended: stopped, killed, crashed).
    pub fn member_running(&mut self, i: usize) -> bool {
        self.members.member_running(i)
    }

    /// Whether member `i` answers `/health` with 200 right now.
    pub fn member_healthy(&self, i: usize) -> bool {
        self.members.client_port(i).is_some_and(healthy)
    }
}

impl RegistryServer for EtcdCluster {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn registry_addr(&self) -> String {
        self.endpoints().join(",")
    }

    fn stop(&mut self) -> Result<()> {
        self.members.stop_all()
    }

    fn start(&mut self) -> Result<()> {
        self.members.start_all()
    }

    fn pause(&mut self) -> Result<()> {
        for i in 0..self.members.addrs().len() {
            self.members.pause_member(i, true)?;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        for i in 0..self.members.addrs().len() {
            self.members.pause_member(i, false)?;
        }
        Ok(())
    }
}

/// A throwaway single-node etcd on loopback.
///
/// Uses `--heartbeat-interval=10 --election-timeout=100`, so it is ready in
/// about 0.1 s. Dropping it kills the process and removes the data.
///
/// ```no_run
/// use testkit::{EtcdServer, RegistryServer};
/// let etcd = EtcdServer::start()?;
/// assert_eq!(etcd.backend(), "etcd");
/// println!("REGISTRY_ADDR={}", etcd.registry_addr());
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct EtcdServer {
    inner: EtcdCluster,
}

impl EtcdServer {
    /// Starts a node and waits until `/health` answers 200 (up to 20 s).
    ///
    /// # Errors
    ///
    /// If etcd is missing (the message says how to install it) or the node
    /// is not healthy in time (the message quotes its log).
    pub fn start() -> Result<Self> {
        Ok(Self {
            inner: EtcdCluster::start_with(&[0], (10, 100), READY_TIMEOUT)?,
        })
    }

    /// The client endpoint, `127.0.0.1:port` (no scheme).
    pub fn endpoint(&self) -> String {
        self.inner
            .endpoints()
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// SIGKILLs the node (a crash) and waits for its PID to exit; data and
    /// ports are kept for [`RegistryServer::start`].
    ///
    /// # Errors
    ///
    /// If the process cannot be waited for.
    pub fn kill(&mut self) -> Result<()> {
        self.inner.kill_member(0)
    }

    /// The PID while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.member_pid(0)
    }

    /// The temp directory holding the data directory and `m0.log`.
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }
}

impl RegistryServer for EtcdServer {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn registry_addr(&self) -> String {
        self.endpoint()
    }

    fn stop(&mut self) -> Result<()> {
        self.inner.stop()
    }

    fn start(&mut self) -> Result<()> {
        self.inner.start_member(0)
    }

    fn pause(&mut self) -> Result<()> {
        self.inner.pause_member(0)
    }

    fn resume(&mut self) -> Result<()> {
        self.inner.resume_member(0)
    }
}
