//! One spawned server process: spawn with a clean environment and a log file,
//! stop by PID (SIGTERM, then SIGKILL), and the small probes the ready checks
//! use (free ports, a raw HTTP/1.0 GET, ZooKeeper four-letter words).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tempfile::TempDir;
use tracing::{debug, warn};

/// How long a stopped process may take to exit after SIGTERM before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often ready checks and exit waits poll.
const POLL: Duration = Duration::from_millis(50);

/// How much of a server log an error message quotes.
const LOG_TAIL_BYTES: u64 = 4000;

/// Ports handed out by [`free_port`] in this process, so that two servers
/// started side by side never get the same one before either has bound it.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a TCP port on 127.0.0.1 that is free right now.
///
/// Binds `127.0.0.1:0`, reads the port the kernel chose and releases it; the
/// same port is also checked free for UDP (Consul's Serf gossip uses both).
/// A port is never returned twice by one process, so servers started in
/// parallel tests do not collide with each other; another process may still
/// take it before the server binds it, which is why servers retry their first
/// start on fresh ports.
///
/// Falls back to a port from a fixed high range if the kernel refuses to bind
/// (which does not happen on a working loopback interface).
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = guard.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        let port = addr.port();
        if handed_out.contains(&port) || UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.insert(port);
        return port;
    }
    // Unreachable in practice; pick something deterministic but unlikely used.
    let port = (40000..60000)
        .find(|p| !handed_out.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or(45678);
    handed_out.insert(port);
    port
}

/// `port`, or a [`free_port`] if it is 0.
pub(crate) fn or_free(port: u16) -> u16 {
    if port == 0 { free_port() } else { port }
}

/// What to run: the program, its arguments and where its output goes.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// A short name for logs and errors, e.g. `etcd member 2`.
    pub(crate) label: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    /// stdout and stderr are appended here.
    pub(crate) log: PathBuf,
    /// Extra environment variables.
    pub(crate) env: Vec<(String, String)>,
    /// Start from an empty environment (only `env`), as a container does,
    /// instead of this process's environment less `ETCD_*`.
    pub(crate) clear_env: bool,
    /// Removed by the watchdog if this process dies without stopping the
    /// server (the server's temp dir).
    pub(crate) cleanup: Option<PathBuf>,
}

/// A server process that can be started and stopped repeatedly with the
/// same [`Spec`].
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) spec: Spec,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
}

impl Proc {
    pub(crate) fn new(spec: Spec) -> Self {
        Self {
            spec,
            child: None,
            watchdog: None,
        }
    }

