//! What is specific to the ZooKeeper backend, against real servers started
//! by the testkit: session expiry and stale nodes, nodes written by other
//! clients and by `zkCli`, garbage, abandon with several nodes on one
//! session, and a 3-member ensemble losing members.
//!
//! The generic behaviours are in `conformance.rs`. Timings are printed,
//! never asserted beyond generous deadlines. Run with `--nocapture` to see
//! them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::zookeeper::ZookeeperRegistry;
use registry::{BackendConfig, Error, Instance, Registrar, Settings, Watcher, zookeeper};
use testkit::{RegistryServer, ZkEnsemble, ZkServer};
use zookeeper_client as zk;

mod common;
use common::{
    await_ids, await_instances, await_snapshot, blocking, eventually, ids, init_tracing, instance,
    watch_until,
};

/// The per-call deadline (REGISTRY_TIMEOUT).
const TIMEOUT: Duration = Duration::from_secs(5);
/// A short session, for the tests that wait for expiries (the testkit's
/// tickTime=500 lets the server grant 1-10 s).
const SHORT_SESSION: Duration = Duration::from_secs(2);

/// How to get what `ZkServer` and `ZkEnsemble` need.
const INSTALL: &str = "install it with `apt-get install -y zookeeper` and a Java runtime";

fn start_server() -> ZkServer {
    ZkServer::start().unwrap_or_else(|e| panic!("cannot start ZooKeeper: {e:#}\n({INSTALL})"))
}

fn settings(addr: &str, session_timeout: Option<Duration>) -> (zookeeper::Config, Settings) {
    let config = zookeeper::Config {
        addr: vec![addr.to_owned()],
        session_timeout,
        ..zookeeper::Config::default()
    };
    let settings = Settings {
        backend: BackendConfig::Zookeeper(config.clone()),
        ttl: Duration::from_secs(2),
        timeout: TIMEOUT,
    };
    (config, settings)
}

async fn connect(addr: &str, session_timeout: Option<Duration>) -> ZookeeperRegistry {
    let (config, settings) = settings(addr, session_timeout);
    ZookeeperRegistry::connect(&config, settings.timing())
        .await
        .unwrap_or_else(|e| panic!("connect to ZooKeeper at {addr}: {e}"))
}

/// A plain zookeeper-client session, playing "another tool".
async fn plain_client(addr: &str) -> zk::Client {
    zk::Client::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("plain zookeeper-client connect to {addr}: {e}"))
}

/// The owner session of an ephemeral node (0 for a persistent one), or
/// `None` if it does not exist.
async fn owner(client: &zk::Client, path: &str) -> Option<i64> {
    client
        .check_stat(path)
        .await
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .map(|stat| stat.ephemeral_owner)
}

// A session that expires (the server is down longer than the client waits
// for it) is replaced by a new one, which creates every node again; the
// stale nodes the restarted server still holds for the old session are
// replaced rather than reported as conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_replaced_and_nodes_come_back() {
    init_tracing("warn");
    let mut server = start_server();
    let addr = server.connect_string();
    let registry = connect(&addr, Some(SHORT_SESSION)).await;
    let _a = registry.register(instance("exp", "a", 9001)).await.unwrap();
    let _b = registry.register(instance("exp", "b", 9002)).await.unwrap();
    let mut watch = registry.watch("exp");
    await_ids(&mut watch, TIMEOUT, &["a", "b"]).await;
    let observer = plain_client(&addr).await;
    let old_session = owner(&observer, "/services/exp/a").await.unwrap();
    assert_eq!(owner(&observer, "/services/exp/b").await, Some(old_session));
    drop(observer);

    // zookeeper-client gives the session up ~1.4 x its timeout after the
    // last reply; stay down well past that (this sleep is the outage, not
    // an assertion).
    blocking(|| server.stop()).expect("stop ZooKeeper");
    tokio::time::sleep(SHORT_SESSION * 2 + Duration::from_secs(1)).await;
    blocking(|| server.start()).expect("start ZooKeeper again");
    let back = Instant::now();

    let observer = plain_client(&addr).await;
    let new_session = eventually(TIMEOUT * 4, "both nodes owned by a new session", || async {
        let a = owner(&observer, "/services/exp/a").await;
        let b = owner(&observer, "/services/exp/b").await;
        Ok(match (a, b) {
            (Some(a), Some(b)) if a == b && a != old_session => Some(a),
            _ => None,
        })
    })
    .await;
    println!(
        "zookeeper expiry: server back -> both nodes re-created by session {new_session:#x} in {:?}",
        back.elapsed()
    );
    // The same watch stream works on the new session. (It may not repeat
    // [a, b]: a snapshot equal to the last one is not sent again.)
    let _c = registry.register(instance("exp", "c", 9003)).await.unwrap();
    await_ids(&mut watch, TIMEOUT * 2, &["a", "b", "c"]).await;

    // The restarted server expires the old session after its timeout; that
    // must not take our new nodes with it.
    tokio::time::sleep(SHORT_SESSION * 2 + Duration::from_secs(1)).await;
    assert_eq!(owner(&observer, "/services/exp/a").await, Some(new_session));
    assert_eq!(owner(&observer, "/services/exp/b").await, Some(new_session));
    assert_eq!(
        ids(&registry.instances("exp").await.unwrap()),
        ["a", "b", "c"]
    );
}

