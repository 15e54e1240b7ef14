//! The topology of `deploy/local.sh` (the `local-topology` binary), on every
//! backend, run as a user runs it:
//!
//! 1. it starts (free ports for everything) and prints where each process is;
//! 2. `POST /sd-lorem` on the gateway is answered by both `server1` and
//!    `server2`;
//! 3. the *leader* of the registry's three servers is stopped with SIGTERM
//!    (the hardest member to lose: an election; ZooKeeper's followers drop
//!    every client connection until a new leader is elected; Consul's
//!    agents forward reads to a server that may be the one gone), and for
//!    longer than `REGISTRY_TTL` every request is still answered, by both
//!    servers (so no registration was lost), and `/instances` still lists
//!    both. The Consul topology's client agents are exercised further, under
//!    load, in `tests/consul_topology.rs`;
//! 4. SIGTERM stops everything: exit 0 and every PID it printed is gone.
//!
//! A missing binary is a failure that says how to get it. Also checked:
//! the compose files validate with `docker-compose config -q`, have no
//! top-level `version:`, and give their lorem services the same
//! environment variables as the local topology (addresses aside) and the
//! same host ports as its defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use testkit::topology::{
    ADDRESS_VARS, Backend, DEFAULT_GATEWAY_PORT, DEFAULT_SERVER_PORTS, GATEWAY, READY_LINE,
    REGISTRY_TTL, SERVER_IDS, gateway_env, post_sd_lorem, server_env,
};

/// How long the whole topology may take to come up (the Consul agent and
/// three JVMs on a loaded two-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A request through the gateway, as the README shows it.
const BODY: &str = r#"{"requestType":"word","min":4,"max":8}"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// lorem-server and lorem-client belong to other packages, so Cargo gives
/// this test no `CARGO_BIN_EXE_` for them; they sit next to local-topology
/// when `cargo test --workspace` built them.
fn bin_dir() -> PathBuf {
    let ours = Path::new(env!("CARGO_BIN_EXE_local-topology"));
    let dir = ours.parent().expect("target dir").to_owned();
    for name in ["lorem-server", "lorem-client"] {
        let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        assert!(
            path.is_file(),
            "{} is missing: run the whole workspace's tests (scripts/test.sh, or cargo test \
             --workspace), or cargo build --bin lorem-server --bin lorem-client first",
            path.display()
        );
    }
    dir
}

fn record(line: &str) {
    testkit::record_timing(env!("CARGO_TARGET_TMPDIR"), line);
}

fn pid_gone(pid: u32) -> bool {
    // A zombie counts as gone: it no longer runs, only its parent has not
    // reaped it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// One line of the summary: `  NAME ADDR pid PID`.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    addr: String,
    pid: u32,
}

impl Row {
    /// The port of `127.0.0.1:P` or `http://127.0.0.1:P`.
    fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {:?}", self.addr))
    }
}

