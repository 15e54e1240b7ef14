//! A hung registry member: a process that keeps its ports, and whose
//! kernel still accepts connections, but that answers nothing (SIGSTOP,
//! through testkit's `pause_member`), as a stuck process or a frozen VM.
//!
//! - etcd, a cluster of 3 with one member hung: a fresh connection, a read
//!   and a registration are each answered by the other members within the
//!   issue's 2 s (asserted with a margin: 3 s), with the default settings.
//! - etcd, a watch whose member hangs (each member in turn): it moves to
//!   another member with no `Err` item and no change of the set.
//! - ZooKeeper, an ensemble of 3 whose followers hang in turn: the watch's
//!   session moves to another server, with no `Err` item and no change of
//!   the set. (A hung *leader* stops the whole ensemble until the others
//!   elect a new one, `syncLimit` ticks later; that is an outage, and is
//!   reported as one when it outlasts the silence limit.)
//!
//! A single server (etcd, ZooKeeper, Consul agent) that hangs, where no
//! member answers, is the conformance suite's `outage` behaviour: one `Err`
//! within about max(2 x TTL, 5 s), then one `Ok` after it resumes.
//!
//! Needs `etcd` and `etcdctl` 3.4+ (`apt-get install etcd-server etcd-client`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use registry::{
    BackendConfig, DEFAULT_TIMEOUT, DEFAULT_TTL, Registrar, Settings, Watcher, ZookeeperRegistry,
    etcd, etcd::EtcdRegistry, zookeeper,
};
use testkit::{EtcdCluster, ZkEnsemble};
use zookeeper_client as zk;

mod common;
use common::{await_ids, blocking, init_tracing, instance};

/// The bound for a call while one member of three hangs, and the
/// margin a loaded two-core machine gets on top of it.
const ANSWERED_WITHIN: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_secs(1);

/// Connects to `endpoints` with the given TTL and the default timeout (the
/// one place that knows how this crate's settings are spelled).
async fn connect(endpoints: &[String], ttl: Duration) -> registry::Result<EtcdRegistry> {
    let config = etcd::Config {
        addr: endpoints.to_vec(),
        prefix: "/services".to_owned(),
        ..etcd::Config::default()
    };
    let settings = Settings {
        backend: BackendConfig::Etcd(config.clone()),
        ttl,
        timeout: DEFAULT_TIMEOUT,
    };
    EtcdRegistry::connect(&config, settings.timing()).await
}

/// Connects a ZooKeeper registry to `addr` with the given TTL and the
/// default timeout.
async fn connect_zk(addr: &str, ttl: Duration) -> registry::Result<ZookeeperRegistry> {
    let config = zookeeper::Config {
        addr: vec![addr.to_owned()],
        ..zookeeper::Config::default()
    };
    let settings = Settings {
        backend: BackendConfig::Zookeeper(config.clone()),
        ttl,
        timeout: DEFAULT_TIMEOUT,
    };
    ZookeeperRegistry::connect(&config, settings.timing()).await
}

/// Creates the persistent node `path` holding `data` with a session of its
/// own (another tool's record, which no registrar keeps or loses), and its
/// parents.
async fn zk_put(addr: &str, path: &str, data: &[u8]) -> Result<()> {
    let client = zk::Client::connect(addr).await?;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let mut parent = String::new();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        parent = format!("{parent}/{part}");
        let value: &[u8] = if i + 1 == parts.len() { data } else { b"" };
        match client.create(&parent, value, &persistent).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(error) => return Err(error).with_context(|| format!("create {parent}")),
        }
    }
    Ok(())
}

/// Prints a measurement and keeps it for the end of `scripts/test.sh`.
fn report(line: String) {
    testkit::record_timing(env!("CARGO_TARGET_TMPDIR"), &line);
}

/// Awaits `fut` and returns its output and how long it took; fails if it
/// took longer than the bound plus the margin.
async fn answered<T>(what: &str, fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let bound = ANSWERED_WITHIN + MARGIN;
    let value = tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} was not answered within {bound:?}"));
    (value, started.elapsed())
}