// After a reconnect that keeps the session (a server restart shorter than
// the session timeout), changes made afterwards still reach the watch.
// zookeeper-client 0.11.2 does not re-arm persistent watches on reconnect
// (its resend_watches skips them), so the backend adds the watch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_changes_after_a_reconnect_that_keeps_the_session() {
    init_tracing("warn");
    let mut server = start_server();
    let addr = server.connect_string();
    let watcher = connect(&addr, None).await;
    let mut watch = watcher.watch("rearm");
    await_ids(&mut watch, TIMEOUT, &[]).await;
    let registrar = connect(&addr, None).await;
    let _a = registrar
        .register(instance("rearm", "a", 9020))
        .await
        .unwrap();
    await_ids(&mut watch, TIMEOUT, &["a"]).await;

    let started = Instant::now();
    blocking(|| server.restart()).expect("restart ZooKeeper");
    let restarted = started.elapsed();
    // Wait until the watcher's session answers again: it reconnected.
    await_instances(
        &watcher,
        "rearm",
        TIMEOUT * 3,
        "the watcher's session to answer",
        |s| ids(s) == ["a"],
    )
    .await;
    let other = plain_client(&addr).await;
    other
        .create(
            "/services/rearm/late",
            &instance("rearm", "late", 9021).to_json(),
            &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .expect("create late");
    await_ids(&mut watch, TIMEOUT, &["a", "late"]).await;
    println!(
        "zookeeper reconnect: server restarted in {restarted:?}; watch saw a later change {:?} after the restart began",
        started.elapsed()
    );
    other
        .delete("/services/rearm/late", None)
        .await
        .expect("delete late");
    await_ids(&mut watch, TIMEOUT, &["a"]).await;
}

