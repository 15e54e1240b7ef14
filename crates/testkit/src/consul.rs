//! Consul: one dev-mode agent ([`ConsulAgent`]), a server and client in one
//! process with in-memory state, for tests of the backend; and a cluster as
//! production runs it ([`ConsulCluster`]: servers plus one client agent per
//! process that registers or reads), for the local topology.
//!
//! The dev agent binds 127.0.0.1 only, on its own HTTP, server RPC and Serf
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
    Proc, STOP_GRACE, Spec, StartFailure, free_port, http_get, or_free, temp_dir, wait_ready,
    with_port_retries,
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

/// Settings every agent of a [`ConsulCluster`] loads: the very files the
/// compose file mounts, so the local cluster and the containers cannot
/// drift apart.
const SHARED_HCL: &str = include_str!("../../../deploy/consul/consul.hcl");
/// What the servers add (`server = true`, `bootstrap_expect`, the UI).
const SERVER_HCL: &str = include_str!("../../../deploy/consul/server.hcl");
/// What the client agents add (`leave_on_terminate`).
const AGENT_HCL: &str = include_str!("../../../deploy/consul/agent.hcl");

/// How long a whole cluster may take to elect a leader and sync every node
/// (six agents on a loaded two-core machine).
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// What an agent of a [`ConsulCluster`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsulRole {
    /// A server: a Raft voter holding the catalog.
    Server,
    /// A client agent: holds the registrations made through it, runs their
    /// checks and forwards reads to the servers.
    Client,
}

/// One agent of a [`ConsulCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    role: ConsulRole,
    http_port: u16,
    server_port: u16,
    proc: Proc,
}

/// Consul as production runs it, on loopback: a few servers (a Raft
/// cluster) and client agents that join them, each agent a process with its
/// own node name, data directory and HTTP, server RPC, Serf LAN and Serf WAN
/// ports (DNS and gRPC off), all on 127.0.0.1. Unsecured (no ACLs, gossip
/// encryption or TLS), as `docker-compose.consul.yml`.
///
/// Every agent loads `deploy/consul/consul.hcl` plus `server.hcl` or
/// `agent.hcl`, the files the compose file mounts. Data directories are
/// kept across [`stop_node`](Self::stop_node) and
/// [`start_node`](Self::start_node): a server comes back as the same Raft
/// member, a client agent with the registrations made through it. Dropping
/// the cluster kills every agent and removes the temp dir.
///
/// ```no_run
/// use testkit::ConsulCluster;
/// let consul = ConsulCluster::start(3, &["agent-a"])?;
/// // Register through the agent, as a process running beside it would.
/// println!("REGISTRY=consul REGISTRY_ADDR={}", consul.http_addr("agent-a").unwrap());
/// # anyhow::Ok(())
/// ```
#[derive(Debug)]
pub struct ConsulCluster {
    /// The servers first, then the client agents.
    nodes: Vec<Node>,
    /// Dropped after `nodes`, whose drop kills the processes.
    dir: TempDir,
}

impl ConsulCluster {
    /// Starts `servers` servers named `consul1`, `consul2`... and one client
    /// agent per name in `agents`, every port a free one; returns once
    /// every agent is in the catalog (the servers have a leader and every
    /// node has joined and synced), up to 90 s.
    ///
    /// # Errors
    ///
    /// If Consul is missing (the message says to run
    /// `scripts/build-consul.sh`), or an agent exits or is not ready in time
    /// (the message quotes its log).
    pub fn start(servers: usize, agents: &[&str]) -> Result<Self> {
        let names: Vec<String> = (1..=servers).map(|i| format!("consul{i}")).collect();
        let servers: Vec<(&str, u16)> = names.iter().map(|n| (n.as_str(), 0)).collect();
        let agents: Vec<(&str, u16)> = agents.iter().map(|n| (*n, 0)).collect();
        Self::start_on(&servers, &agents)
    }

