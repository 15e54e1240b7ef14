//! Consul-specific behaviour, against real dev agents started by `testkit`:
//! recovery after an agent restart, registrations written by other clients
//! (curl-style JSON, the `consul` CLI, the catalog API), TTL expiry of
//! abandoned instances, id collisions, the duplicate-id rule between
//! registrars (refusal, giving way, owner token kept out of the metadata),
//! the cost of an idle watch,
//! registrations that proceed while a heartbeat round is stalled, and
//! replacements that fail or whose caller gives up.
//!
//! The generic behaviour every backend shares is in `conformance.rs`.
//! Needs the Consul binary (`CONSUL_BIN`, `consul` on PATH, or
//! `~/.cache/consul/1.14.11/consul`; build it with `scripts/build-consul.sh`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use registry::consul::ConsulRegistry;
use registry::{
    BackendConfig, Error, Instance, MAX_METADATA_KEYS, Registrar, RegistrationState, Settings,
    Watcher, consul,
};
use serde_json::{Value, json};
use testkit::{ConsulAgent, RegistryServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

mod common;
use common::{await_instances, await_snapshot, eventually, ids, init_tracing, lorem};

/// Generous deadline for anything that should happen within a few seconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// Starts a dev agent without blocking the runtime's other tasks.
async fn start_agent() -> Result<ConsulAgent> {
    tokio::task::spawn_blocking(ConsulAgent::start)
        .await
        .context("the agent start task panicked")?
        .context("cannot start a Consul dev agent (install it with scripts/build-consul.sh, or set CONSUL_BIN)")
}

fn settings(addr: &str, ttl: Duration, token: Option<&str>) -> (consul::Config, Settings) {
    let config = consul::Config {
        addr: vec![addr.to_owned()],
        security: registry::Security {
            token: token.map(Into::into),
            ..Default::default()
        },
        ..consul::Config::default()
    };
    let settings = Settings {
        backend: BackendConfig::Consul(config.clone()),
        ttl,
        timeout: Duration::from_secs(3),
    };
    (config, settings)
}

async fn connect(addr: &str, ttl: Duration) -> Result<ConsulRegistry> {
    let (config, settings) = settings(addr, ttl, None);
    Ok(ConsulRegistry::connect(&config, settings.timing()).await?)
}

/// A plain HTTP call to the agent, as another client (curl) would make it.
async fn http(
    method: reqwest::Method,
    addr: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let client = reqwest::Client::new();
    let mut request = client.request(method, format!("http://{addr}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "{path}: HTTP {status}: {text}");
    Ok(if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

/// Runs the `consul` CLI against the agent.
async fn consul_cli(addr: &str, args: &[&str]) -> Result<String> {
    let bin = testkit::consul_bin()?;
    let output = tokio::process::Command::new(bin)
        .args(args)
        .env("CONSUL_HTTP_ADDR", format!("http://{addr}"))
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "consul {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_reregisters_everything_and_the_watch_resumes() -> Result<()> {
    init_tracing("registry=info");
    let mut agent = start_agent().await?;
    let addr = agent.http_addr();
    let registry = connect(&addr, Duration::from_secs(3)).await?;
    let a = registry.register(lorem("a")).await?;
    let b = registry
        .register(Instance::new("ipsum", "b", "127.0.0.1", 8081).with_weight(2))
        .await?;
    let mut watch = registry.watch("lorem");
    await_snapshot(&mut watch, PATIENCE, "a", |s| ids(s) == ["a"]).await;

    agent = tokio::task::spawn_blocking(move || agent.stop().map(|()| agent)).await??;
    // While the agent is down, calls fail at once with transient errors and
    // the registrar keeps retrying its heartbeats (with backoff).
    let err = registry
        .register(lorem("c"))
        .await
        .expect_err("the agent is down");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    let err = registry
        .instances("lorem")
        .await
        .expect_err("the agent is down");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    // Stay down longer than the TTL, as in a real outage.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let agent = tokio::task::spawn_blocking(move || agent.start().map(|()| agent)).await??;
    let restarted = Instant::now();
    // A fresh agent knows nothing: the heartbeats find the checks gone and
    // register both instances again; the watch reads the new state.
    await_snapshot(&mut watch, PATIENCE, "a back after the restart", |s| {
        ids(s) == ["a"]
    })
    .await;
    let watch_back = restarted.elapsed();
    let ipsum = await_instances(&registry, "ipsum", PATIENCE, "b re-registered", |s| {
        ids(s) == ["b"]
    })
    .await;
    assert_eq!(ipsum[0].weight, 2);
    let all_back = restarted.elapsed();
    println!(
        "consul agent restart: watch showed the re-registered instance {watch_back:?} after the agent was ready, \
         both instances back after {all_back:?} (TTL 3s)"
    );
    assert_eq!(registry.services().await?, ["ipsum", "lorem"]);

    a.deregister().await?;
    await_snapshot(&mut watch, PATIENCE, "a deregistered", |s| s.is_empty()).await;
    b.deregister().await?;
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_by_other_clients_are_discovered_and_critical_ones_are_not() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let registry = connect(&addr, Duration::from_secs(3)).await?;
    let put = reqwest::Method::PUT;

    // curl-style: no checks, no weights, no address.
    http(
        put.clone(),
        &addr,
        "/v1/agent/service/register",
        Some(json!({"ID": "f1", "Name": "foreign", "Port": 9000})),
    )
    .await?;
    // Through the catalog, on a node of its own: the node's address is used.
    http(
        put.clone(),
        &addr,
        "/v1/catalog/register",
        Some(json!({
            "Node": "external", "Address": "10.0.0.9",
            "Service": {"ID": "f2", "Service": "foreign", "Port": 9001}
        })),
    )
    .await?;
    // Accepted by Consul but not by our model (an empty tag, a space in the
    // id): skipped with a warning, not fatal.
    http(
        put.clone(),
        &addr,
        "/v1/agent/service/register",
        Some(json!({"ID": "bad one", "Name": "foreign", "Port": 9002, "Tags": [""]})),
    )
    .await?;
    // A TTL check that was never passed is critical.
    http(
        put.clone(),
        &addr,
        "/v1/agent/service/register",
        Some(json!({"ID": "c1", "Name": "critical", "Port": 9003, "Check": {"TTL": "30s"}})),
    )
    .await?;
    // And the consul CLI's own way.
    consul_cli(
        &addr,
        &[
            "services",
            "register",
            "-name=cli",
            "-id=cli1",
            "-port=7000",
            "-address=127.0.0.2",
            "-tag=t1",
            "-meta=zone=eu",
        ],
    )
    .await?;

    let foreign = registry.instances("foreign").await?;
    assert_eq!(
        foreign,
        vec![
            Instance::new("foreign", "f1", "127.0.0.1", 9000),
            Instance::new("foreign", "f2", "10.0.0.9", 9001),
        ]
    );
    assert!(foreign.iter().all(|i| i.weight == 1));
    assert_eq!(
        registry.instances("cli").await?,
        vec![
            Instance::new("cli", "cli1", "127.0.0.2", 7000)
                .with_tag("t1")
                .with_metadata("zone", "eu")
        ]
    );
    assert_eq!(registry.instances("critical").await?, vec![]);
    assert_eq!(registry.services().await?, ["cli", "foreign"]);

    let mut watch = registry.watch("foreign");
    await_snapshot(&mut watch, PATIENCE, "f1 and f2", |s| {
        ids(s) == ["f1", "f2"]
    })
    .await;

    // Passing the foreign check makes it live; the CLI sees ours too.
    http(put.clone(), &addr, "/v1/agent/check/pass/service:c1", None).await?;
    await_instances(&registry, "critical", PATIENCE, "c1 passing", |s| {
        ids(s) == ["c1"]
    })
    .await;
    let ours = registry.register(lorem("a")).await?;
    let listed = consul_cli(&addr, &["catalog", "services"]).await?;
    assert!(
        listed.lines().any(|l| l.trim() == "lorem"),
        "consul catalog services: {listed}"
    );
    ours.deregister().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_layout_as_consul_shows_it() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let registry = connect(&addr, Duration::from_secs(10)).await?;
    let instance = lorem("lorem-1")
        .with_tag("v1")
        .with_metadata("zone", "eu")
        .with_weight(3);
    let registration = registry.register(instance.clone()).await?;
    let health = http(
        reqwest::Method::GET,
        &addr,
        "/v1/health/service/lorem?passing",
        None,
    )
    .await?;
    println!(
        "GET /v1/health/service/lorem?passing\n{}",
        serde_json::to_string_pretty(&health)?
    );
    let entry = &health[0];
    let service = &entry["Service"];
    assert_eq!(service["ID"], "lorem-1");
    assert_eq!(service["Service"], "lorem");
    assert_eq!(service["Address"], "127.0.0.1");
    assert_eq!(service["Port"], 8080);
    assert_eq!(service["Tags"], json!(["v1"]));
    // Our registrar's owner token rides along in Meta (and is stripped
    // when we read it back, below).
    let owner = service["Meta"]["registry-owner"]
        .as_str()
        .context("Meta[registry-owner]")?;
    assert!(
        owner.starts_with(&format!("pid{}-", std::process::id())),
        "{owner}"
    );
    assert_eq!(
        service["Meta"],
        json!({"zone": "eu", "registry-owner": owner})
    );
    assert_eq!(service["Weights"], json!({"Passing": 3, "Warning": 1}));
    let checks = entry["Checks"].as_array().context("Checks")?;
    let ttl = checks
        .iter()
        .find(|c| c["CheckID"] == "service:lorem-1")
        .context("our TTL check")?;
    assert_eq!(ttl["Status"], "passing");
    assert_eq!(ttl["Type"], "ttl");
    assert_eq!(registry.instances("lorem").await?, vec![instance]);
    registration.deregister().await?;
    assert_eq!(registry.instances("lorem").await?, vec![]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_instance_leaves_after_the_ttl_while_its_sibling_stays() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let ttl = Duration::from_secs(2);
    let registry = connect(&agent.http_addr(), ttl).await?;
    let a = registry.register(lorem("a")).await?;
    let b = registry.register(lorem("b")).await?;
    let mut watch = registry.watch("lorem");
    await_snapshot(&mut watch, PATIENCE, "a and b", |s| ids(s) == ["a", "b"]).await;

    let abandoned = Instant::now();
    b.abandon();
    await_snapshot(&mut watch, PATIENCE, "b gone", |s| ids(s) == ["a"]).await;
    let gone = abandoned.elapsed();
    println!(
        "consul crash detection: abandoned instance left the passing set after {gone:?} (TTL {ttl:?})"
    );

    // `a` is still heartbeated well past its TTL.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(ids(&registry.instances("lorem").await?), ["a"]);
    // The abandoned one is still registered, only critical.
    let all = http(
        reqwest::Method::GET,
        &agent.http_addr(),
        "/v1/health/service/lorem",
        None,
    )
    .await?;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    a.deregister().await?;
    await_snapshot(&mut watch, PATIENCE, "a deregistered", |s| s.is_empty()).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_taken_by_another_service_is_rejected() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let registry = connect(&addr, Duration::from_secs(3)).await?;
    let a = registry.register(lorem("a")).await?;

    let err = registry
        .register(Instance::new("ipsum", "a", "127.0.0.1", 9090))
        .await
        .expect_err("the id is taken by lorem");
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("unique per agent"), "{err}");

    // Also when another client holds the id.
    consul_cli(
        &addr,
        &["services", "register", "-name=other", "-id=x", "-port=7000"],
    )
    .await?;
    let err = registry
        .register(lorem("x"))
        .await
        .expect_err("x is taken by other");
    assert!(err.to_string().contains("\"other\""), "{err}");
    assert_eq!(registry.instances("other").await?.len(), 1);

    // Re-registering the same id for the same service replaces it.
    let a2 = registry.register(lorem("a").with_tag("v2")).await?;
    assert_eq!(
        registry.instances("lorem").await?,
        vec![lorem("a").with_tag("v2")]
    );
    // The replaced handle does not remove the newer registration.
    a.deregister().await?;
    assert_eq!(
        registry.instances("lorem").await?,
        vec![lorem("a").with_tag("v2")]
    );
    assert_eq!(registry.instances("ipsum").await?, vec![]);
    a2.deregister().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_removed_behind_our_back_is_registered_again() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let registry = connect(&addr, Duration::from_secs(2)).await?;
    let a = registry.register(lorem("a")).await?;
    let mut watch = registry.watch("lorem");
    await_snapshot(&mut watch, PATIENCE, "a", |s| ids(s) == ["a"]).await;
    consul_cli(&addr, &["services", "deregister", "-id=a"]).await?;
    let removed = Instant::now();
    await_snapshot(&mut watch, PATIENCE, "a removed", |s| s.is_empty()).await;
    await_snapshot(&mut watch, PATIENCE, "a registered again", |s| {
        ids(s) == ["a"]
    })
    .await;
    println!(
        "consul: instance removed by the CLI was back after {:?} (TTL 2s)",
        removed.elapsed()
    );
    a.deregister().await?;
    Ok(())
}

/// A TCP proxy in front of the agent. It records what clients send, to
/// count requests and see headers; and while a stall is on, it holds back
/// every request whose bytes contain the stall's needle until the stall is
/// released, counting the held requests and those whose client gave up
/// (closed the connection) while held. A held request whose client gives
/// up is dropped, unless [`Proxy::forward_given_up`] allows it through.
struct Proxy {
    addr: String,
    stall: tokio::sync::watch::Sender<Option<&'static str>>,
    taps: Taps,
    task: tokio::task::JoinHandle<()>,
}

/// What every connection of a [`Proxy`] shares.
#[derive(Clone)]
struct Taps {
    seen: Arc<Mutex<Vec<u8>>>,
    stall: tokio::sync::watch::Receiver<Option<&'static str>>,
    held: Arc<AtomicUsize>,
    given_up: Arc<AtomicUsize>,
    /// How many more given-up requests to send on to the agent anyway.
    forward_budget: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stall, stall_rx) = tokio::sync::watch::channel(None);
        let taps = Taps {
            seen: Arc::new(Mutex::new(Vec::new())),
            stall: stall_rx,
            held: Arc::new(AtomicUsize::new(0)),
            given_up: Arc::new(AtomicUsize::new(0)),
            forward_budget: Arc::new(AtomicUsize::new(0)),
            forwarded: Arc::new(AtomicUsize::new(0)),
        };
        let shared = taps.clone();
        let task = tokio::spawn(async move {
            for _ in 0..1000 {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(inbound, outbound, shared.clone()));
            }
        });
        Ok(Proxy {
            addr,
            stall,
            taps,
            task,
        })
    }

    /// How often `needle` occurs in what clients sent.
    fn count(&self, needle: &str) -> usize {
        let seen = self.taps.seen.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&seen).matches(needle).count()
    }

    /// From now on, holds back requests containing `needle`.
    fn stall(&self, needle: &'static str) {
        self.stall.send_replace(Some(needle));
    }

    /// Lets the held requests (and all later ones) through.
    fn release(&self) {
        self.stall.send_replace(None);
    }

    fn held(&self) -> usize {
        self.taps.held.load(Ordering::SeqCst)
    }

    fn given_up(&self) -> usize {
        self.taps.given_up.load(Ordering::SeqCst)
    }

    /// Sends the next `count` held requests whose client gives up on to the
    /// agent all the same, as if each had reached the agent just before its
    /// client's timeout: the agent applies what the client counts as failed.
    fn forward_given_up(&self, count: usize) {
        self.taps.forward_budget.store(count, Ordering::SeqCst);
    }

    /// How many given-up requests were sent on to the agent.
    fn forwarded(&self) -> usize {
        self.taps.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(inbound: TcpStream, outbound: TcpStream, taps: Taps) {
    let Taps {
        seen,
        mut stall,
        held,
        given_up,
        forward_budget,
        forwarded,
    } = taps;
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_server, mut to_server) = outbound.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            let needle = *stall.borrow();
            let mut gave_up = false;
            if needle.is_some_and(|needle| String::from_utf8_lossy(&chunk).contains(needle)) {
                held.fetch_add(1, Ordering::SeqCst);
                loop {
                    tokio::select! {
                        released = stall.wait_for(Option::is_none) => {
                            if released.is_err() {
                                return None;
                            }
                            break;
                        }
                        read = from_client.read(&mut buf) => match read {
                            Ok(0) | Err(_) => {
                                gave_up = true;
                                break;
                            }
                            Ok(n) => chunk.extend_from_slice(&buf[..n]),
                        },
                    }
                }
            }
            if gave_up {
                given_up.fetch_add(1, Ordering::SeqCst);
                let forward = forward_budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if !forward {
                    return None;
                }
            }
            {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.len() < 4 << 20 {
                    seen.extend_from_slice(&chunk);
                }
            }
            if to_server.write_all(&chunk).await.is_err() {
                break;
            }
            if gave_up {
                forwarded.fetch_add(1, Ordering::SeqCst);
                // Not half-closed: the agent may cancel a request whose
                // connection reads EOF. Kept open until the agent's side
                // ends.
                return Some(to_server);
            }
        }
        let _ = to_server.shutdown().await;
        None
    };
    let down = tokio::io::copy(&mut from_server, &mut to_client);
    let (_open, _) = tokio::join!(up, down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_does_not_busy_loop_and_the_token_is_sent() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let proxy = Proxy::start(agent.http_addr()).await?;
    let (config, settings) = settings(&proxy.addr, Duration::from_secs(3), Some("s3cr3t-token"));
    let registry = ConsulRegistry::connect(&config, settings.timing()).await?;
    let a = registry.register(lorem("a")).await?;
    let mut watch = registry.watch("lorem");
    await_snapshot(&mut watch, PATIENCE, "a", |s| ids(s) == ["a"]).await;

    // Heartbeats change check outputs but not the passing set: the watch
    // may wake up, but must stay far from a busy loop.
    let before = proxy.count("GET /v1/health/service/lorem");
    let idle = Duration::from_secs(4);
    tokio::time::sleep(idle).await;
    let requests = proxy.count("GET /v1/health/service/lorem") - before;
    let heartbeats = proxy.count("PUT /v1/agent/check/pass/service:a");
    println!(
        "consul watch: {requests} health requests and {heartbeats} heartbeats in {idle:?} without changes"
    );
    assert!(
        requests < 100,
        "{requests} requests in {idle:?}: the watch busy-loops"
    );
    assert!(heartbeats >= 1, "no heartbeat went through the proxy");

    let token_headers = proxy.count("s3cr3t-token");
    assert!(
        token_headers >= requests + heartbeats,
        "the ACL token was not sent on every request ({token_headers})"
    );
    a.deregister().await?;
    await_snapshot(&mut watch, PATIENCE, "a deregistered", |s| s.is_empty()).await;
    Ok(())
}

#[tokio::test]
async fn an_agent_that_never_answers_is_unavailable_within_the_timeout() -> Result<()> {
    init_tracing("registry=info");
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await?;
    let addr = silent.local_addr()?.to_string();
    let (config, mut settings) = settings(&addr, Duration::from_secs(3), None);
    settings.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = ConsulRegistry::connect(&config, settings.timing())
        .await
        .expect_err("nothing answers");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&addr), "{err}");
    assert!(started.elapsed() < PATIENCE, "connect hung");
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_do_not_wait_for_a_stalled_heartbeat_round() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let proxy = Proxy::start(agent.http_addr()).await?;
    // A long REGISTRY_TIMEOUT: the stalled heartbeat stays in flight (its
    // client waits for it) far longer than the registrations below take.
    let (config, mut settings) = settings(&proxy.addr, Duration::from_secs(3), None);
    settings.timeout = Duration::from_secs(20);
    let registry = ConsulRegistry::connect(&config, settings.timing()).await?;
    let a = registry.register(lorem("a")).await?;

    // The first heartbeat round (one TTL/3 after the registration) hangs on
    // a's heartbeat, which the proxy holds back.
    proxy.stall("PUT /v1/agent/check/pass/");
    eventually(PATIENCE, "a heartbeat to reach the proxy", || async {
        Ok((proxy.held() > 0).then_some(()))
    })
    .await;

    // Meanwhile registrations and deregistrations go through.
    let during = Instant::now();
    let b = registry
        .register(lorem("b"))
        .await
        .context("register b while a heartbeat round is stalled")?;
    let c = registry
        .register(lorem("c"))
        .await
        .context("register c while a heartbeat round is stalled")?;
    c.deregister()
        .await
        .context("deregister c while a heartbeat round is stalled")?;
    let took = during.elapsed();
    // The round was still waiting for its heartbeat all along: the proxy
    // still holds it and its client has not given up on it.
    ensure!(
        proxy.held() == 1 && proxy.given_up() == 0,
        "the stalled heartbeat ended before the registrations finished (held {}, given up {})",
        proxy.held(),
        proxy.given_up()
    );
    println!(
        "consul: 2 registrations and 1 deregistration took {took:?} while a heartbeat round was stalled"
    );
    let lorem_now = registry.instances("lorem").await?;
    ensure!(
        ids(&lorem_now).contains(&"b") && !ids(&lorem_now).contains(&"c"),
        "during the stall: {lorem_now:?}"
    );

    // Released, the round ends and heartbeats keep both alive.
    proxy.release();
    await_instances(&registry, "lorem", PATIENCE, "a and b passing", |s| {
        ids(s) == ["a", "b"]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ids(&registry.instances("lorem").await?), ["a", "b"]);
    a.deregister().await?;
    b.deregister().await?;
    assert_eq!(registry.instances("lorem").await?, vec![]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_racing_the_old_handles_deregistration_stays() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let registry = connect(&agent.http_addr(), Duration::from_secs(3)).await?;
    // Whichever the registrar receives first, the newer registration of the
    // id is what remains: the old handle's token no longer owns it.
    for round in 0..10 {
        let old = registry
            .register(lorem("a").with_tag(format!("old{round}")))
            .await?;
        let newer = lorem("a").with_tag(format!("new{round}"));
        let (removed, replaced) = tokio::join!(old.deregister(), registry.register(newer.clone()));
        removed?;
        let replacement = replaced?;
        assert_eq!(
            registry.instances("lorem").await?,
            vec![newer],
            "round {round}"
        );
        replacement.deregister().await?;
        assert_eq!(registry.instances("lorem").await?, vec![], "round {round}");
    }
    Ok(())
}

/// The tags of the agent's record of `id`, read from the agent directly.
async fn agent_tags(addr: &str, id: &str) -> Result<Value> {
    let service = http(
        reqwest::Method::GET,
        addr,
        &format!("/v1/agent/service/{id}"),
        None,
    )
    .await?;
    Ok(service["Tags"].clone())
}

/// Waits until the agent's record of `id` has exactly `tags`.
async fn await_agent_tags(addr: &str, id: &str, tags: &[&str], what: &str) {
    eventually(PATIENCE, what, || async {
        let now = agent_tags(addr, id).await.map_err(|e| e.to_string())?;
        Ok((now == json!(tags)).then_some(()))
    })
    .await;
}

/// The request line of a registration (not of a heartbeat or a read).
const REGISTER_PUT: &str = "PUT /v1/agent/service/register";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_whose_caller_gives_up_leaves_the_replaced_record() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let direct = agent.http_addr();
    let proxy = Proxy::start(direct.clone()).await?;
    // A long REGISTRY_TIMEOUT: the held replacement is let through long
    // before its own call would time out, so the agent takes it and the
    // registrar sees it succeed after its caller has gone.
    let ttl = Duration::from_secs(3);
    let (config, mut settings) = settings(&proxy.addr, ttl, None);
    settings.timeout = Duration::from_secs(20);
    let registry = ConsulRegistry::connect(&config, settings.timing()).await?;
    let old = lorem("a").with_tag("old");
    let a = registry.register(old.clone()).await?;
    ensure!(proxy.count(REGISTER_PUT) == 1, "one registration so far");

    proxy.stall(REGISTER_PUT);
    let replacing = tokio::spawn({
        let registry = registry.clone();
        async move {
            registry
                .register(lorem("a").with_tag("new"))
                .await
                .map(drop)
        }
    });
    eventually(PATIENCE, "the replacement to reach the proxy", || async {
        Ok((proxy.held() > 0).then_some(()))
    })
    .await;
    // The caller gives up (as after its own deadline), then the agent gets
    // the replacement.
    replacing.abort();
    ensure!(
        replacing.await.is_err_and(|e| e.is_cancelled()),
        "the replacement finished while the proxy held it"
    );
    proxy.release();
    // Once the replacement has succeeded, the registrar puts the replaced
    // record back: its handle still owns the id.
    eventually(
        PATIENCE,
        "the replaced record to be registered again",
        || async { Ok((proxy.count(REGISTER_PUT) >= 3).then_some(())) },
    )
    .await;
    await_agent_tags(
        &direct,
        "a",
        &["old"],
        "the agent to hold the replaced record again",
    )
    .await;
    // And keeps it alive, past the TTL.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(registry.instances("lorem").await?, vec![old]);
    a.deregister().await?;
    assert_eq!(registry.instances("lorem").await?, vec![]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_timed_out_after_the_agent_took_it_leaves_the_replaced_record()
-> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let direct = agent.http_addr();
    let proxy = Proxy::start(direct.clone()).await?;
    let ttl = Duration::from_secs(3);
    let (config, mut settings) = settings(&proxy.addr, ttl, None);
    settings.timeout = Duration::from_secs(2);
    let registry = ConsulRegistry::connect(&config, settings.timing()).await?;
    let old = lorem("a").with_tag("old");
    let a = registry.register(old.clone()).await?;

    // The replacement is held until its call times out, then reaches the
    // agent all the same: the agent applies what the registrar counts as
    // failed. Later registrations stay held (and dropped when they time
    // out) until the release.
    proxy.stall(REGISTER_PUT);
    proxy.forward_given_up(1);
    let err = registry
        .register(lorem("a").with_tag("new"))
        .await
        .expect_err("the replacement is held until it times out");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    await_agent_tags(
        &direct,
        "a",
        &["new"],
        "the agent to take the timed-out replacement",
    )
    .await;
    ensure!(proxy.forwarded() == 1, "forwarded {}", proxy.forwarded());
    // The registrar tries to put the replaced record back (held here).
    eventually(
        PATIENCE,
        "the replaced record to be registered again",
        || async { Ok((proxy.held() >= 2).then_some(())) },
    )
    .await;
    proxy.release();
    await_agent_tags(
        &direct,
        "a",
        &["old"],
        "the agent to hold the replaced record again",
    )
    .await;
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(registry.instances("lorem").await?, vec![old]);
    a.deregister().await?;
    assert_eq!(registry.instances("lorem").await?, vec![]);
    Ok(())
}

/// The agent's record of `id`, read from the agent directly.
async fn agent_service(addr: &str, id: &str) -> Result<Value> {
    http(
        reqwest::Method::GET,
        addr,
        &format!("/v1/agent/service/{id}"),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_registrar_is_refused_an_id_the_first_holds() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let ttl = Duration::from_secs(2);
    let first = connect(&addr, ttl).await?;
    let second = connect(&addr, ttl).await?;
    let held = lorem("a").with_tag("first").with_metadata("zone", "eu");
    let a = first.register(held.clone()).await?;
    let holder = agent_service(&addr, "a").await?["Meta"]["registry-owner"]
        .as_str()
        .context("the first registrar's owner token")?
        .to_owned();

    // Before this rule, the second registrar silently replaced the first's
    // record, and both then heartbeated the same check.
    let err = second
        .register(lorem("a").with_tag("second"))
        .await
        .expect_err("the id is held by the first registrar");
    assert!(
        matches!(&err, Error::AlreadyRegistered { holder: h, id, .. } if *h == holder && id == "a"),
        "{err}"
    );
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&holder), "{err}");

    // The first record is untouched, and still kept alive past its TTL.
    let record = agent_service(&addr, "a").await?;
    assert_eq!(record["Tags"], json!(["first"]));
    assert_eq!(record["Meta"]["registry-owner"], holder.as_str());
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(second.instances("lorem").await?, vec![held]);
    assert_eq!(*a.state().borrow(), RegistrationState::Registered);

    // Once the first lets go, the second gets in.
    a.deregister().await?;
    let b = second.register(lorem("a").with_tag("second")).await?;
    assert_eq!(
        first.instances("lorem").await?,
        vec![lorem("a").with_tag("second")]
    );
    b.deregister().await?;

    // A crashed holder's record stays on the agent (critical) until it is
    // reaped, minutes later; its id is free once the check is critical,
    // one TTL after the crash, as a restarted server expects.
    let crashed = first.register(lorem("c")).await?;
    crashed.abandon();
    let abandoned = Instant::now();
    let err = second
        .register(lorem("c"))
        .await
        .expect_err("the crashed holder's check still passes");
    assert!(matches!(err, Error::AlreadyRegistered { .. }), "{err}");
    let c = eventually(PATIENCE, "the restarted server to get the id", || {
        let second = second.clone();
        async move { Ok(second.register(lorem("c").with_tag("restarted")).await.ok()) }
    })
    .await;
    let took = abandoned.elapsed();
    println!("consul: a crashed holder's id was free again after {took:?} (TTL {ttl:?})");
    // The last heartbeat was at most TTL/3 before the crash.
    assert!(
        took >= ttl * 2 / 3,
        "taken over after {took:?}, before the check could expire"
    );
    assert_eq!(
        agent_service(&addr, "c").await?["Tags"],
        json!(["restarted"])
    );
    c.deregister().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_token_never_shows_in_instances_and_always_fits() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let registry = connect(&addr, Duration::from_secs(3)).await?;
    // As many metadata keys as the model allows: with the owner's, Consul's
    // limit of 64 is reached, not passed.
    let mut full = lorem("full");
    for i in 0..MAX_METADATA_KEYS {
        full = full.with_metadata(format!("k{i:02}"), "v");
    }
    let registration = registry.register(full.clone()).await?;
    let raw = agent_service(&addr, "full").await?;
    let meta = raw["Meta"].as_object().context("Meta")?;
    assert_eq!(meta.len(), MAX_METADATA_KEYS + 1);
    assert!(meta.contains_key("registry-owner"), "{raw}");

    let listed = registry.instances("lorem").await?;
    assert_eq!(listed, vec![full.clone()]);
    assert!(!listed[0].metadata.contains_key("registry-owner"));
    let mut watch = registry.watch("lorem");
    let seen = await_snapshot(&mut watch, PATIENCE, "full", |s| ids(s) == ["full"]).await;
    assert_eq!(seen, vec![full]);

    // Consul itself refuses a 65th key: the model's limit leaves room for
    // the owner's.
    let err = registry
        .register(lorem("x").with_metadata("registry-owner", "mine"))
        .await
        .expect_err("the key is reserved");
    assert!(matches!(err, Error::InvalidInstance(_)), "{err}");
    let mut too_many = json!({"ID": "raw", "Name": "raw", "Port": 1, "Meta": {}});
    for i in 0..65 {
        too_many["Meta"][format!("k{i:02}")] = json!("v");
    }
    let refused = reqwest::Client::new()
        .put(format!("http://{addr}/v1/agent/service/register"))
        .json(&too_many)
        .send()
        .await?;
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    registration.deregister().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_record_comes_back_and_a_taken_one_gives_way() -> Result<()> {
    init_tracing("registry=info");
    let agent = start_agent().await?;
    let addr = agent.http_addr();
    let ttl = Duration::from_secs(2);
    let registry = connect(&addr, ttl).await?;
    let a = registry.register(lorem("a").with_tag("ours")).await?;
    let owner = agent_service(&addr, "a").await?["Meta"]["registry-owner"].clone();
    let put = reqwest::Method::PUT;

    // A tool writes over our record, without a token (its check keeps the
    // same id, so heartbeats alone cannot tell): we put ours back.
    http(
        put.clone(),
        &addr,
        "/v1/agent/service/register?replace-existing-checks=true",
        Some(
            json!({"ID": "a", "Name": "lorem", "Port": 8080, "Tags": ["tool"],
                    "Check": {"CheckID": "service:a", "TTL": "30s", "Status": "passing"}}),
        ),
    )
    .await?;
    await_agent_tags(&addr, "a", &["ours"], "our record to be put back").await;
    assert_eq!(
        agent_service(&addr, "a").await?["Meta"]["registry-owner"],
        owner
    );

    // Another registrar's record replaces ours (as after a race on this
    // agent): we give way and stop heartbeating.
    let mut state = a.state();
    http(
        put,
        &addr,
        "/v1/agent/service/register?replace-existing-checks=true",
        Some(
            json!({"ID": "a", "Name": "lorem", "Port": 8080, "Tags": ["theirs"],
                    "Meta": {"registry-owner": "pid0-intruder"},
                    "Check": {"CheckID": "service:a", "TTL": "2s", "Status": "passing"}}),
        ),
    )
    .await?;
    let displaced = tokio::time::timeout(
        PATIENCE,
        state.wait_for(|s| matches!(s, RegistrationState::Displaced { .. })),
    )
    .await
    .context("never gave way")??
    .clone();
    assert_eq!(
        displaced,
        RegistrationState::Displaced {
            holder: "pid0-intruder".to_owned()
        }
    );
    // Nobody heartbeats the intruder's check now: it goes critical, and
    // our registrar did not put its record back.
    await_instances(
        &registry,
        "lorem",
        PATIENCE,
        "the intruder to go critical",
        |s| s.is_empty(),
    )
    .await;
    assert_eq!(agent_tags(&addr, "a").await?, json!(["theirs"]));
    // Deregistering the displaced handle leaves the other's record alone.
    a.deregister().await?;
    assert_eq!(agent_tags(&addr, "a").await?, json!(["theirs"]));
    Ok(())
}
