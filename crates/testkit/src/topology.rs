//! The lorem topology of `docker-compose.<backend>.yml`, as processes on
//! 127.0.0.1: what `deploy/local.sh` (the `local-topology` binary) runs.
//!
//! | compose service            | here                                   | default address                 |
//! |----------------------------|----------------------------------------|---------------------------------|
//! | `consul1`, `consul2`, `consul3` | the servers of a [`ConsulCluster`] | 127.0.0.1:8500 (HTTP API, UI), :18500, :28500 |
//! | `agent-server1`, `agent-server2`, `agent-client` | its client agents, one per lorem process | 127.0.0.1:8581, :8582, :8590 |
//! | `etcd1`, `etcd2`, `etcd3`  | a 3-member [`EtcdCluster`]             | 127.0.0.1:2379, :22379, :32379  |
//! | `zk1`, `zk2`, `zk3`        | a 3-member [`ZkEnsemble`]              | 127.0.0.1:2181, :2182, :2183    |
//! | `server1`, `server2`       | `lorem-server`                         | 127.0.0.1:8081, :8082           |
//! | `client`                   | `lorem-client gateway`                 | 127.0.0.1:8090                  |
//!
//! On Consul every lorem process talks to its own client agent
//! (`REGISTRY_ADDR` of `server1` is `agent-server1`'s HTTP address, and so
//! on), as in production: a registration belongs to the agent it was made
//! on, so losing an agent loses only its own process's registration.
//!
//! The lorem processes get the same environment variables as their compose
//! services and nothing else ([`server_env`], [`gateway_env`]); only the
//! addresses differ ([`ADDRESS_VARS`]): containers listen on `0.0.0.0` and
//! name each other by service name, here everything is on 127.0.0.1. Every
//! port can be overridden, and 0 picks a free one ([`Options::ephemeral`]).
//!
//! [`Topology::start`] returns once the gateway lists both servers; every
//! process is in a process group of its own with a watchdog, so a Ctrl-C
//! reaches only the caller (which stops things in order with
//! [`Topology::stop`]) and a caller that dies takes every process along.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tracing::debug;

use crate::process::{
    Proc, STOP_GRACE, Spec, StartFailure, exchange, http_get, or_free, temp_dir, wait_ready,
    with_port_retries,
};
use crate::{
    ConsulCluster, ETCD_USER, EtcdCluster, Pki, RegistryServer, SecuredConsul, SecuredEtcd,
    SecuredZk, ZkEnsemble,
};

/// The ids of the two lorem servers, which are also their compose service
/// names and their `LOREM_ID`.
pub const SERVER_IDS: [&str; 2] = ["server1", "server2"];

/// The compose service name of the gateway.
pub const GATEWAY: &str = "client";

/// Where the servers listen unless overridden (the compose files publish
/// them on the same host ports).
pub const DEFAULT_SERVER_PORTS: [u16; 2] = [8081, 8082];

/// Where the gateway listens unless overridden (as in the compose files).
pub const DEFAULT_GATEWAY_PORT: u16 = 8090;

/// `REGISTRY_TTL`, as in the compose files.
pub const REGISTRY_TTL: &str = "10s";

/// `LOREM_DRAIN_DELAY`, as in the compose files.
pub const DRAIN_DELAY: &str = "2s";

/// `RUST_LOG`, as in the compose files.
pub const RUST_LOG: &str = "info";

/// The variables whose values differ between a compose file and this
/// topology because they are addresses; every other value is the same.
pub const ADDRESS_VARS: [&str; 4] = [
    "REGISTRY_ADDR",
    "LOREM_LISTEN",
    "LOREM_ADVERTISE",
    "GATEWAY_LISTEN",
];

/// The last line of [`Topology::summary`]: a script reading the output
/// knows the topology is ready when it sees it.
pub const READY_LINE: &str = "Ctrl-C or SIGTERM stops everything.";

/// How long the lorem servers and the gateway may take to be ready.
const LOREM_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many bytes of one log [`Topology::new_log_lines`] reads per call.
const LOG_CHUNK: u64 = 64 * 1024;

/// How stop waits poll.
const POLL: Duration = Duration::from_millis(50);

/// The registry a topology runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Three Consul servers and a client agent per lorem process
    /// (`docker-compose.consul.yml`).
    Consul,
    /// A 3-member etcd cluster (`docker-compose.etcd.yml`).
    Etcd,
    /// A 3-member ZooKeeper ensemble (`docker-compose.zk.yml`).
    Zookeeper,
}

impl Backend {
    /// Every backend, in the order the compose files are usually listed.
    pub const ALL: [Backend; 3] = [Backend::Consul, Backend::Etcd, Backend::Zookeeper];

