//! One conformance suite that every backend must pass.
//!
//! Each behaviour is one generic `async fn` taking a [`Harness`]; the
//! `conformance!` macro calls it once per backend: the in-process `memory`
//! registry, and real etcd, ZooKeeper and Consul servers started by the
//! `testkit` on loopback. Nothing here mocks a backend.
//!
//! Behaviours a backend cannot offer are listed in [`NOT_APPLICABLE`], with
//! the reason, and the test says so in its output instead of skipping silently:
//! - memory has no separate server process to restart (8), to point at a
//!   wrong address (9: it has no address) or to lose (10), and nothing but
//!   our own code can write into it, so there is no garbage to skip (7).
//! - memory has no server that can hang, so its registrar never has a
//!   session to re-establish (R1).
//!
//! Timings (how long a crash took to be noticed, how long a restart took to
//! heal) are printed, never asserted beyond generous deadlines.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::{
    BackendConfig, DynRegistry, Error, Instance, MemoryRegistry, Registrar, Settings, Watcher,
    consul, etcd, zookeeper,
};
use testkit::{
    ConsulAgent, ETCD_USER, EtcdServer, Pki, RegistryServer, SecuredConsul, SecuredEtcd, SecuredZk,
    ZkServer,
};

mod common;
use common::freeze::Frozen;
use common::{await_instances, await_snapshot, ids, instance, watch_until};

/// The registration TTL every backend runs the suite with.
const TTL: Duration = Duration::from_secs(2);
/// The per-call deadline (REGISTRY_TIMEOUT) of the suite.
const TIMEOUT: Duration = Duration::from_secs(5);

/// (backend, behaviour, why it does not apply).
const NOT_APPLICABLE: &[(&str, &str, &str)] = &[
    (
        "memory",
        "garbage",
        "only this process writes the memory registry, through validated calls",
    ),
    (
        "memory",
        "restart",
        "the memory registry has no server to restart; it lives and dies with the process",
    ),
    (
        "memory",
        "unreachable",
        "the memory registry has no address to get wrong",
    ),
    (
        "memory",
        "outage",
        "the memory registry has no server to lose: it answers as long as the process lives",
    ),
    (
        "memory",
        "sigkill",
        "a killed process takes its memory registry with it; abandon() covers the crash",
    ),
    (
        "memory",
        "register_during_reconnect",
        "the memory registry has no server that can hang, so there is never a session to re-establish",
    ),
];

fn not_applicable(backend: &str, behaviour: &str) -> bool {
    match NOT_APPLICABLE
        .iter()
        .find(|(b, what, _)| *b == backend && *what == behaviour)
    {
        Some((_, _, why)) => {
            report(format!(
                "conformance {backend} {behaviour}: does not apply: {why}"
            ));
            true
        }
        None => false,
    }
}

/// Prints a measurement and keeps it for the end of `scripts/test.sh`.
fn report(line: String) {
    testkit::record_timing(env!("CARGO_TARGET_TMPDIR"), &line);
}

/// Everything logged at WARN and above by any test of this binary, so a test
/// can check that a warning was given. Shown on stderr too when `RUST_LOG`
/// is set.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        if std::env::var_os("RUST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

/// True if one WARN line contains every needle.
fn logged(needles: &[&str]) -> bool {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .any(|line| line.contains("WARN") && needles.iter().all(|n| line.contains(n)))
}

/// A backend under test: its server (if any) and the settings to reach it.
struct Harness {
    backend: &'static str,
    server: Option<Box<dyn RegistryServer>>,
    settings: Settings,
    /// Shared store for the memory backend, so that separate "connections"
    /// of one test see each other while tests stay isolated.
    memory: Option<MemoryRegistry>,
    /// The server's PID, to freeze it (SIGSTOP) in place: a hung server.
    pid: Option<u32>,
    /// The certificates of a secured server (kept until the test ends).
    _pki: Option<Pki>,
}

impl Harness {
    fn memory() -> Harness {
        Harness {
            backend: "memory",
            server: None,
            settings: settings(BackendConfig::default()),
            memory: Some(MemoryRegistry::new(TTL)),
            pid: None,
            _pki: None,
        }
    }

    fn etcd() -> Harness {
        let server = EtcdServer::start().expect("start etcd (see testkit for how to install it)");
        let config = etcd::Config {
            addr: vec![server.registry_addr()],
            ..etcd::Config::default()
        };
        let pid = server.pid();
        Harness::real("etcd", Box::new(server), pid, BackendConfig::Etcd(config))
    }

    fn zookeeper() -> Harness {
        let server =
            ZkServer::start().expect("start ZooKeeper (see testkit for how to install it)");
        let config = zookeeper::Config {
            addr: vec![server.registry_addr()],
            ..zookeeper::Config::default()
        };
        let pid = server.pid();
        Harness::real(
            "zookeeper",
            Box::new(server),
            pid,
            BackendConfig::Zookeeper(config),
        )
    }

    fn consul() -> Harness {
        let server =
            ConsulAgent::start().expect("start Consul (run scripts/build-consul.sh to build it)");
        let config = consul::Config {
            addr: vec![server.registry_addr()],
            ..consul::Config::default()
        };
        let pid = server.pid();
        Harness::real(
            "consul",
            Box::new(server),
            pid,
            BackendConfig::Consul(config),
        )
    }

    fn real(
        backend: &'static str,
        server: Box<dyn RegistryServer>,
        pid: Option<u32>,
        config: BackendConfig,
    ) -> Self {
        Harness {
            backend,
            server: Some(server),
            settings: settings(config),
            memory: None,
            pid,
            _pki: None,
        }
    }

    /// etcd with mutual TLS and a user whose role covers only `/services/`
    /// (issue 15).
    fn secured_etcd() -> Harness {
        let pki = Pki::generate().expect("generate certificates");
        let server = SecuredEtcd::start(&pki).expect("start the secured etcd");
        let config = etcd::Config {
            addr: vec![server.registry_addr()],
            security: registry::Security {
                ca: Some(pki.ca()),
                cert: Some(pki.client_cert()),
                key: Some(pki.client_key()),
                user: Some(ETCD_USER.0.to_owned()),
                password: Some(ETCD_USER.1.into()),
                ..Default::default()
            },
            ..etcd::Config::default()
        };
        let pid = server.pid();
        Harness {
            _pki: Some(pki),
            ..Harness::real("etcd", Box::new(server), pid, BackendConfig::Etcd(config))
        }
    }

