//! Hostile clients for the HTTP-hardening tests of `lorem-server` and the
//! gateway: many idle or half-sent connections held against a server, new
//! requests timed while they are held, the server's memory, and the
//! open-file limit the flooding process itself needs.
//!
//! Everything is loopback only and bounded in count and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server process under test (`lorem-server`, the gateway), SIGKILLed
/// if the test ends before it exits, with its stderr captured.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Spawns `command` (stdin and stdout closed, stderr captured) and
    /// waits, up to 20 s, for `GET /health` on `addr` to answer 200.
    ///
    /// # Panics
    /// If it cannot be spawned or never answers (quoting its log).
    pub fn start(name: &str, mut command: Command, addr: SocketAddr) -> ServerProcess {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let server = ServerProcess {
            name: name.to_owned(),
            child,
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(
            get(addr, "/health", Duration::from_secs(1)),
            Ok((200, _, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "{name} never answered on {addr}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit: how long it took,
    /// and the status.
    ///
    /// # Panics
    /// If it does not exit within 20 s (quoting its log).
    pub fn terminate(&mut self) -> (Duration, ExitStatus) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {} failed", self.child.id());
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (started.elapsed(), status);
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} did not exit within 20 s of SIGTERM: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Raises this process's open-file limit to at least `want` (see
/// [`raise_open_file_limit`]), or panics saying how to allow it.
pub fn need_open_files(want: u64) {
    let soft = raise_open_file_limit(want.max(4096));
    assert!(
        soft >= want,
        "this test holds many connections and needs an open-file limit of at least {want} \
         (it is {soft}); raise the hard limit (ulimit -Hn) of the test run"
    );
}

/// `GET path` on a new keep-alive connection, its answer read; returns the
/// status and the connection, left open (idle).
///
/// # Panics
/// If no whole answer comes within 5 s.
pub fn keep_alive_get(addr: SocketAddr, path: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                return (status, stream);
            }
        }
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed before a whole answer: {text}");
        data.extend_from_slice(&buf[..n]);
    }
}

/// The size limits every server on the hardened accept loop answers the
/// same way, asserted against the server at `addr`: a URI over 8 KiB ->
/// JSON 414, headers over 16 KiB -> JSON 431, a declared 10 GB body to
/// `post_path` (never sent) -> JSON 413 naming the size within 1 s, a head
/// past hyper's own hard limit answered or closed without hanging, and the
/// server still serving `/health` afterwards.
///
/// # Panics
/// On any answer other than those (it is a test helper).
pub fn assert_size_limits(addr: SocketAddr, post_path: &str, timeout: Duration) {
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (
            414,
            format!(
                "GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "q".repeat(9000)
            )
            .into_bytes(),
        ),
        (
            431,
            format!(
                "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "h".repeat(20_000)
            )
            .into_bytes(),
        ),
    ];
    for (want, request) in cases {
        let (status, head, body) = raw(addr, &request, timeout).expect("an answer");
        assert_eq!(status, want, "{head}\n{body}");
        json_error(status, &head, &body);
    }
    // A declared 10 GB body, never sent: refused at once, before reading it.
    let started = Instant::now();
    let request =
        format!("POST {post_path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n");
    let (status, head, body) = raw(addr, request.as_bytes(), timeout).expect("an answer");
    assert_eq!(status, 413, "{head}\n{body}");
    assert!(
        json_error(status, &head, &body).contains("10000000000"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Past hyper's own hard limit (64 KiB of head) a plain answer or a
    // closed connection is fine; what matters is that it does not hang.
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(100_000)
    );
    let started = Instant::now();
    let _ = raw(addr, huge.as_bytes(), timeout);
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    // And the server still serves.
    assert!(matches!(get(addr, "/health", timeout), Ok((200, _, _))));
}

/// The `error` string of a JSON error answer.
///
/// # Panics
/// If `body` is not JSON with an `error` string (quoting the answer).
pub fn json_error(status: u16, head: &str, body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {head}\n{body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {body}"))
        .to_owned()
}

/// The CPU time (user + system) process `pid` has used, in clock ticks
/// (1/100 s on Linux); 0 where it cannot be read.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rfind(')').and_then(|at| stat.get(at + 2..)) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

/// Raises this process's soft open-file limit to `want` (or to the hard
/// limit, if lower; as root the hard limit is raised too). Returns the soft
/// limit now in force. A test that holds more connections than the usual
/// `ulimit -n 1024` calls it first.
pub fn raise_open_file_limit(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < want {
        // Only root may raise the hard limit; try, and fall back below.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        );
    }
    let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want.min(hard)),
            maximum: Some(hard),
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A command running `bin` under an open-file limit of `nofile` (soft and
/// hard), the way an operator's `ulimit -n` would: through `sh -c 'ulimit
/// -n N && exec ...'`, so the process under test needs no code of its own
/// for it. Add arguments with [`Command::arg`](std::process::Command::arg).
pub fn command_with_open_file_limit(bin: &str, nofile: u64) -> std::process::Command {
    let mut command = std::process::Command::new("sh");
    command.args([
        "-c",
        &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
        bin,
    ]);
    command
}

/// The resident memory of process `pid`, in KiB (`VmRSS` of
/// `/proc/PID/status`); `None` where it cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How a flood connection misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Connects and sends nothing.
    Silent,
    /// Sends the start of a request head and never finishes it.
    HalfSent,
    /// Sends a whole `POST` head declaring a 100-byte body, and 3 bytes of it.
    HalfSentBody,
}

/// Connections held open against a server; dropping it closes them.
#[derive(Debug)]
pub struct Flood {
    /// The connections that were opened.
    pub streams: Vec<TcpStream>,
    /// Connects that failed or timed out (the listen backlog full...).
    pub failed: usize,
}

impl Flood {
    /// Opens up to `count` connections to `addr`, in turn silent, with a
    /// half-sent head and (with `post_path`) with a half-sent body to that
    /// path, each connect bounded by 1 s and the whole flood by `within`.
    pub fn open(
        addr: SocketAddr,
        count: usize,
        within: Duration,
        post_path: Option<&str>,
    ) -> Flood {
        let kinds: &[Hostile] = if post_path.is_some() {
            &[Hostile::Silent, Hostile::HalfSent, Hostile::HalfSentBody]
        } else {
            &[Hostile::Silent, Hostile::HalfSent]
        };
        let post = format!(
            "POST {} HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"r",
            post_path.unwrap_or("/")
        );
        let deadline = Instant::now() + within;
        let mut streams = Vec::with_capacity(count);
        let mut failed = 0;
        for i in 0..count {
            if Instant::now() > deadline {
                failed += count - i;
                break;
            }
            let kind = kinds[i % kinds.len()];
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut stream) => {
                    let _ = match kind {
                        Hostile::Silent => Ok(()),
                        Hostile::HalfSent => {
                            stream.write_all(b"GET /health HTTP/1.1\r\nHost: flood\r\nX-Slow: ")
                        }
                        Hostile::HalfSentBody => stream.write_all(post.as_bytes()),
                    };
                    streams.push(stream);
                }
                Err(_) => failed += 1,
            }
        }
        Flood { streams, failed }
    }

    /// How many of the held connections the server has closed (a read
    /// sees the end of the stream or an error), checking each for at most
    /// `wait`.
    pub fn closed_by_server(&mut self, wait: Duration) -> usize {
        let mut closed = 0;
        let mut buf = [0u8; 512];
        for stream in &mut self.streams {
            let _ = stream.set_read_timeout(Some(wait));
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        closed += 1;
                        break;
                    }
                    // An answer (408, 400...): read on to the end.
                    Ok(_) => continue,
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(_) => {
                        closed += 1;
                        break;
                    }
                }
            }
        }
        closed
    }
}