// A node at our path owned by another live session (a stale node, another
// registrar) or a persistent node left by a tool is replaced by ours in one
// transaction: a watcher never sees the instance missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_nodes_at_our_path_are_replaced_without_a_gap() {
    init_tracing("warn");
    let server = start_server();
    let addr = server.connect_string();
    let other = plain_client(&addr).await;
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    other
        .mkdir("/services/stale", &persistent)
        .await
        .expect("mkdir");
    let old = instance("stale", "x", 1111).with_tag("old");
    other
        .create("/services/stale/x", &old.to_json(), &ephemeral)
        .await
        .expect("create the foreign ephemeral node");
    let tool = instance("stale", "y", 2222).with_tag("old");
    other
        .create("/services/stale/y", &tool.to_json(), &persistent)
        .await
        .expect("create the foreign persistent node");

    let watcher = connect(&addr, None).await;
    let mut watch = watcher.watch("stale");
    await_ids(&mut watch, TIMEOUT, &["x", "y"]).await;

    let registry = connect(&addr, None).await;
    let x = instance("stale", "x", 9003);
    let y = instance("stale", "y", 9004);
    let _x = registry.register(x.clone()).await.unwrap();
    let _y = registry.register(y.clone()).await.unwrap();
    let ours = owner(&other, "/services/stale/x").await.unwrap();
    assert_ne!(ours, other.session_id().0, "x now belongs to the registrar");
    assert_ne!(ours, 0);
    assert_eq!(owner(&other, "/services/stale/y").await, Some(ours));
    let (data, _) = other.get_data("/services/stale/x").await.unwrap();
    assert_eq!(Instance::from_json(&data).unwrap(), x);

    let mut gaps = Vec::new();
    watch_until(
        &mut watch,
        TIMEOUT,
        "the registrar's x and y",
        |item| {
            if let Ok(s) = item {
                if ids(s) != ["x", "y"] {
                    gaps.push(ids(s).join(","));
                }
            }
        },
        |s| s == [x.clone(), y.clone()],
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        gaps.is_empty(),
        "the watch saw an instance missing: {gaps:?}"
    );
    // The other session is alive and did not get its node back.
    assert_eq!(other.state(), zk::SessionState::SyncConnected);
    assert_eq!(owner(&other, "/services/stale/x").await, Some(ours));
}

// Nodes another client writes in our layout are discovered like ours; a
// change of their data or their removal reaches the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_written_by_another_client_are_discovered() {
    init_tracing("warn");
    let server = start_server();
    let addr = server.connect_string();
    let registry = connect(&addr, None).await;
    let mut watch = registry.watch("ext");
    await_ids(&mut watch, TIMEOUT, &[]).await;

    let other = plain_client(&addr).await;
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    other
        .mkdir("/services/ext", &persistent)
        .await
        .expect("mkdir");
    // Minimal JSON, as a hand-written tool might produce it.
    other
        .create(
            "/services/ext/e1",
            br#"{"id":"e1","service":"ext","address":"10.0.0.1","port":80}"#,
            &ephemeral,
        )
        .await
        .expect("create e1");
    let found = await_ids(&mut watch, TIMEOUT, &["e1"]).await;
    assert_eq!(found[0].authority(), "10.0.0.1:80");
    assert_eq!(found[0].weight, 1);
    assert_eq!(ids(&registry.instances("ext").await.unwrap()), ["e1"]);
    assert!(
        registry
            .services()
            .await
            .unwrap()
            .contains(&"ext".to_owned())
    );

    other
        .set_data(
            "/services/ext/e1",
            &instance("ext", "e1", 81).to_json(),
            None,
        )
        .await
        .expect("set e1");
    await_snapshot(&mut watch, TIMEOUT, "e1's new port", |s| {
        s.len() == 1 && s[0].port == 81
    })
    .await;

    other
        .delete("/services/ext/e1", None)
        .await
        .expect("delete e1");
    await_ids(&mut watch, TIMEOUT, &[]).await;

    // Closing the other client's session removes its ephemeral nodes.
    other
        .create(
            "/services/ext/e2",
            &instance("ext", "e2", 82).to_json(),
            &ephemeral,
        )
        .await
        .expect("create e2");
    await_ids(&mut watch, TIMEOUT, &["e2"]).await;
    drop(other);
    await_ids(&mut watch, TIMEOUT, &[]).await;
    assert!(
        !registry
            .services()
            .await
            .unwrap()
            .contains(&"ext".to_owned())
    );
}

