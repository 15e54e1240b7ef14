//! The serve helper for axum: the listener's accept loop and the
//! `axum::serve` call, with the registration around them.
//!
//! Connection-level options (limits, header timeouts) belong here, on the
//! [`Lifecycle`] builder that configures this server.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Handle, Lifecycle, LifecycleError, Readiness};
use crate::{Instance, Registrar};

/// An axum server with its registration: what
/// [`Lifecycle::spawn`] returns, and what [`Lifecycle::serve`] runs.
///
/// | call                        | registry                   | HTTP                                                  |
/// |-----------------------------|----------------------------|-------------------------------------------------------|
/// | [`shutdown`](Self::shutdown) | deregistered first        | serves the drain delay more, stops accepting, finishes in-flight requests (up to the shutdown timeout), then cuts what is left |
/// | [`shutdown_with`](Self::shutdown_with) | deregistered first | as `shutdown`, but the drain ends as soon as the given future completes |
/// | [`crash`](Self::crash)      | left to expire (TTL)       | stops at once; open connections are cut               |
/// | dropping it                 | deregistered (best effort) | stops at once                                         |
#[must_use = "dropping a Server stops it"]
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    handle: Handle,
    shutdown_timeout: Duration,
    /// `None` once stopped.
    http: Option<Http>,
}

#[derive(Debug)]
struct Http {
    serve: JoinHandle<io::Result<()>>,
    stop_serving: oneshot::Sender<()>,
    connections: Arc<Connections>,
}

impl<R: Registrar + 'static> Lifecycle<R> {
    /// Serves `router` on `listener`, and only then registers the instance
    /// in the background (retrying with backoff while the registry is
    /// down). Returns at once; stop it through the returned [`Server`].
    ///
    /// # Errors
    /// [`LifecycleError::Serve`] if the listener's address cannot be read.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the server and the registration).
    pub fn spawn(
        self,
        listener: TcpListener,
        router: axum::Router,
    ) -> Result<Server, LifecycleError> {
        let local_addr = listener
            .local_addr()
            .map_err(|source| LifecycleError::Serve { source })?;
        let connections = Arc::new(Connections::default());
        let tracked = TrackedListener {
            listener,
            connections: connections.clone(),
        };
        let (stop_serving, stop_serving_rx) = oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            axum::serve(tracked, router)
                .with_graceful_shutdown(async move {
                    let _ = stop_serving_rx.await;
                })
                .await
        });
        let shutdown_timeout = self.shutdown_timeout;
        Ok(Server {
            local_addr,
            handle: self.start(),
            shutdown_timeout,
            http: Some(Http {
                serve,
                stop_serving,
                connections,
            }),
        })
    }

    /// The whole life of an axum server in one call: [`spawn`](Self::spawn),
    /// wait for `shutdown` (typically [`shutdown_signal`](super::shutdown_signal)),
    /// then [`Server::shutdown`]: deregister, drain, stop.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn) and [`Server::shutdown`].
    pub async fn serve<F>(
        self,
        listener: TcpListener,
        router: axum::Router,
        shutdown: F,
    ) -> Result<(), LifecycleError>
    where
        F: Future<Output = ()> + Send,
    {
        let server = self.spawn(listener, router)?;
        shutdown.await;
        server.shutdown().await
    }
}

impl Server {
    /// The address the server is bound to (with the real port if it was
    /// bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The instance as registered (or as it will be once the registry
    /// answers).
    pub fn instance(&self) -> &Instance {
        self.handle.instance()
    }

    /// True while the registry holds our registration: see
    /// [`Handle::is_registered`].
    pub fn is_registered(&self) -> bool {
        self.handle.is_registered()
    }

    /// The registration state as a cheap clone, for a readiness route.
    pub fn readiness(&self) -> Readiness {
        self.handle.readiness()
    }

    /// Stops gracefully: deregisters (errors are logged), keeps serving for
    /// the drain delay so clients see the change, stops accepting, and waits
    /// up to the shutdown timeout for in-flight requests; connections still
    /// open after that are cut.
    ///
    /// # Errors
    /// [`LifecycleError::Serve`] or [`LifecycleError::ServeTask`] if the
    /// HTTP server had failed, [`LifecycleError::RegistrationTask`] if the
    /// registration task had died (the server is stopped all the same; the
    /// HTTP server's failure is reported first).
    pub async fn shutdown(self) -> Result<(), LifecycleError> {
        self.shutdown_with(std::future::pending()).await
    }

