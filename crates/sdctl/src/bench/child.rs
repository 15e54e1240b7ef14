//! `sdctl` child processes (`sdctl register`, `sdctl watch`) and what
//! /proc says about a process's memory.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

/// The most of a child's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

/// A running `sdctl` child: its stdout read line by line, its stderr kept
/// (the last [`STDERR_TAIL`] bytes) for error messages. Killed (SIGKILL)
/// when dropped.
#[derive(Debug)]
pub(crate) struct SdctlChild {
    what: String,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl SdctlChild {
    /// Spawns `sdctl args...` with `env` added to this process's
    /// environment, less every other `REGISTRY*` setting.
    pub(crate) fn spawn(
        sdctl: &std::path::Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Self, String> {
        let what = format!("sdctl {}", args.join(" "));
        let mut command = Command::new(sdctl);
        command
            .args(args)
            .env_remove("REGISTRY_CONFIG")
            .env_remove("REGISTRY_PREFIX")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {what} ({}): {e}", sdctl.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{what}: no stdout"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let kept = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(STDERR_TAIL);
                    kept.drain(..excess);
                }
            });
        }
        Ok(SdctlChild {
            what,
            child,
            stdout: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Reads stdout until a line satisfies `done` and returns it.
    ///
    /// # Errors
    /// If the child ends or `deadline` passes first; the message quotes its
    /// stderr.
    pub(crate) async fn line(
        &mut self,
        deadline: Instant,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        loop {
            match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) if done(&line) => return Ok(line),
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => {
                    // Let the stderr reader catch up with the last words.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let status = self.child.try_wait().ok().flatten();
                    return Err(format!(
                        "{} ended before {what} (status {}); its stderr: {}",
                        self.what,
                        status.map_or("unknown".to_owned(), |s| s.to_string()),
                        self.stderr_tail()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "{} did not print {what} in time; its stderr: {}",
                        self.what,
                        self.stderr_tail()
                    ));
                }
            }
        }
    }

    /// SIGKILL, without waiting.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// SIGKILL and reap.
    pub(crate) async fn kill_and_wait(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&kept).trim().to_owned();
        if text.is_empty() {
            "(empty)".to_owned()
        } else {
            text
        }
    }
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`: peak RSS; `VmRSS`: now),
/// as MiB. Linux only: `None` elsewhere or once the process is gone.
pub(crate) fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_rss() {
        let peak = proc_status_mib(std::process::id(), "VmHWM").expect("Linux /proc");
        let now = proc_status_mib(std::process::id(), "VmRSS").expect("Linux /proc");
        assert!(peak > 0.0 && now > 0.0, "{peak} {now}");
        assert!(proc_status_mib(std::process::id(), "NoSuchField").is_none());
    }
}