    /// Spawns the process unless it is already running.
    pub(crate) fn spawn(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let spec = &self.spec;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open log file {}", spec.log.display()))?;
        // A marker so restarts are visible in the log tail.
        let _ = writeln!(log, "--- testkit: starting {} ---", spec.label);
        let err_log = log
            .try_clone()
            .with_context(|| format!("cannot reopen log file {}", spec.log.display()))?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            // A process group of its own: a Ctrl-C in the terminal reaches
            // only us, so servers are stopped in order (or by the watchdog
            // if the Ctrl-C kills us), never half of them by the terminal.
            .process_group(0);
        if spec.clear_env {
            cmd.env_clear();
        } else {
            // etcd reads every ETCD_* variable as a flag: never pass any on.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(key);
                }
            }
        }
        for (key, value) in &spec.env {
            cmd.env(key, value);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {} for {}", spec.program.display(), spec.label))?;
        debug!(server = %spec.label, pid = child.id(), "spawned");
        self.watchdog = Watchdog::spawn(child.id(), spec);
        self.child = Some(child);
        Ok(())
    }

    /// The PID while the process runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running; reaps it if it has exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// The exit status if the process has exited on its own (it is reaped
    /// and forgotten), `None` if it runs or was never started.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.forget_child();
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(server = %self.spec.label, error = %e, "cannot poll process");
                None
            }
        }
    }

    /// Sends SIGTERM (no wait), and SIGCONT so that a paused process gets
    /// to act on it. Does nothing if the process is not running.
    pub(crate) fn send_term(&mut self) {
        if let Some(pid) = self.pid() {
            send_signal(pid, "TERM");
            send_signal(pid, "CONT");
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the process: see
    /// [`pause_or_resume`].
    ///
    /// # Errors
    /// If the process is not running.
    pub(crate) fn set_paused(&mut self, paused: bool) -> Result<()> {
        match self.pid() {
            Some(pid) if self.is_running() => {
                pause_or_resume(pid, paused);
                debug!(server = %self.spec.label, pid, paused, "paused or resumed");
                Ok(())
            }
            _ => Err(anyhow!("{} is not running", self.spec.label)),
        }
    }

    /// Waits until the process exits, SIGKILLing it at `deadline`, and reaps it.
    pub(crate) fn wait_exit(&mut self, deadline: Instant) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    debug!(server = %self.spec.label, pid, %status, "exited");
                    self.forget_child();
                    return Ok(());
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                Ok(None) => {
                    warn!(server = %self.spec.label, pid, "did not exit after SIGTERM; sending SIGKILL");
                    return self.kill();
                }
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!("cannot wait for {} (pid {pid})", self.spec.label)
                    });
                }
            }
        }
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; returns once the PID
    /// has exited.
    pub(crate) fn stop(&mut self) -> Result<()> {
        self.send_term();
        self.wait_exit(Instant::now() + STOP_GRACE)
    }

    /// SIGKILL and wait for the PID to exit.
    pub(crate) fn kill(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        // Fails only if the process was already reaped, which `child` rules out.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("cannot wait for {} (pid {pid})", self.spec.label))?;
        debug!(server = %self.spec.label, pid, "killed");
        self.forget_child();
        Ok(())
    }

    /// Called once the server has been reaped: forgets it and stands its
    /// watchdog down.
    fn forget_child(&mut self) {
        self.child = None;
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
    }

    /// The last few KB of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.spec.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Data is thrown away with the temp dir: no need for a graceful stop.
        if let Err(e) = self.kill() {
            warn!(server = %self.spec.label, error = %e, "cannot kill on drop");
        }
    }
}

/// A tiny `sh` process per server that SIGKILLs the server (and removes
/// its temp dir) if this process dies without stopping it: killed by a CI
/// timeout, or holding the server in a `static` that is never dropped. It
/// blocks reading a pipe from us and acts on end-of-file; a normal stop
/// writes `stop` first.
#[derive(Debug)]
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    const SCRIPT: &'static str = r#"read -r line
if [ "$line" != stop ]; then
  kill -KILL "$1" 2>/dev/null
  if [ -n "$2" ]; then sleep 1; rm -rf -- "$2"; fi
fi"#;

    fn spawn(pid: u32, spec: &Spec) -> Option<Self> {
        let cleanup = spec
            .cleanup
            .as_ref()
            .map(|p| p.as_os_str().to_owned())
            .unwrap_or_default();
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(Self::SCRIPT)
            .arg("testkit-watchdog")
            .arg(pid.to_string())
            .arg(cleanup)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group too, so a Ctrl-C that
            // kills us leaves the watchdog alive to clean up.
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                Some(Self { child, stdin })
            }
            Err(e) => {
                warn!(server = %spec.label, error = %e, "cannot start a watchdog; the server outlives a killed test");
                None
            }
        }
    }

    fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
}

/// Pauses a server by PID with SIGSTOP (`paused`), or resumes it with
/// SIGCONT: a paused server keeps its sockets, and the kernel still accepts
/// TCP connections for it, but it answers nothing, like a hung process or a
/// frozen VM. Dropping or stopping a paused server still works (SIGKILL
/// needs no cooperation; [`Proc::send_term`] resumes it).
pub(crate) fn pause_or_resume(pid: u32, paused: bool) {
    send_signal(pid, if paused { "STOP" } else { "CONT" });
}