    /// [`shutdown`](Self::shutdown), except that the drain ends early when
    /// `end_drain` completes: an operator's second signal ("stop now"), or a
    /// test that has seen what it needed of the drain.
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub async fn shutdown_with<F>(mut self, end_drain: F) -> Result<(), LifecycleError>
    where
        F: Future<Output = ()> + Send,
    {
        let Some(http) = self.http.take() else {
            return Ok(());
        };
        let supervisor = self.handle.deregister().await;
        self.handle.drain(end_drain).await;

        let id = self.handle.instance().id.clone();
        tracing::info!(%id, "no longer accepting connections; finishing in-flight requests");
        let _ = http.stop_serving.send(());
        let mut serve = http.serve;
        let result = match tokio::time::timeout(self.shutdown_timeout, &mut serve).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(LifecycleError::Serve { source }),
            Ok(Err(join)) => Err(LifecycleError::ServeTask {
                reason: join.to_string(),
            }),
            Err(_) => {
                let cut = http.connections.kill();
                tracing::warn!(%id, timeout = ?self.shutdown_timeout, connections = cut,
                    "in-flight requests did not finish in time; cutting their connections");
                serve.abort();
                let _ = serve.await;
                Ok(())
            }
        };
        let registration = match supervisor {
            Some(supervisor) => supervisor.finish().await,
            None => Ok(()),
        };
        match (&result, &registration) {
            (Ok(()), Ok(())) => tracing::info!(%id, "server stopped"),
            _ => tracing::error!(%id, "server stopped after a task failure"),
        }
        result.and(registration)
    }

    /// Simulates a crash: stops the registration's keep-alive without
    /// deregistering (the instance stays listed until its TTL runs out) and
    /// stops the HTTP server at once, cutting open connections.
    pub fn crash(mut self) {
        let Some(http) = self.http.take() else {
            return;
        };
        tracing::warn!(id = %self.handle.instance().id, "simulating a crash: no deregistration, connections cut");
        self.handle.abandon_now();
        http.connections.kill();
        http.serve.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(http) = self.http.take() else {
            return;
        };
        tracing::info!(id = %self.handle.instance().id, "server dropped; stopping at once");
        // The handle, dropped with the server, deregisters on a best-effort
        // basis.
        http.connections.kill();
        http.serve.abort();
    }
}

/// The open connections, so that a crash (or a shutdown past its timeout)
/// can cut them: each holds a duplicate of its socket, and shutting that
/// down wakes and ends the connection's task.
#[derive(Debug, Default)]
struct Connections {
    next_id: AtomicU64,
    /// One lock for both, so that a connection is either tracked before a
    /// kill (and cut by it) or sees the kill (and cuts itself).
    state: Mutex<ConnectionsState>,
}

#[derive(Debug, Default)]
struct ConnectionsState {
    killed: bool,
    open: HashMap<u64, std::net::TcpStream>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionsState> {
        // Every update is a single insert, remove or flag: poisoning is harmless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts every open connection, and any accepted from now on. Returns how
    /// many were cut.
    fn kill(&self) -> usize {
        let open: Vec<std::net::TcpStream> = {
            let mut state = self.lock();
            state.killed = true;
            state.open.drain().map(|(_, s)| s).collect()
        };
        for socket in &open {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }

    /// Wraps an accepted stream so that [`kill`](Self::kill) can cut it.
    fn track(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let handle = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cut = {
            let mut state = self.lock();
            if state.killed {
                Some(handle)
            } else {
                state.open.insert(id, handle);
                None
            }
        };
        if let Some(handle) = cut {
            let _ = handle.shutdown(std::net::Shutdown::Both);
        }
        Ok(TrackedStream {
            inner: stream,
            id,
            connections: self.clone(),
        })
    }
}

/// The listener given to axum: a TCP listener whose connections are tracked.
struct TrackedListener {
    listener: TcpListener,
    connections: Arc<Connections>,
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, remote)) => match self.connections.track(stream) {
                    Ok(tracked) => return (tracked, remote),
                    Err(error) => {
                        tracing::warn!(%remote, %error, "could not set up an accepted connection; dropping it");
                    }
                },
                Err(error) => {
                    // Running out of file descriptors and the like: back off
                    // a little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted connection; forgets its duplicate handle when dropped, so the
/// socket really closes.
struct TrackedStream {
    inner: TcpStream,
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the server side (to track) and the client side.
    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    async fn assert_cut(client: &mut TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(15), client.read(&mut buf))
            .await
            .expect("the connection is cut");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn kill_cuts_tracked_connections_and_later_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connections = Arc::new(Connections::default());

        let (server_side, mut before) = pair(&listener).await;
        let tracked = connections.track(server_side).expect("track");
        assert_eq!(connections.lock().open.len(), 1);
        assert_eq!(connections.kill(), 1);
        assert!(connections.lock().killed);
        assert_cut(&mut before).await;
        drop(tracked);

        // Accepted after the kill: cut at once, never left open.
        let (server_side, mut after) = pair(&listener).await;
        let _tracked = connections.track(server_side).expect("track");
        assert!(connections.lock().open.is_empty());
        assert_cut(&mut after).await;
    }
}
