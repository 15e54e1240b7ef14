//! Every server type starts for real, is reachable, stops (its PID is gone)
//! and restarts on the same port; clusters of 3 start and survive a member
//! restart; a missing binary fails with an install hint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{ConsulAgent, EtcdCluster, EtcdServer, RegistryServer, ZkEnsemble, ZkServer};

/// Polls `cond` until it holds or `timeout` passes; panics naming `what`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn connects(addr: &str) -> bool {
    addr.parse()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
        .is_some()
}

/// Sends raw bytes and reads the answer until the peer closes.
fn exchange(addr: &str, request: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.write_all(request.as_bytes());
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

fn http_get(addr: &str, path: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
}

/// The HTTP status code of a reply, 0 if there is none.
fn status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn etcd_healthy(addr: &str) -> bool {
    status(&http_get(addr, "/health")) == 200
}

fn zk_mode(addr: &str) -> Option<String> {
    exchange(addr, "srvr")
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_owned())
}

fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let bin = testkit::etcdctl_bin().expect("etcdctl");
    let out = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=5s")
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops `server`, checks the PID exited and the port is closed, starts it
/// again and checks the same address answers.
fn stop_and_restart(server: &mut dyn RegistryServer, pid: u32, first_addr: &str) {
    let addr = server.registry_addr();
    server.stop().expect("stop");
    assert!(!pid_alive(pid), "pid {pid} still exists after stop()");
    assert!(
        !connects(first_addr),
        "{first_addr} still accepts connections after stop()"
    );
    server.start().expect("start again");
    assert_eq!(server.registry_addr(), addr, "restart must reuse the ports");
    assert!(
        connects(first_addr),
        "{first_addr} refuses connections after start()"
    );
}

#[test]
fn etcd_server_starts_stops_and_restarts_on_same_port_and_data() {
    let mut etcd = EtcdServer::start().expect("start etcd");
    assert_eq!(etcd.backend(), "etcd");
    let addr = etcd.endpoint();
    assert_eq!(etcd.registry_addr(), addr);
    assert!(etcd_healthy(&addr), "etcd at {addr} is not healthy");
    etcdctl(&addr, &["put", "testkit/k", "v1"]);

    let pid = etcd.pid().expect("a running etcd has a pid");
    stop_and_restart(&mut etcd, pid, &addr);
    assert!(etcd_healthy(&addr));
    assert!(
        etcdctl(&addr, &["get", "testkit/k"]).contains("v1"),
        "data lost across restart"
    );

    // A crash (SIGKILL) and a start again also keep the data.
    let pid = etcd.pid().expect("pid");
    etcd.kill().expect("kill");
    assert!(etcd.pid().is_none());
    assert!(!pid_alive(pid));
    etcd.restart().expect("restart after kill");
    assert!(etcdctl(&addr, &["get", "testkit/k"]).contains("v1"));

    let pid = etcd.pid().expect("pid");
    let dir = etcd.dir().to_owned();
    drop(etcd);
    assert!(!pid_alive(pid), "drop must stop etcd");
    assert!(!dir.exists(), "drop must remove {}", dir.display());
}

#[test]
fn zk_server_starts_stops_and_restarts_on_same_port() {
    let mut zk = ZkServer::start().expect("start ZooKeeper");
    assert_eq!(zk.backend(), "zookeeper");
    let addr = zk.connect_string();
    assert_eq!(zk.registry_addr(), addr);
    assert_eq!(zk_mode(&addr).as_deref(), Some("standalone"));

    let pid = zk.pid().expect("a running ZooKeeper has a pid");
    stop_and_restart(&mut zk, pid, &addr);
    assert_eq!(zk_mode(&addr).as_deref(), Some("standalone"));

    let pid = zk.pid().expect("pid");
    zk.kill().expect("kill");
    assert!(!pid_alive(pid));
    zk.start().expect("start after kill");
    assert_eq!(zk_mode(&addr).as_deref(), Some("standalone"));

    let pid = zk.pid().expect("pid");
    let dir = zk.dir().to_owned();
    drop(zk);
    assert!(!pid_alive(pid), "drop must stop ZooKeeper");
    assert!(!dir.exists(), "drop must remove {}", dir.display());
}

#[test]
fn consul_agent_starts_stops_and_restarts_on_same_port() {
    let mut consul = ConsulAgent::start().expect("start Consul");
    assert_eq!(consul.backend(), "consul");
    let addr = consul.http_addr();
    assert_eq!(consul.registry_addr(), addr);
    let leader = http_get(&addr, "/v1/status/leader");
    assert_eq!(status(&leader), 200, "{leader}");
    assert!(leader.contains("\"127.0.0.1:"), "no leader: {leader}");

    let pid = consul.pid().expect("a running agent has a pid");
    stop_and_restart(&mut consul, pid, &addr);
    assert!(http_get(&addr, "/v1/status/leader").contains("\"127.0.0.1:"));

    let pid = consul.pid().expect("pid");
    consul.kill().expect("kill");
    assert!(!pid_alive(pid));
    consul.start().expect("start after kill");
    assert!(http_get(&addr, "/v1/status/leader").contains("\"127.0.0.1:"));

    let pid = consul.pid().expect("pid");
    drop(consul);
    assert!(!pid_alive(pid), "drop must stop Consul");
}

