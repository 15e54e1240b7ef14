//! `registry::lifecycle::HttpServer`, the serve helper's accept loop, against
//! raw loopback connections: its timeouts, its connection cap, its size
//! limits and JSON error answers, and a shutdown with idle connections.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use registry::lifecycle::{HttpLimits, HttpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Ten chunks, 150 ms apart: longer than the idle timeout below.
fn chunks() -> Body {
    Body::from_stream(futures::stream::unfold(0u32, |n| async move {
        if n == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("data: {n}\n\n"))),
            n + 1,
        ))
    }))
}

fn router() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/panic",
            get(|| async {
                panic!("a handler bug");
                #[allow(unreachable_code)]
                ""
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/events",
            get(|| async { ([("content-type", "text/event-stream")], chunks()) }),
        )
        .route(
            "/download",
            get(|| async { ([("content-type", "application/octet-stream")], chunks()) }),
        )
}

fn limits() -> HttpLimits {
    let mut limits = HttpLimits::default();
    limits.header_read_timeout = Duration::from_millis(500);
    limits.idle_timeout = Duration::from_millis(700);
    limits.max_body_bytes = 1000;
    limits.max_uri_bytes = 200;
    limits.max_header_bytes = 500;
    limits
}

async fn start(limits: HttpLimits) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    HttpServer::spawn(listener, router(), limits).expect("spawn")
}

/// One HTTP/1.1 answer: status, head, body (by Content-Length or chunked
/// until the end of the stream).
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status: u16 = head[9..12].parse().expect("status");
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0);
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..]).to_string();
    (status, head, body)
}

async fn request(stream: &mut TcpStream, raw: &str) -> (u16, String, String) {
    stream.write_all(raw.as_bytes()).await.expect("write");
    read_response(stream).await
}

/// Waits (up to `within`) for the server to close `stream`; returns when.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {within:?}"),
        }
    }
}

fn error_of(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    value["error"].as_str().expect("an error string").to_owned()
}

#[tokio::test]
async fn half_sent_headers_are_closed_after_the_header_read_timeout() {
    let server = start(limits()).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let after = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        after >= Duration::from_millis(400),
        "closed too early: {after:?}"
    );
    // A silent connection too.
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(3)).await;
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_body_that_never_completes_is_closed_after_the_header_read_timeout() {
    let server = start(limits()).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let after = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        after >= Duration::from_millis(400),
        "closed too early: {after:?}"
    );
    // A body sent in time is answered, and the connection stays usable.
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"defghij").await.unwrap();
    let (status, _, body) = read_response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "abcdefghij"));
    let (status, _, _) = request(&mut stream, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let server = start(limits()).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    // Two requests on one connection, slower than the header timeout apart
    // but within the idle timeout: the idle spell is not a header wait.
    let (status, _, body) = request(&mut stream, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _, _) = request(&mut stream, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let after = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(
        after >= Duration::from_millis(600),
        "closed too early: {after:?}"
    );
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_streamed_response_outlives_the_idle_timeout() {
    let server = start(limits()).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all))
        .await
        .expect("the stream ends within 5 s")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("data: 0") && text.contains("data: 9"),
        "{text}"
    );
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let mut limits = limits();
    limits.max_connections = 3;
    limits.idle_timeout = Duration::from_secs(30);
    limits.header_read_timeout = Duration::from_secs(30);
    let server = start(limits).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        let (status, _, _) = request(&mut stream, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200);
        idle.push(stream);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut newcomer = TcpStream::connect(server.local_addr()).await.unwrap();
    let (status, _, _) = request(&mut newcomer, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    // The oldest went; the two others still answer.
    closed_within(&mut idle[0], Duration::from_secs(2)).await;
    for stream in &mut idle[1..] {
        let (status, _, _) = request(stream, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200);
    }
    assert!(server.open_connections() <= 4);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn oversized_requests_get_json_errors_before_the_body_is_read() {
    let server = start(limits()).await;
    let addr = server.local_addr();

    // A declared 10 GB body, never sent: 413 at once.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (status, head, body) = request(
        &mut stream,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{head}{body}");
    assert!(error_of(&body).contains("10000000000"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A chunked body that grows past the limit: 413, JSON too.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let chunk = "x".repeat(1500);
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (status, head, body) = request(&mut stream, &raw).await;
    assert_eq!(status, 413, "{head}{body}");
    error_of(&body);

    // A URI and headers past our limits: 414 and 431.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw = format!("GET /hello?{} HTTP/1.1\r\nHost: x\r\n\r\n", "q".repeat(300));
    let (status, _, body) = request(&mut stream, &raw).await;
    assert_eq!(status, 414);
    assert!(error_of(&body).contains("URI"), "{body}");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(600)
    );
    let (status, _, body) = request(&mut stream, &raw).await;
    assert_eq!(status, 431);
    assert!(error_of(&body).contains("headers"), "{body}");

    // The router's own plain errors (unknown route, wrong method) as JSON.
    let (status, _, body) = request(&mut stream, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 404);
    error_of(&body);
    let (status, head, body) =
        request(&mut stream, "DELETE /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow:"), "{head}");
    error_of(&body);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_event_streams_at_once_and_finishes_busy_ones() {
    let server = start(limits()).await;
    let addr = server.local_addr();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (status, _, _) = request(&mut idle, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let mut pending = TcpStream::connect(addr).await.unwrap();
    pending.write_all(b"GET /hel").await.unwrap();
    let mut body_pending = TcpStream::connect(addr).await.unwrap();
    body_pending
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut events = TcpStream::connect(addr).await.unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let stop = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    closed_within(&mut idle, Duration::from_millis(300)).await;
    closed_within(&mut pending, Duration::from_millis(300)).await;
    // A request whose body is still arriving was not processed: cut too.
    closed_within(&mut body_pending, Duration::from_millis(300)).await;
    // A server-sent-event stream is not waited for.
    closed_within(&mut events, Duration::from_millis(300)).await;
    // The download in flight is answered to its end, then closed.
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut all))
        .await
        .expect("the busy connection ends")
        .expect("read");
    assert!(String::from_utf8_lossy(&all).contains("data: 9"));
    stop.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_panicking_handler_gives_its_place_under_the_cap_back() {
    let mut limits = limits();
    limits.max_connections = 2;
    let server = start(limits).await;
    for _ in 0..5 {
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        stream
            .write_all(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        closed_within(&mut stream, Duration::from_secs(3)).await;
    }
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let (status, _, _) = request(&mut stream, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.open_connections(), 0);
    server.shutdown(Duration::from_secs(1)).await.unwrap();
}
