//! The Consul topology as production runs it (three servers, a client agent
//! beside each lorem process, `docker-compose.consul.yml` as processes on
//! 127.0.0.1), through the faults that layout is for. One topology, under
//! load from start to end (4 workers, a request every 20 ms each, bounded
//! in count and time), and three faults in turn:
//!
//! 1. the Raft leader of the three servers is stopped: a new one is elected,
//!    not one request fails, and both registrations are still in the
//!    catalog once a whole `REGISTRY_TTL` has passed (then the old leader
//!    comes back and rejoins);
//! 2. `server2`'s agent is stopped: it leaves the cluster, so `server2`
//!    leaves the gateway's set (while `server2` itself still runs); when
//!    the agent comes back, `server2` is registered on it again and back in
//!    the set;
//! 3. the gateway's agent is stopped: the gateway cannot read the registry,
//!    keeps the last set and says so (`GET /instances` has `"stale":true`),
//!    and both servers go on answering; when the agent is back the set is
//!    fresh again.
//!
//! No request may fail in any of it: the registry is off the request path.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use testkit::topology::{
    Backend, GATEWAY, Options, REGISTRY_TTL, SERVER_IDS, Topology, agent_of, post_sd_lorem,
};

const BODY: &str = r#"{"requestType":"word","min":4,"max":8}"#;

/// Load: workers, the pause between two requests of one worker, and the
/// bounds no run may exceed whatever happens.
const WORKERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(20);
const MAX_REQUESTS_PER_WORKER: u64 = 20_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(240);

/// How long each awaited change may take (an election, a leave, a rejoin
/// and a heartbeat, on a loaded two-core machine).
const CHANGE_DEADLINE: Duration = Duration::from_secs(45);

fn record(line: &str) {
    testkit::record_timing(env!("CARGO_TARGET_TMPDIR"), line);
}

/// Where lorem-server and lorem-client are: next to local-topology when
/// `cargo test --workspace` built them.
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

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: (status, body); status 0
/// if nothing answered.
fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes());
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// What the gateway's `GET /instances` says: the ids in its set, and
/// whether it is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GatewayView {
    ids: Vec<String>,
    stale: bool,
    raw: String,
}

fn gateway_view(port: u16) -> GatewayView {
    let (status, body) = get(port, "/instances");
    assert_eq!(status, 200, "GET /instances on the gateway: {body}");
    // `"instances":[...]` comes before `"ejected"`; the objects hold arrays
    // of their own (tags), so cut at the next key rather than at a `]`.
    let start = body.find("\"instances\":[").expect("an instances field");
    let end = body[start..]
        .find("\"ejected\"")
        .map_or(body.len(), |e| start + e);
    let ids = body[start..end]
        .split("\"id\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    GatewayView {
        ids,
        stale: body.contains("\"stale\":true"),
        raw: body,
    }
}