// Garbage in our layout is skipped, also when a good node's data turns into
// garbage and back; nodes deeper than `<service>/<id>` are ignored; the
// watch keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_skipped_and_the_watch_keeps_working() {
    init_tracing("warn");
    let server = start_server();
    let addr = server.connect_string();
    let registry = connect(&addr, None).await;
    let _good = registry
        .register(instance("junk", "good", 9005))
        .await
        .unwrap();
    let mut watch = registry.watch("junk");
    await_ids(&mut watch, TIMEOUT, &["good"]).await;

    let other = plain_client(&addr).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("/services/junk/text", b"not json".to_vec()),
        (
            "/services/junk/wrongid",
            instance("junk", "other", 1).to_json(),
        ),
        (
            "/services/junk/wrongservice",
            instance("other", "wrongservice", 1).to_json(),
        ),
        (
            "/services/junk/bad%name",
            instance("junk", "bad%name", 1).to_json(),
        ),
        ("/services/junk/dir", Vec::new()),
        (
            "/services/junk/dir/deep",
            instance("junk", "deep", 1).to_json(),
        ),
    ];
    for (path, data) in &garbage {
        other
            .create(path, data, &persistent)
            .await
            .unwrap_or_else(|e| panic!("create {path}: {e}"));
    }
    // A good node appearing after the garbage proves the watch went on.
    other
        .create(
            "/services/junk/late",
            &instance("junk", "late", 9006).to_json(),
            &persistent,
        )
        .await
        .expect("create late");
    await_ids(&mut watch, TIMEOUT, &["good", "late"]).await;

    // Good data turning into garbage hides the instance; fixing it shows it.
    other
        .set_data("/services/junk/late", b"{broken", None)
        .await
        .expect("break late");
    await_ids(&mut watch, TIMEOUT, &["good"]).await;
    other
        .set_data(
            "/services/junk/late",
            &instance("junk", "late", 9007).to_json(),
            None,
        )
        .await
        .expect("fix late");
    let fixed = await_ids(&mut watch, TIMEOUT, &["good", "late"]).await;
    assert_eq!(fixed[1].port, 9007);
    assert_eq!(
        ids(&registry.instances("junk").await.unwrap()),
        ["good", "late"]
    );

    // A service whose children are all garbage is not a live service.
    other
        .mkdir("/services/onlyjunk", &persistent)
        .await
        .expect("mkdir");
    other
        .create("/services/onlyjunk/x", b"???", &persistent)
        .await
        .expect("create");
    let services = registry.services().await.unwrap();
    assert!(services.contains(&"junk".to_owned()), "{services:?}");
    assert!(!services.contains(&"onlyjunk".to_owned()), "{services:?}");
}

// A node another tool wrote with an ACL that denies us READ is skipped
// (with a warning), not an error: the good instances next to it stay
// visible to instances(), services() and the watch, and a service node we
// may not list hides only that service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_nodes_are_skipped_and_hide_nothing_else() {
    init_tracing("warn");
    let server = start_server();
    let addr = server.connect_string();
    let registry = connect(&addr, None).await;
    let _good = registry
        .register(instance("guarded", "good", 9010))
        .await
        .unwrap();
    let mut watch = registry.watch("guarded");
    await_ids(&mut watch, TIMEOUT, &["good"]).await;

    // Everyone may create, write, delete and administer, but nobody may read.
    let no_read = [zk::Acl::new(
        zk::Permission::CREATE
            | zk::Permission::WRITE
            | zk::Permission::DELETE
            | zk::Permission::ADMIN,
        zk::AuthId::anyone(),
    )];
    let unreadable = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&no_read));
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let other = plain_client(&addr).await;
    other
        .create(
            "/services/guarded/secret",
            &instance("guarded", "secret", 9011).to_json(),
            &unreadable,
        )
        .await
        .expect("create the unreadable node");
    assert_eq!(
        other.get_data("/services/guarded/secret").await.err(),
        Some(zk::Error::NoAuth),
        "the ACL should deny reading the node"
    );
    // A service node we may not list, holding a (readable) instance.
    other
        .create("/services/hidden", &[], &unreadable)
        .await
        .expect("create the unlistable service node");
    other
        .create(
            "/services/hidden/x",
            &instance("hidden", "x", 9012).to_json(),
            &persistent,
        )
        .await
        .expect("create an instance under it");

    // A good node appearing after the unreadable one proves the watch went on.
    other
        .create(
            "/services/guarded/late",
            &instance("guarded", "late", 9013).to_json(),
            &persistent,
        )
        .await
        .expect("create late");
    await_ids(&mut watch, TIMEOUT, &["good", "late"]).await;
    assert_eq!(
        ids(&registry.instances("guarded").await.expect("instances")),
        ["good", "late"]
    );
    // A watch started now reads the unreadable node in its first snapshot.
    let mut fresh = registry.watch("guarded");
    await_ids(&mut fresh, TIMEOUT, &["good", "late"]).await;
    let services = registry.services().await.expect("services");
    assert_eq!(services, ["guarded"], "the unlistable service is skipped");
}

