//! Selecting instances by tag, metadata and zone, with the real binaries
//! on a real registry (etcd from the testkit): the seed's go-kit client
//! (`tags="[lorem ru-rocker]"`) as `lorem-client load --tags lorem,ru-rocker`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{Guard, await_ids, env_for, lorem_server_bin, settings};
use serde_json::Value;
use testkit::EtcdServer;

/// `lorem-client load` of 40 requests with `args` and `env`; its report.
fn load(etcd: &EtcdServer, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
    env_for(&mut command, "etcd", etcd);
    command
        .args(["load", "--requests", "40", "--concurrency", "2", "--json"])
        .args(args)
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run lorem-client load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "load must print one JSON object ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(report["failed"], 0, "{report}");
    report
}

/// The instances that served, sorted.
fn served(report: &Value) -> Vec<String> {
    report["per_instance"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_uses_only_the_selected_instances() {
    let etcd = tokio::task::block_in_place(EtcdServer::start).expect("start etcd");
    let servers: Vec<Guard> = [
        ("sel-both", "lorem,ru-rocker", "version=v2,zone=eu"),
        ("sel-lorem", "lorem", "version=v2,zone=eu"),
        ("sel-old", "lorem,ru-rocker", "version=v1,zone=us"),
    ]
    .into_iter()
    .map(|(id, tags, metadata)| {
        let mut command = Command::new(lorem_server_bin());
        env_for(&mut command, "etcd", &etcd);
        command
            .args(["--listen", &format!("127.0.0.1:{}", testkit::free_port())])
            .args(["--id", id, "--tags", tags, "--metadata", metadata])
            .args(["--weight", if id == "sel-old" { "3" } else { "1" }])
            .args(["--drain-delay", "0s"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        Guard(Some(command.spawn().expect("spawn lorem-server")))
    })
    .collect();
    let watcher = registry::connect(&settings("etcd", &etcd))
        .await
        .expect("connect a watcher");
    await_ids(
        &*watcher,
        &["sel-both", "sel-lorem", "sel-old"],
        Duration::from_secs(30),
    )
    .await;

    // What lorem-server registered: its flags, and the identity header.
    let registered = watcher.instances("lorem").await.expect("read the registry");
    let old = registered
        .iter()
        .find(|i| i.id == "sel-old")
        .expect("sel-old registered");
    assert_eq!(old.weight, 3, "{old:?}");
    assert_eq!(old.tags, ["lorem", "ru-rocker"], "{old:?}");
    for (key, value) in [
        ("version", "v1"),
        ("zone", "us"),
        ("instance-id-header", "x-instance-id"),
    ] {
        assert_eq!(
            old.metadata.get(key).map(String::as_str),
            Some(value),
            "{old:?}"
        );
    }

    let everyone = load(&etcd, &[], &[]);
    assert_eq!(served(&everyone), ["sel-both", "sel-lorem", "sel-old"]);
    let tagged = load(&etcd, &["--tags", "lorem,ru-rocker"], &[]);
    assert_eq!(served(&tagged), ["sel-both", "sel-old"], "{tagged}");
    assert_eq!(
        tagged["instances"],
        serde_json::json!(["sel-both", "sel-old"])
    );
    let v2 = load(
        &etcd,
        &["--tags", "lorem,ru-rocker", "--metadata", "version=v2"],
        &[],
    );
    assert_eq!(served(&v2), ["sel-both"], "{v2}");
    // The same through the environment.
    let by_env = load(
        &etcd,
        &[],
        &[("LB_TAGS", "ru-rocker"), ("LB_METADATA", "version=v1")],
    );
    assert_eq!(served(&by_env), ["sel-old"], "{by_env}");
    // Zone preference: the local zone while it is healthy, others unused.
    let eu = load(&etcd, &[], &[("LB_ZONE", "eu")]);
    assert_eq!(served(&eu), ["sel-both", "sel-lorem"], "{eu}");
    let us = load(&etcd, &["--zone", "us"], &[]);
    assert_eq!(served(&us), ["sel-old"], "{us}");

    for server in servers {
        assert_eq!(server.terminate().await.code(), Some(0));
    }
}