/// The ids of the passing `lorem` instances, as the agent on `port` reads
/// the catalog.
fn passing_ids(port: u16) -> Vec<String> {
    let (status, body) = get(port, "/v1/health/service/lorem?passing=true");
    assert_eq!(status, 200, "health query on 127.0.0.1:{port}: {body}");
    let mut ids: Vec<String> = body
        .split("\"Service\":{")
        .skip(1)
        .filter_map(|s| s.split("\"ID\":\"").nth(1))
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Polls `check` every 100 ms until it returns `Some`, or fails naming
/// `what` (with `context()`) after [`CHANGE_DEADLINE`]. Returns the value
/// and how long it took.
fn until<T>(
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let began = Instant::now();
    loop {
        if let Some(value) = check() {
            return (value, began.elapsed());
        }
        assert!(
            began.elapsed() < CHANGE_DEADLINE,
            "{what} did not happen within {CHANGE_DEADLINE:?}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// What the load has seen so far.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// The first failures, described.
    failures: Vec<String>,
    /// When each instance last answered.
    last_answer: HashMap<String, Instant>,
}

/// Requests through the gateway from [`WORKERS`] threads until stopped (or
/// the bounds are reached).
struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: u16) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let workers = (0..WORKERS)
            .map(|_| {
                let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
                thread::spawn(move || {
                    for _ in 0..MAX_REQUESTS_PER_WORKER {
                        if stop.load(Ordering::Relaxed) || began.elapsed() > MAX_LOAD_TIME {
                            return;
                        }
                        let result = post_sd_lorem(gateway, BODY);
                        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                        match result {
                            Ok((200, instance)) => {
                                t.ok += 1;
                                t.last_answer.insert(instance, Instant::now());
                            }
                            other => {
                                t.failed += 1;
                                if t.failures.len() < 10 {
                                    let at = began.elapsed().as_secs_f64();
                                    t.failures.push(format!("{at:.1} s: {other:?}"));
                                }
                            }
                        }
                        drop(t);
                        thread::sleep(PAUSE);
                    }
                })
            })
            .collect();
        Self {
            tally,
            stop,
            workers,
        }
    }

    /// (ok, failed, the first failures).
    fn counts(&self) -> (u64, u64, Vec<String>) {
        let t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        (t.ok, t.failed, t.failures.clone())
    }

    /// Whether `id` has answered since `since`.
    fn answered_since(&self, id: &str, since: Instant) -> bool {
        let t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        t.last_answer.get(id).is_some_and(|at| *at > since)
    }

    fn assert_no_failure(&self, when: &str) {
        let (ok, failed, failures) = self.counts();
        assert_eq!(
            failed,
            0,
            "{when}: {failed} of {} requests failed; the first: {failures:#?}",
            ok + failed
        );
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            worker.join().expect("a load worker panicked");
        }
        self.counts()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The HTTP port of process `name` in the topology.
fn port_of(topology: &Topology, name: &str) -> u16 {
    let process = topology
        .processes()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no process {name} in the topology"));
    process
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {:?}", process.addr))
}

/// The server that says it is the Raft leader, among `servers`.
fn leader(topology: &Topology, servers: &[&str]) -> Option<String> {
    servers
        .iter()
        .find(|name| {
            get(port_of(topology, name), "/v1/agent/self")
                .1
                .contains("\"leader\":\"true\"")
        })
        .map(|name| (*name).to_owned())
}

/// What each server says of the cluster, for failure messages: its
/// leader, the members' gossip status (1 alive, 3 left, 4 failed) and the
/// passing instances.
fn cluster_state(topology: &Topology, servers: &[&str]) -> String {
    servers
        .iter()
        .map(|name| {
            let port = port_of(topology, name);
            let (_, leader) = get(port, "/v1/status/leader");
            let (_, members) = get(port, "/v1/agent/members");
            let members: Vec<String> = members
                .split("\"Name\":\"")
                .skip(1)
                .filter_map(|m| {
                    let name = m.split('"').next()?;
                    let status = m.split("\"Status\":").nth(1)?.split(',').next()?;
                    Some(format!("{name}={status}"))
                })
                .collect();
            let (_, passing) = get(port, "/v1/health/service/lorem?passing=true");
            let ids: Vec<&str> = passing
                .split("\"Service\":{\"ID\":\"")
                .skip(1)
                .filter_map(|s| s.split('"').next())
                .collect();
            format!("{name}: leader {leader}, members {members:?}, passing {ids:?}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ttl() -> Duration {
    let secs = REGISTRY_TTL
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("REGISTRY_TTL {REGISTRY_TTL:?} is not whole seconds"));
    Duration::from_secs(secs)
}

#[test]
fn consul_agents_and_servers_fail_without_a_failed_request() {
    let began = Instant::now();
    let mut topology = Topology::start(&Options::new(Backend::Consul, bin_dir()).ephemeral())
        .expect("start the Consul topology");
    let up_in = topology.started_in();
    let gateway = port_of(&topology, GATEWAY);
    let servers = ["consul1", "consul2", "consul3"];
    let both: Vec<String> = SERVER_IDS.iter().map(|s| (*s).to_owned()).collect();
    let load = Load::start(gateway);

    // 1. The Raft leader goes.
    let ctx = || String::new();
    let (old_leader, _) = until("a Consul server saying it leads", ctx, || {
        leader(&topology, &servers)
    });
    let stopped_at = Instant::now();
    topology
        .stop_member(&old_leader)
        .expect("stop the Consul leader");
    let others: Vec<&str> = servers
        .iter()
        .copied()
        .filter(|s| *s != old_leader)
        .collect();
    let (new_leader, _) = until(
        &format!("a new leader after stopping {old_leader}"),
        String::new,
        || leader(&topology, &others),
    );
    let elected_in = stopped_at.elapsed();
    // A whole TTL and more after the loss: had a registration been lost,
    // its instance would be gone from the catalog by now.
    while stopped_at.elapsed() < ttl() + Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(200));
    }
    load.assert_no_failure(&format!("after stopping the leader {old_leader}"));
    let survivor = port_of(&topology, &new_leader);
    assert_eq!(
        passing_ids(survivor),
        both,
        "the catalog still has both registrations, passing, after the leader {old_leader} \
         stopped"
    );
    let since = stopped_at + ttl();
    for id in SERVER_IDS {
        assert!(
            load.answered_since(id, since),
            "{id} answered no request in the TTL after the leader stopped"
        );
    }
    until(
        "the gateway's set to be fresh with both servers after the election",
        || format!("{:?}", gateway_view(gateway)),
        || {
            let view = gateway_view(gateway);
            (!view.stale && view.ids == both).then_some(())
        },
    );
    topology
        .start_member(&old_leader)
        .expect("start the old leader again");
    // Rejoined as the same Raft member: autopilot counts three healthy
    // servers again (a tolerance of one failure). Waiting for it also lets
    // any election its return causes settle before the next fault.
    until(
        &format!("{old_leader} rejoining: autopilot healthy with three servers"),
        || cluster_state(&topology, &servers),
        || {
            let (_, health) = get(survivor, "/v1/operator/autopilot/health");
            (health.contains("\"Healthy\":true,\"FailureTolerance\":1")
                && health.matches("\"Voter\":true").count() == 3)
                .then_some(())
        },
    );

    // 2. server2's agent goes: server2 leaves the set, and is back with it.
    let agent2 = agent_of("server2");
    let agent_stopped_at = Instant::now();
    topology.stop_member(&agent2).expect("stop server2's agent");
    // A stopping client agent leaves the cluster before it exits.
    let leave_took = agent_stopped_at.elapsed();
    until(
        "server2 leaving the gateway's set once its agent stopped",
        || {
            format!(
                "gateway: {:?}\n{}",
                gateway_view(gateway),
                cluster_state(&topology, &servers)
            )
        },
        || (gateway_view(gateway).ids == ["server1"]).then_some(()),
    );
    // From the SIGTERM on, which includes the agent's leave.
    let left_in = agent_stopped_at.elapsed();
    assert_eq!(
        passing_ids(survivor),
        ["server1"],
        "the catalog lost server2 with its agent"
    );
    load.assert_no_failure("after stopping server2's agent");
    let restarted_at = Instant::now();
    topology
        .start_member(&agent2)
        .expect("start server2's agent again");
    until(
        "server2 back in the gateway's set once its agent returned",
        || format!("{:?}", gateway_view(gateway)),
        || (gateway_view(gateway).ids == both).then_some(()),
    );
    // From the agent's start on, which includes its joining the cluster.
    let back_in = restarted_at.elapsed();
    let (status, body) = get(port_of(&topology, &agent2), "/v1/agent/service/server2");
    assert_eq!(
        status, 200,
        "server2 is registered on its agent again: {body}"
    );
    let back_at = Instant::now();
    until("server2 answering requests again", String::new, || {
        load.answered_since("server2", back_at).then_some(())
    });

    // 3. The gateway's agent goes: the last set is kept, and called stale.
    let agent_gw = agent_of(GATEWAY);
    let gw_stopped_at = Instant::now();
    topology
        .stop_member(&agent_gw)
        .expect("stop the gateway's agent");
    let gw_leave_took = gw_stopped_at.elapsed();
    let (view, _) = until(
        "the gateway saying its set is stale once its agent stopped",
        || format!("{:?}", gateway_view(gateway)),
        || {
            let view = gateway_view(gateway);
            view.stale.then_some(view)
        },
    );
    let stale_in = gw_stopped_at.elapsed();
    assert_eq!(
        view.ids, both,
        "the stale set is the last one: {}",
        view.raw
    );
    let stale_at = Instant::now();
    until(
        "both servers answering while the gateway's agent is down",
        String::new,
        || {
            SERVER_IDS
                .iter()
                .all(|id| load.answered_since(id, stale_at))
                .then_some(())
        },
    );
    assert!(
        gateway_view(gateway).stale,
        "still stale while the agent is down"
    );
    topology
        .start_member(&agent_gw)
        .expect("start the gateway's agent again");
    until(
        "the gateway's set fresh again once its agent returned",
        || format!("{:?}", gateway_view(gateway)),
        || {
            let view = gateway_view(gateway);
            (!view.stale && view.ids == both).then_some(())
        },
    );

    let (ok, failed, failures) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed; the first: {failures:#?}",
        ok + failed
    );
    let hurry = AtomicBool::new(false);
    topology.stop(&hurry).expect("stop the topology");
    record(&format!(
        "consul topology (3 servers, an agent per lorem process): up in {:.1} s; under load \
         ({WORKERS} workers): leader {old_leader} stopped -> {new_leader} elected in {:.1} s, \
         both registrations kept past the TTL; server2's agent stopped (SIGTERM to exit, \
         leaving: {:.1} s) -> server2 out of the gateway's set {:.1} s after the SIGTERM, back \
         {:.1} s after the agent restarted; gateway's agent stopped (exit in {:.1} s) -> \
         /instances stale {:.1} s after the SIGTERM, both still answering; {ok} requests, \
         {failed} failed; test {:.1} s",
        up_in.as_secs_f64(),
        elected_in.as_secs_f64(),
        leave_took.as_secs_f64(),
        left_in.as_secs_f64(),
        back_in.as_secs_f64(),
        gw_leave_took.as_secs_f64(),
        stale_in.as_secs_f64(),
        began.elapsed().as_secs_f64()
    ));
}