/// A running `local-topology`, killed (with everything it started, by the
/// watchdogs) if the test fails before stopping it.
struct Running {
    child: Option<Child>,
    lines: Receiver<String>,
    /// Everything printed so far, for failure messages.
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[])
    }

    fn spawn_with(backend: Backend, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_local-topology"))
            .arg(backend.registry())
            .args(extra)
            .arg("--ephemeral")
            .arg("--bin-dir")
            .arg(bin_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn local-topology");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Self {
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The last lines printed and stderr, for failure messages.
    fn output(&self) -> String {
        let from = self.seen.len().saturating_sub(60);
        format!(
            "--- local-topology stdout (last lines) ---\n{}\n--- stderr ---\n{}",
            self.seen[from..].join("\n"),
            self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
        )
    }

    /// Reads lines until one satisfies `want` (returned) or `timeout`
    /// passes (panics, quoting the output).
    fn wait_line(&mut self, what: &str, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{what} did not happen within {timeout:?}\n{}",
                        self.output()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "local-topology ended ({status:?}) before {what}\n{}",
                        self.output()
                    )
                }
            }
        }
    }

    /// Waits for the summary and returns its process rows.
    fn ready(&mut self) -> Vec<Row> {
        self.wait_line("the topology being ready", READY_TIMEOUT, |l| {
            l == READY_LINE
        });
        let from = self
            .seen
            .iter()
            .rposition(|l| l.starts_with("local topology on "))
            .expect("a summary header before the ready line");
        self.seen[from..]
            .iter()
            .filter_map(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                match t[..] {
                    [name, addr, "pid", pid] if l.starts_with("  ") => Some(Row {
                        name: name.to_owned(),
                        addr: addr.to_owned(),
                        pid: pid.parse().ok()?,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    /// SIGTERMs local-topology and waits (bounded) for it to exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("still running");
        let pid = child.id();
        signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Keep draining stdout so that it never blocks on a full pipe.
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            let child = self.child.as_mut().expect("still running");
            if let Some(status) = child.try_wait().expect("wait for local-topology") {
                self.child = None;
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "local-topology (pid {pid}) did not exit within 60 s of SIGTERM\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its watchdogs kill every process it started.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Raw bytes to 127.0.0.1:`port`, the answer until the peer closes.
fn exchange(port: u16, request: &[u8]) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.write_all(request);
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// Whether the registry member on `port` is its cluster's leader: etcd's
/// maintenance status names the leader and the member, ZooKeeper's `srvr`
/// says `Mode: leader`, a Consul server's `/v1/agent/self` has
/// `"leader":"true"` among its stats (client agents have no such stat).
fn is_leader(backend: Backend, port: u16) -> bool {
    match backend {
        Backend::Etcd => {
            let reply = exchange(
                port,
                format!(
                    "POST /v3/maintenance/status HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\
                     Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
                )
                .as_bytes(),
            );
            let field = |name: &str| {
                let start = reply.find(&format!("\"{name}\":\""))? + name.len() + 4;
                let end = reply[start..].find('"')? + start;
                Some(reply[start..end].to_owned())
            };
            matches!((field("member_id"), field("leader")), (Some(m), Some(l)) if m == l)
        }
        Backend::Zookeeper => exchange(port, b"srvr").contains("Mode: leader"),
        Backend::Consul => exchange(
            port,
            format!("GET /v1/agent/self HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        )
        .contains("\"leader\":\"true\""),
    }
}

/// Sends `POST /sd-lorem` until both servers have answered (at most 50
/// requests); every answer must be a 200. Returns how many were sent.
fn both_answer(topology: &Running, gateway: u16, when: &str) -> usize {
    let mut seen = BTreeSet::new();
    for n in 1..=50 {
        let (status, instance) = post_sd_lorem(gateway, BODY)
            .unwrap_or_else(|e| panic!("{when}: {e:#}\n{}", topology.output()));
        assert_eq!(
            status,
            200,
            "{when}: request {n} answered {status} by {instance:?}\n{}",
            topology.output()
        );
        seen.insert(instance);
        if SERVER_IDS.iter().all(|id| seen.contains(*id)) {
            return n;
        }
    }
    panic!(
        "{when}: 50 requests were answered only by {seen:?}, not by both {SERVER_IDS:?}\n{}",
        topology.output()
    );
}

/// For `window`, one request every 100 ms: every one must be a 200, and in
/// the part after `REGISTRY_TTL` both servers must answer (their
/// registrations outlived a whole TTL). Returns the number of requests.
fn answers_throughout(topology: &Running, gateway: u16, window: Duration, when: &str) -> usize {
    let ttl = humantime_secs(REGISTRY_TTL);
    let began = Instant::now();
    let mut late = BTreeSet::new();
    let mut n = 0;
    while began.elapsed() < window {
        n += 1;
        let (status, instance) = post_sd_lorem(gateway, BODY)
            .unwrap_or_else(|e| panic!("{when}: request {n}: {e:#}\n{}", topology.output()));
        assert_eq!(
            status,
            200,
            "{when}: request {n} ({:.1} s in) answered {status} by {instance:?}\n{}",
            began.elapsed().as_secs_f64(),
            topology.output()
        );
        if began.elapsed() > ttl {
            late.insert(instance);
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        SERVER_IDS.iter().all(|id| late.contains(*id)),
        "{when}: after REGISTRY_TTL ({REGISTRY_TTL}) only {late:?} answered, not both {SERVER_IDS:?}\n{}",
        topology.output()
    );
    let (status, body) = {
        let reply = exchange(
            gateway,
            format!("GET /instances HTTP/1.0\r\nHost: 127.0.0.1:{gateway}\r\n\r\n").as_bytes(),
        );
        let status = reply.split_whitespace().nth(1).unwrap_or("").to_owned();
        (status, reply)
    };
    assert_eq!(status, "200", "{when}: GET /instances: {body}");
    for id in SERVER_IDS {
        assert!(
            body.contains(&format!("\"id\":\"{id}\"")),
            "{when}: /instances no longer lists {id}: {body}"
        );
    }
    n
}

/// `"10s"` as a duration (the compose files' TTL is whole seconds).
fn humantime_secs(value: &str) -> Duration {
    let secs = value
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("REGISTRY_TTL {value:?} is not whole seconds"));
    Duration::from_secs(secs)
}

fn run_topology(backend: Backend) {
    let began = Instant::now();
    let mut topology = Running::spawn(backend);
    let rows = topology.ready();
    let ready_in = began.elapsed();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let mut want: Vec<&str> = backend.members().to_vec();
    want.extend(SERVER_IDS);
    want.push(GATEWAY);
    assert_eq!(
        names,
        want,
        "the summary lists every process\n{}",
        topology.output()
    );
    let gateway = rows
        .iter()
        .find(|r| r.name == GATEWAY)
        .expect("gateway")
        .port();

    let first = both_answer(&topology, gateway, "with every process up");

    // The member to stop: the leader (found by polling: an election may
    // still be settling).
    let members: Vec<Row> = rows
        .iter()
        .filter(|r| backend.members().contains(&r.name.as_str()))
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        if let Some(m) = members.iter().find(|m| is_leader(backend, m.port())) {
            break m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {backend} member said it was the leader within 20 s"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let fault = format!("stopped the leader {} of 3 servers", victim.name);
    signal(victim.pid, "TERM");
    topology.wait_line(
        &format!("local-topology reporting that {} exited", victim.name),
        Duration::from_secs(30),
        |l| l.starts_with(&format!("{} exited", victim.name)),
    );
    let window = humantime_secs(REGISTRY_TTL) + Duration::from_secs(3);
    let requests = answers_throughout(&topology, gateway, window, &format!("after: {fault}"));

    let stop_began = Instant::now();
    let status = topology.terminate();
    let stopped_in = stop_began.elapsed();
    assert!(
        status.success(),
        "local-topology exits 0 on SIGTERM: {status}\n{}",
        topology.output()
    );
    assert!(
        topology
            .seen
            .iter()
            .any(|l| l.starts_with("stopped everything in")),
        "{}",
        topology.output()
    );
    for row in &rows {
        assert!(
            pid_gone(row.pid),
            "{} (pid {}) still runs after local-topology stopped",
            row.name,
            row.pid
        );
    }
    record(&format!(
        "local topology {backend}: up in {:.1} s (test's view), both servers answered within {first} \
         requests; {fault}: {requests} requests over {:.0} s all answered, both servers still \
         serving; SIGTERM stopped everything in {:.1} s; test {:.1} s",
        ready_in.as_secs_f64(),
        window.as_secs_f64(),
        stopped_in.as_secs_f64(),
        began.elapsed().as_secs_f64()
    ));
}

/// `--secured`: one registry member with TLS, client certificates and a
/// user; the lorem processes get the security variables, register, and the
/// gateway reaches both (issue 15).
fn run_secured_topology(backend: Backend) {
    let mut topology = Running::spawn_with(backend, &["--secured"]);
    let rows = topology.ready();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let mut want = vec![backend.members()[0]];
    want.extend(SERVER_IDS);
    want.push(GATEWAY);
    assert_eq!(names, want, "one registry member\n{}", topology.output());
    assert!(
        topology
            .seen
            .iter()
            .any(|l| l.starts_with("secured (") && l.contains("REGISTRY_CA=")),
        "the summary gives the security variables\n{}",
        topology.output()
    );
    let gateway = rows
        .iter()
        .find(|r| r.name == GATEWAY)
        .expect("gateway")
        .port();
    both_answer(&topology, gateway, "on a secured registry");
    let status = topology.terminate();
    assert!(status.success(), "{status}\n{}", topology.output());
}

#[test]
fn secured_etcd_topology_answers_from_both_servers() {
    run_secured_topology(Backend::Etcd);
}

#[test]
fn secured_zookeeper_topology_answers_from_both_servers() {
    run_secured_topology(Backend::Zookeeper);
}

#[test]
fn secured_consul_topology_answers_from_both_servers() {
    run_secured_topology(Backend::Consul);
}

#[test]
fn etcd_topology_answers_from_both_servers_and_survives_losing_its_leader() {
    run_topology(Backend::Etcd);
}

#[test]
fn zookeeper_topology_answers_from_both_servers_and_survives_losing_its_leader() {
    run_topology(Backend::Zookeeper);
}

#[test]
fn consul_topology_answers_from_both_servers_and_survives_losing_its_leader() {
    run_topology(Backend::Consul);
}

/// The `services:` of `docker-compose -f FILE config` (normalised YAML:
/// two-space indents, one `KEY: value` per line): for each service, its
/// `environment` and its `ports` (`host_ip:published:target/proto`).
#[derive(Debug, Default)]
struct Service {
    environment: BTreeMap<String, String>,
    ports: Vec<String>,
}

/// A process's environment, as `server_env` and `gateway_env` give it.
type Env = Vec<(String, String)>;

fn compose_config(file: &str) -> BTreeMap<String, Service> {
    let path = repo_root().join(file);
    let output = Command::new("docker-compose")
        .arg("-f")
        .arg(&path)
        .arg("config")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}): install it with `apt-get install \
                 --no-install-recommends docker-compose` (scripts/install-deps.sh test does)"
            )
        });
    assert!(
        output.status.success(),
        "{file} does not validate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut services = BTreeMap::new();
    let (mut in_services, mut service, mut section) = (false, None::<String>, "");
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if indent == 0 {
            in_services = trimmed == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            let name = trimmed.trim_end_matches(':').to_owned();
            services.insert(name.clone(), Service::default());
            service = Some(name);
            section = "";
        } else if indent == 4 && !trimmed.starts_with("- ") {
            section = match trimmed {
                "environment:" => "environment",
                "ports:" => "ports",
                _ => "",
            };
        } else if let Some(s) = service.as_ref().and_then(|s| services.get_mut(s)) {
            match section {
                "environment" if indent == 6 => {
                    if let Some((k, v)) = trimmed.split_once(": ") {
                        let v = v.trim_matches('\'').trim_matches('"');
                        s.environment.insert(k.to_owned(), v.to_owned());
                    }
                }
                "ports" => {
                    if let Some(p) = trimmed.strip_prefix("- ") {
                        s.ports.push(p.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    services
}

#[test]
fn compose_files_match_the_local_topology() {
    for backend in Backend::ALL {
        let file = backend.compose_file();
        let raw = std::fs::read_to_string(repo_root().join(file)).expect("read the compose file");
        assert!(
            !raw.lines().any(|l| l.starts_with("version:")),
            "{file} must not have a top-level version: docker-compose 1.29 rejects depends_on \
             conditions under 3.x"
        );
        let services = compose_config(file);
        let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
        let mut want: BTreeSet<&str> = backend.members().iter().copied().collect();
        want.extend(SERVER_IDS);
        want.insert(GATEWAY);
        assert_eq!(names, want, "{file}: the services");

        let mut expected: Vec<(&str, Env, u16)> = SERVER_IDS
            .iter()
            .zip(DEFAULT_SERVER_PORTS)
            .map(|(id, port)| (*id, server_env(backend, "-", id, port), port))
            .collect();
        expected.push((
            GATEWAY,
            gateway_env(backend, "-", DEFAULT_GATEWAY_PORT),
            DEFAULT_GATEWAY_PORT,
        ));
        for (name, local, port) in expected {
            let compose = &services[name].environment;
            let local: BTreeMap<String, String> = local.into_iter().collect();
            assert_eq!(
                compose.keys().collect::<Vec<_>>(),
                local.keys().collect::<Vec<_>>(),
                "{file}: {name} has the local topology's variables"
            );
            for (key, value) in &local {
                if !ADDRESS_VARS.contains(&key.as_str()) {
                    assert_eq!(&compose[key], value, "{file}: {name} {key}");
                }
            }
            assert!(
                services[name]
                    .ports
                    .iter()
                    .any(|p| p.starts_with(&format!("127.0.0.1:{port}:"))),
                "{file}: {name} is published on 127.0.0.1:{port}, the local default: {:?}",
                services[name].ports
            );
        }
        for (member, port) in backend
            .members()
            .iter()
            .zip(backend.default_registry_ports())
        {
            assert!(
                services[*member]
                    .ports
                    .iter()
                    .any(|p| p.starts_with(&format!("127.0.0.1:{port}:"))),
                "{file}: {member} is published on 127.0.0.1:{port}, the local default: {:?}",
                services[*member].ports
            );
        }
    }
}

#[test]
fn local_sh_is_valid_bash_and_refuses_an_unknown_backend() {
    let script = repo_root().join("deploy/local.sh");
    let status = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("run bash -n");
    assert!(status.success(), "bash -n deploy/local.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("etc")
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/local.sh");
    assert_eq!(output.status.code(), Some(2), "usage error exit status");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("usage: "),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