    /// ZooKeeper over TLS (client certificate) with a digest identity.
    fn secured_zookeeper() -> Harness {
        let pki = Pki::generate().expect("generate certificates");
        let server = SecuredZk::start(&pki).expect("start the secured ZooKeeper");
        let config = zookeeper::Config {
            addr: vec![server.registry_addr()],
            security: registry::Security {
                ca: Some(pki.ca()),
                cert: Some(pki.client_cert()),
                key: Some(pki.client_key()),
                user: Some("registry".to_owned()),
                password: Some("registry-pw".into()),
                ..Default::default()
            },
            ..zookeeper::Config::default()
        };
        let pid = server.pid();
        Harness {
            _pki: Some(pki),
            ..Harness::real(
                "zookeeper",
                Box::new(server),
                pid,
                BackendConfig::Zookeeper(config),
            )
        }
    }

    /// Consul over HTTPS with `verify_incoming` and ACLs (default deny),
    /// with the writer token.
    fn secured_consul() -> Harness {
        let pki = Pki::generate().expect("generate certificates");
        let server = SecuredConsul::start(&pki)
            .expect("start the secured Consul (run scripts/build-consul.sh to build it)");
        let config = consul::Config {
            addr: vec![server.registry_addr()],
            security: registry::Security {
                ca: Some(pki.ca()),
                cert: Some(pki.client_cert()),
                key: Some(pki.client_key()),
                token: Some(server.writer_token().into()),
                ..Default::default()
            },
            ..consul::Config::default()
        };
        let pid = server.pid();
        Harness {
            _pki: Some(pki),
            ..Harness::real(
                "consul",
                Box::new(server),
                pid,
                BackendConfig::Consul(config),
            )
        }
    }

    /// A new, separate connection to the backend: a registrar of its own
    /// (for memory, on the same store, as each `registry::connect` is).
    async fn connect(&self) -> DynRegistry {
        match &self.memory {
            Some(memory) => Arc::new(memory.with_ttl(self.settings.ttl)),
            None => registry::connect(&self.settings)
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", self.backend)),
        }
    }

    /// How long an abandoned instance may take to disappear: the TTL, or the
    /// ZooKeeper session timeout.
    fn expiry(&self) -> Duration {
        match &self.settings.backend {
            BackendConfig::Zookeeper(zk) => zk.effective_session_timeout(self.settings.ttl),
            _ => self.settings.ttl,
        }
    }

    fn server(&mut self) -> &mut dyn RegistryServer {
        self.server
            .as_deref_mut()
            .expect("this backend has a server")
    }
}

fn settings(backend: BackendConfig) -> Settings {
    Settings {
        backend,
        ttl: TTL,
        timeout: TIMEOUT,
    }
}

// 1. A registered instance is visible to a separate watcher within a deadline.
async fn visible(h: Harness) {
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let mut watch = watcher.watch("svc1");
    await_snapshot(&mut watch, TIMEOUT, "the first, empty snapshot", |s| {
        s.is_empty()
    })
    .await;
    let started = Instant::now();
    let a = registrar
        .register(instance("svc1", "a", 9001))
        .await
        .unwrap();
    await_snapshot(&mut watch, TIMEOUT, "instance a to appear", |s| {
        ids(s) == ["a"]
    })
    .await;
    report(format!(
        "conformance {} visible: register -> watch event in {:?}",
        h.backend,
        started.elapsed()
    ));
    let b = registrar
        .register(instance("svc1", "b", 9002))
        .await
        .unwrap();
    await_snapshot(&mut watch, TIMEOUT, "instances a and b", |s| {
        ids(s) == ["a", "b"]
    })
    .await;
    let listed = watcher.instances("svc1").await.unwrap();
    assert_eq!(ids(&listed), ["a", "b"]);
    assert!(
        watcher
            .services()
            .await
            .unwrap()
            .contains(&"svc1".to_owned())
    );
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
}

// 2. Tags, metadata and weight round-trip.
async fn round_trip(h: Harness) {
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let rich = instance("svc2", "rich", 9003)
        .with_tag("v1")
        .with_tag("blue green")
        .with_metadata("zone", "eu-west-1")
        .with_metadata("build_id", "x".repeat(512))
        .with_weight(7);
    let plain = instance("svc2", "plain", 9004);
    let _r1 = registrar.register(rich.clone()).await.unwrap();
    let _r2 = registrar.register(plain.clone()).await.unwrap();
    let found = await_instances(&*watcher, "svc2", TIMEOUT, "both instances", |s| {
        s.len() == 2
    })
    .await;
    let by_id: BTreeMap<&str, &Instance> = found.iter().map(|i| (i.id.as_str(), i)).collect();
    assert_eq!(
        by_id["rich"], &rich,
        "tags, metadata and weight must round-trip"
    );
    assert_eq!(by_id["plain"], &plain);
}

// 3. After deregister, the instance is gone.
async fn deregister(h: Harness) {
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let a = registrar
        .register(instance("svc3", "a", 9005))
        .await
        .unwrap();
    let _b = registrar
        .register(instance("svc3", "b", 9006))
        .await
        .unwrap();
    let mut watch = watcher.watch("svc3");
    await_snapshot(&mut watch, TIMEOUT, "a and b", |s| s.len() == 2).await;
    let started = Instant::now();
    a.deregister().await.unwrap();
    await_snapshot(&mut watch, TIMEOUT, "a to be gone after deregister", |s| {
        ids(s) == ["b"]
    })
    .await;
    report(format!(
        "conformance {} deregister: gone from the watch in {:?}",
        h.backend,
        started.elapsed()
    ));
    assert_eq!(ids(&watcher.instances("svc3").await.unwrap()), ["b"]);
}