/// `etcdctl put key value` on `endpoints` (a key without a lease, so that
/// no registrar is involved in what a watch sees).
fn put(endpoints: &[String], key: &str, value: &str) -> Result<()> {
    let bin = testkit::etcdctl_bin()?;
    let output = blocking(|| {
        let mut command = Command::new(&bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                command.env_remove(&name);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=5s")
            .args(["put", key, value])
            .output()
    })
    .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        output.status.success(),
        "etcdctl put failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hung_member_of_three_costs_each_call_under_two_seconds() -> Result<()> {
    init_tracing("warn");
    let mut cluster = blocking(|| EtcdCluster::start(3))?;
    let endpoints = cluster.endpoints();
    // A connection made before the hang, which may be using the member
    // that hangs.
    let before = connect(&endpoints, DEFAULT_TTL).await?;
    before.instances("lorem").await?;

    // The first member is the one a naive client tries first.
    blocking(|| cluster.pause_member(0))?;
    let mut registrations = Vec::new();
    for round in 0..3 {
        let (registry, connect_took) =
            answered("a fresh connect", connect(&endpoints, DEFAULT_TTL)).await;
        let registry = registry?;
        let (read, read_took) = answered("instances()", registry.instances("lorem")).await;
        let before_round = read?.len();
        let id = format!("r{round}");
        let (registration, register_took) = answered(
            "register()",
            registry.register(instance("lorem", &id, 9000 + round)),
        )
        .await;
        registrations.push(registration?);
        let (old_read, old_took) = answered(
            "instances() on a connection made before the hang",
            before.instances("lorem"),
        )
        .await;
        ensure!(
            old_read?.len() > before_round,
            "the registration of {id} is visible"
        );
        report(format!(
            "hung etcd member 1 of 3, round {round}: connect {connect_took:?}, instances {read_took:?}, \
             register {register_took:?}, instances on an older connection {old_took:?}"
        ));
    }
    blocking(|| cluster.resume_member(0))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_member_hangs_moves_on_without_an_error_or_a_change() -> Result<()> {
    init_tracing("warn");
    let mut cluster = blocking(|| EtcdCluster::start(3))?;
    let endpoints = cluster.endpoints();
    let ttl = Duration::from_secs(2);
    let silence = (ttl * 2).max(Duration::from_secs(5));
    for id in ["a", "b"] {
        put(
            &endpoints,
            &format!("/services/quiet/{id}"),
            &String::from_utf8_lossy(&instance("quiet", id, 9100).to_json()),
        )?;
    }
    let registry = connect(&endpoints, ttl).await?;
    let mut watch = registry.watch("quiet");
    await_ids(&mut watch, Duration::from_secs(5), &["a", "b"]).await;

    // Whichever member serves the watch, one of these rounds hangs it (and
    // maybe more than one, as the watch moves on).
    for member in 0..endpoints.len() {
        blocking(|| cluster.pause_member(member))?;
        // Long enough for the watch to notice the silence and move on.
        let quiet_for = silence + Duration::from_secs(2);
        let item = tokio::time::timeout(quiet_for, watch.next()).await;
        blocking(|| cluster.resume_member(member))?;
        if let Ok(item) = item {
            panic!("the watch sent {item:?} while member {member} of 3 hung");
        }
        // Still live: a real change reaches the same watch.
        let id = format!("c{member}");
        put(
            &endpoints,
            &format!("/services/quiet/{id}"),
            &String::from_utf8_lossy(&instance("quiet", &id, 9101).to_json()),
        )?;
        let mut want = vec!["a", "b"];
        let added: Vec<String> = (0..=member).map(|m| format!("c{m}")).collect();
        want.extend(added.iter().map(String::as_str));
        await_ids(&mut watch, Duration::from_secs(5), &want).await;
        report(format!(
            "hung etcd member {member} of 3 under a watch: no item for {quiet_for:?}, then a change arrived"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zookeeper_watch_whose_server_hangs_moves_on_without_an_error_or_a_change() -> Result<()>
{
    init_tracing("warn");
    let mut ensemble = blocking(|| ZkEnsemble::start(3))?;
    let addr = ensemble.connect_string();
    let ttl = Duration::from_secs(2);
    let silence = (ttl * 2).max(Duration::from_secs(5));
    zk_put(
        &addr,
        "/services/zquiet/a",
        &instance("zquiet", "a", 9200).to_json(),
    )
    .await?;
    let registry = connect_zk(&addr, ttl).await?;
    let mut watch = registry.watch("zquiet");
    await_ids(&mut watch, Duration::from_secs(5), &["a"]).await;

    let mut want = vec!["a".to_owned()];
    for member in 0..3 {
        if ensemble.member_mode(member).as_deref() != Some("follower") {
            continue;
        }
        blocking(|| ensemble.pause_member(member))?;
        let quiet_for = silence + Duration::from_secs(2);
        let item = tokio::time::timeout(quiet_for, watch.next()).await;
        blocking(|| ensemble.resume_member(member))?;
        if let Ok(item) = item {
            panic!("the watch sent {item:?} while follower {member} of 3 hung");
        }
        let id = format!("c{member}");
        zk_put(
            &addr,
            &format!("/services/zquiet/{id}"),
            &instance("zquiet", &id, 9201).to_json(),
        )
        .await?;
        want.push(id);
        let want_refs: Vec<&str> = want.iter().map(String::as_str).collect();
        await_ids(&mut watch, Duration::from_secs(10), &want_refs).await;
        report(format!(
            "hung ZooKeeper follower {member} of 3 under a watch: no item for {quiet_for:?}, then a change arrived"
        ));
    }
    Ok(())
}
