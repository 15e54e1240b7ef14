//! Real processes for the end-to-end tests: `lorem-server` and
//! `lorem-client` children with the registry environment of a testkit
//! server, stopped by PID.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use registry::{BackendConfig, Settings, consul, etcd, zookeeper};
use testkit::RegistryServer;

/// The TTL every process of these tests registers with.
pub const TTL: &str = "2s";

/// A child process, SIGKILLed (by PID) if the test ends before it exits.
pub struct Guard(pub Option<Child>);

impl Guard {
    /// The child's PID (0 once it has been taken).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits (bounded by `within`) for the child to exit; polls, so it can
    /// be called from async tests without blocking a runtime thread long.
    pub async fn wait(mut self, within: Duration) -> ExitStatus {
        let mut child = self.0.take().expect("child still running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("process {} did not exit within {within:?}", child.id());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit status.
    pub async fn terminate(self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(20)).await
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Gives `command` the registry settings of `server` (backend `backend`)
/// and nothing else from the test's own environment that would change them.
pub fn env_for(command: &mut Command, backend: &str, server: &dyn RegistryServer) {
    command
        .env("REGISTRY", backend)
        .env("REGISTRY_ADDR", server.registry_addr())
        .env("REGISTRY_TTL", TTL)
        .env("REGISTRY_TIMEOUT", "5s")
        .env_remove("REGISTRY_CONFIG")
        .env_remove("REGISTRY_PREFIX")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
}

/// The same settings, for a watcher in the test process.
pub fn settings(backend: &str, server: &dyn RegistryServer) -> Settings {
    let addr: Vec<String> = server
        .registry_addr()
        .split(',')
        .map(str::to_owned)
        .collect();
    Settings {
        backend: match backend {
            "etcd" => BackendConfig::Etcd(etcd::Config {
                addr,
                ..etcd::Config::default()
            }),
            "zookeeper" => BackendConfig::Zookeeper(zookeeper::Config {
                addr,
                ..zookeeper::Config::default()
            }),
            _ => BackendConfig::Consul(consul::Config {
                addr,
                ..consul::Config::default()
            }),
        },
        ttl: humantime::parse_duration(TTL).expect("a duration"),
        timeout: Duration::from_secs(5),
    }
}

/// Prints a measurement and keeps it for the end of `scripts/test.sh`.
pub fn record(line: String) {
    testkit::record_timing(env!("CARGO_TARGET_TMPDIR"), &line);
}

/// `lorem-server` belongs to the `lorem` package, so Cargo gives these tests
/// no `CARGO_BIN_EXE_` for it; it sits next to this package's binaries when
/// `cargo test --workspace` built them.
pub fn lorem_server_bin() -> std::path::PathBuf {
    let ours = std::path::Path::new(env!("CARGO_BIN_EXE_lorem-client"));
    let path = ours.with_file_name(format!("lorem-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the whole workspace's tests (scripts/test.sh, or cargo test --workspace), or cargo build --bin lorem-server first",
        path.display()
    );
    path
}

/// The ids of the live instances of `lorem` that `watcher` reads now (empty
/// if the registry cannot be read).
pub async fn live_ids(watcher: &dyn registry::Watcher) -> Vec<String> {
    watcher
        .instances("lorem")
        .await
        .map(|found| found.into_iter().map(|i| i.id).collect())
        .unwrap_or_default()
}

/// Waits until `watcher` lists exactly `want` (sorted) for `lorem`; returns
/// how long that took.
pub async fn await_ids(
    watcher: &dyn registry::Watcher,
    want: &[&str],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let deadline = started + within;
    loop {
        let ids = live_ids(watcher).await;
        if ids == want {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "lorem instances never became {want:?} within {within:?}; last: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