    /// The name `REGISTRY` takes: `consul`, `etcd`, `zookeeper`.
    pub fn registry(self) -> &'static str {
        match self {
            Backend::Consul => "consul",
            Backend::Etcd => "etcd",
            Backend::Zookeeper => "zookeeper",
        }
    }

    /// The compose file at the repository root that this topology mirrors.
    pub fn compose_file(self) -> &'static str {
        match self {
            Backend::Consul => "docker-compose.consul.yml",
            Backend::Etcd => "docker-compose.etcd.yml",
            Backend::Zookeeper => "docker-compose.zk.yml",
        }
    }

    /// The registry members' compose service names: `etcd1..3`, `zk1..3`,
    /// or for Consul the servers `consul1..3` then the client agents
    /// `agent-server1`, `agent-server2`, `agent-client` (see
    /// [`agent_of`]).
    pub fn members(self) -> &'static [&'static str] {
        match self {
            Backend::Consul => &[
                "consul1",
                "consul2",
                "consul3",
                "agent-server1",
                "agent-server2",
                "agent-client",
            ],
            Backend::Etcd => &["etcd1", "etcd2", "etcd3"],
            Backend::Zookeeper => &["zk1", "zk2", "zk3"],
        }
    }

    /// The registry members' client ports unless overridden: the ports
    /// the compose file publishes on the host.
    pub fn default_registry_ports(self) -> &'static [u16] {
        match self {
            Backend::Consul => &[8500, 18500, 28500, 8581, 8582, 8590],
            Backend::Etcd => &[2379, 22379, 32379],
            Backend::Zookeeper => &[2181, 2182, 2183],
        }
    }

    /// What the registry is, for people: `a Consul agent`, `a 3-member
    /// etcd cluster`, ...
    pub fn describe(self) -> &'static str {
        match self {
            Backend::Consul => "a 3-server Consul cluster with a client agent per lorem process",
            Backend::Etcd => "a 3-member etcd cluster",
            Backend::Zookeeper => "a 3-member ZooKeeper ensemble",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.registry())
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "consul" => Ok(Backend::Consul),
            "etcd" => Ok(Backend::Etcd),
            "zk" | "zookeeper" => Ok(Backend::Zookeeper),
            _ => bail!("unknown backend {s:?}; expected consul, etcd or zk (zookeeper)"),
        }
    }
}

/// The Consul client agent that lorem process `name` (`server1`,
/// `server2`, `client`) registers or reads through: `agent-<name>`, a
/// member of [`Backend::members`] on Consul.
pub fn agent_of(name: &str) -> String {
    format!("agent-{name}")
}

/// The environment of lorem server `id` listening on 127.0.0.1:`port`:
/// the variables of compose service `id`, with local addresses.
pub fn server_env(
    backend: Backend,
    registry_addr: &str,
    id: &str,
    port: u16,
) -> Vec<(String, String)> {
    let listen = format!("127.0.0.1:{port}");
    let mut env = registry_env(backend, registry_addr);
    env.extend([
        ("LOREM_LISTEN".to_owned(), listen.clone()),
        ("LOREM_ADVERTISE".to_owned(), listen),
        ("LOREM_ID".to_owned(), id.to_owned()),
        ("LOREM_DRAIN_DELAY".to_owned(), DRAIN_DELAY.to_owned()),
    ]);
    env
}

/// The environment of the gateway listening on 127.0.0.1:`port`: the
/// variables of compose service `client`, with local addresses.
pub fn gateway_env(backend: Backend, registry_addr: &str, port: u16) -> Vec<(String, String)> {
    let mut env = registry_env(backend, registry_addr);
    env.push(("GATEWAY_LISTEN".to_owned(), format!("127.0.0.1:{port}")));
    env
}

fn registry_env(backend: Backend, registry_addr: &str) -> Vec<(String, String)> {
    vec![
        ("REGISTRY".to_owned(), backend.registry().to_owned()),
        ("REGISTRY_ADDR".to_owned(), registry_addr.to_owned()),
        ("REGISTRY_TTL".to_owned(), REGISTRY_TTL.to_owned()),
        ("RUST_LOG".to_owned(), RUST_LOG.to_owned()),
    ]
}

/// What to start, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The registry.
    pub backend: Backend,
    /// The registry members' client ports, one per member of
    /// [`Backend::members`]: three for etcd and ZooKeeper, six HTTP ports
    /// for Consul (three servers, three client agents). 0 picks a free port.
    pub registry_ports: Vec<u16>,
    /// The ports of `server1` and `server2`; 0 picks a free port.
    pub server_ports: [u16; 2],
    /// The gateway's port; 0 picks a free port.
    pub gateway_port: u16,
    /// The directory holding the `lorem-server` and `lorem-client`
    /// binaries (`target/debug` after `cargo build`).
    pub bin_dir: PathBuf,
    /// A secured registry instead: one member with TLS, client
    /// certificates and a user or an ACL token (testkit's [`SecuredEtcd`],
    /// [`SecuredZk`], [`SecuredConsul`], certificates made at start), on
    /// free ports; the lorem processes get `REGISTRY_CA`, `REGISTRY_CERT`,
    /// `REGISTRY_KEY` and `REGISTRY_USER` + `REGISTRY_PASSWORD_FILE` or
    /// `REGISTRY_TOKEN_FILE`.
    pub secured: bool,
}

