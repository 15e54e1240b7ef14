//! `lorem-server` against hostile and broken clients, as a real process
//! under `ulimit -n 1024`: 1,100 idle and half-sent connections lock no new
//! client out, SIGTERM with idle connections open stops within the drain,
//! and every error answer is JSON (404, 405, 413 before the body, 414, 431).
//!
//! The registry is not what is tested here: the server registers in its
//! own in-process one (`REGISTRY=memory`), as in `binary.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::flood::{self, ServerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_lorem-server");

/// `lorem-server` with `args` under `ulimit -n 1024`, serving.
fn start(args: &[&str]) -> ServerProcess {
    start_with_open_files(1024, args)
}

/// `lorem-server` with `args` under `ulimit -n nofile`, serving, with no
/// inherited registry or lorem settings.
fn start_with_open_files(nofile: u64, args: &[&str]) -> ServerProcess {
    let addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("an address");
    let mut command = flood::command_with_open_file_limit(BIN, nofile);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("REGISTRY") || key.starts_with("LOREM_") {
            command.env_remove(key);
        }
    }
    command
        .args(["--listen", &addr.to_string()])
        .args(args)
        .env("REGISTRY", "memory")
        .env("RUST_LOG", "info");
    ServerProcess::start("lorem-server", command, addr)
}

#[test]
fn a_flood_of_idle_and_half_sent_connections_locks_no_client_out() {
    flood::need_open_files(1300);
    let mut server = start(&["--header-read-timeout", "4s", "--drain-delay", "1s"]);
    let pid = server.pid();
    let report = flood::hold_and_probe(
        server.addr(),
        pid,
        // No half-sent bodies: lorem's routes read none, so such a request
        // is answered at once and its connection closed; they would not
        // hold anything.
        None,
        1100,
        20,
        "/health",
        Duration::from_secs(6),
    );
    eprintln!("lorem-server (ulimit -n 1024): {}", report.summary());
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
    eprintln!("lorem-server stopped {stopped:?} after SIGTERM");
}

#[test]
fn sigterm_with_idle_connections_open_stops_within_the_drain() {
    flood::need_open_files(1300);
    let drain = Duration::from_secs(1);
    let mut server = start(&["--drain-delay", "1s"]);
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
        Some("/lorem/word/1/5"),
    );
    assert_eq!(hostile.failed, 0);
    std::thread::sleep(Duration::from_millis(200));

    let (stopped, status) = server.terminate();
    eprintln!(
        "lorem-server with 200 idle or half-sent connections opened stopped {stopped:?} after SIGTERM (drain {drain:?})"
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
    let mut server = start(&["--drain-delay", "0s"]);
    let addr = server.addr();
    let timeout = Duration::from_secs(5);
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (404, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            405,
            b"GET /lorem/word/1/2 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (405, b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            400,
            b"POST /lorem/nope/1/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
    ];
    for (want, request) in cases {
        let (status, head, body) = flood::raw(addr, &request, timeout).expect("an answer");
        assert_eq!(status, want, "{head}\n{body}");
        flood::json_error(status, &head, &body);
    }
    flood::assert_size_limits(addr, "/lorem/word/1/2", timeout);
    let (_, status) = server.terminate();
    assert!(status.success());
}

#[test]
fn out_of_file_descriptors_the_accept_loop_evicts_and_backs_off_without_spinning() {
    flood::need_open_files(1300);
    // A connection cap far above what `ulimit -n 64` allows: accept fails
    // with "too many open files" long before the cap.
    let mut server = start_with_open_files(
        64,
        &[
            "--max-connections",
            "1000",
            "--header-read-timeout",
            "3s",
            "--drain-delay",
            "0s",
        ],
    );
    let pid = server.pid();
    let cpu_before = flood::cpu_ticks(pid);
    let report = flood::hold_and_probe(
        server.addr(),
        pid,
        None,
        150,
        10,
        "/health",
        Duration::from_secs(6),
    );
    eprintln!("lorem-server (ulimit -n 64): {}", report.summary());
    for (status, took) in &report.probes {
        assert_eq!(*status, 200, "{}\n{}", report.summary(), server.log());
        assert!(*took < Duration::from_secs(1), "{}", report.summary());
    }
    let log = server.log();
    let episodes = log.matches("out of file descriptors accepting").count();
    let failures = log.matches("Too many open files").count();
    eprintln!(
        "descriptor-exhaustion episodes logged: {episodes}; lines naming the error: {failures}"
    );
    assert!(episodes >= 1, "the limit was hit: {log}");
    assert!(
        episodes <= 3,
        "logged once per episode, not per accept: {log}"
    );
    // No busy loop: the whole run (flood, probes, 3 s of waiting for the
    // header-read timeout) used well under a CPU second.
    let cpu = flood::cpu_ticks(pid).saturating_sub(cpu_before);
    eprintln!("lorem-server CPU during the run: {} ms", cpu * 10);
    assert!(cpu < 300, "{} ms of CPU: a busy loop? {log}", cpu * 10);
    let (_, status) = server.terminate();
    assert!(status.success(), "{status}: {}", server.log());
}