/// Sends a signal by PID with the `kill` command (our code forbids `unsafe`,
/// so no direct syscall), falling back to the shell's builtin.
fn send_signal(pid: u32, signal: &str) {
    let pid = pid.to_string();
    let sig = format!("-{signal}");
    let ok = Command::new("kill")
        .args([sig.as_str(), pid.as_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("/bin/sh")
            .args(["-c", "kill \"$1\" \"$2\"", "sh", sig.as_str(), pid.as_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The last `bytes` of a file, lossily decoded.
fn read_tail(path: &Path, bytes: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The last [`LOG_TAIL_BYTES`] of a log file, or a note saying why not.
pub(crate) fn log_tail(path: &Path) -> String {
    match read_tail(path, LOG_TAIL_BYTES) {
        Ok(s) if s.trim().is_empty() => format!("(log {} is empty)", path.display()),
        Ok(s) => format!("--- last lines of {} ---\n{}", path.display(), s.trim_end()),
        Err(e) => format!("(cannot read log {}: {e})", path.display()),
    }
}

/// Whether the end of a log says a port was taken (etcd, ZooKeeper's
/// `BindException` and Consul all print this phrase).
fn says_port_taken(path: &Path) -> bool {
    read_tail(path, 64 * 1024)
        .is_ok_and(|log| log.to_lowercase().contains("address already in use"))
}

/// Why a server did not become ready.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The process exited saying an address is in use: a port was taken
    /// between [`free_port`] and the bind, so the first start retries on
    /// fresh ports.
    PortTaken(anyhow::Error),
    /// Anything else (timeout, spawn failure): retrying would not help.
    Other(anyhow::Error),
}

impl StartFailure {
    pub(crate) fn into_error(self) -> anyhow::Error {
        match self {
            Self::PortTaken(e) | Self::Other(e) => e,
        }
    }
}

/// Polls `ready` on each process (in order) until all are ready, any exits,
/// or `timeout` passes; errors quote the log tail of the process concerned.
pub(crate) fn wait_ready<'a>(
    procs: impl IntoIterator<Item = &'a mut Proc>,
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut(usize) -> bool,
) -> std::result::Result<(), StartFailure> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut procs: Vec<&mut Proc> = procs.into_iter().collect();
    let mut done = vec![false; procs.len()];
    loop {
        for (i, proc) in procs.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(status) = proc.exit_status() {
                let error = anyhow!(
                    "{} exited with {status} before it was ready\n{}",
                    proc.spec.label,
                    proc.log_tail()
                );
                return Err(if says_port_taken(&proc.spec.log) {
                    StartFailure::PortTaken(error)
                } else {
                    StartFailure::Other(error)
                });
            }
            if proc.child.is_none() {
                return Err(StartFailure::Other(anyhow!(
                    "{} is not running",
                    proc.spec.label
                )));
            }
            done[i] = ready(i);
        }
        if done.iter().all(|d| *d) {
            debug!(
                what,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "ready"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let pending = procs
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(p, _)| format!("{}\n{}", p.spec.label, p.log_tail()))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(StartFailure::Other(anyhow!(
                "{what} not ready within {timeout:?}; not ready: {pending}"
            )));
        }
        thread::sleep(POLL);
    }
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:port; returns the status code and
/// body. Kept raw so the kit needs no HTTP client.
pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let reply = exchange(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line")
        })?;
    Ok((status, body.to_owned()))
}

/// Sends a ZooKeeper four-letter word (e.g. `srvr`) and returns the answer.
pub(crate) fn four_letter_word(port: u16, word: &str) -> std::io::Result<String> {
    exchange(port, word.as_bytes())
}

/// Whether something accepts TCP connections on 127.0.0.1:port.
pub(crate) fn accepts_tcp(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).is_ok()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes `request`, reads until the peer closes (bounded by timeouts).
pub(crate) fn exchange(port: u16, request: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request)?;
    let mut buf = Vec::new();
    stream.take(1 << 20).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A fresh temp dir `<prefix>XXXX` for one server's data and logs.
pub(crate) fn temp_dir(prefix: &str, server: &str) -> std::result::Result<TempDir, StartFailure> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .with_context(|| format!("cannot create a temp dir for {server}"))
        .map_err(StartFailure::Other)
}