impl Options {
    /// The compose files' ports, binaries from `bin_dir`.
    pub fn new(backend: Backend, bin_dir: impl Into<PathBuf>) -> Self {
        Self {
            backend,
            registry_ports: backend.default_registry_ports().to_vec(),
            server_ports: DEFAULT_SERVER_PORTS,
            gateway_port: DEFAULT_GATEWAY_PORT,
            bin_dir: bin_dir.into(),
            secured: false,
        }
    }

    /// Every port picked free: for tests, or several topologies side by
    /// side.
    pub fn ephemeral(mut self) -> Self {
        self.registry_ports = vec![0; self.backend.members().len()];
        self.server_ports = [0, 0];
        self.gateway_port = 0;
        self
    }

    /// Checks the port counts, that no fixed port is given twice or taken
    /// right now, and that the binaries exist; returns their paths.
    fn check(&self) -> Result<(PathBuf, PathBuf)> {
        let members = self.backend.members();
        if !self.secured && self.registry_ports.len() != members.len() {
            bail!(
                "{} needs {} registry port(s) ({}), got {}: {:?}",
                self.backend.describe(),
                members.len(),
                members.join(", "),
                self.registry_ports.len(),
                self.registry_ports
            );
        }
        // A secured registry runs on free ports.
        let registry_ports = if self.secured {
            &[][..]
        } else {
            &self.registry_ports[..]
        };
        let named: Vec<(&str, u16)> = members
            .iter()
            .copied()
            .zip(registry_ports.iter().copied())
            .chain(SERVER_IDS.into_iter().zip(self.server_ports))
            .chain([(GATEWAY, self.gateway_port)])
            .collect();
        let mut seen = HashSet::new();
        for &(name, port) in &named {
            if port == 0 {
                continue;
            }
            if !seen.insert(port) {
                bail!("port {port} is given twice (again for {name}); every port must differ");
            }
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "127.0.0.1:{port} (for {name}) is already in use: stop what holds it \
                     (another topology, or a compose file's published ports?) or pick other ports \
                     (local-topology --help lists the port options; --ephemeral picks free ones)"
                );
            }
        }
        let find = |name: &str| {
            let path = self
                .bin_dir
                .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                Err(anyhow::anyhow!(
                    "cannot find {name} in {}: build it with `cargo build --bin lorem-server \
                     --bin lorem-client` (deploy/local.sh does), or point --bin-dir at the \
                     directory holding it",
                    self.bin_dir.display()
                ))
            }
        };
        Ok((find("lorem-server")?, find("lorem-client")?))
    }
}

/// The registry processes.
#[derive(Debug)]
enum Registry {
    /// Servers and client agents, in the order of [`Backend::members`].
    Consul(ConsulCluster),
    Etcd(EtcdCluster),
    Zookeeper(ZkEnsemble),
    /// One secured member (`--secured`), the certificates, and the
    /// variables that let a client in.
    Secured(Box<Secured>),
}

/// A secured registry of one member.
#[derive(Debug)]
struct Secured {
    server: Box<dyn SecuredServer>,
    /// Kept for the lifetime of the topology: the files the processes read.
    pki: Pki,
    /// `REGISTRY_CA`... for every lorem process.
    env: Vec<(String, String)>,
}

/// [`RegistryServer`] plus what the topology asks of a member.
trait SecuredServer: RegistryServer + fmt::Debug {
    fn pid(&self) -> Option<u32>;
    fn dir(&self) -> &Path;
    fn running(&self) -> bool {
        self.pid().is_some()
    }
}

impl SecuredServer for SecuredEtcd {
    fn pid(&self) -> Option<u32> {
        SecuredEtcd::pid(self)
    }
    fn dir(&self) -> &Path {
        SecuredEtcd::dir(self)
    }
}

impl SecuredServer for SecuredZk {
    fn pid(&self) -> Option<u32> {
        SecuredZk::pid(self)
    }
    fn dir(&self) -> &Path {
        SecuredZk::dir(self)
    }
}

impl SecuredServer for SecuredConsul {
    fn pid(&self) -> Option<u32> {
        SecuredConsul::pid(self)
    }
    fn dir(&self) -> &Path {
        SecuredConsul::dir(self)
    }
}

