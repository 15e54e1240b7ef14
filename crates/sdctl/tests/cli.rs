//! `sdctl` as operators and scripts use it, against real servers started
//! on loopback by the test kit (the memory backend is process-local, and
//! checked for saying so): ls, watch, register, deregister, ui, and clear
//! errors within the timeout for bad arguments, unknown services and
//! unreachable registries.

mod common;

use std::time::Duration;

use common::{Running, run_bounded, sdctl, text};
use testkit::{ConsulAgent, EtcdServer, RegistryServer, ZkServer};

/// A bound on any one command: far above REGISTRY_TIMEOUT, only to turn a
/// hang into a failure.
const BOUND: Duration = Duration::from_secs(30);
/// How long a line of a running command may take.
const LINE: Duration = Duration::from_secs(10);

/// (environment, arguments, exit status, what stderr must say).
type Case = (
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    i32,
    &'static str,
);

#[test]
fn bad_arguments_are_clear_errors() {
    let cases: &[Case] = &[
        (
            &[],
            &["bench", "--backends", "etc"],
            2,
            "unknown backend \"etc\"; expected one of memory, etcd, zookeeper (or zk), consul",
        ),
        (
            &[],
            &["register", "lorem", "a", "nohost"],
            2,
            "address \"nohost\" has no port",
        ),
        (
            &[],
            &["register", "lorem", "a", "127.0.0.1:1", "--meta", "zone"],
            2,
            "metadata \"zone\" must be KEY=VALUE",
        ),
        (&[], &["watch"], 2, "SERVICE"),
        (
            &[],
            &["ui", "--listen", "nohost"],
            2,
            "invalid value 'nohost' for '--listen <HOST:PORT>'",
        ),
        (&[], &["watch", "lorem", "--count", "0"], 2, "--count"),
        (
            &[],
            &["bench", "--quick", "--backends", "etcd"],
            1,
            "no etcd server to measure: give --etcd-addr HOST:PORT, or --spawn",
        ),
        (
            &[],
            &["bench", "--rounds", "0", "--backends", "memory"],
            1,
            "--rounds 0 is out of bounds; use 1 to 10000",
        ),
        (
            &[("REGISTRY", "etc")],
            &["ls"],
            1,
            "unknown registry \"etc\"; expected one of memory, consul, etcd, zookeeper (or zk)",
        ),
        (
            &[("REGISTRY", "etcd"), ("REGISTRY_TTL", "soon")],
            &["ls"],
            1,
            "not a duration",
        ),
        (
            &[("REGISTRY", "etcd"), ("REGISTRY_ADDR", "nohost")],
            &["ls"],
            1,
            "\"nohost\" has no port",
        ),
        (
            &[("REGISTRY", "memory")],
            &["register", "lorem", "a b", "127.0.0.1:1"],
            1,
            "id \"a b\" must match",
        ),
        (
            &[("REGISTRY", "memory")],
            &["register", "lorem", "a", "127.0.0.1:1", "--weight", "0"],
            1,
            "weight must be at least 1",
        ),
        (
            &[("REGISTRY", "memory")],
            &["ls", "no/such"],
            1,
            "service \"no/such\" must match",
        ),
    ];
    for (env, args, code, needle) in cases {
        let mut command = sdctl(env);
        command.args(*args);
        let (output, _) = run_bounded(command, BOUND);
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(*code),
            "sdctl {args:?}: {stderr}"
        );
        assert!(stderr.contains(needle), "sdctl {args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "sdctl {args:?} printed on stdout");
    }
}

#[test]
fn the_memory_registry_is_process_local_and_sdctl_says_so() {
    let mut command = sdctl(&[]);
    command.args(["ls", "lorem"]);
    let (output, _) = run_bounded(command, BOUND);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("warning: REGISTRY is memory"), "{stderr}");
    assert!(
        stderr.contains(
            "no live instances of service \"lorem\" in the memory registry of this process"
        ),
        "{stderr}"
    );
}

#[test]
fn unreachable_registries_fail_within_the_timeout() {
    for backend in ["etcd", "zookeeper", "consul"] {
        let closed = format!("127.0.0.1:{}", testkit::free_port());
        for args in [
            &["ls"][..],
            &["watch", "lorem"],
            &["deregister", "lorem", "a"],
            &["ui", "--listen", "127.0.0.1:0"],
        ] {
            let mut command = sdctl(&[
                ("REGISTRY", backend),
                ("REGISTRY_ADDR", &closed),
                ("REGISTRY_TIMEOUT", "1s"),
            ]);
            command.args(args);
            let (output, took) = run_bounded(command, BOUND);
            let stderr = text(&output.stderr);
            println!("{backend} {args:?}: failed after {took:?}: {stderr}");
            assert_eq!(
                output.status.code(),
                Some(1),
                "{backend} {args:?}: {stderr}"
            );
            let last = stderr.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("sdctl: ") && last.contains(backend) && last.contains(&closed),
                "the error names the backend and the address: {stderr}"
            );
        }
    }
}