// 4a. Crash by abandon(): gone after the TTL or session timeout.
async fn crash_abandon(h: Harness) {
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let kept = registrar
        .register(instance("svc4", "kept", 9007))
        .await
        .unwrap();
    let lost = registrar
        .register(instance("svc4", "lost", 9008))
        .await
        .unwrap();
    let mut watch = watcher.watch("svc4");
    await_snapshot(&mut watch, TIMEOUT, "both instances", |s| s.len() == 2).await;
    let started = Instant::now();
    lost.abandon();
    // Abandoning is not deregistering: the instance is still there until
    // its TTL or session runs out.
    assert_eq!(
        ids(&watcher.instances("svc4").await.unwrap()),
        ["kept", "lost"],
        "an abandoned instance stays registered until it expires"
    );
    await_snapshot(
        &mut watch,
        h.expiry() * 5,
        "the abandoned instance to expire",
        |s| ids(s) == ["kept"],
    )
    .await;
    report(format!(
        "conformance {} crash (abandon): gone after {:?} (expiry {:?})",
        h.backend,
        started.elapsed(),
        h.expiry()
    ));
    // The other instance of the same registrar is still kept alive.
    tokio::time::sleep(h.expiry()).await;
    assert_eq!(ids(&watcher.instances("svc4").await.unwrap()), ["kept"]);
    kept.deregister().await.unwrap();
}

// 4b. Crash by SIGKILL of a child process holding the registration.
async fn crash_sigkill(h: Harness) {
    if not_applicable(h.backend, "sigkill") {
        return;
    }
    let watcher = h.connect().await;
    let mut watch = watcher.watch("svc4k");
    let mut child = sdctl(&h)
        .args(["register", "svc4k", "child", "127.0.0.1:9009"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sdctl");
    await_snapshot(&mut watch, TIMEOUT * 2, "the child's instance", |s| {
        ids(s) == ["child"]
    })
    .await;
    let started = Instant::now();
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    await_snapshot(
        &mut watch,
        h.expiry() * 5,
        "the killed child's instance to expire",
        |s| s.is_empty(),
    )
    .await;
    report(format!(
        "conformance {} crash (SIGKILL): gone after {:?} (expiry {:?})",
        h.backend,
        started.elapsed(),
        h.expiry()
    ));
}

/// `sdctl` (crates/sdctl) with the harness's settings in its environment.
/// It is another package's binary, so it is found next to this test's
/// executable (`cargo test --workspace` builds it) or through `SDCTL_BIN`.
fn sdctl(h: &Harness) -> std::process::Command {
    let bin = testkit::sdctl_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let mut command = std::process::Command::new(bin);
    command
        .env("REGISTRY", h.backend)
        .env("REGISTRY_TTL", format!("{}s", h.settings.ttl.as_secs()))
        .env(
            "REGISTRY_TIMEOUT",
            format!("{}s", h.settings.timeout.as_secs()),
        )
        .env_remove("REGISTRY_CONFIG")
        .env_remove("REGISTRY_PREFIX")
        .stdin(Stdio::null());
    if let Some(server) = &h.server {
        command.env("REGISTRY_ADDR", server.registry_addr());
    }
    // A secured server: the same settings, as variables.
    let security = match &h.settings.backend {
        BackendConfig::Etcd(c) => Some(&c.security),
        BackendConfig::Zookeeper(c) => Some(&c.security),
        BackendConfig::Consul(c) => Some(&c.security),
        _ => None,
    };
    for var in [
        "REGISTRY_CA",
        "REGISTRY_CERT",
        "REGISTRY_KEY",
        "REGISTRY_USER",
        "REGISTRY_PASSWORD",
        "REGISTRY_TOKEN",
    ] {
        command.env_remove(var);
    }
    if let Some(security) = security {
        for (var, path) in [
            ("REGISTRY_CA", &security.ca),
            ("REGISTRY_CERT", &security.cert),
            ("REGISTRY_KEY", &security.key),
        ] {
            if let Some(path) = path {
                command.env(var, path);
            }
        }
        if let Some(user) = &security.user {
            command.env("REGISTRY_USER", user);
        }
        if let Some(password) = &security.password {
            command.env("REGISTRY_PASSWORD", password.expose());
        }
        if let Some(token) = &security.token {
            command.env("REGISTRY_TOKEN", token.expose());
        }
    }
    command
}

// 4c. An operator removes an instance by service and id from another
// connection (`sdctl deregister`): watchers see it go at once, without
// waiting for a TTL; a registrar that still holds it restores it.
async fn operator_deregister(h: Harness) {
    let owner = h.connect().await;
    let operator = h.connect().await;
    let watcher = h.connect().await;
    let live = owner
        .register(instance("svc4o", "live", 9030))
        .await
        .unwrap();
    let crashed = owner
        .register(instance("svc4o", "crashed", 9031))
        .await
        .unwrap();
    let mut watch = watcher.watch("svc4o");
    await_snapshot(&mut watch, TIMEOUT, "both instances", |s| s.len() == 2).await;

    // The record of a crashed process goes at once, not after its expiry.
    crashed.abandon();
    let started = Instant::now();
    assert!(
        operator
            .deregister_instance("svc4o", "crashed")
            .await
            .unwrap(),
        "the crashed instance's record was there to remove"
    );
    await_snapshot(&mut watch, TIMEOUT, "the removed instance to go", |s| {
        ids(s) == ["live"]
    })
    .await;
    report(format!(
        "conformance {} operator deregister: gone from the watch in {:?} (expiry {:?})",
        h.backend,
        started.elapsed(),
        h.expiry()
    ));
    assert!(
        !operator
            .deregister_instance("svc4o", "crashed")
            .await
            .unwrap(),
        "a second removal finds nothing"
    );
    assert!(!operator.deregister_instance("svc4o", "nope").await.unwrap());
    assert!(!operator.deregister_instance("svc4x", "live").await.unwrap());
    let error = operator
        .deregister_instance("svc4o", "no such/id")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInstance(_)), "{error}");

    // A live owner restores its instance at its next check.
    assert!(operator.deregister_instance("svc4o", "live").await.unwrap());
    await_snapshot(&mut watch, TIMEOUT, "the live instance to go", |s| {
        s.is_empty()
    })
    .await;
    let started = Instant::now();
    await_snapshot(
        &mut watch,
        h.expiry() * 3,
        "the live owner to restore its instance",
        |s| ids(s) == ["live"],
    )
    .await;
    report(format!(
        "conformance {} operator deregister: a live owner restored it after {:?}",
        h.backend,
        started.elapsed()
    ));
    live.deregister().await.unwrap();
}