impl Secured {
    fn start(backend: Backend) -> Result<Self> {
        let pki = Pki::generate()?;
        let path = |p: PathBuf| p.display().to_string();
        let mut env = vec![
            ("REGISTRY_CA".to_owned(), path(pki.ca())),
            ("REGISTRY_CERT".to_owned(), path(pki.client_cert())),
            ("REGISTRY_KEY".to_owned(), path(pki.client_key())),
        ];
        // Passwords and tokens go in files, so that they are in no
        // environment, process list or log.
        let secret_file = |name: &str, secret: &str| -> Result<String> {
            let file = pki.dir().join(name);
            std::fs::write(&file, secret)
                .with_context(|| format!("cannot write {}", file.display()))?;
            Ok(path(file))
        };
        let server: Box<dyn SecuredServer> = match backend {
            Backend::Etcd | Backend::Zookeeper => {
                let (server, (user, password)): (Box<dyn SecuredServer>, _) = match backend {
                    Backend::Etcd => (Box::new(SecuredEtcd::start(&pki)?), ETCD_USER),
                    _ => (
                        Box::new(SecuredZk::start(&pki)?),
                        ("lorem", "lorem-password"),
                    ),
                };
                env.push(("REGISTRY_USER".to_owned(), user.to_owned()));
                env.push((
                    "REGISTRY_PASSWORD_FILE".to_owned(),
                    secret_file("registry-password", password)?,
                ));
                server
            }
            Backend::Consul => {
                let consul = SecuredConsul::start(&pki)?;
                env.push((
                    "REGISTRY_TOKEN_FILE".to_owned(),
                    secret_file("registry-token", consul.writer_token())?,
                ));
                Box::new(consul)
            }
        };
        Ok(Self { server, pki, env })
    }
}

impl Registry {
    fn start(backend: Backend, ports: &[u16], secured: bool) -> Result<Self> {
        if secured {
            return Ok(Registry::Secured(Box::new(Secured::start(backend)?)));
        }
        Ok(match backend {
            Backend::Consul => {
                // consul1..3 are the servers, the agents follow.
                let named: Vec<(&str, u16)> = backend
                    .members()
                    .iter()
                    .copied()
                    .zip(ports.iter().copied())
                    .collect();
                let (servers, agents) = named.split_at(3);
                Registry::Consul(ConsulCluster::start_on(servers, agents)?)
            }
            Backend::Etcd => Registry::Etcd(EtcdCluster::start_on(ports)?),
            Backend::Zookeeper => Registry::Zookeeper(ZkEnsemble::start_on(ports)?),
        })
    }

    /// `REGISTRY_ADDR` for lorem process `name`: every member's address
    /// for etcd and ZooKeeper, its own agent's for Consul.
    fn addr_for(&self, name: &str) -> String {
        match self {
            // One secured agent for every process.
            Registry::Secured(s) => s.server.registry_addr(),
            Registry::Consul(s) => s.http_addr(&agent_of(name)).unwrap_or_default(),
            Registry::Etcd(s) => s.registry_addr(),
            Registry::Zookeeper(s) => s.registry_addr(),
        }
    }

    /// The variables a lorem process needs besides `REGISTRY_ADDR`.
    fn security_env(&self) -> Vec<(String, String)> {
        match self {
            Registry::Secured(s) => s.env.clone(),
            _ => Vec::new(),
        }
    }

    /// The client address of member `i`.
    fn addrs(&self) -> Vec<String> {
        match self {
            Registry::Consul(s) => s.http_addrs(),
            Registry::Etcd(s) => s.endpoints(),
            Registry::Zookeeper(s) => s.connect_string().split(',').map(str::to_owned).collect(),
            Registry::Secured(s) => vec![s.server.registry_addr()],
        }
    }

    fn pid(&self, i: usize) -> Option<u32> {
        match self {
            Registry::Consul(s) => s.pid(i),
            Registry::Etcd(s) => s.member_pid(i),
            Registry::Zookeeper(s) => s.member_pid(i),
            Registry::Secured(s) => s.server.pid().filter(|_| i == 0),
        }
    }

    fn running(&mut self, i: usize) -> bool {
        match self {
            Registry::Consul(s) => s.running(i),
            Registry::Etcd(s) => s.member_running(i),
            Registry::Zookeeper(s) => s.member_running(i),
            // The members a secured topology does not have never exit.
            Registry::Secured(s) => i != 0 || s.server.running(),
        }
    }

    fn stop_member(&mut self, i: usize) -> Result<()> {
        match self {
            Registry::Consul(s) => s.stop_node(i),
            Registry::Etcd(s) => s.stop_member(i),
            Registry::Zookeeper(s) => s.stop_member(i),
            Registry::Secured(s) if i == 0 => s.server.stop(),
            Registry::Secured(_) => bail!("a secured topology has one registry member"),
        }
    }

    fn start_member(&mut self, i: usize) -> Result<()> {
        match self {
            Registry::Consul(s) => s.start_node(i),
            Registry::Etcd(s) => s.start_member(i),
            Registry::Zookeeper(s) => s.start_member(i),
            Registry::Secured(s) if i == 0 => s.server.start(),
            Registry::Secured(_) => bail!("a secured topology has one registry member"),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Registry::Consul(s) => s.dir(),
            Registry::Etcd(s) => s.dir(),
            Registry::Zookeeper(s) => s.dir(),
            Registry::Secured(s) => s.server.dir(),
        }
    }

