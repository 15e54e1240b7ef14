//! Consul: one dev-mode agent ([`ConsulAgent`]), a server and client in one
//! process with in-memory state.
//!
//! The agent binds 127.0.0.1 only, on its own HTTP, server RPC and Serf
//! ports; DNS, gRPC and gRPC-TLS are off (`-1`) so nothing listens on a
//! fixed default port. It is ready when `GET /v1/status/leader` names a
//! leader and the agent's own node is in the catalog. A restart starts a
//! fresh agent on the same ports: dev mode keeps no data.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;
use tracing::info;

use crate::RegistryServer;
use crate::bins::consul_bin;
use crate::process::{
    Proc, Spec, StartFailure, free_port, http_get, or_free, temp_dir, wait_ready, with_port_retries,
};

/// How long an agent may take to elect itself and sync its node.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes node names unique among the agents of one process.
static AGENTS: AtomicU64 = AtomicU64::new(0);

/// A throwaway Consul dev agent on loopback.
///
/// Dropping it kills the process and removes its temp dir (which holds only
/// the log).
///
/// ```no_run
/// use testkit::{ConsulAgent, RegistryServer};
/// let consul = ConsulAgent::start()?;
/// assert_eq!(consul.backend(), "consul");
/// println!("CONSUL_HTTP_ADDR={}", consul.http_addr());
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct ConsulAgent {
    http_port: u16,
    node: String,
    proc: Proc,
    /// Dropped after `proc`, whose drop kills the process.
    dir: TempDir,
}

impl ConsulAgent {
    /// Starts an agent and waits until it has a leader (up to 60 s).
    ///
    /// # Errors
    ///
    /// If Consul is missing (the message says to run
    /// `scripts/build-consul.sh`) or the agent is not ready in time (the
    /// message quotes its log).
    pub fn start() -> Result<Self> {
        Self::start_on(0)
    }

    /// Starts an agent whose HTTP API (and UI) listens on `http_port` of
    /// 127.0.0.1 (0: a free port), and waits until it has a leader; its
    /// other ports are always free ones. For scripts that print fixed
    /// addresses (`local-topology`).
    ///
    /// # Errors
    ///
    /// As [`Self::start`]; a fixed port that is taken makes Consul exit
    /// with "address already in use", quoted in the message.
    pub fn start_on(http_port: u16) -> Result<Self> {
        let bin = consul_bin()?;
        let agent = with_port_retries("Consul agent", || {
            let mut agent = Self::prepare(&bin, http_port)?;
            agent.spawn_and_wait()?;
            Ok(agent)
        })?;
        info!(
            http = %agent.http_addr(),
            node = %agent.node,
            dir = %agent.dir.path().display(),
            "Consul started"
        );
        Ok(agent)
    }

    fn prepare(bin: &std::path::Path, http_port: u16) -> std::result::Result<Self, StartFailure> {
        let dir = temp_dir("testkit-consul-", "Consul")?;
        let (http, server, serf_lan, serf_wan) =
            (or_free(http_port), free_port(), free_port(), free_port());
        let node = format!(
            "testkit-{}-{}",
            std::process::id(),
            AGENTS.fetch_add(1, Ordering::Relaxed)
        );
        let mut args: Vec<OsString> = Vec::new();
        for arg in [
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-grpc-tls-port",
            "-1",
            "-log-level=warn",
            "-node",
            &node,
        ] {
            args.push(arg.into());
        }
        for (flag, port) in [
            ("-http-port", http),
            ("-server-port", server),
            ("-serf-lan-port", serf_lan),
            ("-serf-wan-port", serf_wan),
        ] {
            args.push(flag.into());
            args.push(port.to_string().into());
        }
        let proc = Proc::new(Spec {
            label: format!("Consul agent {node} (HTTP port {http})"),
            program: bin.to_owned(),
            args,
            cwd: dir.path().to_owned(),
            log: dir.path().join("consul.log"),
            // No phoning home for update checks.
            env: vec![("CHECKPOINT_DISABLE".into(), "1".into())],
            clear_env: false,
            cleanup: Some(dir.path().to_owned()),
        });
        Ok(Self {
            http_port: http,
            node,
            proc,
            dir,
        })
    }

    fn spawn_and_wait(&mut self) -> std::result::Result<(), StartFailure> {
        self.proc.spawn().map_err(StartFailure::Other)?;
        let port = self.http_port;
        let node_path = format!("/v1/catalog/node/{}", self.node);
        wait_ready([&mut self.proc], READY_TIMEOUT, "Consul agent", |_| {
            let leader = matches!(
                http_get(port, "/v1/status/leader"),
                Ok((200, body)) if body.trim().len() > 2
            );
            leader
                && matches!(
                    http_get(port, &node_path),
                    Ok((200, body)) if body.trim_start().starts_with('{')
                )
        })
    }

    /// The HTTP API address, `127.0.0.1:port` (no scheme), as
    /// `CONSUL_HTTP_ADDR` takes it.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The agent's node name (unique per agent).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// SIGKILLs the agent (a crash) and waits for its PID to exit.
    ///
    /// # Errors
    ///
    /// If the process cannot be waited for.
    pub fn kill(&mut self) -> Result<()> {
        self.proc.kill()
    }

    /// The PID while the agent runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the agent runs (false once it has exited, however it
    /// ended).
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The temp directory holding `consul.log`.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl RegistryServer for ConsulAgent {
    fn backend(&self) -> &'static str {
        "consul"
    }

    fn registry_addr(&self) -> String {
        self.http_addr()
    }

    fn stop(&mut self) -> Result<()> {
        self.proc.stop()
    }

    fn pause(&mut self) -> Result<()> {
        self.proc.set_paused(true)
    }

    fn resume(&mut self) -> Result<()> {
        self.proc.set_paused(false)
    }

    fn start(&mut self) -> Result<()> {
        if self.proc.is_running() {
            return Ok(());
        }
        self.spawn_and_wait().map_err(StartFailure::into_error)
    }
}