// 5. Additions and removals arrive in order; a later watcher gets the full set.
async fn ordering(h: Harness) {
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let mut watch = watcher.watch("svc5");
    await_snapshot(&mut watch, TIMEOUT, "the empty start", |s| s.is_empty()).await;
    // Four changes back to back, without waiting for the watch in between.
    // A watcher may coalesce changes, but every snapshot it emits must be one
    // of the states the registry went through, in that order.
    let states = ["", "a", "a,b", "b", "b,c"];
    let a = registrar
        .register(instance("svc5", "a", 9010))
        .await
        .unwrap();
    let b = registrar
        .register(instance("svc5", "b", 9011))
        .await
        .unwrap();
    a.deregister().await.unwrap();
    let c = registrar
        .register(instance("svc5", "c", 9012))
        .await
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while seen.last().map(String::as_str) != Some("b,c") {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(snapshot))) => seen.push(ids(&snapshot).join(",")),
            Ok(Some(Err(error))) => panic!("watch error in a quiet registry: {error}"),
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("never saw the final state [b,c]; saw {seen:?}"),
        }
    }
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| {
            states
                .iter()
                .position(|state| state == s)
                .unwrap_or_else(|| {
                    panic!("snapshot [{s}] is not a state the registry was in; saw {seen:?}")
                })
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "changes must arrive in order; saw {seen:?}"
    );
    report(format!(
        "conformance {} ordering: snapshots seen for 4 quick changes: {seen:?}",
        h.backend
    ));

    let late = h.connect().await;
    let mut late_watch = late.watch("svc5");
    let first = tokio::time::timeout(TIMEOUT, late_watch.next())
        .await
        .expect("a late watcher's first snapshot comes at once")
        .expect("stream open")
        .expect("no error");
    assert_eq!(
        ids(&first),
        ["b", "c"],
        "a late watcher starts with the full set"
    );
    b.deregister().await.unwrap();
    c.deregister().await.unwrap();
}

// 6. 200 instances registered concurrently are all visible.
async fn many(h: Harness) {
    const N: u16 = 200;
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let started = Instant::now();
    let registrations = futures::future::join_all(
        (0..N).map(|i| registrar.register(instance("svc6", &format!("i{i:03}"), 10000 + i))),
    )
    .await;
    let registrations: Vec<_> = registrations
        .into_iter()
        .map(|r| r.expect("every concurrent registration succeeds"))
        .collect();
    let registered = started.elapsed();
    let mut watch = watcher.watch("svc6");
    await_snapshot(&mut watch, TIMEOUT * 4, "all 200 instances", |s| {
        s.len() == usize::from(N)
    })
    .await;
    report(format!(
        "conformance {} many: {N} concurrent registrations in {registered:?}, all visible after {:?}",
        h.backend,
        started.elapsed()
    ));
    for r in registrations {
        r.abandon();
    }
}

// 7. Garbage under the prefix is skipped with a warning; the watcher keeps working.
async fn garbage(mut h: Harness) {
    if not_applicable(h.backend, "garbage") {
        return;
    }
    // One service name per backend: the warnings of parallel tests share a log.
    let svc = format!("svc7-{}", h.backend);
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let good = registrar
        .register(instance(&svc, "good", 9013))
        .await
        .unwrap();
    let mut watch = watcher.watch(&svc);
    await_snapshot(&mut watch, TIMEOUT, "the good instance", |s| {
        ids(s) == ["good"]
    })
    .await;
    let garbage_ids = write_garbage(&mut h, &svc).await;
    // The watch is still alive and correct: the next change is seen, and the
    // garbage never shows up.
    let next = registrar
        .register(instance(&svc, "next", 9014))
        .await
        .unwrap();
    await_snapshot(
        &mut watch,
        TIMEOUT,
        "the next instance after garbage",
        |s| ids(s) == ["good", "next"],
    )
    .await;
    assert_eq!(
        ids(&watcher.instances(&svc).await.unwrap()),
        ["good", "next"]
    );
    // A late watcher is not thrown off by the garbage either.
    let mut late = h.connect().await.watch(&svc);
    await_snapshot(&mut late, TIMEOUT, "a late snapshot without garbage", |s| {
        ids(s) == ["good", "next"]
    })
    .await;
    assert!(watcher.services().await.unwrap().contains(&svc));
    // Skipped *with a warning* that names the record.
    for id in garbage_ids {
        assert!(
            logged(&[&svc, id]),
            "no warning names the garbage record {svc}/{id}"
        );
    }
    good.deregister().await.unwrap();
    next.deregister().await.unwrap();
}

