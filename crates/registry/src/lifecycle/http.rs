//! The HTTP/1 server under the serve helper: our own accept loop on hyper,
//! because `axum::serve` exposes none of the knobs a server facing broken
//! or hostile clients needs.
//!
//! | concern                        | what [`HttpServer`] does                                                        |
//! |--------------------------------|---------------------------------------------------------------------------------|
//! | headers that never complete    | a connection must send a whole request head within the header-read timeout, counted from the accept or from the first byte after an idle spell, else it is closed |
//! | bodies that never complete     | once the head is in, a request body the handler reads must arrive within another header-read timeout, else the connection is closed; such a connection counts as header-pending for the eviction |
//! | idle keep-alive connections    | closed after the idle timeout                                                   |
//! | too many connections           | at [`HttpLimits::max_connections`] the oldest idle or header-pending (or body-pending) connection is closed for each new one (logged once per episode); while every connection is busy, new ones wait in the listen backlog |
//! | out of file descriptors        | `accept` failing with `EMFILE`/`ENFILE` closes the oldest idle connection and accepts again once it is closed; with none to close it backs off (10 ms, doubling to 1 s); logged once per episode: never a busy loop |
//! | a burst of connects            | [`bind`] asks for a listen backlog of [`LISTEN_BACKLOG`] (4096) instead of 1024, so that a burst does not overflow it while the accept loop catches up (an overflowed client waits 1 s for its SYN to be sent again) |
//! | large requests                 | a URI over [`HttpLimits::max_uri_bytes`] gets 414, headers over [`HttpLimits::max_header_bytes`] 431, a declared `Content-Length` over [`HttpLimits::max_body_bytes`] 413 before the body is read (and a body that grows past it 413 too); past hyper's own hard limit (64 KiB of head) hyper answers plainly |
//! | error answers                  | those above are JSON `{"error": "..."}`; a plain-text error answer of the router (axum's extractor rejections) is turned into the same JSON, with its status |
//! | shutdown                       | stops accepting, closes idle, header-pending and body-pending connections (and server-sent-event streams, below) at once, lets in-flight requests finish (their connections close after the answer), cuts what is left after the timeout |
//!
//! **Long-lived responses** (server-sent events, any streamed body) are
//! exempt from the idle timeout by construction: a connection is *busy*
//! from the moment its request head is parsed until its response body has
//! been sent to the end and dropped, and neither the idle timeout nor the
//! eviction ever touches a busy connection. A handler that streams needs no
//! marker. The flip side: a client that reads a response very slowly keeps
//! its connection busy (there is no write timeout).
//!
//! **Server-sent events at shutdown**: a response whose `Content-Type` is
//! `text/event-stream` never ends by itself, so the shutdown does not wait
//! for it: its connection is closed with the idle ones (an `EventSource`
//! reconnects on its own, to an instance that is still up). Any other
//! streamed body is waited for, up to the shutdown timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Service as _;

use super::LifecycleError;

/// The default time a client has to send a whole request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time an idle keep-alive connection stays open.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default largest request body, declared or sent: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// The default longest request URI (path and query): 8 KiB.
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
/// The default largest request header block (names, values and 4 bytes of
/// framing per header): 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most connections the automatic default allows, whatever the
/// open-file limit.
pub const MAX_CONNECTIONS_CEILING: usize = 10_000;