#[test]
fn etcd_cluster_of_three_survives_a_member_restart() {
    let mut cluster = EtcdCluster::start(3).expect("start etcd cluster");
    let endpoints = cluster.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert_eq!(cluster.registry_addr(), endpoints.join(","));
    for e in &endpoints {
        assert!(etcd_healthy(e), "member {e} is not healthy");
    }
    etcdctl(&endpoints[0], &["put", "testkit/c", "v"]);

    let pid = cluster.member_pid(0).expect("pid");
    cluster.stop_member(0).expect("stop member 0");
    assert!(!pid_alive(pid));
    assert!(cluster.member_pid(0).is_none());
    // The other two keep a quorum.
    wait_for(
        "the remaining members to be healthy",
        Duration::from_secs(20),
        || etcd_healthy(&endpoints[1]) && etcd_healthy(&endpoints[2]),
    );
    etcdctl(&endpoints[1], &["put", "testkit/c", "v2"]);

    cluster.start_member(0).expect("start member 0");
    assert!(etcd_healthy(&endpoints[0]));
    wait_for("member 0 to catch up", Duration::from_secs(20), || {
        etcdctl(&endpoints[0], &["get", "testkit/c"]).contains("v2")
    });

    cluster.restart().expect("restart the whole cluster");
    for e in &endpoints {
        assert!(etcd_healthy(e), "member {e} is not healthy after restart");
    }
    assert!(
        cluster.stop_member(3).is_err(),
        "out of range member must be an error"
    );
}

#[test]
fn zk_ensemble_of_three_survives_a_member_restart() {
    let mut ensemble = ZkEnsemble::start(3).expect("start ZooKeeper ensemble");
    assert_eq!(ensemble.backend(), "zookeeper");
    let addrs: Vec<String> = ensemble
        .connect_string()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(addrs.len(), 3);
    let modes: Vec<String> = (0..3).filter_map(|i| ensemble.member_mode(i)).collect();
    assert_eq!(
        modes.iter().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );

    let pid = ensemble.member_pid(0).expect("pid");
    ensemble.stop_member(0).expect("stop member 0");
    assert!(!pid_alive(pid));
    wait_for(
        "the remaining two to serve",
        Duration::from_secs(30),
        || zk_mode(&addrs[1]).is_some() && zk_mode(&addrs[2]).is_some(),
    );
    ensemble.start_member(0).expect("start member 0");
    assert!(zk_mode(&addrs[0]).is_some());
    assert!(
        ensemble.start_member(7).is_err(),
        "out of range member must be an error"
    );
}

/// Runs this test binary again, filtered to the ignored helper test `name`,
/// with extra environment variables (so no test mutates its own process
/// environment), and asserts that it ran and passed.
fn run_child(name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env("TESTKIT_CHILD", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child test {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "child test {name} did not run:\n{stdout}"
    );
}

fn assert_child() {
    assert_eq!(
        std::env::var("TESTKIT_CHILD").as_deref(),
        Ok("1"),
        "a helper test: run only by its parent test"
    );
}

#[test]
fn missing_binaries_fail_with_install_hints() {
    run_child(
        "missing_binaries_child",
        &[
            ("TESTKIT_ETCD_BIN", "/nonexistent/etcd"),
            ("TESTKIT_JAVA", "/nonexistent/java"),
            ("CONSUL_BIN", "/nonexistent/consul"),
        ],
    );
}

#[test]
#[ignore = "helper: run by missing_binaries_fail_with_install_hints with a prepared environment"]
fn missing_binaries_child() {
    assert_child();
    let err = format!(
        "{:#}",
        EtcdServer::start().expect_err("etcd must be missing")
    );
    assert!(err.contains("TESTKIT_ETCD_BIN=/nonexistent/etcd"), "{err}");
    assert!(
        err.contains("apt-get install etcd-server etcd-client"),
        "{err}"
    );

    let err = format!("{:#}", ZkServer::start().expect_err("java must be missing"));
    assert!(
        err.contains("apt-get install zookeeper default-jre-headless"),
        "{err}"
    );

    let err = format!(
        "{:#}",
        ConsulAgent::start().expect_err("consul must be missing")
    );
    assert!(err.contains("scripts/build-consul.sh"), "{err}");
}

/// etcd reads `ETCD_*` variables as flags (and refuses to start when one
/// shadows a flag on its command line): the kit must not pass them on.
#[test]
fn etcd_ignores_etcd_variables_of_the_parent() {
    run_child(
        "etcd_variables_child",
        &[
            ("ETCD_NAME", "not-from-testkit"),
            ("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1"),
        ],
    );
}

#[test]
#[ignore = "helper: run by etcd_ignores_etcd_variables_of_the_parent with a prepared environment"]
fn etcd_variables_child() {
    assert_child();
    assert!(std::env::var_os("ETCD_NAME").is_some());
    let etcd = EtcdServer::start().expect("etcd starts despite ETCD_* in the environment");
    assert!(etcd_healthy(&etcd.endpoint()));
}

/// A server the test process never stops (leaked, held in a `static`, or
/// the process killed) is killed and its temp dir removed by the watchdog
/// once the process is gone.
#[test]
fn servers_die_with_the_test_process() {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--exact", "leaked_server_child", "--ignored", "--nocapture"])
        .env("TESTKIT_CHILD", "1")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}");
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("child printed no {key}:\n{stdout}"))
            .to_owned()
    };
    let pid: u32 = field("LEAKED_PID=").parse().expect("a pid");
    let dir = std::path::PathBuf::from(field("LEAKED_DIR="));
    wait_for(
        "the leaked etcd to be killed",
        Duration::from_secs(15),
        || !pid_alive(pid),
    );
    wait_for(
        "the leaked temp dir to be removed",
        Duration::from_secs(15),
        || !dir.exists(),
    );
}

#[test]
#[ignore = "helper: run by servers_die_with_the_test_process"]
fn leaked_server_child() {
    assert_child();
    let etcd = EtcdServer::start().expect("start etcd");
    println!("LEAKED_PID={}", etcd.pid().expect("pid"));
    println!("LEAKED_DIR={}", etcd.dir().display());
    std::mem::forget(etcd);
}