// Abandoning one of two instances of one registrar: only the abandoned one
// disappears, by a real session expiry on the server, after about one
// session timeout; the other stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_expires_one_node_and_keeps_the_others() {
    init_tracing("warn");
    let server = start_server();
    let addr = server.connect_string();
    let registry = connect(&addr, Some(SHORT_SESSION)).await;
    let a = registry
        .register(instance("crash", "a", 9008))
        .await
        .unwrap();
    let b = registry
        .register(instance("crash", "b", 9009))
        .await
        .unwrap();
    let watcher = connect(&addr, None).await;
    let mut watch = watcher.watch("crash");
    await_ids(&mut watch, TIMEOUT, &["a", "b"]).await;
    let observer = plain_client(&addr).await;
    let ours = owner(&observer, "/services/crash/a").await.unwrap();

    let started = Instant::now();
    b.abandon();
    // Right after abandon, b is still there, held by another session that
    // nobody keeps alive: it was not deleted.
    let orphan = eventually(TIMEOUT, "b handed to another session", || async {
        Ok(match owner(&observer, "/services/crash/b").await {
            Some(session) if session != ours => Some(session),
            Some(_) => None,
            None => Some(0),
        })
    })
    .await;
    assert_ne!(orphan, 0, "b was deleted instead of being left to expire");

    watch_until(
        &mut watch,
        SHORT_SESSION * 3 + TIMEOUT,
        "b to expire",
        |item| {
            if let Ok(s) = item {
                assert!(ids(s).contains(&"a"), "a disappeared: {:?}", ids(s));
            }
        },
        |s| ids(s) == ["a"],
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let took = started.elapsed();
    println!(
        "zookeeper abandon: b gone after {took:?} (session timeout {SHORT_SESSION:?}); a kept"
    );

    // a outlives several session timeouts.
    tokio::time::sleep(SHORT_SESSION * 2).await;
    assert_eq!(ids(&watcher.instances("crash").await.unwrap()), ["a"]);
    assert_eq!(owner(&observer, "/services/crash/a").await, Some(ours));
    a.deregister().await.unwrap();
    await_ids(&mut watch, TIMEOUT, &[]).await;
}