#[test]
fn ui_on_an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut command = sdctl(&[("REGISTRY", "memory")]);
    command.args(["ui", "--listen", &addr]);
    let (output, _) = run_bounded(command, BOUND);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("sdctl: cannot listen on {addr}: "))
            && stderr.contains("pick another address with --listen"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing on stdout: {stderr}");
}

/// The operator's session on a real backend: watch, register (held), ls
/// in every form, SIGTERM, the record of a killed process removed with
/// deregister, and the errors for what is not there.
fn operator_session(server: &dyn RegistryServer) {
    let backend = server.backend();
    let addr = server.registry_addr();
    let env = [
        ("REGISTRY", backend),
        ("REGISTRY_ADDR", addr.as_str()),
        ("REGISTRY_TTL", "2s"),
        ("REGISTRY_TIMEOUT", "5s"),
    ];
    let service = "sdctl-cli";
    let mut watch = {
        let mut command = sdctl(&env);
        command.args(["watch", service, "--count", "4"]);
        Running::spawn(command)
    };
    watch.expect(&format!("synced {service} instances=0"), LINE);

    let mut held = {
        let mut command = sdctl(&env);
        command.args([
            "register",
            service,
            "a",
            "127.0.0.1:9001",
            "--tag",
            "v1",
            "--meta",
            "zone=eu",
            "--weight",
            "3",
        ]);
        Running::spawn(command)
    };
    held.expect(&format!("registered {service}/a 127.0.0.1:9001"), LINE);
    watch.expect(
        &format!("added {service}/a 127.0.0.1:9001 tags=v1 weight=3 meta.zone=eu"),
        LINE,
    );

    let ls = |args: &[&str]| {
        let mut command = sdctl(&env);
        command.args(args);
        let (output, _) = run_bounded(command, BOUND);
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };
    let (code, stdout, stderr) = ls(&["ls"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("SERVICE"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [service, "1"]),
        "{stdout}"
    );
    let (code, stdout, stderr) = ls(&["ls", service]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "ADDRESS", "TAGS", "WEIGHT", "METADATA"],
        "{stdout}"
    );
    assert_eq!(
        rows[1],
        ["a", "127.0.0.1:9001", "v1", "3", "zone=eu"],
        "{stdout}"
    );
    let (code, stdout, stderr) = ls(&["ls", service, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    let instances = json["instances"].as_array().expect("an instances array");
    assert_eq!(instances.len(), 1, "{json}");
    assert_eq!(instances[0]["id"], "a");
    assert_eq!(instances[0]["port"], 9001);
    assert_eq!(instances[0]["metadata"]["zone"], "eu");
    let (code, stdout, _) = ls(&["ls", "--json"]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert!(
        json["services"]
            .as_array()
            .expect("a services array")
            .iter()
            .any(|s| s["name"] == service && s["instances"] == 1),
        "{json}"
    );

    // SIGTERM: the held registration is deregistered, the command exits 0.
    held.terminate();
    held.expect(&format!("deregistered {service}/a"), LINE);
    assert!(held.wait(LINE), "sdctl register exits 0 after SIGTERM");
    watch.expect(&format!("removed {service}/a"), LINE);

    // A killed process leaves its record behind until it expires (30 s
    // asked; ZooKeeper here grants at most 10 s); deregister removes it now.
    let mut crashed = {
        let mut command = sdctl(&env);
        command
            .env("REGISTRY_TTL", "30s")
            .args(["register", service, "b", "127.0.0.1:9002"]);
        Running::spawn(command)
    };
    crashed.expect(&format!("registered {service}/b"), LINE);
    watch.expect(&format!("added {service}/b 127.0.0.1:9002"), LINE);
    crashed.child.kill().expect("SIGKILL");
    let _ = crashed.child.wait();
    let (code, stdout, stderr) = ls(&["deregister", service, "b"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("deregistered {service}/b\n"));
    // Well before the expiry: the removal, not the TTL, took it away.
    watch.expect(&format!("removed {service}/b"), Duration::from_secs(8));
    assert!(watch.wait(LINE), "sdctl watch --count 4 stops by itself");

    // What is not there is an error that says what there is.
    let (code, _, stderr) = ls(&["deregister", service, "b"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no instance \"b\" of service \"{service}\" to deregister in {backend} at {addr}"
        )),
        "{stderr}"
    );
    let (code, _, stderr) = ls(&["ls", service]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no live instances of service \"{service}\" in {backend} at {addr}"
        )),
        "{stderr}"
    );
}

#[test]
fn operator_session_on_etcd() {
    let server = EtcdServer::start().expect("start etcd (see testkit for how to install it)");
    operator_session(&server);
}

#[test]
fn operator_session_on_zookeeper() {
    let server = ZkServer::start().expect("start ZooKeeper (see testkit for how to install it)");
    operator_session(&server);
}

#[test]
fn operator_session_on_consul() {
    let server =
        ConsulAgent::start().expect("start Consul (run scripts/build-consul.sh to build it)");
    operator_session(&server);
}