/// Writes records another tool could have left under the service's prefix,
/// using the backend's own tools, not our code.
async fn write_garbage(h: &mut Harness, service: &str) -> Vec<&'static str> {
    let addr = h.server().registry_addr();
    match h.backend {
        "etcd" => {
            let etcdctl = testkit::etcdctl_bin().expect("etcdctl");
            for (key, value) in [
                (
                    format!("/services/{service}/junk"),
                    "not json at all".to_owned(),
                ),
                (
                    format!("/services/{service}/wrongid"),
                    String::from_utf8(instance(service, "other", 1).to_json()).unwrap(),
                ),
                (
                    format!("/services/{service}/noport"),
                    format!(r#"{{"id":"noport","service":"{service}","address":"127.0.0.1"}}"#),
                ),
            ] {
                let status = std::process::Command::new(&etcdctl)
                    .args(["--endpoints", &addr, "put", &key, &value])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .status()
                    .expect("run etcdctl");
                assert!(status.success(), "etcdctl put {key}");
            }
            vec!["junk", "wrongid", "noport"]
        }
        "zookeeper" => {
            use zookeeper_client as zk;
            let client = zk::Client::connect(&addr)
                .await
                .expect("connect to ZooKeeper");
            let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            for (path, data) in [
                (
                    format!("/services/{service}/junk"),
                    b"\x00\xffbinary".to_vec(),
                ),
                (format!("/services/{service}/empty"), Vec::new()),
                (
                    format!("/services/{service}/badport"),
                    format!(r#"{{"id":"badport","service":"{service}","address":"h","port":0}}"#)
                        .into_bytes(),
                ),
            ] {
                client
                    .create(&path, &data, &options)
                    .await
                    .unwrap_or_else(|e| panic!("create {path}: {e}"));
            }
            vec!["junk", "empty", "badport"]
        }
        "consul" => {
            // Consul validates its own fields, so "garbage" there is a
            // registration that breaks our model: port 0, a bad id.
            let http = reqwest::Client::new();
            for body in [
                serde_json::json!({"ID": "bad id!", "Name": service, "Port": 9100}),
                serde_json::json!({"ID": "noport", "Name": service}),
            ] {
                let response = http
                    .put(format!("http://{addr}/v1/agent/service/register"))
                    .json(&body)
                    .send()
                    .await
                    .expect("reach the Consul agent");
                assert!(
                    response.status().is_success(),
                    "register garbage: {response:?}"
                );
            }
            vec!["bad id!", "noport"]
        }
        other => panic!("no garbage writer for {other}"),
    }
}

// 8. Backend restart: the watcher resumes with the correct set and the
// registrations come back, without restarting either side.
async fn restart(mut h: Harness) {
    if not_applicable(h.backend, "restart") {
        return;
    }
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let _a = registrar
        .register(instance("svc8", "a", 9015))
        .await
        .unwrap();
    let _b = registrar
        .register(instance("svc8", "b", 9016))
        .await
        .unwrap();
    let mut watch = watcher.watch("svc8");
    await_snapshot(&mut watch, TIMEOUT, "a and b before the restart", |s| {
        s.len() == 2
    })
    .await;
    let started = Instant::now();
    h.server().restart().expect("restart the server");
    let restarted = started.elapsed();
    // After the restart, a change must still reach this same watch...
    let _c = loop {
        match registrar.register(instance("svc8", "c", 9017)).await {
            Ok(c) => break c,
            Err(error) if started.elapsed() < TIMEOUT * 6 => {
                println!("  register during recovery: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("cannot register after the restart: {error}"),
        }
    };
    // ...and the earlier registrations must be back (for Consul's dev agent,
    // which forgets everything, only through re-registration).
    await_snapshot(
        &mut watch,
        TIMEOUT * 6,
        "a, b and c through the same watch after the restart",
        |s| ids(s) == ["a", "b", "c"],
    )
    .await;
    report(format!(
        "conformance {} restart: server back in {restarted:?}, full set seen by the watch after {:?}",
        h.backend,
        started.elapsed()
    ));
    let fresh = h.connect().await;
    await_instances(
        &*fresh,
        "svc8",
        TIMEOUT,
        "a new connection to see a, b, c",
        |s| ids(s) == ["a", "b", "c"],
    )
    .await;
}

// 9. Bad config or an unreachable address: a clear error within the timeout.
async fn unreachable(h: Harness) {
    // Bad settings are refused by every backend before anything is attempted.
    let mut bad = h.settings.clone();
    bad.ttl = Duration::from_millis(100);
    match registry::connect(&bad).await {
        Err(error @ Error::InvalidConfig(_)) => {
            assert!(error.to_string().contains("REGISTRY_TTL"), "{error}");
        }
        Err(other) => panic!("a 100 ms TTL must be InvalidConfig, got {other}"),
        Ok(_) => panic!("a 100 ms TTL must be refused"),
    }
    if not_applicable(h.backend, "unreachable") {
        return;
    }
    let closed = format!("127.0.0.1:{}", testkit::free_port());
    let short = Duration::from_secs(2);
    let mut settings = h.settings.clone();
    settings.timeout = short;
    set_addr(&mut settings.backend, vec![closed.clone()]);
    // Each call must give up by itself within REGISTRY_TIMEOUT; the slack
    // only absorbs a busy machine, this checks "no hang", not speed.
    let bound = short + Duration::from_secs(3);
    let started = Instant::now();
    let outcome = match bounded("connect", bound, registry::connect(&settings)).await {
        Err(error) => error,
        Ok(registry) => {
            let error = bounded(
                "register",
                bound,
                registry.register(instance("svc9", "a", 9018)),
            )
            .await
            .expect_err("registering with an unreachable backend fails");
            let read = bounded("instances", bound, registry.instances("svc9")).await;
            assert!(read.is_err(), "reading an unreachable backend fails");
            error
        }
    };
    let message = outcome.to_string();
    report(format!(
        "conformance {} unreachable: error after {:?}: {message}",
        h.backend,
        started.elapsed()
    ));
    assert!(
        matches!(outcome, Error::Unavailable { .. } | Error::Timeout { .. }),
        "unexpected error kind: {outcome:?}"
    );
    assert!(
        message.contains(h.backend) && message.contains(&closed),
        "the error names the backend and the address: {message}"
    );

    // A malformed address is refused before any connection attempt.
    let mut bad = h.settings.clone();
    set_addr(&mut bad.backend, vec!["no-port-here".to_owned()]);
    let error = match registry::connect(&bad).await {
        Err(error) => error,
        Ok(_) => panic!("a malformed address must be refused"),
    };
    assert!(
        matches!(error, Error::InvalidConfig(_)) && error.to_string().contains("no-port-here"),
        "{error}"
    );
}

// 10. An outage, the watch error contract of `WatchStream`: the registry
// stops answering (SIGSTOP: it keeps its ports and accepts connections but
// answers nothing, like a hung process). The watch sends exactly one `Err`
// within about max(2 x TTL, 5 s), nothing more while the outage lasts, and
// the first item after it ends is an `Ok` (a full snapshot).
async fn outage(mut h: Harness) {
    if not_applicable(h.backend, "outage") {
        return;
    }
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let _a = registrar
        .register(instance("svc10", "a", 9020))
        .await
        .unwrap();
    let mut watch = watcher.watch("svc10");
    await_snapshot(&mut watch, TIMEOUT, "a before the outage", |s| {
        ids(s) == ["a"]
    })
    .await;
    // The issue's bound, and a margin for a loaded two-core machine.
    let limit = (TTL * 2).max(Duration::from_secs(5));
    let margin = Duration::from_secs(3);
    let paused = Instant::now();
    tokio::task::block_in_place(|| h.server().pause()).expect("pause the server");
    let noticed = match tokio::time::timeout(limit + margin, watch.next()).await {
        Ok(Some(Err(error))) => {
            report(format!(
                "conformance {} outage: registry paused, one Err after {:?}: {error}",
                h.backend,
                paused.elapsed()
            ));
            paused.elapsed()
        }
        Ok(Some(Ok(snapshot))) => {
            let _ = h.server().resume();
            panic!("a snapshot while the registry was paused: {snapshot:?}")
        }
        Ok(None) => panic!("the watch stream ended"),
        Err(_) => {
            let _ = h.server().resume();
            panic!(
                "no Err item within {:?} of pausing the registry",
                limit + margin
            )
        }
    };
    // The watch keeps retrying behind the Err: no second one for the same
    // outage.
    if let Ok(item) = tokio::time::timeout(limit, watch.next()).await {
        let _ = h.server().resume();
        panic!("a second item during one outage: {item:?}");
    }
    tokio::task::block_in_place(|| h.server().resume()).expect("resume the server");
    let resumed = Instant::now();
    let first = match tokio::time::timeout(TIMEOUT * 6, watch.next()).await {
        Ok(Some(Ok(snapshot))) => snapshot,
        other => panic!("the first item after the outage must be an Ok snapshot, got {other:?}"),
    };
    report(format!(
        "conformance {} outage: noticed after {noticed:?}; first Ok {:?} after the resume: [{}]",
        h.backend,
        resumed.elapsed(),
        ids(&first).join(",")
    ));
    // A registration may have lapsed meanwhile (a ZooKeeper session, a
    // Consul check): the registrar puts it back.
    if ids(&first) != ["a"] {
        await_snapshot(&mut watch, TIMEOUT * 6, "a back after the outage", |s| {
            ids(s) == ["a"]
        })
        .await;
    }
}

/// Awaits `fut`, failing the test if it has not finished within `bound`.
async fn bounded<T>(what: &str, bound: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} on an unreachable address hung past {bound:?}"))
}

fn set_addr(backend: &mut BackendConfig, addr: Vec<String>) {
    match backend {
        BackendConfig::Consul(c) => c.addr = addr,
        BackendConfig::Etcd(c) => c.addr = addr,
        BackendConfig::Zookeeper(c) => c.addr = addr,
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The registrar mechanism every backend shares (R1-R3): registering while the
// lease or session is being re-established, per-id ordering, and the
// duplicate-id rule between registrars.
// ---------------------------------------------------------------------------

/// Slack on top of a deadline the behaviour promises, for a loaded machine:
/// it checks "bounded", not speed.
const MARGIN: Duration = Duration::from_secs(3);

// R1. A register issued while the registrar is re-establishing its lease or
// session (its server hung) waits for it, bounded by REGISTRY_TIMEOUT: it
// succeeds if the server is back within the timeout, and fails with a
// transient error within the timeout (plus a margin) if it is not. A
// register that returned an error leaves no record behind.
async fn register_during_reconnect(h: Harness) {
    if not_applicable(h.backend, "register_during_reconnect") {
        return;
    }
    let pid = h.pid.expect("a real server has a PID");
    let what = format!("the {} server", h.backend);
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let _held = registrar
        .register(instance("svcr1", "held", 9040))
        .await
        .unwrap();
    await_instances(&*watcher, "svcr1", TIMEOUT, "the held instance", |s| {
        ids(s) == ["held"]
    })
    .await;
    // Frozen this long, the lease or session is lost (etcd: its TTL, even
    // counted from the thaw; ZooKeeper: the client gives up after about
    // 1.4 x the session timeout; Consul: the TTL check fails): the
    // registrar is re-establishing it when the register is issued.
    let lost_after = h.expiry() * 3 / 2 + Duration::from_secs(1);
    let back_after = TIMEOUT * 2 / 5;

    // (a) The server is back within the timeout: the register succeeds.
    let frozen = Frozen::stop(pid, &what);
    tokio::time::sleep(lost_after).await;
    let started = tokio::time::Instant::now();
    let call = tokio::spawn({
        let registrar = registrar.clone();
        async move { registrar.register(instance("svcr1", "during", 9041)).await }
    });
    tokio::time::sleep(back_after).await;
    frozen.thaw();
    let bound = TIMEOUT + MARGIN;
    let during = match tokio::time::timeout_at(started + bound, call).await {
        Ok(Ok(Ok(registration))) => registration,
        Ok(Ok(Err(error))) => panic!(
            "register while the {} session/lease is re-established must wait for it (the server \
             was back {back_after:?} after the call, within REGISTRY_TIMEOUT {TIMEOUT:?}); it \
             failed after {:?}: {error}",
            h.backend,
            started.elapsed()
        ),
        Ok(Err(join)) => panic!("the register task failed: {join}"),
        Err(_) => panic!(
            "register while the {} session/lease is re-established hung past REGISTRY_TIMEOUT \
             {TIMEOUT:?} + {MARGIN:?}, although the server was back {back_after:?} after the call",
            h.backend
        ),
    };
    let succeeded_after = started.elapsed();
    await_instances(
        &*watcher,
        "svcr1",
        h.expiry() * 3 + TIMEOUT,
        "the registrar to hold both instances after the thaw",
        |s| ids(s) == ["during", "held"],
    )
    .await;

    // (b) The server stays down past the timeout: a transient error, in time.
    let frozen = Frozen::stop(pid, &what);
    tokio::time::sleep(lost_after).await;
    let started = tokio::time::Instant::now();
    let outcome =
        tokio::time::timeout(bound, registrar.register(instance("svcr1", "late", 9042))).await;
    let failed_after = started.elapsed();
    frozen.thaw();
    let error = match outcome {
        Err(_) => panic!(
            "register while the {} server is hung must give up within REGISTRY_TIMEOUT \
             {TIMEOUT:?} + {MARGIN:?}; it was still waiting",
            h.backend
        ),
        Ok(Ok(registration)) => {
            registration.abandon();
            panic!(
                "register succeeded after {failed_after:?} although the {} server was hung the \
                 whole time",
                h.backend
            )
        }
        Ok(Err(error)) => error,
    };
    report(format!(
        "conformance {} register during reconnect: server back {back_after:?} after the call -> \
         registered after {succeeded_after:?}; server hung past the timeout -> error after \
         {failed_after:?}: {error}",
        h.backend
    ));
    assert!(
        error.is_transient(),
        "register while the {} session/lease is re-established must fail with a transient error \
         when the server stays down past REGISTRY_TIMEOUT; got {error:?}",
        h.backend
    );
    assert!(
        failed_after >= TIMEOUT / 2,
        "register while the {} session/lease is re-established must wait for it (up to \
         REGISTRY_TIMEOUT {TIMEOUT:?}), not fail at once; it failed after {failed_after:?}: {error}",
        h.backend
    );
    // After the thaw the registrar holds what it held, and nothing of the
    // call that failed (a record without a handle would be kept alive by
    // nobody, or by the registrar forever).
    await_instances(
        &*watcher,
        "svcr1",
        h.expiry() * 3 + TIMEOUT,
        "the registrar to hold exactly its two registrations after the second thaw \
         (a register that returned an error must leave no record)",
        |s| ids(s) == ["during", "held"],
    )
    .await;
    during.deregister().await.unwrap();
}

// R2. Per-id ordering: a register, deregister, register of the same id
// issued back to back end in the order issued, for many ids at once; the
// final state is the last call's. The deregister is issued both ways: an
// explicit `deregister()` polled just before the next register, and a
// dropped handle (whose deregistration runs in the background); then two
// registers issued back to back (the last replaces the other, whose handle
// is then dropped).
async fn per_id_order(h: Harness) {
    const N: u16 = 20;
    let registrar = h.connect().await;
    let watcher = h.connect().await;
    let port = |i: u16, step: u16| 11000 + i * 4 + step;
    let started = Instant::now();
    let outcomes = futures::future::join_all((0..N).map(|i| {
        let registrar = registrar.clone();
        async move {
            let id = format!("o{i:02}");
            let fail = |step: &str, e: Error| format!("{id}: {step} failed: {e}");
            let first = registrar
                .register(instance("svcr2", &id, port(i, 0)))
                .await
                .map_err(|e| fail("the first register", e))?;
            // `join!` polls the deregister first: it is issued first.
            let (gone, second) = futures::join!(
                first.deregister(),
                registrar.register(instance("svcr2", &id, port(i, 1)))
            );
            gone.map_err(|e| fail("the deregister", e))?;
            let second = second.map_err(|e| fail("the second register", e))?;
            // Dropping the handle issues its deregistration; then two
            // registers of the id, the second issued just after the first.
            drop(second);
            let (older, last) = futures::join!(
                registrar.register(instance("svcr2", &id, port(i, 2))),
                registrar.register(instance("svcr2", &id, port(i, 3)).with_tag("last"))
            );
            let older = older.map_err(|e| fail("the third register", e))?;
            let last = last.map_err(|e| fail("the last register", e))?;
            // The replaced registration's handle goes: the last one stays.
            drop(older);
            Ok::<_, String>(last)
        }
    }))
    .await;
    let registrations: Vec<_> = outcomes
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("per-id order: {e}")))
        .collect();
    let issued = started.elapsed();
    let last_state = |s: &[Instance]| -> Result<(), String> {
        let wrong: Vec<String> = (0..N)
            .filter_map(|i| {
                let id = format!("o{i:02}");
                match s.iter().find(|x| x.id == id) {
                    None => Some(format!("{id} missing")),
                    Some(x) if x.port != port(i, 3) || x.tags != ["last"] => Some(format!(
                        "{id} at port {} (last call: {})",
                        x.port,
                        port(i, 3)
                    )),
                    Some(_) => None,
                }
            })
            .collect();
        if wrong.is_empty() && s.len() == usize::from(N) {
            Ok(())
        } else {
            Err(format!(
                "{} of {N} ids not in the last call's state: {wrong:?}",
                wrong.len()
            ))
        }
    };
    let what = "per-id order: every id in the state of its last call (register, deregister, \
                register issued back to back)";
    await_instances(&*watcher, "svcr2", TIMEOUT * 2, what, |s| {
        last_state(s).is_ok()
    })
    .await;
    // Late effects of an earlier call (a background deregistration, a
    // keep-alive check) must not undo the last one.
    tokio::time::sleep(h.expiry() + Duration::from_secs(1)).await;
    let later = watcher.instances("svcr2").await.unwrap();
    if let Err(wrong) = last_state(&later) {
        panic!(
            "per-id order: {} after {:?} the final state is no longer the last call's: {wrong}",
            h.backend,
            h.expiry() + Duration::from_secs(1)
        );
    }
    report(format!(
        "conformance {} per-id order: {N} ids x (register, deregister + register, drop + \
         register + register, drop) in {issued:?}; final state held after {:?}",
        h.backend,
        started.elapsed()
    ));
    for r in registrations {
        r.abandon();
    }
}

// R3. The duplicate-id rule: an id held by a live registrar is refused to
// another registrar with `AlreadyRegistered` naming the holder; the first
// record is never replaced and never flickers; once the holder is gone (a
// crash: abandon) the other registrar's retry gets in after about one TTL
// or session timeout. Registering an id again through the registrar that
// holds it still replaces it.
async fn duplicate_id(h: Harness) {
    let first = h.connect().await;
    let second = h.connect().await;
    let watcher = h.connect().await;
    let mut watch = watcher.watch("svcr3");
    await_snapshot(&mut watch, TIMEOUT, "the first, empty snapshot", |s| {
        s.is_empty()
    })
    .await;
    fn at(port: u16) -> impl Fn(&[Instance]) -> bool {
        move |s| s.len() == 1 && s[0].id == "dup" && s[0].port == port
    }
    let held = first
        .register(instance("svcr3", "dup", 9050))
        .await
        .unwrap();
    await_snapshot(
        &mut watch,
        TIMEOUT,
        "the first registrar's record",
        at(9050),
    )
    .await;

    // Refused, naming the holder.
    let check_refusal = |outcome: registry::Result<registry::Registration>, attempt: &str| {
        let error = match outcome {
            Ok(registration) => {
                registration.abandon();
                panic!(
                    "duplicate-id rule ({}): {attempt} register of an id another live registrar \
                     holds was accepted; it must be refused with Error::AlreadyRegistered",
                    h.backend
                )
            }
            Err(error) => error,
        };
        match &error {
            Error::AlreadyRegistered {
                service,
                id,
                holder,
                ..
            } => {
                assert_eq!((service.as_str(), id.as_str()), ("svcr3", "dup"), "{error}");
                assert!(
                    holder.contains(&std::process::id().to_string()),
                    "duplicate-id rule ({}): the refusal names the holder, whose owner token \
                     starts with its process id ({}); got holder {holder:?}",
                    h.backend,
                    std::process::id()
                );
                assert!(error.is_transient(), "AlreadyRegistered is transient");
            }
            other => panic!(
                "duplicate-id rule ({}): {attempt} register of an id another live registrar holds \
                 must be refused with Error::AlreadyRegistered; got {other:?}",
                h.backend
            ),
        }
        error
    };
    let error = check_refusal(
        second.register(instance("svcr3", "dup", 9051)).await,
        "the first",
    );

    // The second registrar keeps retrying, as a server does, for 3 TTLs:
    // every retry is refused, and the watch sees no change at all.
    let quiet = TTL * 3;
    let retry_loop = async {
        let until = tokio::time::Instant::now() + quiet;
        let mut refused = 0_u32;
        while tokio::time::Instant::now() < until {
            check_refusal(
                second.register(instance("svcr3", "dup", 9051)).await,
                "a retried",
            );
            refused += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        refused
    };
    let mut changes = Vec::new();
    let flicker = watch_until(
        &mut watch,
        quiet,
        "a change",
        |item| {
            if let Ok(s) = item {
                changes.push(format!(
                    "{:?}",
                    s.iter().map(|i| (&i.id, i.port)).collect::<Vec<_>>()
                ));
            }
        },
        |s| !at(9050)(s),
    );
    let (refused, flicker) = tokio::join!(retry_loop, flicker);
    if let Ok(snapshot) = flicker {
        panic!(
            "duplicate-id rule ({}): the first record must never be replaced nor flicker while \
             another registrar retries; the watch saw {:?} (snapshots: {changes:?})",
            h.backend,
            snapshot.iter().map(|i| (&i.id, i.port)).collect::<Vec<_>>()
        );
    }

    // The holder crashes: the retry gets in after about one expiry.
    held.abandon();
    let started = Instant::now();
    let bound = h.expiry() * 2 + TIMEOUT;
    let taken = loop {
        match second.register(instance("svcr3", "dup", 9051)).await {
            Ok(registration) => break registration,
            Err(Error::AlreadyRegistered { .. }) => {}
            Err(other) => println!("  retry while the abandoned record expires: {other}"),
        }
        assert!(
            started.elapsed() < bound,
            "duplicate-id rule ({}): the second registrar's retry never got in within {bound:?} \
             after the holder abandoned its registration (expiry {:?})",
            h.backend,
            h.expiry()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got_in = started.elapsed();
    await_snapshot(
        &mut watch,
        TIMEOUT,
        "the second registrar's record",
        at(9051),
    )
    .await;
    report(format!(
        "conformance {} duplicate id: refused ({} retries over {quiet:?}, no change seen): {error}; \
         after abandon the retry got in after {got_in:?} (expiry {:?})",
        h.backend,
        refused + 1,
        h.expiry()
    ));
    assert!(
        got_in <= h.expiry() + MARGIN,
        "duplicate-id rule ({}): after the holder's crash the retry must get in after about one \
         TTL/session timeout ({:?}); it took {got_in:?}",
        h.backend,
        h.expiry()
    );

    // Now the roles are swapped: the first registrar is refused...
    check_refusal(
        first.register(instance("svcr3", "dup", 9053)).await,
        "the old holder's",
    );
    // ...and the holder replaces its own record (existing behaviour).
    let replaced = second
        .register(instance("svcr3", "dup", 9052))
        .await
        .unwrap_or_else(|e| {
            panic!("re-registering an id through the registrar that holds it replaces it; got {e}")
        });
    await_snapshot(
        &mut watch,
        TIMEOUT,
        "the holder's re-registration to replace its record",
        at(9052),
    )
    .await;
    taken.abandon();
    replaced.deregister().await.unwrap();
}

/// Generates one test per backend for a behaviour.
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        $(
            mod $behaviour {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    init_logs();
                    super::$behaviour(Harness::memory()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn etcd() {
                    init_logs();
                    super::$behaviour(Harness::etcd()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn zookeeper() {
                    init_logs();
                    super::$behaviour(Harness::zookeeper()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn consul() {
                    init_logs();
                    super::$behaviour(Harness::consul()).await;
                }
            }
        )*
    };
}

conformance!(
    visible,
    round_trip,
    deregister,
    crash_abandon,
    crash_sigkill,
    operator_deregister,
    ordering,
    many,
    garbage,
    restart,
    unreachable,
    outage,
    // The registrar mechanism (R1-R3).
    register_during_reconnect,
    per_id_order,
    duplicate_id,
);

/// Generates one test per secured backend for a behaviour (issue 15: TLS,
/// client certificates, users and ACLs), on the same behaviour functions.
macro_rules! secured_conformance {
    ($($behaviour:ident),* $(,)?) => {
        mod secured {
            $(
                mod $behaviour {
                    use super::super::*;

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn etcd() {
                        init_logs();
                        super::super::$behaviour(Harness::secured_etcd()).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn zookeeper() {
                        init_logs();
                        super::super::$behaviour(Harness::secured_zookeeper()).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn consul() {
                        init_logs();
                        super::super::$behaviour(Harness::secured_consul()).await;
                    }
                }
            )*
        }
    };
}

secured_conformance!(visible, crash_sigkill, operator_deregister, restart);