/// One request on a new connection: `GET path` with `Connection: close`,
/// bounded by `timeout`. Returns the status and the body, and how long the
/// whole exchange took.
///
/// # Errors
/// A message saying what failed (connect, write, read, a timeout).
pub fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String, Duration), String> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: legit\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read after {:?}: {e}", started.elapsed()))?;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body, elapsed))
}

/// Sends `raw` (a whole request, head and any body) on a new connection
/// and returns the status, the head and the body of the answer, bounded by
/// `timeout`. For requests a client library would refuse to send.
///
/// # Errors
/// A message saying what failed.
pub fn raw(
    addr: SocketAddr,
    raw: &[u8],
    timeout: Duration,
) -> Result<(u16, String, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    stream.write_all(raw).map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the head and the Content-Length of body are in, or the end.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if answer.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// What [`hold_and_probe`] saw.
#[derive(Debug, Clone)]
pub struct FloodReport {
    /// Flood connections opened, and connects that failed.
    pub opened: usize,
    /// Connects of the flood that failed or timed out.
    pub connect_failed: usize,
    /// How long opening the flood took.
    pub flood_took: Duration,
    /// Each probe (a new `GET` while the flood is held): its status (0 if
    /// it failed) and how long it took.
    pub probes: Vec<(u16, Duration)>,
    /// The server's RSS before the flood, while it is held, and 1 s after
    /// it was let go, in KiB.
    pub rss_kib: [Option<u64>; 3],
    /// Flood connections the server closed by itself, checked after the
    /// probes (each waited for up to `close_wait`).
    pub closed_by_server: usize,
}

impl FloodReport {
    /// The slowest probe.
    pub fn slowest(&self) -> Duration {
        self.probes
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    }

    /// One line for the test's output.
    pub fn summary(&self) -> String {
        let mb =
            |k: Option<u64>| k.map_or("?".to_owned(), |k| format!("{:.1} MB", k as f64 / 1024.0));
        let mut latencies: Vec<Duration> = self.probes.iter().map(|(_, d)| *d).collect();
        latencies.sort_unstable();
        let median = latencies
            .get(latencies.len() / 2)
            .copied()
            .unwrap_or_default();
        format!(
            "flood: {} connections held ({} connects failed, opened in {:?}); probes answered 200: {}/{} \
             (median {:?}, slowest {:?}); RSS before {}, during {}, after {}; \
             closed by the server after the probes: {}",
            self.opened,
            self.connect_failed,
            self.flood_took,
            self.probes.iter().filter(|(s, _)| *s == 200).count(),
            self.probes.len(),
            median,
            self.slowest(),
            mb(self.rss_kib[0]),
            mb(self.rss_kib[1]),
            mb(self.rss_kib[2]),
            self.closed_by_server,
        )
    }
}

/// Holds `count` idle and half-sent connections against the server at
/// `addr` (process `pid`; half-sent bodies go to `post_path`), sends `probes` new `GET probe_path` requests one
/// after the other meanwhile (each bounded by 1 s), checks how many flood
/// connections the server closes by itself (each waited for up to
/// `close_wait`), then lets the flood go. Bounded: the flood by 20 s, the
/// probes by 1 s each, the close check by `close_wait` per connection still
/// open.
pub fn hold_and_probe(
    addr: SocketAddr,
    pid: u32,
    post_path: Option<&str>,
    count: usize,
    probes: usize,
    probe_path: &str,
    close_wait: Duration,
) -> FloodReport {
    let rss_before = rss_kib(pid);
    let started = Instant::now();
    let mut flood = Flood::open(addr, count, Duration::from_secs(20), post_path);
    let flood_took = started.elapsed();
    // Let the server take in the whole backlog.
    std::thread::sleep(Duration::from_millis(300));
    let mut answers = Vec::with_capacity(probes);
    for _ in 0..probes {
        let answer = match get(addr, probe_path, Duration::from_secs(1)) {
            Ok((status, _, took)) => (status, took),
            Err(_) => (0, Duration::from_secs(1)),
        };
        answers.push(answer);
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_during = rss_kib(pid);
    let closed_by_server = flood.closed_by_server(close_wait);
    let opened = flood.streams.len();
    let connect_failed = flood.failed;
    drop(flood);
    std::thread::sleep(Duration::from_secs(1));
    FloodReport {
        opened,
        connect_failed,
        flood_took,
        probes: answers,
        rss_kib: [rss_before, rss_during, rss_kib(pid)],
        closed_by_server,
    }
}