/// hyper's own hard limit on a request head (its read buffer): well above
/// ours, so that ours answer in JSON first.
const HYPER_MAX_BUF: usize = 64 * 1024;
/// How much of a plain-text error answer is kept as the JSON message.
const MAX_ERROR_TEXT: usize = 4 * 1024;
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The limits and timeouts of the connections of an [`HttpServer`] (and of
/// the serve helper, [`Lifecycle::http_limits`](super::Lifecycle::http_limits)).
/// See the [module documentation](self) for what each one does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpLimits {
    /// How long a client may take to send a whole request head, from the
    /// accept (or from the first byte after an idle spell).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// The most connections open at once; at the limit the oldest idle or
    /// header-pending one is closed for each new one.
    pub max_connections: usize,
    /// The largest request body, declared (refused before reading) or sent.
    pub max_body_bytes: u64,
    /// The longest request URI.
    pub max_uri_bytes: usize,
    /// The largest request header block.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    /// The `DEFAULT_*` constants, and [`default_max_connections`].
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// The default connection limit: three quarters of the process's soft
/// open-file limit (768 under `ulimit -n 1024`), at least 16 and at most
/// [`MAX_CONNECTIONS_CEILING`]; 768 where the limit cannot be read.
///
/// Why tied to the open-file limit: a connection is a file descriptor, and
/// a server that runs out of them can no longer accept anyone. The quarter
/// left over is for everything else (the registry's connections, logs,
/// outgoing requests of a gateway).
pub fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(limit) => usize::try_from(limit.saturating_mul(3) / 4)
            .unwrap_or(usize::MAX)
            .clamp(16, MAX_CONNECTIONS_CEILING),
        None => 768,
    }
}

/// Parses a header-read or idle timeout as users write it (`500ms`, `10s`,
/// `2m`): more than zero (zero would close every connection at once) and at
/// most a day. The value parser of the binaries' flags.
///
/// # Errors
/// A message naming the text.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let value = humantime::parse_duration(text.trim()).map_err(|error| {
        format!("{text:?} is not a duration ({error}); write it like 500ms, 10s or 2m")
    })?;
    if value.is_zero() {
        return Err("a connection timeout must be more than zero".to_owned());
    }
    if value > Duration::from_secs(24 * 3600) {
        return Err(format!("{text:?} is longer than a day"));
    }
    Ok(value)
}

