//! The backend being measured: a server started by the test kit or given
//! by address, and how to connect to it (in this process and from child
//! processes).

use std::sync::Arc;
use std::time::Duration;

use registry::{BackendConfig, DynRegistry, MemoryRegistry, Settings, consul, etcd, zookeeper};
use testkit::{ConsulAgent, EtcdServer, RegistryServer, ZkServer};

use super::child::proc_status_mib;
use super::{Backend, BenchOptions};

/// The deadline of every registry call of the bench (`REGISTRY_TIMEOUT`).
/// The Java heap of the ZooKeeper server `--spawn` starts, in MiB.
const BENCH_ZK_HEAP_MIB: u32 = 512;
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// One backend under measurement.
pub(crate) struct Target {
    pub(crate) backend: Backend,
    /// The measured settings: TTL from the sizes, [`TIMEOUT`].
    settings: Settings,
    /// `REGISTRY_ADDR`; `None` for memory.
    pub(crate) addr: Option<String>,
    /// The isolated store of the memory backend.
    memory: Option<MemoryRegistry>,
    /// Kept so that a spawned server runs while measured; dropping it
    /// SIGKILLs it and removes its temp dir.
    server: Option<Box<dyn RegistryServer>>,
    pid: Option<u32>,
}

impl Target {
    /// Starts (`--spawn`) or points at the server of `backend`.
    pub(crate) async fn start(backend: Backend, options: &BenchOptions) -> Result<Target, String> {
        let ttl = options.sizes.ttl;
        let mut target = Target {
            backend,
            settings: Settings {
                backend: BackendConfig::default(),
                ttl,
                timeout: TIMEOUT,
            },
            addr: None,
            memory: None,
            server: None,
            pid: None,
        };
        if backend == Backend::Memory {
            target.memory = Some(MemoryRegistry::new(ttl));
            return Ok(target);
        }
        let addr = if options.spawn {
            let (server, pid) = spawn(backend).await?;
            let addr = server.registry_addr();
            target.server = Some(server);
            target.pid = pid;
            addr
        } else {
            options
                .addrs
                .get(&backend)
                .cloned()
                .ok_or_else(|| format!("no address for {backend}"))?
        };
        // `REGISTRY_ADDR` form: comma-separated members.
        let addrs: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        target.settings.backend = match backend {
            Backend::Etcd => BackendConfig::Etcd(etcd::Config {
                addr: addrs,
                ..etcd::Config::default()
            }),
            Backend::Zookeeper => BackendConfig::Zookeeper(zookeeper::Config {
                addr: addrs,
                ..zookeeper::Config::default()
            }),
            Backend::Consul => BackendConfig::Consul(consul::Config {
                addr: addrs,
                ..consul::Config::default()
            }),
            Backend::Memory => BackendConfig::default(),
        };
        target.addr = Some(addr);
        Ok(target)
    }

    /// A new connection (registrar and watcher) whose registrations live
    /// `ttl` after their last keep-alive and whose calls are bounded by
    /// `timeout`; for memory, a handle on the bench's own store.
    pub(crate) async fn connect(
        &self,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<DynRegistry, String> {
        if let Some(memory) = &self.memory {
            return Ok(Arc::new(memory.with_ttl(ttl)));
        }
        let settings = Settings {
            ttl,
            timeout,
            ..self.settings.clone()
        };
        registry::connect(&settings)
            .await
            .map_err(|e| format!("cannot connect: {e}"))
    }

    /// The measured TTL.
    pub(crate) fn ttl(&self) -> Duration {
        self.settings.ttl
    }

    /// How long a measured registration outlives its last keep-alive: the
    /// TTL, or ZooKeeper's session timeout (the default rule, at least 6 s).
    pub(crate) fn expiry(&self) -> Duration {
        match &self.settings.backend {
            BackendConfig::Zookeeper(zk) => zk.effective_session_timeout(self.settings.ttl),
            _ => self.settings.ttl,
        }
    }

    /// The environment of an `sdctl` child process that reaches this
    /// backend with the given TTL and timeout.
    pub(crate) fn child_env(&self, ttl: Duration, timeout: Duration) -> Vec<(String, String)> {
        let mut env = vec![
            ("REGISTRY".to_owned(), self.backend.name().to_owned()),
            ("REGISTRY_TTL".to_owned(), format!("{}ms", ttl.as_millis())),
            (
                "REGISTRY_TIMEOUT".to_owned(),
                format!("{}ms", timeout.as_millis()),
            ),
        ];
        if let Some(addr) = &self.addr {
            env.push(("REGISTRY_ADDR".to_owned(), addr.clone()));
        }
        env
    }

    /// The spawned server's resident memory now, MiB.
    pub(crate) fn server_rss_mib(&self) -> Option<f64> {
        self.pid.and_then(|pid| proc_status_mib(pid, "VmRSS"))
    }

    /// Stops a spawned server (SIGKILL: its data is thrown away).
    pub(crate) async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            let _ = tokio::task::spawn_blocking(move || drop(server)).await;
        }
    }
}

/// A started server and its PID.
type Spawned = (Box<dyn RegistryServer>, Option<u32>);

/// Starts the test kit's server of `backend` (blocking work, off the
/// runtime's threads).
async fn spawn(backend: Backend) -> Result<Spawned, String> {
    let started = tokio::task::spawn_blocking(move || -> Result<Spawned, String> {
        Ok(match backend {
            Backend::Etcd => {
                let server = EtcdServer::start().map_err(|e| format!("{e:#}"))?;
                let pid = server.pid();
                (Box::new(server) as Box<dyn RegistryServer>, pid)
            }
            Backend::Zookeeper => {
                // A heap for the scale rows' 100,000 nodes (64 MiB, the tests'
                // default, cannot hold them).
                let server =
                    ZkServer::start_with_heap(BENCH_ZK_HEAP_MIB).map_err(|e| format!("{e:#}"))?;
                let pid = server.pid();
                (Box::new(server) as Box<dyn RegistryServer>, pid)
            }
            Backend::Consul => {
                let server = ConsulAgent::start().map_err(|e| format!("{e:#}"))?;
                let pid = server.pid();
                (Box::new(server) as Box<dyn RegistryServer>, pid)
            }
            Backend::Memory => return Err("the memory backend has no server".to_owned()),
        })
    })
    .await
    .map_err(|e| format!("the server start panicked: {e}"))?;
    started.map_err(|e| format!("cannot start {backend}: {e}"))
}