/// Retries `attempt` (which picks fresh ports) while it fails because a
/// port was taken between [`free_port`] and the bind.
pub(crate) fn with_port_retries<T>(
    what: &str,
    mut attempt: impl FnMut() -> std::result::Result<T, StartFailure>,
) -> Result<T> {
    const ATTEMPTS: usize = 3;
    let mut n = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(StartFailure::PortTaken(e)) if n < ATTEMPTS => {
                warn!(what, attempt = n, error = %e, "a port was taken during start; retrying on fresh ports");
                n += 1;
            }
            Err(e) => {
                return Err(e
                    .into_error()
                    .context(format!("cannot start {what} (attempt {n} of {ATTEMPTS})")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/bin/sh -c script` server logging to `<label>.log` in `dir`.
    fn sh(dir: &Path, label: &str, script: &str) -> Spec {
        Spec {
            label: label.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: dir.to_owned(),
            log: dir.join(format!("{label}.log")),
            env: Vec::new(),
            clear_env: false,
            cleanup: None,
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        // Whether a port is still free later cannot be asserted: any process
        // on the machine may take an ephemeral port at any time (that race
        // is what `with_port_retries` covers).
        let ports: HashSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 20);
        assert!(!ports.contains(&0));
    }

    #[test]
    fn port_taken_is_retried_then_reported() {
        let mut calls = 0;
        let result: Result<()> = with_port_retries("x", || {
            calls += 1;
            Err(StartFailure::PortTaken(anyhow!(
                "bind: address already in use"
            )))
        });
        assert_eq!(calls, 3);
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains("cannot start x (attempt 3 of 3)"), "{err}");
        assert!(err.contains("address already in use"), "{err}");

        let mut calls = 0;
        let result = with_port_retries("x", || {
            calls += 1;
            if calls < 2 {
                Err(StartFailure::PortTaken(anyhow!("taken")))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 2);
    }

    #[test]
    fn other_failures_are_not_retried() {
        let mut calls = 0;
        let result: Result<()> = with_port_retries("x", || {
            calls += 1;
            Err(StartFailure::Other(anyhow!("no such class")))
        });
        assert_eq!(calls, 1);
        assert!(result.is_err());
    }

    #[test]
    fn a_server_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |label: &str, script: &str| sh(dir.path(), label, script);
        let mut taken = Proc::new(spec(
            "taken",
            "echo 'listen: bind: Address already in use' >&2; exit 1",
        ));
        taken.spawn().unwrap();
        let failure =
            wait_ready([&mut taken], Duration::from_secs(20), "t", |_| false).unwrap_err();
        assert!(matches!(failure, StartFailure::PortTaken(_)), "{failure:?}");
        assert!(format!("{:#}", failure.into_error()).contains("Address already in use"));

        let mut broken = Proc::new(spec("broken", "echo 'no such class' >&2; exit 3"));
        broken.spawn().unwrap();
        let failure =
            wait_ready([&mut broken], Duration::from_secs(20), "t", |_| false).unwrap_err();
        assert!(matches!(failure, StartFailure::Other(_)), "{failure:?}");
        let err = format!("{:#}", failure.into_error());
        assert!(err.contains("broken exited with exit status: 3"), "{err}");
        assert!(err.contains("no such class"), "{err}");
    }

    #[test]
    fn stop_sends_term_and_waits_for_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut proc = Proc::new(sh(dir.path(), "sleeper", "exec sleep 60"));
        proc.spawn().unwrap();
        let pid = proc.pid().unwrap();
        assert!(proc.is_running());
        proc.stop().unwrap();
        assert!(proc.pid().is_none());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        // Stopping again is a no-op.
        proc.stop().unwrap();
    }

    #[test]
    fn the_environment_loses_etcd_variables_only() {
        // Reads the parent environment without changing it: checks that a
        // child spawned by `Proc` sees no ETCD_* variable whatever the
        // parent has (the parent test in tests/servers.rs sets some).
        let dir = tempfile::tempdir().unwrap();
        let mut proc = Proc::new(Spec {
            env: vec![("TESTKIT_EXTRA".into(), "1".into())],
            ..sh(dir.path(), "env", "env; echo END")
        });
        proc.spawn().unwrap();
        proc.wait_exit(Instant::now() + Duration::from_secs(20))
            .unwrap();
        let log = std::fs::read_to_string(dir.path().join("env.log")).unwrap();
        assert!(log.contains("TESTKIT_EXTRA=1"), "{log}");
        assert!(!log.lines().any(|l| l.starts_with("ETCD_")), "{log}");
    }
}
