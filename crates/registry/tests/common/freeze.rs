//! Freezing a server process: SIGSTOP now, SIGCONT when the guard goes.
//!
//! A stopped process keeps its sockets open but answers nothing: the gray
//! failure of a hung registry member, unlike a crash that closes its
//! connections. The signals are sent with `kill -STOP` / `kill -CONT` (no
//! unsafe code), by PID, and [`Frozen`] always sends SIGCONT when dropped,
//! panics included, so no server stays stopped after a test.
//!
//! The client tests include this file too (`#[path]`), so both packages
//! freeze servers the same way.

#![allow(dead_code, unreachable_pub)]

use std::process::Command;
use std::time::{Duration, Instant};

/// A process stopped by SIGSTOP until [`Frozen::thaw`] or drop.
#[derive(Debug)]
pub struct Frozen {
    pid: u32,
    what: String,
    since: Instant,
    thawed: bool,
}

impl Frozen {
    /// Sends SIGSTOP to `pid` (`what` names it in messages) and waits until
    /// the kernel reports it stopped.
    ///
    /// # Panics
    /// If `kill` fails or the process is not stopped within 2 s.
    pub fn stop(pid: u32, what: &str) -> Frozen {
        signal("STOP", pid, what);
        // From here on the guard owes a SIGCONT, even if the check panics.
        let frozen = Frozen {
            pid,
            what: what.to_owned(),
            since: Instant::now(),
            thawed: false,
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while state(pid) != Some('T') {
            assert!(
                Instant::now() < deadline,
                "{what} (pid {pid}) is not stopped 2 s after SIGSTOP (state {:?})",
                state(pid)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        frozen
    }

    /// How long it has been stopped.
    pub fn elapsed(&self) -> Duration {
        self.since.elapsed()
    }

    /// The stopped process's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGCONT; returns how long the process was stopped.
    pub fn thaw(mut self) -> Duration {
        self.thawed = true;
        signal("CONT", self.pid, &self.what);
        self.since.elapsed()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            // Best effort: a failure here must not turn an unwinding test
            // into an abort.
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid.to_string()])
                .status();
        }
    }
}

fn signal(name: &str, pid: u32, what: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill -{name} {pid} ({what}): {e}"));
    assert!(
        status.success(),
        "kill -{name} {pid} ({what}) failed: {status}"
    );
}

/// The state letter of `pid` from `/proc/PID/stat` (`T` once stopped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}
