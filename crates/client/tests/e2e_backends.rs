//! End to end on real registries: the real binaries as processes.
//!
//! For each of etcd, ZooKeeper and Consul (started by the testkit on
//! loopback): two `lorem-server` processes register, `lorem-client load`
//! spreads bounded load over both with nothing failing, both servers exit 0
//! on SIGTERM and deregister; then `lorem-demo` runs its three phases on the
//! same backend and must end with `failed=0`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{Guard, await_ids, env_for, lorem_server_bin, record, settings};
use testkit::{ConsulAgent, EtcdServer, RegistryServer, ZkServer};

fn free_port() -> u16 {
    testkit::free_port()
}

async fn servers_and_load(backend: &str, server: &dyn RegistryServer) {
    let ids = [format!("e2e-{backend}-a"), format!("e2e-{backend}-b")];
    let mut servers = Vec::new();
    for id in &ids {
        let mut command = Command::new(lorem_server_bin());
        env_for(&mut command, backend, server);
        command
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--id", id, "--drain-delay", "500ms"])
            .stdout(Stdio::null());
        servers.push(Guard(Some(command.spawn().expect("spawn lorem-server"))));
    }
    let watcher = registry::connect(&settings(backend, server))
        .await
        .expect("connect a watcher");
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    await_ids(&*watcher, &want, Duration::from_secs(30)).await;

    let mut load = Command::new(env!("CARGO_BIN_EXE_lorem-client"));
    env_for(&mut load, backend, server);
    let output = load
        .args(["load", "--requests", "600", "--concurrency", "4", "--json"])
        .output()
        .expect("run lorem-client load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "load must print one JSON object ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    record(format!(
        "e2e {backend} lorem-client load (2 lorem-server processes): {report}"
    ));
    assert_eq!(report["failed"], 0, "no request may fail: {report}");
    assert_eq!(report["ok"], 600, "{report}");
    for id in &ids {
        assert!(
            report["per_instance"][id].as_u64().unwrap_or(0) > 0,
            "{id} must serve: {report}"
        );
    }
    assert!(output.status.success(), "load exits 0 when nothing failed");

    for (guard, id) in servers.into_iter().zip(&ids) {
        let pid = guard.pid();
        let status = guard.terminate().await;
        assert!(
            status.success(),
            "lorem-server {id} (pid {pid}) exits 0 on SIGTERM: {status}"
        );
    }
    await_ids(&*watcher, &[], Duration::from_secs(10)).await;
}

fn demo(backend: &str, server: &dyn RegistryServer) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorem-demo"));
    env_for(&mut command, backend, server);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lorem-demo");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut guard = Guard(Some(child));
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = guard
        .0
        .take()
        .expect("child")
        .wait()
        .expect("wait for lorem-demo");
    let last = lines.last().cloned().unwrap_or_default();
    println!("e2e {backend} demo:\n{}", lines.join("\n"));
    for line in lines
        .iter()
        .filter(|l| l.starts_with("phase") || l.starts_with("requests:"))
    {
        record(format!("e2e {backend} lorem-demo: {line}"));
    }
    assert!(
        last.starts_with("requests: ok=") && last.ends_with(" failed=0"),
        "lorem-demo on {backend} must end with failed=0, got {last:?}"
    );
    assert!(status.success(), "lorem-demo exits 0: {status}");
}

async fn e2e(backend: &str, server: Box<dyn RegistryServer>) {
    servers_and_load(backend, &*server).await;
    // The demo is a blocking child process; keep the runtime free meanwhile.
    tokio::task::block_in_place(|| demo(backend, &*server));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd() {
    e2e("etcd", Box::new(EtcdServer::start().expect("start etcd"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper() {
    e2e(
        "zookeeper",
        Box::new(ZkServer::start().expect("start ZooKeeper")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul() {
    e2e(
        "consul",
        Box::new(ConsulAgent::start().expect("start Consul")),
    )
    .await;
}
