//! The gateway (`lorem-client gateway`) against hostile and broken clients,
//! as a real process under `ulimit -n 1024`: 1,100 idle and half-sent
//! connections lock no new client out, SIGTERM with idle connections open
//! stops at once (the gateway has no drain), and every error answer is JSON
//! (404, 405, 400, 413 before the body, 414, 431).
//!
//! The registry is not what is tested here: the gateway reads an empty
//! in-process one (`REGISTRY=memory`); its `/health` is the probe.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::flood::{self, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_lorem-client");

/// `lorem-client gateway` with `args` under `ulimit -n 1024`, serving, with
/// no inherited registry, balancer or gateway settings.
fn start(args: &[&str]) -> ServerProcess {
    let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("an address");
    let mut command = flood::command_with_open_file_limit(BIN, 1024);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if ["REGISTRY", "LOREM_", "LB_", "GATEWAY_"]
            .iter()
            .any(|prefix| key.starts_with(prefix))
        {
            command.env_remove(key);
        }
    }
    command
        .args(["gateway", "--listen", &addr.to_string()])
        .args(args)
        .env("REGISTRY", "memory")
        .env("RUST_LOG", "info");
    ServerProcess::start("the gateway", command, addr)
}

#[test]
fn a_flood_of_idle_and_half_sent_connections_locks_no_client_out() {
    flood::need_open_files(1300);
    let mut server = start(&["--header-read-timeout", "4s"]);
    let pid = server.pid();
    let report = flood::hold_and_probe(
        server.addr(),
        pid,
        Some("/sd-lorem"),
        1100,
        20,
        "/health",
        Duration::from_secs(6),
    );
    eprintln!("gateway (ulimit -n 1024): {}", report.summary());
    for (status, took) in &report.probes {
        assert_eq!(*status, 200, "{}\n{}", report.summary(), server.log());
        assert!(*took < Duration::from_secs(1), "{}", report.summary());
    }
    // The half-sent and silent ones are closed by the header-read timeout
    // (or were evicted at the cap): none is held for ever.
    assert_eq!(
        report.closed_by_server,
        report.opened,
        "{}",
        report.summary()
    );
    let log = server.log();
    // Once per episode, never once per connection: an episode ends (with
    // an info line) well under the limit, when the header-read timeout has
    // closed the flood; another may begin if the backlog still held some.
    let reached = log.matches("connection limit reached").count();
    let ended = log.matches("back under the connection limit").count();
    eprintln!("connection-limit episodes logged: {reached} started, {ended} ended");
    // (1,100 is over the limit of 768: it was reached, unless the flood's
    // own connects failed so slowly that the header-read timeout kept up.)
    assert!(
        (reached >= 1 || report.connect_failed > 0) && reached <= ended + 1 && reached <= 3,
        "the cap is logged once per episode ({reached} starts, {ended} ends): {log}"
    );
    assert!(
        log.matches("out of file descriptors").count() <= 1,
        "at most once per episode: {log}"
    );
    assert!(!log.contains("accept failed"), "{log}");
    let (stopped, status) = server.terminate();
    assert!(status.success(), "{status}: {}", server.log());
    eprintln!("the gateway stopped {stopped:?} after SIGTERM");
}

#[test]
fn sigterm_with_idle_connections_open_stops_at_once() {
    flood::need_open_files(1300);
    // The gateway registers nothing, so it has no drain.
    let drain = Duration::ZERO;
    let mut server = start(&[]);
    // Keep-alive connections that served a request, and hostile ones.
    let mut held = Vec::new();
    for _ in 0..50 {
        let (status, stream) = flood::keep_alive_get(server.addr(), "/health");
        assert_eq!(status, 200);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        held.push(stream);
    }
    let hostile = flood::Flood::open(
        server.addr(),
        150,
        Duration::from_secs(10),
        Some("/sd-lorem"),
    );
    assert_eq!(hostile.failed, 0);
    std::thread::sleep(Duration::from_millis(200));

    let (stopped, status) = server.terminate();
    eprintln!(
        "the gateway with 200 idle or half-sent connections opened stopped {stopped:?} after SIGTERM (drain {drain:?})"
    );
    assert!(status.success(), "{status}: {}", server.log());
    assert!(
        stopped <= drain + Duration::from_secs(3),
        "stopped after {stopped:?}: {}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("no request in flight"), "{log}");
    assert!(!log.contains("did not finish"), "{log}");
    assert!(!log.contains("still in flight"), "{log}");
    assert!(!log.contains("cutting"), "{log}");
}

#[test]
fn every_error_answer_is_json() {
    flood::need_open_files(1300);
    let mut server = start(&[]);
    let addr = server.addr();
    let timeout = Duration::from_secs(5);
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (404, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (405, b"GET /sd-lorem HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (405, b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            400,
            b"POST /sd-lorem HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nnope!".to_vec(),
        ),
    ];
    for (want, request) in cases {
        let (status, head, body) = flood::raw(addr, &request, timeout).expect("an answer");
        assert_eq!(status, want, "{head}\n{body}");
        flood::json_error(status, &head, &body);
    }
    flood::assert_size_limits(addr, "/sd-lorem", timeout);
    let (_, status) = server.terminate();
    assert!(status.success());
}
