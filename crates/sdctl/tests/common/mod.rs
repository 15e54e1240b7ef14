//! Running `sdctl` as a child process, bounded in time, with a clean
//! registry environment.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `sdctl` with `env` and none of the caller's `REGISTRY*` settings.
pub fn sdctl(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sdctl"));
    for key in [
        "REGISTRY",
        "REGISTRY_ADDR",
        "REGISTRY_CONFIG",
        "REGISTRY_PREFIX",
        "REGISTRY_TTL",
        "REGISTRY_TIMEOUT",
        "CONSUL_HTTP_ADDR",
        "RUST_LOG",
    ] {
        command.env_remove(key);
    }
    command.envs(env.iter().copied()).stdin(Stdio::null());
    command
}

/// Runs `command` to its end; fails the test if it is still running after
/// `bound` (it is then killed): a command must never hang.
pub fn run_bounded(mut command: Command, bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sdctl");
    loop {
        if child.try_wait().expect("poll sdctl").is_some() {
            let output = child.wait_with_output().expect("collect sdctl's output");
            return (output, started.elapsed());
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect sdctl's output");
            panic!(
                "{command:?} still ran after {bound:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of an output stream.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `sdctl` whose stdout is read line by line; SIGKILLed on drop.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Spawns `command` with its stdout piped (stderr goes to the test's).
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn sdctl");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a line that starts with `prefix`, and
    /// returns it; fails the test with the lines seen so far otherwise.
    pub fn expect(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => {
                    self.seen.push(line.clone());
                    return line;
                }
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {within:?}; lines so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends SIGTERM (through `kill`: the tests forbid `unsafe`).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `within` for the process to exit, and returns whether it
    /// succeeded.
    pub fn wait(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll sdctl") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "sdctl did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