    /// Stops every member (SIGTERM, SIGKILL after 10 s) and waits for them.
    /// etcd members one after the other: a member stopped while the others
    /// stop too waits about 6 s for a leadership transfer that cannot
    /// happen, one by one they take about 0.1 s each. Consul's client
    /// agents before its servers.
    fn stop(&mut self) -> Result<()> {
        match self {
            Registry::Consul(s) => s.stop_all(),
            Registry::Etcd(s) => (0..s.endpoints().len()).try_for_each(|i| s.stop_member(i)),
            Registry::Zookeeper(s) => s.stop(),
            Registry::Secured(s) => s.server.stop(),
        }
    }

    /// SIGKILLs every member.
    fn kill(&mut self) -> Result<()> {
        match self {
            Registry::Consul(s) => s.kill_all(),
            Registry::Etcd(s) => (0..s.endpoints().len()).try_for_each(|i| s.kill_member(i)),
            Registry::Zookeeper(s) => {
                let members = s.connect_string().split(',').count();
                (0..members).try_for_each(|i| s.kill_member(i))
            }
            // Dropping a server kills it.
            Registry::Secured(s) => s.server.stop(),
        }
    }
}

/// One lorem process: a server or the gateway.
#[derive(Debug)]
struct Lorem {
    /// Its compose service name.
    name: &'static str,
    port: u16,
    proc: Proc,
    /// How much of its log [`Topology::new_log_lines`] has passed on.
    log_read: u64,
}

/// One process of a running topology, for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its compose service name: `etcd2`, `server1`, `client`...
    pub name: String,
    /// Where it listens: `127.0.0.1:port` for a registry member (its
    /// client port), `http://127.0.0.1:port` for a lorem process.
    pub addr: String,
    /// Its PID while it runs.
    pub pid: Option<u32>,
}

/// A running topology. Dropping it SIGKILLs every process and removes the
/// logs; [`Topology::stop`] stops them in order.
#[derive(Debug)]
pub struct Topology {
    backend: Backend,
    registry: Registry,
    /// `server1`, `server2`, then the gateway.
    lorem: Vec<Lorem>,
    /// Processes already reported by [`Topology::poll_exits`].
    exited: HashSet<String>,
    started_in: Duration,
    /// Dropped after `lorem`, whose drop kills the processes.
    dir: TempDir,
}

impl Topology {
    /// Starts the registry, then both servers (waiting until each answers
    /// `/ready`: it is registered), then the gateway, and returns once the gateway's
    /// `/instances` lists both servers.
    ///
    /// # Errors
    ///
    /// If the options are inconsistent, a fixed port is taken, a binary
    /// is missing (the message says how to get it), or a process exits or
    /// is not ready in time (the message quotes its log). Whatever was
    /// started is stopped again.
    pub fn start(options: &Options) -> Result<Self> {
        let began = Instant::now();
        let (server_bin, client_bin) = options.check()?;
        let backend = options.backend;
        let registry = Registry::start(backend, &options.registry_ports, options.secured)?;
        let security = registry.security_env();
        let dir =
            temp_dir("local-topology-", "the lorem processes").map_err(StartFailure::into_error)?;

        let mut lorem = Vec::with_capacity(3);
        for (id, &port) in SERVER_IDS.iter().zip(&options.server_ports) {
            let server = start_lorem(
                id,
                port,
                dir.path(),
                |port| {
                    (
                        server_bin.clone(),
                        Vec::new(),
                        [
                            server_env(backend, &registry.addr_for(id), id, port),
                            security.clone(),
                        ]
                        .concat(),
                    )
                },
                // Registered, not just listening (as the compose files'
                // health checks).
                |port| matches!(http_get(port, "/ready"), Ok((200, _))),
            )?;
            lorem.push(server);
        }
        let gateway = start_lorem(
            GATEWAY,
            options.gateway_port,
            dir.path(),
            |port| {
                (
                    client_bin.clone(),
                    vec!["gateway".to_owned()],
                    [
                        gateway_env(backend, &registry.addr_for(GATEWAY), port),
                        security.clone(),
                    ]
                    .concat(),
                )
            },
            |port| {
                matches!(http_get(port, "/instances"), Ok((200, body))
                if SERVER_IDS.iter().all(|id| body.contains(&format!("\"id\":\"{id}\""))))
            },
        )?;
        lorem.push(gateway);
        Ok(Self {
            backend,
            registry,
            lorem,
            exited: HashSet::new(),
            started_in: began.elapsed(),
            dir,
        })
    }

