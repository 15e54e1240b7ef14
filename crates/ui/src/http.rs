//! The page's routes: the static page, its script and style (embedded in
//! the binary), the state as JSON, and the state as a Server-Sent Events
//! stream. Read-only: every route is a `GET`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::WatchStream;

use crate::hub::Hub;

/// The page, its script and its style, as written in `assets/`.
const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// How often an idle event stream sends a comment line, so that proxies
/// and idle timeouts see it alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How many event streams may be open at once; more get 503 (each costs a
/// task and a socket, never a registry call).
pub const MAX_VIEWERS: usize = 256;

/// What the browser may do with our pages: run our own script and style
/// only (no inline script, no event-handler attributes, no external
/// images), so that even a registry string that slipped into markup could
/// not run. The script never puts registry strings into markup anyway.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Ends every event stream of a page, so that a graceful shutdown of the
/// server (which waits for open connections) is not held up by pages left
/// open: call [`close`](Self::close) when the shutdown begins. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Closer(Arc<watch::Sender<bool>>);

impl Closer {
    /// Ends the event streams open now and refuses new ones (the browsers
    /// retry, and find the server gone).
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

#[derive(Clone)]
struct Page {
    hub: Hub,
    heartbeat: Duration,
    closing: watch::Receiver<bool>,
    viewers: Arc<Semaphore>,
    /// Stops the feed when the last clone of the router goes.
    _feed: Arc<AbortOnDrop>,
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The routes of the page over `hub`; `feed` is the task that fills the
/// hub, stopped when the router (all its clones) is dropped.
pub(crate) fn router(hub: Hub, feed: AbortOnDrop) -> (Router, Closer) {
    router_with(hub, feed, HEARTBEAT)
}

/// [`router`] with another heartbeat interval (tests).
fn router_with(hub: Hub, feed: AbortOnDrop, heartbeat: Duration) -> (Router, Closer) {
    let (closer, closing) = watch::channel(false);
    let router = Router::new()
        .route("/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
        .route("/ui/state", get(state))
        .route("/ui/events", get(events))
        .with_state(Page {
            hub,
            heartbeat,
            closing,
            viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
            _feed: Arc::new(feed),
        });
    (router, Closer(Arc::new(closer)))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn state(State(page): State<Page>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.hub.current().to_string(),
    )
        .into_response()
}

/// `text/event-stream`: one `state` event with the whole state at once and
/// at every change, a comment every [`HEARTBEAT`] in between.
async fn events(State(page): State<Page>) -> Response {
    let mut closing = page.closing.clone();
    if *closing.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the server is stopping").into_response();
    }
    let Ok(permit) = page.viewers.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many viewers (at most {MAX_VIEWERS}); close another page and retry"),
        )
            .into_response();
    };
    let stream = WatchStream::new(page.hub.subscribe()).map(move |json| {
        // The permit lives as long as the stream.
        let _held = &permit;
        Ok::<_, Infallible>(Event::default().event("state").data(&*json))
    });
    let closed = async move {
        let _ = closing.wait_for(|closed| *closed).await;
    };
    sse(stream.take_until(closed), page.heartbeat)
}

fn sse(
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    heartbeat: Duration,
) -> Response {
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Reads from `stream` until `text` has come (or the stream ends, or
    /// 5 s pass); returns everything read.
    async fn read_until(stream: &mut TcpStream, seen: &mut String, text: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 8192];
        while !seen.contains(text) {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return false,
            }
        }
        true
    }

    #[tokio::test]
    async fn the_event_stream_sends_the_state_heartbeats_and_ends_on_close() {
        let hub = Hub::new("test page", "registry");
        let feed = AbortOnDrop(tokio::spawn(async {}));
        let (router, closer) = router_with(hub.clone(), feed, Duration::from_millis(100));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });

        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /ui/events HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut seen = String::new();
        assert!(
            read_until(&mut stream, &mut seen, "\"title\":\"test page\"").await,
            "{seen}"
        );
        assert!(seen.contains("content-type: text/event-stream"), "{seen}");
        assert!(seen.contains("event: state\ndata: {"), "{seen}");
        hub.instances(
            "lorem",
            &[registry::Instance::new("lorem", "a", "127.0.0.1", 1)],
        );
        assert!(
            read_until(&mut stream, &mut seen, "\"kind\":\"added\"").await,
            "a change is pushed: {seen}"
        );
        assert!(
            read_until(&mut stream, &mut seen, "heartbeat\n").await,
            "a heartbeat while nothing changes: {seen}"
        );
        assert_eq!(hub.viewers(), 1, "this viewer");

        closer.close();
        // The chunked body ends with a zero-length chunk.
        assert!(
            read_until(&mut stream, &mut seen, "\r\n0\r\n\r\n").await,
            "the stream ends on close: {seen}"
        );
        server.abort();
    }
}
