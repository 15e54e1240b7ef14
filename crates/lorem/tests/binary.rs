//! The `lorem-server` binary: serve, SIGTERM/SIGINT (also during start-up
//! and during the drain), the memory-backend warning, bad settings,
//! healthcheck and its environment variables.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lorem-server");
const DEADLINE: Duration = Duration::from_secs(20);

/// A `lorem-server` command with no inherited registry or lorem settings.
fn command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("REGISTRY") || key.starts_with("LOREM_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Kills the child on drop so that a failing test leaves nothing behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "lorem-server did not exit within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_healthy(addr: SocketAddr, child: &mut Child) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(response) = client.get(format!("http://{addr}/health")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("lorem-server exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "lorem-server never answered /health on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Log = Arc<Mutex<String>>;

/// Collects the child's stderr in the background.
fn capture(pipe: ChildStderr) -> Log {
    let log = Log::default();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
            text.push_str(&line);
            text.push('\n');
        }
    });
    log
}

fn log_text(log: &Log) -> String {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn wait_for_log(log: &Log, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !log_text(log).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "lorem-server never logged {needle:?}; stderr:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn healthcheck(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = command();
    command.arg("healthcheck").args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run lorem-server healthcheck")
}

/// Sends `signal` (`TERM`, `INT`...) to the child with kill(1).
fn send_signal(child: &Child, signal: &str) {
    let kill = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -{signal} failed");
}

/// Starts `lorem-server` on a free loopback port with `envs` and `args`,
/// capturing its stderr.
fn spawn_server(envs: &[(&str, &str)], args: &[&str]) -> (Server, Log, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = command();
    command
        .env("LOREM_LISTEN", addr.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let child = command.spawn().expect("spawn lorem-server");
    let mut server = Server(child);
    let log = capture(server.0.stderr.take().expect("piped stderr"));
    (server, log, addr)
}

const MEMORY_WARNING: &str = "REGISTRY is memory (the default)";

/// Serves, registers, answers, then exits 0 and deregisters on `signal`.
async fn serves_then_exits_0_on(signal: &str) {
    let id = format!("bin-{}", signal.to_lowercase());
    let (mut server, log, addr) = spawn_server(
        &[("REGISTRY", "memory")],
        &["--id", &id, "--drain-delay", "100ms", "--tags", "a,b"],
    );
    wait_healthy(addr, &mut server.0).await;
    wait_for_log(&log, "registered");
    assert!(
        log_text(&log).contains(MEMORY_WARNING),
        "the memory backend is warned about; stderr:\n{}",
        log_text(&log)
    );

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/lorem/sentence/3/3"))
        .send()
        .await
        .expect("lorem request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-instance-id")
            .and_then(|v| v.to_str().ok()),
        Some(id.as_str())
    );

    send_signal(&server.0, signal);
    let status = wait_exit(&mut server.0);
    wait_for_log(&log, "lorem server stopped");
    let stderr = log_text(&log);
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("signal=\"SIG{signal}\"")),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("deregistered"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn serves_then_exits_0_on_sigterm() {
    serves_then_exits_0_on("TERM").await;
}

#[tokio::test]
async fn serves_then_exits_0_on_sigint() {
    serves_then_exits_0_on("INT").await;
}

#[test]
fn a_signal_during_start_up_is_a_clean_exit() {
    // The handlers are installed before the registry settings are read and
    // before the listener is bound: signal as soon as they are, which is
    // before (or while) the server starts.
    let (mut server, log, _addr) = spawn_server(
        &[
            ("REGISTRY", "memory"),
            ("RUST_LOG", "info,lorem_server=debug"),
        ],
        &["--drain-delay", "0s"],
    );
    wait_for_log(&log, "signal handlers installed");
    send_signal(&server.0, "TERM");
    let status = wait_exit(&mut server.0);
    wait_for_log(&log, "lorem server stopped");
    let stderr = log_text(&log);
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(stderr.contains("signal=\"SIGTERM\""), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_second_signal_ends_the_drain() {
    // A drain far longer than the deadline: exiting within it means the
    // second signal ended the drain.
    let (mut server, log, addr) =
        spawn_server(&[("REGISTRY", "memory")], &["--drain-delay", "600s"]);
    wait_healthy(addr, &mut server.0).await;
    wait_for_log(&log, "registered");
    send_signal(&server.0, "TERM");
    wait_for_log(&log, "draining");
    assert!(
        matches!(server.0.try_wait(), Ok(None)),
        "still running while draining"
    );
    send_signal(&server.0, "INT");
    let status = wait_exit(&mut server.0);
    let stderr = log_text(&log);
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(stderr.contains("second signal"), "stderr:\n{stderr}");
}

#[tokio::test]
async fn a_real_registry_gets_no_memory_warning_and_an_outage_still_exits_0() {
    // etcd on a port where nothing listens: registration keeps retrying in
    // the background while the server serves.
    let dead = format!("127.0.0.1:{}", free_port());
    let (mut server, log, addr) = spawn_server(
        &[
            ("REGISTRY", "etcd"),
            ("REGISTRY_ADDR", &dead),
            ("REGISTRY_TIMEOUT", "1s"),
        ],
        &["--drain-delay", "0s"],
    );
    wait_healthy(addr, &mut server.0).await;
    wait_for_log(&log, "registration failed; retrying");
    // Serving but not registered: /health passes, the default probe
    // (/ready, what the compose files' health checks run) does not.
    let live = healthcheck(&["--url", &format!("http://{addr}/health")], &[]);
    assert!(live.status.success(), "healthcheck --url /health: {live:?}");
    let ready = healthcheck(&[], &[("LOREM_LISTEN", &addr.to_string())]);
    assert_eq!(
        ready.status.code(),
        Some(1),
        "healthcheck (/ready): {ready:?}"
    );
    let stderr = String::from_utf8_lossy(&ready.stderr);
    assert!(
        stderr.contains("/ready") && stderr.contains("503") && stderr.contains("not registered"),
        "stderr:\n{stderr}"
    );
    send_signal(&server.0, "TERM");
    let status = wait_exit(&mut server.0);
    let stderr = log_text(&log);
    assert_eq!(status.code(), Some(0), "exit status; stderr:\n{stderr}");
    assert!(!stderr.contains(MEMORY_WARNING), "stderr:\n{stderr}");
}

#[tokio::test]
async fn healthcheck_flags_and_their_environment_variables() {
    let (mut server, log, addr) = spawn_server(&[("REGISTRY", "memory")], &["--drain-delay", "0s"]);
    wait_healthy(addr, &mut server.0).await;
    // The default probe is /ready, which waits for the registration.
    wait_for_log(&log, "registered");
    let url = format!("http://{addr}/health");

    let probe = healthcheck(&["--url", &url, "--timeout", "5s"], &[]);
    assert!(probe.status.success(), "healthcheck --url: {probe:?}");
    let probe = healthcheck(&[], &[("LOREM_LISTEN", &addr.to_string())]);
    assert!(
        probe.status.success(),
        "healthcheck from LOREM_LISTEN: {probe:?}"
    );
    let probe = healthcheck(
        &[],
        &[
            ("LOREM_HEALTHCHECK_URL", &url),
            ("LOREM_HEALTHCHECK_TIMEOUT", "5s"),
        ],
    );
    assert!(
        probe.status.success(),
        "healthcheck from LOREM_HEALTHCHECK_URL: {probe:?}"
    );
    // The variable is read: a bad timeout there is refused by name.
    let probe = healthcheck(
        &[],
        &[
            ("LOREM_HEALTHCHECK_URL", &url),
            ("LOREM_HEALTHCHECK_TIMEOUT", "soon"),
        ],
    );
    assert!(!probe.status.success(), "{probe:?}");
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(stderr.contains("--timeout"), "stderr:\n{stderr}");

    send_signal(&server.0, "TERM");
    let status = wait_exit(&mut server.0);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_unknown_registry_exits_non_zero_with_the_message() {
    let output = command()
        .env("REGISTRY", "etc")
        .env("LOREM_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run lorem-server");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown registry \"etc\""),
        "stderr:\n{stderr}"
    );
}

#[test]
fn bad_flags_exit_non_zero() {
    let output = command()
        .env("REGISTRY", "memory")
        .args(["--listen", "nowhere"])
        .output()
        .expect("run lorem-server");
    assert!(!output.status.success(), "{output:?}");
    let output = command()
        .env("REGISTRY", "memory")
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run lorem-server");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--advertise"), "stderr:\n{stderr}");
}

#[test]
fn healthcheck_fails_against_a_closed_port() {
    let url = format!("http://127.0.0.1:{}/health", free_port());
    let output = healthcheck(&["--url", &url, "--timeout", "1s"], &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let output = healthcheck(
        &[],
        &[
            ("LOREM_HEALTHCHECK_URL", &url),
            ("LOREM_HEALTHCHECK_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&url),
        "the probed URL is named; stderr:\n{stderr}"
    );
}