    /// [`start`](Self::start) with names and HTTP ports of your choosing:
    /// `(node name, HTTP port)` for each server and each client agent (port
    /// 0: a free one). The other ports are always free ones.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also if there is no server, or a name is
    /// given twice.
    pub fn start_on(servers: &[(&str, u16)], agents: &[(&str, u16)]) -> Result<Self> {
        if servers.is_empty() {
            anyhow::bail!("a Consul cluster needs at least one server, got none");
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = servers
            .iter()
            .chain(agents)
            .find(|(name, _)| !seen.insert(*name))
        {
            anyhow::bail!("Consul node name {name:?} is given twice; every agent needs its own");
        }
        let bin = consul_bin()?;
        let what = format!(
            "Consul cluster of {} servers and {} client agents",
            servers.len(),
            agents.len()
        );
        let cluster = with_port_retries(&what, || {
            let mut cluster = Self::prepare(&bin, servers, agents)?;
            cluster.spawn_and_wait()?;
            Ok(cluster)
        })?;
        info!(
            servers = %cluster.addrs_of(ConsulRole::Server).join(","),
            agents = %cluster.addrs_of(ConsulRole::Client).join(","),
            dir = %cluster.dir.path().display(),
            "Consul cluster started"
        );
        Ok(cluster)
    }

    fn prepare(
        bin: &std::path::Path,
        servers: &[(&str, u16)],
        agents: &[(&str, u16)],
    ) -> std::result::Result<Self, StartFailure> {
        let dir = temp_dir("testkit-consul-cluster-", "Consul")?;
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text)
                .map(|()| path)
                .map_err(|e| StartFailure::Other(anyhow::anyhow!("cannot write {name}: {e}")))
        };
        let shared = write("consul.hcl", SHARED_HCL)?;
        let server_hcl = write("server.hcl", SERVER_HCL)?;
        let agent_hcl = write("agent.hcl", AGENT_HCL)?;
        // Every port is picked before anything starts: each agent is told
        // the servers' Serf LAN ports to join.
        struct Ports {
            http: u16,
            server: u16,
            serf_lan: u16,
            serf_wan: u16,
        }
        let pick = |http: u16| Ports {
            http: or_free(http),
            server: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
        };
        let planned: Vec<(&str, ConsulRole, Ports)> = servers
            .iter()
            .map(|(name, http)| (*name, ConsulRole::Server, pick(*http)))
            .chain(
                agents
                    .iter()
                    .map(|(name, http)| (*name, ConsulRole::Client, pick(*http))),
            )
            .collect();
        let joins: Vec<(&str, u16)> = planned
            .iter()
            .filter(|(_, role, _)| *role == ConsulRole::Server)
            .map(|(name, _, ports)| (*name, ports.serf_lan))
            .collect();
        let bootstrap_expect = servers.len().to_string();
        let nodes = planned
            .iter()
            .map(|(name, role, ports)| {
                let mut args: Vec<OsString> = vec!["agent".into()];
                let mut flag = |f: &str, v: &str| {
                    args.push(f.into());
                    args.push(v.into());
                };
                flag("-node", name);
                flag("-bind", "127.0.0.1");
                flag("-client", "127.0.0.1");
                flag("-data-dir", &dir.path().join(name).to_string_lossy());
                flag("-config-file", &shared.to_string_lossy());
                match role {
                    ConsulRole::Server => {
                        flag("-config-file", &server_hcl.to_string_lossy());
                        flag("-bootstrap-expect", &bootstrap_expect);
                    }
                    ConsulRole::Client => flag("-config-file", &agent_hcl.to_string_lossy()),
                }
                flag("-http-port", &ports.http.to_string());
                flag("-server-port", &ports.server.to_string());
                flag("-serf-lan-port", &ports.serf_lan.to_string());
                flag("-serf-wan-port", &ports.serf_wan.to_string());
                for (other, serf_lan) in &joins {
                    if other != name {
                        flag("-retry-join", &format!("127.0.0.1:{serf_lan}"));
                    }
                }
                let kind = match role {
                    ConsulRole::Server => "server",
                    ConsulRole::Client => "client agent",
                };
                Node {
                    name: (*name).to_owned(),
                    role: *role,
                    http_port: ports.http,
                    server_port: ports.server,
                    proc: Proc::new(Spec {
                        label: format!("Consul {kind} {name} (HTTP port {})", ports.http),
                        program: bin.to_owned(),
                        args,
                        cwd: dir.path().to_owned(),
                        log: dir.path().join(format!("{name}.log")),
                        env: vec![("CHECKPOINT_DISABLE".into(), "1".into())],
                        clear_env: false,
                        cleanup: Some(dir.path().to_owned()),
                    }),
                }
            })
            .collect();
        Ok(Self { nodes, dir })
    }

    /// Spawns every agent and waits until each is in the catalog.
    fn spawn_and_wait(&mut self) -> std::result::Result<(), StartFailure> {
        for node in &mut self.nodes {
            node.proc.spawn().map_err(StartFailure::Other)?;
        }
        let probes: Vec<(u16, String)> = self
            .nodes
            .iter()
            .map(|n| (n.http_port, n.name.clone()))
            .collect();
        wait_ready(
            self.nodes.iter_mut().map(|n| &mut n.proc),
            CLUSTER_READY_TIMEOUT,
            "Consul cluster",
            |i| in_catalog(probes[i].0, &probes[i].1),
        )
    }

    /// Every agent's node name: the servers first, then the client agents.
    pub fn names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// What agent `i` is.
    pub fn role(&self, i: usize) -> Option<ConsulRole> {
        self.nodes.get(i).map(|n| n.role)
    }

    /// The index of the agent named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Agent `name`'s HTTP API, `127.0.0.1:port`, as `REGISTRY_ADDR` (or
    /// `CONSUL_HTTP_ADDR`) takes it.
    pub fn http_addr(&self, name: &str) -> Option<String> {
        self.index(name)
            .map(|i| format!("127.0.0.1:{}", self.nodes[i].http_port))
    }

    /// Every agent's HTTP address, in the order of [`names`](Self::names).
    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.http_port))
            .collect()
    }

    fn addrs_of(&self, role: ConsulRole) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| format!("{} 127.0.0.1:{}", n.name, n.http_port))
            .collect()
    }

    /// The index of the server that is the Raft leader now, as a running
    /// agent reports it (`GET /v1/status/leader`); `None` while there is
    /// none (an election) or no agent answers.
    pub fn leader(&mut self) -> Option<usize> {
        let ports: Vec<u16> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.proc.is_running().then_some(n.http_port))
            .collect();
        let leader = ports.into_iter().find_map(|port| {
            match http_get(port, "/v1/status/leader") {
                // "127.0.0.1:8300", quoted.
                Ok((200, body)) => body
                    .trim()
                    .trim_matches('"')
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok()),
                _ => None,
            }
        })?;
        self.nodes
            .iter()
            .position(|n| n.role == ConsulRole::Server && n.server_port == leader)
    }

    /// The PID of agent `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i).and_then(|n| n.proc.pid())
    }

    /// Whether agent `i` runs; reaps it if it has exited.
    pub fn running(&mut self, i: usize) -> bool {
        self.nodes.get_mut(i).is_some_and(|n| n.proc.is_running())
    }

    fn node(&mut self, i: usize) -> Result<&mut Node> {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or_else(|| anyhow::anyhow!("no Consul agent {i}: the cluster has {n} (0..{n})"))
    }

    /// Stops agent `i` (SIGTERM, SIGKILL after 10 s) and waits for its PID
    /// to exit. A server stays a Raft member (it is expected back); a
    /// client agent leaves the cluster, taking its registrations out of the
    /// catalog. Data and ports are kept.
    ///
    /// # Errors
    ///
    /// If there is no agent `i`, or it cannot be waited for.
    pub fn stop_node(&mut self, i: usize) -> Result<()> {
        self.node(i)?.proc.stop()
    }

    /// SIGKILLs agent `i` (a crash: no leave) and waits for its PID to exit.
    ///
    /// # Errors
    ///
    /// If there is no agent `i`, or it cannot be waited for.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        self.node(i)?.proc.kill()
    }

    /// Starts agent `i` again with its data and ports; waits until it is in
    /// the catalog if a majority of the servers then runs, otherwise (no
    /// leader can be elected) only until its HTTP API answers.
    ///
    /// # Errors
    ///
    /// If there is no agent `i`, or it exits or is not ready in time (the
    /// message quotes its log).
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        self.node(i)?;
        let servers = self
            .nodes
            .iter()
            .filter(|n| n.role == ConsulRole::Server)
            .count();
        let running_servers = (0..self.nodes.len())
            .filter(|&j| self.nodes[j].role == ConsulRole::Server && (j == i || self.running(j)))
            .count();
        let quorum = running_servers > servers / 2;
        let node = self.node(i)?;
        node.proc.spawn()?;
        let (port, name) = (node.http_port, node.name.clone());
        wait_ready(
            [&mut node.proc],
            CLUSTER_READY_TIMEOUT,
            "Consul agent",
            |_| {
                if quorum {
                    in_catalog(port, &name)
                } else {
                    matches!(http_get(port, "/v1/agent/self"), Ok((200, _)))
                }
            },
        )
        .map_err(StartFailure::into_error)
    }

    /// Stops every agent: the client agents first (they leave), then the
    /// servers, each group SIGTERMed at once; returns once every PID has
    /// exited (SIGKILL after 10 s).
    ///
    /// # Errors
    ///
    /// If a process cannot be waited for.
    pub fn stop_all(&mut self) -> Result<()> {
        for role in [ConsulRole::Client, ConsulRole::Server] {
            for node in self.nodes.iter_mut().filter(|n| n.role == role) {
                node.proc.send_term();
            }
            let deadline = std::time::Instant::now() + STOP_GRACE;
            for node in self.nodes.iter_mut().filter(|n| n.role == role) {
                node.proc.wait_exit(deadline)?;
            }
        }
        Ok(())
    }

    /// SIGKILLs every agent and waits for them.
    ///
    /// # Errors
    ///
    /// If a process cannot be waited for.
    pub fn kill_all(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(|n| n.proc.kill())
    }

    /// The temp directory holding every agent's data directory and log
    /// (`<name>.log`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Whether the agent on `port` answers and lists node `name` in the
/// catalog: it has joined, there is a leader, and its node is synced.
fn in_catalog(port: u16, name: &str) -> bool {
    matches!(
        http_get(port, &format!("/v1/catalog/node/{name}")),
        Ok((200, body)) if body.trim_start().starts_with('{')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_a_server_and_distinct_names() {
        // Checked before Consul is looked for or anything is started.
        let err = ConsulCluster::start_on(&[], &[("agent-a", 0)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs at least one server"), "{err}");
        let err = ConsulCluster::start_on(&[("consul1", 0)], &[("consul1", 0)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Consul node name \"consul1\" is given twice"),
            "{err}"
        );
    }
}
