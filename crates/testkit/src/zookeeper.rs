//! ZooKeeper: a standalone server ([`ZkServer`]) or an N-member ensemble
//! ([`ZkEnsemble`]), run straight from the JVM (no zkServer.sh, no systemd).
//!
//! Each member gets its own `zoo.cfg`, data directory (with a `myid` file in
//! an ensemble) and log under one temp dir. `tickTime=500`, so the server
//! grants session timeouts from 1 s to 10 s. A member is ready when the
//! four-letter word `srvr` on its client port answers with a `Mode:` line
//! (`standalone`, `leader` or `follower`).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tracing::info;

use crate::RegistryServer;
use crate::bins::{java_bin, zk_classpath};
use crate::cluster::{Kind, Member, Members};
use crate::process::{Proc, Spec, StartFailure, four_letter_word, free_port, or_free, temp_dir};

/// How long a standalone server may take to serve (a JVM start).
/// The JVM command line of one ZooKeeper server reading `cfg` (plain and
/// secured test servers alike): a small heap, quick start-up, errors-only
/// logs, no admin server.
pub(crate) fn server_args(heap_mib: u32, classpath: &str, cfg: &Path) -> Vec<OsString> {
    vec![
        format!("-Xmx{heap_mib}m").into(),
        "-XX:+UseSerialGC".into(),
        "-XX:TieredStopAtLevel=1".into(),
        "-XX:-UsePerfData".into(),
        "-Djava.net.preferIPv4Stack=true".into(),
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=error".into(),
        "-Dzookeeper.admin.enableServer=false".into(),
        "-cp".into(),
        classpath.into(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
        cfg.into(),
    ]
}

/// The Java heap of a test server, in MiB: enough for the tests' few
/// thousand nodes, small enough for many servers at once on 2 cores.
pub const DEFAULT_HEAP_MIB: u32 = 64;
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an ensemble may take to elect a leader and serve.
const ENSEMBLE_READY_TIMEOUT: Duration = Duration::from_secs(40);

/// ZooKeeper members are ready when they serve.
static ZOOKEEPER: Kind = Kind {
    name: "ZooKeeper",
    group: "ensemble",
    ready: serving,
};

/// Whether `srvr` on `port` reports a serving mode.
fn serving(port: u16) -> bool {
    four_letter_word(port, "srvr").is_ok_and(|answer| answer.contains("Mode: "))
}

/// A throwaway ZooKeeper ensemble of N members on loopback.
///
/// Dropping it kills every member and removes the data.
#[derive(Debug)]
pub struct ZkEnsemble {
    members: Members,
}

impl ZkEnsemble {
    /// Starts `nodes` members and waits until every one serves (reports
    /// `Mode: leader` or `Mode: follower`; `standalone` for one node).
    ///
    /// # Errors
    ///
    /// If Java or ZooKeeper is missing (the message says how to install
    /// them), `nodes` is 0, or a member does not serve within 40 s (the
    /// message quotes its log).
    pub fn start(nodes: usize) -> Result<Self> {
        if nodes == 0 {
            bail!("a ZooKeeper ensemble needs at least one member");
        }
        Self::start_with(&vec![0; nodes], ENSEMBLE_READY_TIMEOUT, DEFAULT_HEAP_MIB)
    }

    /// Starts one member per entry of `client_ports`, each serving clients
    /// on that port of 127.0.0.1 (0: a free port), and waits until every
    /// one serves; quorum and election ports are always free ones. For
    /// scripts that print fixed addresses (`local-topology`).
    ///
    /// # Errors
    ///
    /// As [`Self::start`]; a fixed port that is taken makes ZooKeeper exit
    /// with "Address already in use", quoted in the message.
    pub fn start_on(client_ports: &[u16]) -> Result<Self> {
        if client_ports.is_empty() {
            bail!("a ZooKeeper ensemble needs at least one member");
        }
        Self::start_with(client_ports, ENSEMBLE_READY_TIMEOUT, DEFAULT_HEAP_MIB)
    }

    fn start_with(client_ports: &[u16], ready_timeout: Duration, heap_mib: u32) -> Result<Self> {
        let java = java_bin()?;
        let classpath = zk_classpath()?;
        let nodes = client_ports.len();
        let members = Members::start(&ZOOKEEPER, nodes, ready_timeout, || {
            Self::prepare(&java, &classpath, client_ports, heap_mib)
        })?;
        let ensemble = Self { members };
        info!(
            connect = %ensemble.connect_string(),
            dir = %ensemble.dir().display(),
            "ZooKeeper started"
        );
        Ok(ensemble)
    }

    /// Writes every member's `zoo.cfg` (and `myid`) with fresh ports.
    fn prepare(
        java: &Path,
        classpath: &str,
        client_ports: &[u16],
        heap_mib: u32,
    ) -> std::result::Result<(TempDir, Vec<Member>), StartFailure> {
        let other = |e: anyhow::Error| StartFailure::Other(e);
        let dir = temp_dir("testkit-zk-", "ZooKeeper")?;
        let nodes = client_ports.len();
        // (client, quorum, election) per member.
        let ports: Vec<(u16, u16, u16)> = client_ports
            .iter()
            .map(|&client| (or_free(client), free_port(), free_port()))
            .collect();
        let mut servers = String::new();
        if nodes > 1 {
            for (i, (_, quorum, election)) in ports.iter().enumerate() {
                let _ = writeln!(servers, "server.{}=127.0.0.1:{quorum}:{election}", i + 1);
            }
        }
        let mut members = Vec::with_capacity(nodes);
        for (i, &(client, _, _)) in ports.iter().enumerate() {
            let id = i + 1;
            let member_dir = dir.path().join(format!("zk{id}"));
            let data_dir = member_dir.join("data");
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))
                .map_err(other)?;
            if nodes > 1 {
                std::fs::write(data_dir.join("myid"), format!("{id}\n"))
                    .context("cannot write myid")
                    .map_err(other)?;
            }
            let cfg = format!(
                "tickTime=500\n\
                 initLimit=20\n\
                 syncLimit=10\n\
                 dataDir={data}\n\
                 clientPort={client}\n\
                 clientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,mntr\n\
                 maxClientCnxns=0\n\
                 autopurge.purgeInterval=0\n\
                 {servers}",
                data = data_dir.display(),
            );
            let cfg_path = member_dir.join("zoo.cfg");
            std::fs::write(&cfg_path, cfg)
                .with_context(|| format!("cannot write {}", cfg_path.display()))
                .map_err(other)?;
            let args = server_args(heap_mib, classpath, &cfg_path);
            members.push(Member {
                client_port: client,
                proc: Proc::new(Spec {
                    label: ZOOKEEPER.label(nodes, id, client),
                    program: java.to_owned(),
                    args,
                    cwd: member_dir.clone(),
                    log: member_dir.join("zookeeper.log"),
                    env: Vec::new(),
                    clear_env: false,
                    cleanup: Some(dir.path().to_owned()),
                }),
            });
        }
        Ok((dir, members))
    }

    /// The connect string, `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.members.addrs().join(",")
    }

    /// The temp directory holding every member's config, data and log.
    pub fn dir(&self) -> &Path {
        self.members.dir()
    }

    /// Stops member `i` (SIGTERM, SIGKILL after 10 s) and waits for its PID
    /// to exit (about 2 s). Its data and ports are kept.
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

    /// Starts member `i` again on its ports and data. Waits until it serves
    /// if a majority of members is then running; otherwise (it cannot serve
    /// without a quorum) only until its client port accepts connections.
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

    /// The `Mode:` member `i` reports right now (`standalone`, `leader`,
    /// `follower`), if it serves.
    pub fn member_mode(&self, i: usize) -> Option<String> {
        let port = self.members.client_port(i)?;
        let answer = four_letter_word(port, "srvr").ok()?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }
}