// The layout is what zkCli shows: `ls` lists the ids, `get` prints the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_matches_zkcli() {
    init_tracing("warn");
    let server = start_server();
    let addr = server.connect_string();
    let registry = connect(&addr, None).await;
    let a = instance("lorem", "a", 8080).with_tag("v1");
    let _a = registry.register(a.clone()).await.unwrap();
    let _b = registry
        .register(instance("lorem", "b", 8081))
        .await
        .unwrap();

    let zkcli = |command: &'static str| {
        let java = testkit::java_bin().expect("java (apt-get install -y default-jre-headless)");
        let classpath =
            testkit::zk_classpath().expect("ZooKeeper jars (apt-get install -y zookeeper)");
        let addr = addr.clone();
        async move {
            let output = tokio::process::Command::new(java)
                .args(["-cp", &classpath])
                .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=error")
                .args(["org.apache.zookeeper.ZooKeeperMain", "-server", &addr])
                .args(command.split(' '))
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run zkCli (ZooKeeperMain)");
            assert!(output.status.success(), "zkCli {command}: {output:?}");
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let ls = zkcli("ls /services/lorem").await;
    println!("zkCli ls /services/lorem:\n{ls}");
    assert!(ls.lines().any(|l| l.trim() == "[a, b]"), "{ls}");
    let get = zkcli("get /services/lorem/a").await;
    println!("zkCli get /services/lorem/a:\n{get}");
    // The instance's JSON, plus the owner token of the registrar, then
    // Curator x-discovery's fields (docs/interop.md).
    let json = String::from_utf8(a.to_json()).unwrap();
    let json = format!(
        "{},\"owner\":\"{}\",\"name\":\"lorem\",\"sslPort\":null,\"payload\":null,\"registrationTimeUTC\":",
        json.trim_end_matches('}'),
        registry.owner()
    );
    assert!(
        get.lines().any(|l| l.trim().starts_with(&json)
            && l.contains(r#""serviceType":"DYNAMIC","uriSpec":{"parts":["#)),
        "{get}"
    );
    let stat = zkcli("stat /services/lorem/a").await;
    assert!(
        stat.lines()
            .any(|l| l.starts_with("ephemeralOwner = 0x") && !l.ends_with("= 0x0")),
        "our nodes are ephemeral: {stat}"
    );
}

// Names ZooKeeper cannot take are refused in our words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_zookeeper_cannot_take_are_refused() {
    init_tracing("warn");
    let server = start_server();
    let registry = connect(&server.connect_string(), None).await;
    for (service, id) in [("lorem", "."), ("..", "a"), ("lo/rem", "a")] {
        let error = registry
            .register(instance(service, id, 1))
            .await
            .expect_err("an impossible node name is refused");
        assert!(matches!(error, Error::InvalidInstance(_)), "{error}");
    }
    let error = registry.instances("..").await.unwrap_err();
    assert!(matches!(error, Error::InvalidInstance(_)), "{error}");
    let mut watch = registry.watch(".");
    match watch.next().await {
        Some(Err(Error::InvalidInstance(_))) => {}
        other => panic!("expected an InvalidInstance item, got {other:?}"),
    }
}

// A 3-member ensemble losing one member at a time (each one in turn, so the
// one we are connected to and the leader are among them): the session
// survives, registrations and the watch keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_keeps_working_with_a_member_down() {
    init_tracing("warn");
    let mut ensemble = ZkEnsemble::start(3)
        .unwrap_or_else(|e| panic!("cannot start a ZooKeeper ensemble: {e:#}\n({INSTALL})"));
    let addr = ensemble.registry_addr();
    let registry = connect(&addr, None).await;
    let watcher = connect(&addr, None).await;
    let _first = registry.register(instance("ens", "m", 9010)).await.unwrap();
    let mut watch = watcher.watch("ens");
    await_ids(&mut watch, TIMEOUT, &["m"]).await;
    let observer = plain_client(&addr).await;
    let session = owner(&observer, "/services/ens/m").await.unwrap();
    drop(observer);

    let mut kept = vec![_first];
    let mut want: Vec<String> = vec!["m".to_owned()];
    for member in 0..3 {
        blocking(|| ensemble.stop_member(member)).expect("stop a member");
        let started = Instant::now();
        let id = format!("m{member}");
        let registration = eventually(TIMEOUT * 6, "a registration with a member down", || {
            let registry = registry.clone();
            let id = id.clone();
            async move {
                match registry.register(instance("ens", &id, 9011)).await {
                    Ok(r) => Ok(Some(r)),
                    Err(e) if e.is_transient() => Err(e.to_string()),
                    Err(e) => panic!("non-transient error with a member down: {e}"),
                }
            }
        })
        .await;
        kept.push(registration);
        want.push(id);
        let want_refs: Vec<&str> = want.iter().map(String::as_str).collect();
        await_ids(&mut watch, TIMEOUT * 6, &want_refs).await;
        println!(
            "zookeeper ensemble: member {member} down -> registered and watched in {:?}",
            started.elapsed()
        );
        blocking(|| ensemble.start_member(member)).expect("start the member again");
    }
    // The session survived every member change: the first node is still
    // held by it, not re-created by a new one.
    let observer = plain_client(&addr).await;
    assert_eq!(owner(&observer, "/services/ens/m").await, Some(session));
    let all = registry.instances("ens").await.unwrap();
    assert_eq!(ids(&all), ["m", "m0", "m1", "m2"]);
    drop(kept);
}