    /// The registry this topology runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How long [`Topology::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The value of `REGISTRY_ADDR` lorem process `name` (`server1`,
    /// `server2`, `client`) got: the same for every process on etcd and
    /// ZooKeeper, its own agent's address on Consul.
    pub fn registry_addr(&self, name: &str) -> String {
        self.registry.addr_for(name)
    }

    fn member_index(&self, name: &str) -> Result<usize> {
        let members = self.backend.members();
        members.iter().position(|m| *m == name).with_context(|| {
            format!(
                "no registry member {name:?} in the {} topology; its members are {}",
                self.backend,
                members.join(", ")
            )
        })
    }

    /// Stops registry member `name` (e.g. `etcd2`, `consul1`,
    /// `agent-server2`: SIGTERM, SIGKILL after 10 s) and waits for its PID to
    /// exit; its data and ports are kept for [`Topology::start_member`].
    /// Nothing else is touched: the lorem processes live with the loss.
    ///
    /// # Errors
    ///
    /// If there is no such member, or it cannot be waited for.
    pub fn stop_member(&mut self, name: &str) -> Result<()> {
        let i = self.member_index(name)?;
        self.registry.stop_member(i)?;
        // Stopped on purpose: not an exit for poll_exits to report.
        self.exited.insert(name.to_owned());
        Ok(())
    }

    /// Starts registry member `name` again with its data and ports, and
    /// waits until it serves (if a quorum then runs).
    ///
    /// # Errors
    ///
    /// If there is no such member, or it exits or is not ready in time.
    pub fn start_member(&mut self, name: &str) -> Result<()> {
        let i = self.member_index(name)?;
        self.registry.start_member(i)?;
        self.exited.remove(name);
        Ok(())
    }

    /// The gateway's address, `127.0.0.1:port`.
    pub fn gateway_addr(&self) -> String {
        self.lorem
            .iter()
            .find(|l| l.name == GATEWAY)
            .map(|l| format!("127.0.0.1:{}", l.port))
            .unwrap_or_default()
    }

    /// Every process: the registry members, `server1`, `server2`, `client`.
    pub fn processes(&self) -> Vec<Process> {
        let members = self.backend.members();
        let registry =
            members
                .iter()
                .zip(self.registry.addrs())
                .enumerate()
                .map(|(i, (name, addr))| Process {
                    name: (*name).to_owned(),
                    addr,
                    pid: self.registry.pid(i),
                });
        let lorem = self.lorem.iter().map(|l| Process {
            name: l.name.to_owned(),
            addr: format!("http://127.0.0.1:{}", l.port),
            pid: l.proc.pid(),
        });
        registry.chain(lorem).collect()
    }

