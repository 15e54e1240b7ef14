//! etcd-specific behaviour, against real etcd servers started by `testkit`:
//! the storage layout as `etcdctl` sees it, garbage under the prefix, lease
//! loss and server restarts, keys deleted or overwritten by another client,
//! compaction under a watch, paged reads, abandon next to live registrations
//! on one lease, and a 3-member cluster losing a member. The behaviour every
//! backend shares is in `conformance.rs`.
//!
//! Needs `etcd` and `etcdctl` 3.4+ (`apt-get install etcd-server etcd-client`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use futures::StreamExt;
use registry::{
    BackendConfig, Error, Instance, Registrar, Settings, WatchStream, Watcher, etcd,
    etcd::EtcdRegistry,
};
use testkit::{EtcdCluster, EtcdServer, RegistryServer};

mod common;
use common::{await_instances, blocking, eventually, ids, init_tracing, lorem, watch_until};

/// Short enough to keep the tests quick, long enough for a loaded machine.
const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long any expected change may take to show up.
const PATIENCE: Duration = Duration::from_secs(20);

fn settings(addr: &str) -> (etcd::Config, Settings) {
    let config = etcd::Config {
        addr: addr.split(',').map(str::to_owned).collect(),
        prefix: "/services".to_owned(),
        ..etcd::Config::default()
    };
    let settings = Settings {
        backend: BackendConfig::Etcd(config.clone()),
        ttl: TTL,
        timeout: TIMEOUT,
    };
    (config, settings)
}

async fn connect(addr: &str) -> Result<EtcdRegistry> {
    let (config, settings) = settings(addr);
    Ok(EtcdRegistry::connect(&config, settings.timing()).await?)
}

/// Starts a single etcd server and connects a registry to it; returns the
/// server, its endpoint (for etcdctl) and the registry.
async fn start() -> Result<(EtcdServer, String, EtcdRegistry)> {
    let etcd = blocking(EtcdServer::start)?;
    let ep = etcd.endpoint();
    let registry = connect(&ep).await?;
    Ok((etcd, ep, registry))
}