/// The listen backlog [`bind`] asks for (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default on Linux since 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for an [`HttpServer`], with a listen backlog of
/// [`LISTEN_BACKLOG`] rather than the 1024 of `TcpListener::bind`.
///
/// Why: a burst of connections (a flood, a fleet of clients reconnecting
/// at once) larger than the backlog overflows it while the accept loop
/// catches up, and every overflowed client, legitimate ones included, waits
/// a whole second for its SYN to be retransmitted.
///
/// # Errors
/// If the address cannot be bound.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (no `unsafe` needed);
/// "unlimited" reads as `u64::MAX`.
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// An axum router served on a listener with [`HttpLimits`]: the accept loop
/// of the serve helper, usable on its own by a server that registers
/// nothing (the gateway). Dropping it stops it at once.
#[derive(Debug)]
#[must_use = "dropping an HttpServer stops it"]
pub struct HttpServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// `None` once stopped.
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Starts serving `router` on `listener`, in the background.
    ///
    /// # Errors
    /// If the listener's address cannot be read.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn spawn(
        listener: TcpListener,
        router: axum::Router,
        limits: HttpLimits,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            limits,
            table: Mutex::default(),
            open: watch::channel(0).0,
            stopping: watch::channel(false).0,
            next_id: AtomicU64::new(0),
            at_limit: AtomicBool::new(false),
            evicted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener, router));
        Ok(HttpServer {
            local_addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The limits it serves with.
    pub fn limits(&self) -> &HttpLimits {
        &self.shared.limits
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        *self.shared.open.borrow()
    }

    /// Stops gracefully: stops accepting, closes idle and header-pending
    /// connections at once, waits up to `timeout` for the requests in
    /// flight (each connection closes after its answer), then cuts what is
    /// left. Logs what it closed, waited for and cut.
    ///
    /// # Errors
    /// [`LifecycleError::ServeTask`] if the accept loop had panicked (the
    /// server is stopped all the same).
    pub async fn shutdown(mut self, timeout: Duration) -> Result<(), LifecycleError> {
        let Some(accept) = self.accept.take() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        let (idle, busy) = shared.census();
        shared.stopping.send_replace(true);
        // The loop sees the flag at once and drops the listener.
        let accepted = accept.await;
        if busy == 0 {
            tracing::info!(
                closed = idle,
                "no longer accepting connections; closed the idle ones; no request in flight"
            );
        } else {
            tracing::info!(closed = idle, in_flight = busy, timeout = ?timeout,
                "no longer accepting connections; closed the idle ones; finishing the requests in flight");
        }
        let mut open = shared.open.subscribe();
        let finished = tokio::time::timeout(timeout, open.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if !finished {
            let (idle, busy) = shared.census();
            shared.kill_all();
            tracing::warn!(in_flight = busy, other = idle, timeout = ?timeout,
                "requests still in flight after the shutdown timeout; cutting their connections");
            let _ = tokio::time::timeout(Duration::from_secs(1), open.wait_for(|n| *n == 0)).await;
        }
        accepted.map_err(|join| LifecycleError::ServeTask {
            reason: join.to_string(),
        })
    }

    /// Stops at once, cutting every connection. Returns how many were open.
    pub fn kill(mut self) -> usize {
        self.stop_now()
    }

    fn stop_now(&mut self) -> usize {
        let Some(accept) = self.accept.take() else {
            return 0;
        };
        self.shared.stopping.send_replace(true);
        accept.abort();
        self.shared.kill_all()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// What the accept loop and the connections share.
#[derive(Debug)]
struct Shared {
    limits: HttpLimits,
    table: Mutex<Table>,
    /// How many connections are open (accepted and not yet closed).
    open: watch::Sender<usize>,
    stopping: watch::Sender<bool>,
    next_id: AtomicU64,
    /// True from reaching the connection limit until well under it again:
    /// one "episode", logged once at its start and once at its end.
    at_limit: AtomicBool,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    killed: bool,
    conns: HashMap<u64, Arc<Conn>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update is a single insert, remove or flag: poisoning is harmless.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, unless the server was killed.
    fn insert(&self) -> Option<Arc<Conn>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            state: Mutex::new(ConnState {
                phase: Phase::HeaderPending,
                since: Instant::now(),
                in_flight: 0,
                event_streams: 0,
                bodies_pending: 0,
                body_since: Instant::now(),
                evicted: false,
            }),
            changed: Notify::new(),
            kill: Notify::new(),
        });
        {
            let mut table = self.lock();
            if table.killed {
                return None;
            }
            table.conns.insert(id, conn.clone());
        }
        self.open.send_modify(|n| *n += 1);
        Some(conn)
    }

    fn remove(&self, id: u64) {
        self.lock().conns.remove(&id);
        let mut now_open = 0;
        self.open.send_modify(|n| {
            *n = n.saturating_sub(1);
            now_open = *n;
        });
        // The episode ends well under the limit, so that a server hovering
        // at it does not log twice a second.
        let max = self.limits.max_connections;
        if now_open <= max - max / 4 && self.at_limit.swap(false, Ordering::Relaxed) {
            let evicted = self.evicted.swap(0, Ordering::Relaxed);
            tracing::info!(
                open = now_open,
                max_connections = max,
                evicted,
                "back under the connection limit"
            );
        }
    }

    /// Closes the oldest idle or header-pending connection not already
    /// being closed. False if every connection is busy.
    fn evict_oldest(&self) -> bool {
        let victim = {
            let table = self.lock();
            table
                .conns
                .values()
                .filter_map(|conn| {
                    let state = conn.state();
                    let since = match state.phase {
                        _ if state.evicted => return None,
                        Phase::Busy if state.bodies_pending > 0 => state.body_since,
                        Phase::Busy => return None,
                        Phase::HeaderPending | Phase::Idle => state.since,
                    };
                    Some((since, conn.clone()))
                })
                .min_by_key(|(since, _)| *since)
                .map(|(_, conn)| conn)
        };
        let Some(victim) = victim else {
            return false;
        };
        victim.state().evicted = true;
        victim.kill.notify_one();
        self.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Connections closed at once on shutdown (idle, header-pending,
    /// event streams), and busy ones (waited for), now.
    fn census(&self) -> (usize, usize) {
        let table = self.lock();
        let busy = table.conns.values().filter(|c| c.is_busy()).count();
        (table.conns.len() - busy, busy)
    }

    /// Cuts every connection, and any accepted from now on. Returns how
    /// many were open.
    fn kill_all(&self) -> usize {
        let mut table = self.lock();
        table.killed = true;
        for conn in table.conns.values() {
            conn.kill.notify_one();
        }
        table.conns.len()
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted, or sent a byte after an idle spell, and no whole request
    /// head yet: the header-read timeout runs.
    HeaderPending,
    /// A request is being answered (its response body not yet finished):
    /// no timeout, never evicted.
    Busy,
    /// Between requests: the idle timeout runs.
    Idle,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    state: Mutex<ConnState>,
    /// Wakes the connection's task to recompute its deadline.
    changed: Notify,
    /// Closes the connection (eviction, kill).
    kill: Notify,
}

#[derive(Debug)]
struct ConnState {
    phase: Phase,
    since: Instant,
    in_flight: usize,
    /// Of those, server-sent-event streams: not waited for at shutdown.
    event_streams: usize,
    /// Request bodies being received, and since when the oldest was
    /// awaited: the body-read deadline runs.
    bodies_pending: usize,
    body_since: Instant,
    evicted: bool,
}

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the current phase runs out, if it can.
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        let state = self.state();
        match state.phase {
            Phase::HeaderPending => Some(state.since + limits.header_read_timeout),
            Phase::Idle => Some(state.since + limits.idle_timeout),
            Phase::Busy if state.bodies_pending > 0 => {
                Some(state.body_since + limits.header_read_timeout)
            }
            Phase::Busy => None,
        }
    }

    /// A request body starts being awaited.
    fn body_started(&self) {
        let mut state = self.state();
        if state.bodies_pending == 0 {
            state.body_since = Instant::now();
        }
        state.bodies_pending += 1;
        drop(state);
        self.changed.notify_one();
    }

    /// A request body arrived whole, failed, or was dropped unread.
    fn body_ended(&self) {
        let mut state = self.state();
        state.bodies_pending = state.bodies_pending.saturating_sub(1);
        drop(state);
        self.changed.notify_one();
    }

    /// Busy with something the shutdown waits for: a request whose body
    /// has arrived (or that has none), other than a server-sent-event
    /// stream.
    fn is_busy(&self) -> bool {
        let state = self.state();
        state.phase == Phase::Busy
            && state.in_flight > state.event_streams
            && state.bodies_pending == 0
    }

    /// Bytes arrived: after an idle spell, a new request head begins.
    fn on_bytes(&self) {
        let mut state = self.state();
        if state.phase == Phase::Idle {
            state.phase = Phase::HeaderPending;
            state.since = Instant::now();
            drop(state);
            self.changed.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.phase = Phase::Busy;
        InFlight {
            conn: self.clone(),
            event_stream: false,
        }
    }
}

/// A request being answered; dropped with its response body.
#[derive(Debug)]
struct InFlight {
    conn: Arc<Conn>,
    event_stream: bool,
}

impl InFlight {
    /// Its answer is a server-sent-event stream.
    fn mark_event_stream(&mut self) {
        if !self.event_stream {
            self.event_stream = true;
            self.conn.state().event_streams += 1;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.conn.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if self.event_stream {
            state.event_streams = state.event_streams.saturating_sub(1);
        }
        if state.in_flight == 0 {
            state.phase = Phase::Idle;
            state.since = Instant::now();
            drop(state);
            self.conn.changed.notify_one();
        }
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    // EMFILE (24), ENFILE (23), ENOBUFS (105), ENOMEM (12) on Linux.
    matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, router: axum::Router) {
    let mut stopping = shared.stopping.subscribe();
    let mut open = shared.open.subscribe();
    let max = shared.limits.max_connections;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // Running out of file descriptors: when it started, how many accepts
    // failed, when the last one did. The episode ends at the first accept a
    // second after the last failure: a server at the descriptor limit fails
    // and succeeds in turn, and must not log each turn.
    let mut exhausted: Option<(Instant, u64, Instant)> = None;
    loop {
        // Room first: connections evicted for the last accepted ones close
        // within moments; while every connection is busy, new ones wait in
        // the listen backlog instead of being accepted and dropped.
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            room = open.wait_for(|n| *n <= max) => if room.is_err() { return },
        }
        let accepted = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                if let Some((since, failures, last)) = exhausted {
                    if last.elapsed() >= Duration::from_secs(1) {
                        exhausted = None;
                        tracing::info!(failed_accepts = failures, lasted = ?last - since,
                            "accepting connections again after running out of file descriptors");
                    }
                }
                backoff = ACCEPT_BACKOFF_MIN;
                let _ = stream.set_nodelay(true);
                let Some(conn) = shared.insert() else {
                    return;
                };
                if *shared.open.borrow() > max {
                    if !shared.at_limit.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            max_connections = max,
                            "connection limit reached: closing the oldest idle or header-pending \
                             connection for each new one (logged once until well under the limit)"
                        );
                    }
                    shared.evict_oldest();
                }
                tracing::trace!(%remote, "accepted");
                tokio::spawn(serve_connection(
                    shared.clone(),
                    conn,
                    stream,
                    router.clone(),
                ));
            }
            Err(error) if is_out_of_descriptors(&error) => {
                let episode = exhausted.get_or_insert_with(|| {
                    tracing::warn!(%error, open = *shared.open.borrow(),
                        "out of file descriptors accepting a connection: closing the oldest idle \
                         connection for each new one and backing off (logged once until accepts \
                         have worked for a second)");
                    (Instant::now(), 0, Instant::now())
                });
                episode.1 += 1;
                episode.2 = Instant::now();
                let before = *shared.open.borrow();
                if shared.evict_oldest() {
                    // Accept again as soon as the evicted connection has
                    // given its descriptor back (within moments): no sleep,
                    // and no spin either, since each turn closes one.
                    tokio::select! {
                        _ = stopping.wait_for(|stop| *stop) => return,
                        _ = tokio::time::timeout(
                            ACCEPT_BACKOFF_MAX,
                            open.wait_for(|n| *n < before),
                        ) => {}
                    }
                } else {
                    tokio::select! {
                        _ = stopping.wait_for(|stop| *stop) => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%error, "a connection failed before it was accepted");
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "accept failed");
                tokio::select! {
                    _ = stopping.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Serves one connection until it ends, times out, is evicted or killed,
/// or the server stops (at once if it is not busy, after its answer if it is).
async fn serve_connection(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    stream: TcpStream,
    router: axum::Router,
) {
    // Counted out however the task ends, a panic in a handler included:
    // a connection that stayed counted would hold a place under the cap for
    // ever.
    let _counted = Counted {
        shared: shared.clone(),
        id: conn.id,
    };
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let service = {
        let shared = shared.clone();
        let conn = conn.clone();
        hyper::service::service_fn(move |request| {
            handle(shared.clone(), conn.clone(), router.clone(), request)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .max_buf_size(HYPER_MAX_BUF)
        // Ours (in the loop below) covers the head and the idle spell.
        .header_read_timeout(None);
    // Boxed so that it can be dropped (closing the socket) before the
    // connection is counted out.
    // With upgrades, as `axum::serve` (WebSocket routes work; an upgraded
    // connection leaves the server's count once handed over).
    let mut connection = Box::pin(builder.serve_connection(io, service).with_upgrades());
    let mut stopping = shared.stopping.subscribe();
    let mut graceful = false;
    let far = Duration::from_secs(24 * 3600);
    loop {
        let deadline = conn
            .deadline(&shared.limits)
            .unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = conn.kill.notified() => break,
            () = conn.changed.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                if conn.deadline(&shared.limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(phase = ?conn.state().phase, "closing a connection past its timeout");
                    break;
                }
            }
            _ = stopping.wait_for(|stop| *stop), if !graceful => {
                graceful = true;
                if !conn.is_busy() {
                    break;
                }
                // Answer the request in flight, then close.
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    // Dropping the connection closes the socket, before `_counted` counts
    // it out.
    drop(connection);
}

/// Counts a connection out of its server when dropped.
struct Counted {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.remove(self.id);
    }
}

/// Answers one request: our own limits first, then the router, with
/// plain-text error answers turned into JSON.
async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    mut router: axum::Router,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut in_flight = conn.begin_request();
    let limits = &shared.limits;
    let response = match refuse(&request, limits) {
        Some(response) => response,
        None => {
            let max = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
            let request = request.map(|body| {
                if http_body::Body::is_end_stream(&body) {
                    Body::new(Limited::new(body, max))
                } else {
                    Body::new(Pending::new(Limited::new(body, max), conn.clone()))
                }
            });
            let response = match router.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            json_errors(response).await
        }
    };
    if is_event_stream(response.headers()) {
        in_flight.mark_event_stream();
    }
    Ok(response.map(|body| {
        Body::new(Tracked {
            inner: body,
            _in_flight: in_flight,
        })
    }))
}

/// The JSON error answer `{"error": message}`.
fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer to a request past our limits, before anything reads its body.
fn refuse<B>(request: &Request<B>, limits: &HttpLimits) -> Option<Response<Body>> {
    let uri = request.uri();
    let uri_bytes = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_bytes > limits.max_uri_bytes {
        return Some(json_error(
            StatusCode::URI_TOO_LONG,
            &format!(
                "the request URI is {uri_bytes} bytes long; at most {} are accepted",
                limits.max_uri_bytes
            ),
        ));
    }
    let header_bytes = header_bytes(request.headers());
    if header_bytes > limits.max_header_bytes {
        return Some(json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!(
                "the request headers take {header_bytes} bytes; at most {} are accepted",
                limits.max_header_bytes
            ),
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(declared) = declared.filter(|n| *n > limits.max_body_bytes) {
        let mut response = json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the request body declares {declared} bytes; at most {} are accepted",
                limits.max_body_bytes
            ),
        );
        // The body is not read: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(response);
    }
    None
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
        })
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
}

fn is_plain_or_untyped(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(value) => value
            .to_str()
            .is_ok_and(|v| v.trim_start().starts_with("text/plain")),
    }
}

/// A plain-text (or untyped) error answer of the router, as JSON with the
/// same status and headers: what axum's own rejections (a body too large,
/// a missing content type) look like to a client that expects JSON.
async fn json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_json(response.headers())
        || !is_plain_or_untyped(response.headers())
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match Limited::new(body, MAX_ERROR_TEXT).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let json = json_error(status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
}

/// A response body that keeps its connection busy until it is dropped.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body being received: its connection's body-read deadline
/// runs until it ends, fails or is dropped.
struct Pending {
    inner: Limited<Incoming>,
    /// `None` once ended.
    conn: Option<Arc<Conn>>,
}

impl Pending {
    fn new(inner: Limited<Incoming>, conn: Arc<Conn>) -> Self {
        conn.body_started();
        Pending {
            inner,
            conn: Some(conn),
        }
    }

    fn end(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.body_ended();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.end();
    }
}

impl http_body::Body for Pending {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.end();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An accepted stream that tells its connection when bytes arrive.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_bytes();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