    /// What runs where, and what to try, for people; ends with
    /// [`READY_LINE`]. Each process is one line
    /// `  NAME ADDR pid PID` (whitespace-separated, stable for scripts).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "local topology on {}: {}, two lorem servers and the gateway, as in {}; ready in {:.1} s",
            self.backend,
            if matches!(self.registry, Registry::Secured(_)) {
                "a secured registry member"
            } else {
                self.backend.describe()
            },
            self.backend.compose_file(),
            self.started_in.as_secs_f64()
        );
        for p in self.processes() {
            let pid = p.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string());
            let _ = writeln!(s, "  {:<13} {:<24} pid {pid}", p.name, p.addr);
        }
        let gateway = self.gateway_addr();
        let secured = matches!(self.registry, Registry::Secured(_));
        if self.backend == Backend::Consul && !secured {
            let _ = writeln!(
                s,
                "REGISTRY=consul; each lorem process uses its own agent: REGISTRY_ADDR={} (server1), {} (server2), {} (client)",
                self.registry_addr("server1"),
                self.registry_addr("server2"),
                self.registry_addr(GATEWAY)
            );
            let _ = writeln!(s, "Consul UI: http://{}/ui", self.registry.addrs()[0]);
        } else {
            let _ = writeln!(
                s,
                "REGISTRY={} REGISTRY_ADDR={}",
                self.backend,
                self.registry_addr("server1")
            );
        }
        if let Registry::Secured(secured) = &self.registry {
            let vars: Vec<String> = secured
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                s,
                "secured (one member, TLS with client certificates, user login; certificates in {}): {}",
                secured.pki.dir().display(),
                vars.join(" ")
            );
        }
        let _ = writeln!(
            s,
            "logs: {} (lorem), {} (registry)",
            self.dir.path().display(),
            self.registry.dir().display()
        );
        let _ = writeln!(s, "try:");
        let _ = writeln!(
            s,
            "  curl -si -XPOST http://{gateway}/sd-lorem -d '{{\"requestType\":\"sentence\",\"min\":5,\"max\":10}}'"
        );
        let _ = writeln!(s, "  curl -s http://{gateway}/instances");
        let pid_of = |name: &str| {
            self.processes()
                .into_iter()
                .find(|p| p.name == name)
                .and_then(|p| p.pid)
                .map_or_else(|| "PID".to_owned(), |pid| pid.to_string())
        };
        let _ = writeln!(
            s,
            "  kill {}    # stop server2 (it deregisters); requests go to server1",
            pid_of("server2")
        );
        let member = self.backend.members()[0];
        if secured {
            // One member: stopping it stops the registry (the servers keep
            // serving and report not ready; the gateway keeps its last set).
            let _ = writeln!(
                s,
                "  kill {}    # stop the registry: the servers keep serving what they have",
                pid_of(member)
            );
        } else if self.backend == Backend::Consul {
            let _ = writeln!(
                s,
                "  kill {}    # stop the server {member}: two of three keep a quorum",
                pid_of(member)
            );
            let _ = writeln!(
                s,
                "  kill {}    # stop server2's agent: it leaves, taking server2 out of the set",
                pid_of(&agent_of("server2"))
            );
            let _ = writeln!(
                s,
                "  kill {}    # stop the gateway's agent: it keeps the last set, /instances says stale",
                pid_of(&agent_of(GATEWAY))
            );
        } else {
            let _ = writeln!(
                s,
                "  kill {}    # stop {member}: two members keep a quorum, nothing notices",
                pid_of(member)
            );
        }
        s.push_str(READY_LINE);
        s
    }

    /// Reaps the processes that have exited since the last call and says
    /// which, e.g. `server2 exited (exit status: 0)`; nothing is restarted.
    pub fn poll_exits(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let members = self.backend.members();
        for (i, name) in members.iter().enumerate() {
            if !self.exited.contains(*name) && !self.registry.running(i) {
                self.exited.insert((*name).to_owned());
                lines.push(format!("{name} exited; the rest keeps running"));
            }
        }
        for l in &mut self.lorem {
            if self.exited.contains(l.name) {
                continue;
            }
            if let Some(status) = l.proc.exit_status() {
                self.exited.insert(l.name.to_owned());
                lines.push(format!(
                    "{} exited ({status}); the rest keeps running",
                    l.name
                ));
            } else if l.proc.pid().is_none() {
                self.exited.insert(l.name.to_owned());
                lines.push(format!("{} exited; the rest keeps running", l.name));
            }
        }
        lines
    }

    /// The complete lines the lorem processes have logged since the last
    /// call, as `(name, line)`; at most 64 KiB per process per call.
    pub fn new_log_lines(&mut self) -> Vec<(&'static str, String)> {
        let mut lines = Vec::new();
        for l in &mut self.lorem {
            let Ok(chunk) = read_from(&l.proc.spec.log, l.log_read) else {
                continue;
            };
            let end = match chunk.iter().rposition(|b| *b == b'\n') {
                Some(end) => end,
                // A line longer than a whole chunk: pass it on in pieces
                // rather than wait forever for its end.
                None if chunk.len() as u64 >= LOG_CHUNK => chunk.len(),
                None => continue,
            };
            l.log_read += (end as u64 + 1).min(chunk.len() as u64);
            for line in String::from_utf8_lossy(&chunk[..end]).lines() {
                let line = strip_ansi(line);
                if !line.starts_with("--- testkit: ") && !line.trim().is_empty() {
                    lines.push((l.name, line));
                }
            }
        }
        lines
    }

    /// Stops everything in order: the gateway, both servers (which
    /// deregister and drain), then the registry; each SIGTERM is followed
    /// by SIGKILL after 10 s, or at once when `hurry` becomes true (a
    /// second Ctrl-C). Returns once every PID has exited.
    ///
    /// # Errors
    ///
    /// If a process cannot be waited for.
    pub fn stop(&mut self, hurry: &AtomicBool) -> Result<()> {
        let began = Instant::now();
        let (servers, gateway) = self.lorem.split_at_mut(2);
        stop_all(gateway, hurry)?;
        debug!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            "gateway stopped"
        );
        stop_all(servers, hurry)?;
        debug!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            "servers stopped"
        );
        let result = if hurry.load(Ordering::Relaxed) {
            self.registry.kill()
        } else {
            self.registry.stop()
        };
        debug!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            "registry stopped"
        );
        result
    }
}

/// Starts one lorem process on `port` (0: a free one, retried on a fresh
/// port if it was taken meanwhile) and waits until `ready(port)`.
fn start_lorem(
    name: &'static str,
    port: u16,
    dir: &Path,
    command: impl Fn(u16) -> (PathBuf, Vec<String>, Vec<(String, String)>),
    ready: impl Fn(u16) -> bool,
) -> Result<Lorem> {
    with_port_retries(name, || {
        let port = or_free(port);
        let (program, args, env) = command(port);
        let mut proc = Proc::new(Spec {
            label: format!("{name} (127.0.0.1:{port})"),
            program,
            args: args.into_iter().map(Into::into).collect(),
            cwd: dir.to_owned(),
            log: dir.join(format!("{name}.log")),
            env,
            clear_env: true,
            cleanup: Some(dir.to_owned()),
        });
        proc.spawn().map_err(StartFailure::Other)?;
        wait_ready([&mut proc], LOREM_READY_TIMEOUT, name, |_| ready(port))?;
        Ok(Lorem {
            name,
            port,
            proc,
            log_read: 0,
        })
    })
}