impl RegistryServer for ZkEnsemble {
    fn backend(&self) -> &'static str {
        "zookeeper"
    }

    fn registry_addr(&self) -> String {
        self.connect_string()
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

/// A throwaway standalone ZooKeeper on loopback.
///
/// Dropping it kills the JVM and removes the data.
///
/// ```no_run
/// use testkit::{RegistryServer, ZkServer};
/// let zk = ZkServer::start()?;
/// assert_eq!(zk.backend(), "zookeeper");
/// println!("REGISTRY_ADDR={}", zk.connect_string());
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct ZkServer {
    inner: ZkEnsemble,
}

impl ZkServer {
    /// Starts the server and waits until `srvr` reports `Mode: standalone`
    /// (up to 20 s).
    ///
    /// # Errors
    ///
    /// If Java or ZooKeeper is missing (the message says how to install
    /// them) or the server does not serve in time (the message quotes its
    /// log).
    pub fn start() -> Result<Self> {
        Self::start_with_heap(DEFAULT_HEAP_MIB)
    }

    /// [`Self::start`] with a Java heap of `heap_mib` MiB (default
    /// [`ZK_DEFAULT_HEAP_MIB`](crate::ZK_DEFAULT_HEAP_MIB)): `sdctl bench`'s scale rows hold 100,000
    /// instance nodes, which a 64 MiB heap cannot (the server spends its
    /// time collecting garbage and the client's listing never completes).
    ///
    /// # Errors
    ///
    /// As [`Self::start`].
    pub fn start_with_heap(heap_mib: u32) -> Result<Self> {
        Ok(Self {
            inner: ZkEnsemble::start_with(&[0], READY_TIMEOUT, heap_mib)?,
        })
    }

    /// The connect string, `127.0.0.1:port`.
    pub fn connect_string(&self) -> String {
        self.inner.connect_string()
    }

    /// SIGKILLs the server (a crash) and waits for its PID to exit; data and
    /// port are kept for [`RegistryServer::start`].
    ///
    /// # Errors
    ///
    /// If the process cannot be waited for.
    pub fn kill(&mut self) -> Result<()> {
        self.inner.kill_member(0)
    }

    /// The JVM's PID while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.member_pid(0)
    }

    /// The temp directory holding `zoo.cfg`, the data and the log.
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }
}

impl RegistryServer for ZkServer {
    fn backend(&self) -> &'static str {
        "zookeeper"
    }

    fn registry_addr(&self) -> String {
        self.connect_string()
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