/// Runs `etcdctl` against `endpoints`; returns stdout, fails with stderr.
fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String> {
    let bin = testkit::etcdctl_bin()?;
    let output = blocking(|| {
        let mut command = Command::new(&bin);
        // etcdctl reads ETCDCTL_* (and etcd ETCD_*) variables as flags.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                command.env_remove(&key);
            }
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
    })
    .with_context(|| format!("running {} {args:?}", bin.display()))?;
    ensure!(
        output.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The current revision of the store, read with etcdctl.
fn revision(endpoints: &str) -> Result<i64> {
    let out = etcdctl(endpoints, &["get", "/no-such-key", "-w", "json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    json["header"]["revision"]
        .as_i64()
        .ok_or_else(|| anyhow!("no revision in {out}"))
}

/// The lease (hex, as etcdctl takes it) that `key` is attached to.
fn lease_of(endpoints: &str, key: &str) -> Result<String> {
    let out = etcdctl(endpoints, &["get", key, "-w", "json"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let lease = json["kvs"][0]["lease"]
        .as_i64()
        .ok_or_else(|| anyhow!("{key} has no lease: {out}"))?;
    Ok(format!("{lease:x}"))
}

/// Everything a watch produced while we waited: snapshots (as id lists)
/// and errors.
#[derive(Debug, Default)]
struct Seen {
    snapshots: Vec<Vec<String>>,
    errors: Vec<String>,
}

impl Seen {
    fn record(&mut self, item: Result<&[Instance], &Error>) {
        match item {
            Ok(snapshot) => self
                .snapshots
                .push(ids(snapshot).into_iter().map(str::to_owned).collect()),
            Err(error) => self.errors.push(error.to_string()),
        }
    }
}

/// Reads `watch` until a snapshot's ids equal `want`, or fails after
/// `PATIENCE` naming what was seen. Returns when it was seen.
async fn wait_for(watch: &mut WatchStream, want: &[&str], seen: &mut Seen) -> Result<Instant> {
    let what = format!("the snapshot {want:?}");
    watch_until(
        watch,
        PATIENCE,
        &what,
        |item| seen.record(item),
        |s| ids(s) == want,
    )
    .await
    .map_err(|error| anyhow!("{error}; saw {seen:?}"))?;
    Ok(Instant::now())
}

/// Polls `instances(service)` until its ids equal `want`.
async fn poll_until(registry: &EtcdRegistry, service: &str, want: &[&str]) {
    let what = format!("instances({service}) to become {want:?}");
    await_instances(registry, service, PATIENCE, &what, |s| ids(s) == want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_is_what_etcdctl_shows_and_etcdctl_writes_are_discovered() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &[], &mut seen).await?;

    let a = lorem("a").with_tag("v1").with_metadata("zone", "eu");
    let _a = registry.register(a.clone()).await?;
    wait_for(&mut watch, &["a"], &mut seen).await?;
    let shown = etcdctl(&ep, &["get", "--prefix", "/services/lorem/"])?;
    println!("$ etcdctl get --prefix /services/lorem/\n{shown}");
    assert_eq!(
        shown,
        format!("/services/lorem/a\n{}\n", stored(&a, registry.owner()))
    );

    // Another tool registers in our layout, without a lease: discovered.
    let b = r#"{"id":"b","service":"lorem","address":"10.0.0.2","port":9000}"#;
    etcdctl(&ep, &["put", "/services/lorem/b", b])?;
    wait_for(&mut watch, &["a", "b"], &mut seen).await?;
    assert_eq!(
        registry.instances("lorem").await?[1],
        Instance::new("lorem", "b", "10.0.0.2", 9000)
    );
    assert_eq!(registry.services().await?, vec!["lorem".to_owned()]);
    etcdctl(&ep, &["del", "/services/lorem/b"])?;
    wait_for(&mut watch, &["a"], &mut seen).await?;
    assert!(seen.errors.is_empty(), "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_the_prefix_is_skipped_and_the_watch_keeps_working() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let _a = registry.register(lorem("a")).await?;
    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a"], &mut seen).await?;

    let other_id = String::from_utf8(lorem("zz").to_json())?;
    let other_service = String::from_utf8(Instance::new("ipsum", "c", "h", 1).to_json())?;
    for (key, value) in [
        ("/services/lorem/bad", "not json"),
        ("/services/lorem/wrong-id", other_id.as_str()),
        ("/services/lorem/c", other_service.as_str()),
        (
            "/services/lorem/deep/er",
            r#"{"id":"er","service":"lorem","address":"h","port":1}"#,
        ),
        (
            "/services/lorem/noport",
            r#"{"id":"noport","service":"lorem","address":"h"}"#,
        ),
        ("/services/junk/x", "{}"),
        ("/services/loose-key", "x"),
    ] {
        etcdctl(&ep, &["put", key, value])?;
    }
    // The watch saw every put; none of them changes the live set.
    let _b = registry.register(lorem("b")).await?;
    wait_for(&mut watch, &["a", "b"], &mut seen).await?;
    assert!(
        seen.snapshots.iter().all(|s| !s.is_empty()),
        "a spurious empty set: {seen:?}"
    );
    assert_eq!(ids(&registry.instances("lorem").await?), ["a", "b"]);
    // `junk` has only garbage: not a live service.
    assert_eq!(registry.services().await?, vec!["lorem".to_owned()]);

    // Garbage overwriting a live instance removes it; a fresh watch agrees.
    etcdctl(&ep, &["put", "/services/lorem/a", "garbage"])?;
    wait_for(&mut watch, &["b"], &mut seen).await?;
    let mut fresh = registry.watch("lorem");
    wait_for(&mut fresh, &["b"], &mut Seen::default()).await?;
    assert!(seen.errors.is_empty(), "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_replaced_and_the_instances_come_back() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let _a = registry.register(lorem("a")).await?;
    let _b = registry.register(lorem("b")).await?;
    let lease = lease_of(&ep, "/services/lorem/a")?;
    assert_eq!(
        lease,
        lease_of(&ep, "/services/lorem/b")?,
        "one lease per registrar"
    );

    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a", "b"], &mut seen).await?;
    let revoked = Instant::now();
    etcdctl(&ep, &["lease", "revoke", &lease])?;
    wait_for(&mut watch, &[], &mut seen).await?;
    let back = wait_for(&mut watch, &["a", "b"], &mut seen).await?;
    println!(
        "etcd: lease revoked with etcdctl -> both instances registered again in {:?}",
        back - revoked
    );
    let new_lease = lease_of(&ep, "/services/lorem/a")?;
    assert_ne!(new_lease, lease);
    assert_eq!(new_lease, lease_of(&ep, "/services/lorem/b")?);

    // The new lease is kept alive.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(ids(&registry.instances("lorem").await?), ["a", "b"]);
    Ok(())
}

/// The value our registrar stores for `instance`: its JSON and our owner
/// token.
fn stored(instance: &Instance, owner: &str) -> String {
    let json = String::from_utf8(instance.to_json()).unwrap();
    format!("{},\"owner\":\"{owner}\"}}", json.trim_end_matches('}'))
}

/// Polls etcdctl until `key` holds `instance` on `lease`.
async fn wait_restored(
    ep: &str,
    key: &str,
    instance: &Instance,
    owner: &str,
    lease: &str,
) -> Result<()> {
    let want = stored(instance, owner);
    let what = format!("{key} restored to {want} on lease {lease}");
    eventually(PATIENCE, &what, || async {
        let value = etcdctl(ep, &["get", key, "--print-value-only"])
            .unwrap_or_else(|error| panic!("{error:#}"));
        if value.trim_end() == want && lease_of(ep, key).ok().as_deref() == Some(lease) {
            Ok(Some(()))
        } else {
            Err(format!("value {value:?}"))
        }
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_or_overwritten_by_another_client_is_restored() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let a = lorem("a").with_tag("v1");
    let _a = registry.register(a.clone()).await?;
    let _b = registry.register(lorem("b")).await?;
    let lease = lease_of(&ep, "/services/lorem/a")?;

    let deleted = Instant::now();
    etcdctl(&ep, &["del", "/services/lorem/a"])?;
    wait_restored(&ep, "/services/lorem/a", &a, registry.owner(), &lease).await?;
    println!(
        "etcd: key deleted with etcdctl -> restored after {:?} (TTL {TTL:?})",
        deleted.elapsed()
    );

    // Overwritten without a lease, then with garbage: put back each time.
    let stranger = String::from_utf8(lorem("a").to_json())?;
    etcdctl(&ep, &["put", "/services/lorem/a", &stranger])?;
    wait_restored(&ep, "/services/lorem/a", &a, registry.owner(), &lease).await?;
    etcdctl(&ep, &["put", "/services/lorem/a", "garbage"])?;
    wait_restored(&ep, "/services/lorem/a", &a, registry.owner(), &lease).await?;

    // The lease and the other instance were never touched.
    assert_eq!(lease_of(&ep, "/services/lorem/b")?, lease);
    assert_eq!(ids(&registry.instances("lorem").await?), ["a", "b"]);

    // Another registrar's record (its owner token) is not ours to restore:
    // we give way instead of fighting over the key.
    let mut state = _a.state();
    let theirs = stored(&lorem("a"), "pid1-another");
    etcdctl(&ep, &["put", "/services/lorem/a", &theirs])?;
    let displaced = tokio::time::timeout(
        PATIENCE,
        state.wait_for(|s| *s != registry::RegistrationState::Registered),
    )
    .await?
    .map(|s| s.clone())?;
    assert_eq!(
        displaced,
        registry::RegistrationState::Displaced {
            holder: "pid1-another".into()
        }
    );
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        etcdctl(&ep, &["get", "/services/lorem/a", "--print-value-only"])?.trim_end(),
        theirs,
        "theirs stays"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_keep_or_restore_the_registrations() -> Result<()> {
    init_tracing("registry=info");
    let (mut etcd, ep, registry) = start().await?;
    let _a = registry.register(lorem("a")).await?;
    let watcher = connect(&ep).await?;
    let mut watch = watcher.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a"], &mut seen).await?;

    // Same data: the lease survives the restart and is renewed in time.
    let lease = lease_of(&ep, "/services/lorem/a")?;
    blocking(|| etcd.restart())?;
    poll_until(&registry, "lorem", &["a"]).await;
    tokio::time::sleep(TTL * 2).await;
    poll_until(&registry, "lorem", &["a"]).await;
    assert_eq!(
        lease_of(&ep, "/services/lorem/a")?,
        lease,
        "the same lease, renewed"
    );

    // Data lost: a new lease, and the instance is put back by itself.
    let data = etcd.dir().join("m0.data");
    blocking(|| -> Result<()> {
        etcd.stop()?;
        std::fs::remove_dir_all(&data)?;
        etcd.start()
    })?;
    let restarted = Instant::now();
    poll_until(&registry, "lorem", &["a"]).await;
    println!(
        "etcd: restart with data lost -> instance registered again {:?} after the server was back",
        restarted.elapsed()
    );
    assert_ne!(lease_of(&ep, "/services/lorem/a")?, lease);
    // The watch recovered by itself and follows the registry again. (Its
    // items during the restart depend on when it looked: a consumer that
    // does not read meanwhile gets the newest state, changes coalesced,
    // so `a` gone and back may be no item at all.)
    let _b = registry.register(lorem("b")).await?;
    wait_for(&mut watch, &["a", "b"], &mut seen).await?;
    println!("etcd: watch items during the outages: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistration_during_an_outage_is_applied_when_the_server_is_back() -> Result<()> {
    init_tracing("registry=info");
    let (mut etcd, _, registry) = start().await?;
    let a = registry.register(lorem("a")).await?;
    let _b = registry.register(lorem("b")).await?;
    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a", "b"], &mut seen).await?;
    blocking(|| etcd.stop())?;
    let err = a.deregister().await.expect_err("etcd is down");
    assert!(err.is_transient(), "{err:?}");
    // The watch reports the outage as an error item and stays open.
    let error = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .context("no error item while etcd was down")?
        .context("the watch ended")?
        .expect_err("etcd is down; the watch cannot have news");
    println!("etcd: watch during the outage: {error}");
    blocking(|| etcd.start())?;
    // The lease survived (same data) and still holds b; a must go anyway.
    wait_for(&mut watch, &["b"], &mut seen).await?;
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(ids(&registry.instances("lorem").await?), ["b"]);
    assert!(
        seen.snapshots.iter().all(|s| !s.is_empty()),
        "a spurious empty set: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_compacted_before_the_watch_starts_gives_a_fresh_snapshot() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let a = registry.register(lorem("a")).await?;
    // The watch reads its snapshot, then waits before watching from the
    // snapshot's revision + 1: long enough to change and compact.
    let watcher = connect(&ep)
        .await?
        .with_watch_start_delay(Duration::from_secs(3));
    let mut watch = watcher.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a"], &mut seen).await?;
    let before = revision(&ep)?;

    let _b = registry.register(lorem("b")).await?;
    let _c = registry.register(lorem("c")).await?;
    a.deregister().await?;
    for i in 0..20 {
        etcdctl(&ep, &["put", "/services/lorem/churn", &format!("{i}")])?;
    }
    etcdctl(&ep, &["del", "/services/lorem/churn"])?;
    let now = revision(&ep)?;
    ensure!(now > before + 1, "no change happened: {before} -> {now}");
    etcdctl(&ep, &["compact", &now.to_string()])?;

    wait_for(&mut watch, &["b", "c"], &mut seen).await?;
    assert!(
        seen.snapshots.iter().all(|s| !s.is_empty()),
        "a spurious empty set: {seen:?}"
    );
    assert!(
        seen.errors.is_empty(),
        "compaction is not an error: {seen:?}"
    );
    // And the new watch follows changes.
    let _d = registry.register(lorem("d")).await?;
    wait_for(&mut watch, &["b", "c", "d"], &mut seen).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_behind_a_compaction_catches_up_correctly() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &[], &mut seen).await?;

    // Nobody reads the watch while many changes of large values happen,
    // then the history is compacted.
    let mut kept = Vec::new();
    let padding = "x".repeat(250);
    for i in 0..200 {
        let mut instance = lorem(&format!("i{i:03}"));
        for t in 0..20 {
            instance = instance.with_tag(format!("{t:02}{padding}"));
        }
        let registration = registry.register(instance).await?;
        if i % 2 == 0 {
            kept.push(registration);
        } else {
            registration.deregister().await?;
        }
    }
    etcdctl(&ep, &["compact", &revision(&ep)?.to_string()])?;
    let want: Vec<String> = (0..200).step_by(2).map(|i| format!("i{i:03}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_for(&mut watch, &want, &mut seen).await?;
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    assert_eq!(ids(&registry.instances("lorem").await?), want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_span_many_pages() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, ep, registry) = start().await?;
    let registry = registry.with_page_size(3);
    let mut registrations = Vec::new();
    for i in 0..11 {
        registrations.push(registry.register(lorem(&format!("a{i:02}"))).await?);
    }
    // Names that sort right next to `lorem` and each other, so that skipping
    // past a service must not skip a neighbour.
    let services = ["lorem-x", "lorem.x", "lorem0", "lorem_x", "lorem", "a", "z"];
    for service in services {
        for id in ["1", "2", "3", "4"] {
            registrations.push(
                registry
                    .register(Instance::new(service, id, "127.0.0.1", 1))
                    .await?,
            );
        }
    }
    etcdctl(&ep, &["put", "/services/lorem/a05x", "garbage"])?;
    etcdctl(&ep, &["put", "/services/only-garbage/1", "garbage"])?;

    let want: Vec<String> = (0..11)
        .map(|i| format!("a{i:02}"))
        .chain(["1", "2", "3", "4"].map(String::from))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let found = registry.instances("lorem").await?;
    assert_eq!(ids(&found), want);
    let mut names: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(registry.services().await?, names);
    let mut watch = registry.watch("lorem");
    let first = watch.next().await.expect("watch streams do not end")?;
    assert_eq!(ids(&first), want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_expires_only_the_abandoned_instance_of_a_shared_lease() -> Result<()> {
    init_tracing("registry=info");
    let (_etcd, _, registry) = start().await?;
    let _a = registry.register(lorem("a")).await?;
    let b = registry.register(lorem("b")).await?;
    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a", "b"], &mut seen).await?;

    let abandoned = Instant::now();
    b.abandon();
    // Not removed at once, as a deregistration would: still listed.
    assert_eq!(
        ids(&registry.instances("lorem").await?),
        ["a", "b"],
        "an abandoned instance stays until its TTL runs out"
    );
    let gone = wait_for(&mut watch, &["a"], &mut seen).await?;
    println!(
        "etcd: abandon -> gone after {:?} (TTL {TTL:?})",
        gone - abandoned
    );
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(ids(&registry.instances("lorem").await?), ["a"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_losing_a_member_keeps_registrations_and_watches_working() -> Result<()> {
    init_tracing("registry=info");
    let mut cluster = blocking(|| EtcdCluster::start(3))?;
    let addr = cluster.registry_addr();
    let registry = connect(&addr).await?;
    let _a = registry.register(lorem("a")).await?;
    let mut watch = registry.watch("lorem");
    let mut seen = Seen::default();
    wait_for(&mut watch, &["a"], &mut seen).await?;

    for member in [0, 1] {
        blocking(|| cluster.stop_member(member))?;
        let stopped = Instant::now();
        let id = format!("m{member}");
        let registration = registry.register(lorem(&id)).await;
        let registration = match registration {
            Ok(r) => r,
            // The first call after the stop may have gone to the stopped
            // member; the next one must not.
            Err(error) if error.is_transient() => registry.register(lorem(&id)).await?,
            Err(error) => return Err(error.into()),
        };
        wait_for(&mut watch, &["a", &id], &mut seen).await?;
        // Keep-alives go on: nothing expires over several TTLs.
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(ids(&registry.instances("lorem").await?), ["a", id.as_str()]);
        registration.deregister().await?;
        wait_for(&mut watch, &["a"], &mut seen).await?;
        println!(
            "etcd: member {member} stopped -> register, watch, keep-alive, deregister fine ({:?})",
            stopped.elapsed()
        );
        blocking(|| cluster.start_member(member))?;
    }
    println!("etcd cluster: watch items: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_within_the_timeout_naming_the_address() -> Result<()> {
    init_tracing("registry=info");
    let port = testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    // A guard against hanging only; the deadline inside is REGISTRY_TIMEOUT.
    let err = tokio::time::timeout(PATIENCE, connect(&addr))
        .await
        .context("connect hung")?
        .expect_err("nothing listens there");
    println!(
        "etcd: connect to nothing failed after {:?}: {err}",
        started.elapsed()
    );
    let err = err.downcast::<Error>()?;
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr), "{err}");
    Ok(())
}