/// SIGTERMs every process, then waits for all of them, SIGKILLing those
/// still running after [`STOP_GRACE`] or once `hurry` is set.
fn stop_all(procs: &mut [Lorem], hurry: &AtomicBool) -> Result<()> {
    for l in procs.iter_mut() {
        l.proc.send_term();
    }
    let deadline = Instant::now() + STOP_GRACE;
    for l in procs.iter_mut() {
        while l.proc.is_running() {
            if hurry.load(Ordering::Relaxed) || Instant::now() >= deadline {
                l.proc.kill()?;
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// `line` without ANSI colour sequences (`ESC [ ... m`): the gateway's
/// logger colours its output even into a file.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the final byte of the sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Up to [`LOG_CHUNK`] bytes of `path` from `offset` on.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(LOG_CHUNK).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `POST /sd-lorem` on the gateway at 127.0.0.1:`port` with `body` over
/// HTTP/1.0; returns the status code and the `x-instance-id` header
/// (empty if none). For scripts and tests checking who answers.
///
/// # Errors
///
/// If the gateway cannot be reached or answers something that is not HTTP.
pub fn post_sd_lorem(port: u16, body: &str) -> Result<(u16, String)> {
    let request = format!(
        "POST /sd-lorem HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = exchange(port, request.as_bytes())
        .with_context(|| format!("no answer from the gateway on 127.0.0.1:{port}"))?;
    let head = reply.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the gateway's answer has no HTTP status line: {reply:.200}"))?;
    let instance = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-instance-id"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Ok((status, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_name_their_compose_file() {
        assert_eq!("zk".parse::<Backend>().unwrap(), Backend::Zookeeper);
        assert_eq!("ZooKeeper".parse::<Backend>().unwrap(), Backend::Zookeeper);
        assert_eq!(
            "etcd".parse::<Backend>().unwrap().compose_file(),
            "docker-compose.etcd.yml"
        );
        let err = "etc".parse::<Backend>().unwrap_err().to_string();
        assert!(
            err.contains("unknown backend \"etc\"; expected consul, etcd or zk"),
            "{err}"
        );
        for b in Backend::ALL {
            assert_eq!(b.members().len(), b.default_registry_ports().len());
        }
    }

    #[test]
    fn options_are_checked_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = Options::new(Backend::Etcd, dir.path()).ephemeral();
        options.registry_ports = vec![0];
        let err = options.check().unwrap_err().to_string();
        assert!(
            err.contains("needs 3 registry port(s) (etcd1, etcd2, etcd3), got 1"),
            "{err}"
        );

        let mut options = Options::new(Backend::Consul, dir.path()).ephemeral();
        options.server_ports = [4321, 4321];
        let err = options.check().unwrap_err().to_string();
        assert!(
            err.contains("port 4321 is given twice (again for server2)"),
            "{err}"
        );

        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut options = Options::new(Backend::Consul, dir.path()).ephemeral();
        options.gateway_port = port;
        let err = options.check().unwrap_err().to_string();
        assert!(
            err.contains(&format!("127.0.0.1:{port} (for client) is already in use")),
            "{err}"
        );

        let options = Options::new(Backend::Consul, dir.path()).ephemeral();
        let err = options.check().unwrap_err().to_string();
        assert!(err.contains("cannot find lorem-server in"), "{err}");
        assert!(
            err.contains("cargo build --bin lorem-server --bin lorem-client"),
            "{err}"
        );
    }

    #[test]
    fn colours_are_stripped_from_copied_logs() {
        assert_eq!(
            strip_ansi("\u{1b}[2m12:00\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m instances=2"),
            "12:00  INFO instances=2"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn the_environment_is_the_compose_one_with_local_addresses() {
        let env = server_env(Backend::Zookeeper, "127.0.0.1:2181", "server2", 8082);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("REGISTRY"), Some("zookeeper"));
        assert_eq!(get("LOREM_ID"), Some("server2"));
        assert_eq!(get("LOREM_LISTEN"), Some("127.0.0.1:8082"));
        assert_eq!(get("LOREM_ADVERTISE"), Some("127.0.0.1:8082"));
        assert_eq!(get("REGISTRY_TTL"), Some(REGISTRY_TTL));
        let env = gateway_env(Backend::Consul, "127.0.0.1:8500", 8090);
        assert!(env.contains(&("GATEWAY_LISTEN".into(), "127.0.0.1:8090".into())));
        assert!(!env.iter().any(|(k, _)| k.starts_with("ETCD_")));
    }
}
