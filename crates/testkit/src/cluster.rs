//! What an etcd cluster and a ZooKeeper ensemble share: N member processes
//! under one temp dir, each ready when a probe on its client port says so;
//! stopping, killing and starting one member (waiting for it to serve only
//! if a quorum then runs) or all of them.

use std::fmt::Display;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tempfile::TempDir;

use crate::process::{Proc, STOP_GRACE, StartFailure, accepts_tcp, wait_ready, with_port_retries};

/// Which server a [`Members`] runs: its names in logs and errors and its
/// ready probe.
#[derive(Debug)]
pub(crate) struct Kind {
    /// The server's name: `etcd`, `ZooKeeper`.
    pub(crate) name: &'static str,
    /// What a group of members is called: `cluster`, `ensemble`.
    pub(crate) group: &'static str,
    /// Whether the member on this client port serves clients.
    pub(crate) ready: fn(u16) -> bool,
}

impl Kind {
    /// A member's label for logs and errors: `etcd (client port P)` for a
    /// single node, `etcd member m0 (client port P)` in a group.
    pub(crate) fn label(&self, nodes: usize, member: impl Display, client_port: u16) -> String {
        if nodes == 1 {
            format!("{} (client port {client_port})", self.name)
        } else {
            format!("{} member {member} (client port {client_port})", self.name)
        }
    }

    /// What is started, for errors: `etcd`, or `etcd cluster of 3`.
    fn describe(&self, nodes: usize) -> String {
        if nodes == 1 {
            self.name.to_owned()
        } else {
            format!("{} {} of {nodes}", self.name, self.group)
        }
    }
}

/// One member: its process and the client port its probe checks.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) client_port: u16,
    pub(crate) proc: Proc,
}

/// The members of one cluster or ensemble, and the temp dir holding their
/// data and logs.
#[derive(Debug)]
pub(crate) struct Members {
    kind: &'static Kind,
    members: Vec<Member>,
    ready_timeout: Duration,
    /// Dropped after `members`, whose drop kills the processes.
    dir: TempDir,
}

impl Members {
    /// Lays out `nodes` members with `prepare` (which picks fresh ports on
    /// every call), starts them and waits until every one is ready; retries
    /// on fresh ports while a port was taken.
    ///
    /// # Errors
    ///
    /// If `prepare` fails, or a member exits or is not ready within
    /// `ready_timeout` (the message quotes its log).
    pub(crate) fn start(
        kind: &'static Kind,
        nodes: usize,
        ready_timeout: Duration,
        mut prepare: impl FnMut() -> std::result::Result<(TempDir, Vec<Member>), StartFailure>,
    ) -> Result<Self> {
        with_port_retries(&kind.describe(nodes), || {
            let (dir, members) = prepare()?;
            let mut started = Self {
                kind,
                members,
                ready_timeout,
                dir,
            };
            started.spawn_all_and_wait()?;
            Ok(started)
        })
    }

    fn spawn_all_and_wait(&mut self) -> std::result::Result<(), StartFailure> {
        for m in &mut self.members {
            m.proc.spawn().map_err(StartFailure::Other)?;
        }
        let ports: Vec<u16> = self.members.iter().map(|m| m.client_port).collect();
        let ready = self.kind.ready;
        wait_ready(
            self.members.iter_mut().map(|m| &mut m.proc),
            self.ready_timeout,
            self.kind.name,
            |i| ready(ports[i]),
        )
    }

    /// Every member's client address, `127.0.0.1:port`.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The client port of member `i`.
    pub(crate) fn client_port(&self, i: usize) -> Option<u16> {
        self.members.get(i).map(|m| m.client_port)
    }

    /// The temp directory holding every member's data and log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn member(&mut self, i: usize) -> Result<&mut Member> {
        let n = self.members.len();
        let Kind { name, group, .. } = self.kind;
        match self.members.get_mut(i) {
            Some(m) => Ok(m),
            None => bail!("no {name} member {i}: the {group} has {n} (0..{n})"),
        }
    }

    /// Stops member `i` (SIGTERM, SIGKILL after 10 s) and waits for its PID
    /// to exit; data and ports are kept.
    pub(crate) fn stop_member(&mut self, i: usize) -> Result<()> {
        self.member(i)?.proc.stop()
    }

    /// SIGKILLs member `i` and waits for its PID to exit.
    pub(crate) fn kill_member(&mut self, i: usize) -> Result<()> {
        self.member(i)?.proc.kill()
    }

    /// Starts member `i` again. Waits until it is ready if a majority of
    /// members is then running; otherwise (it cannot serve without a
    /// quorum) only until its client port accepts connections.
    pub(crate) fn start_member(&mut self, i: usize) -> Result<()> {
        let timeout = self.ready_timeout;
        let n = self.members.len();
        self.member(i)?;
        let running = self
            .members
            .iter_mut()
            .enumerate()
            .filter_map(|(j, m)| (j == i || m.proc.is_running()).then_some(()))
            .count();
        let quorum = running > n / 2;
        let ready = self.kind.ready;
        let what = format!("{} member", self.kind.name);
        let m = self.member(i)?;
        m.proc.spawn()?;
        let port = m.client_port;
        wait_ready([&mut m.proc], timeout, &what, |_| {
            if quorum {
                ready(port)
            } else {
                accepts_tcp(port)
            }
        })
        .map_err(StartFailure::into_error)
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) member `i`.
    pub(crate) fn pause_member(&mut self, i: usize, paused: bool) -> Result<()> {
        self.member(i)?.proc.set_paused(paused)
    }

    /// The PID of member `i` while it runs.
    pub(crate) fn member_pid(&self, i: usize) -> Option<u32> {
        self.members.get(i).and_then(|m| m.proc.pid())
    }

    /// Whether member `i` runs; reaps it if it has exited.
    pub(crate) fn member_running(&mut self, i: usize) -> bool {
        self.members.get_mut(i).is_some_and(|m| m.proc.is_running())
    }

    /// SIGTERMs every member, SIGKILLs those still running after
    /// [`STOP_GRACE`], and returns once every PID has exited.
    pub(crate) fn stop_all(&mut self) -> Result<()> {
        for m in &mut self.members {
            m.proc.send_term();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for m in &mut self.members {
            m.proc.wait_exit(deadline)?;
        }
        Ok(())
    }

    /// Starts every stopped member and waits until every one is ready.
    pub(crate) fn start_all(&mut self) -> Result<()> {
        self.spawn_all_and_wait().map_err(StartFailure::into_error)
    }
}
