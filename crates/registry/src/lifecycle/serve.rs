//! The serve helper for axum: the registration around an [`HttpServer`]
//! (our accept loop, with its connection limits and timeouts).
//!
//! Connection-level options belong to [`HttpLimits`], set on the
//! [`Lifecycle`] builder that configures this server.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

use super::http::{HttpLimits, HttpServer};
use super::{Handle, Lifecycle, LifecycleError, Readiness};
use crate::{Instance, Registrar};

/// An axum server with its registration: what
/// [`Lifecycle::spawn`] returns, and what [`Lifecycle::serve`] runs.
///
/// | call                        | registry                   | HTTP                                                  |
/// |-----------------------------|----------------------------|-------------------------------------------------------|
/// | [`shutdown`](Self::shutdown) | deregistered first        | serves the drain delay more, stops accepting, closes idle connections at once, finishes in-flight requests (up to the shutdown timeout), then cuts what is left |
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
    http: Option<HttpServer>,
}

impl<R: Registrar + 'static> Lifecycle<R> {
    /// The limits and timeouts of the server's connections (default:
    /// [`HttpLimits::default`]).
    pub fn http_limits(mut self, limits: HttpLimits) -> Self {
        self.http_limits = limits;
        self
    }

    /// Serves `router` on `listener` (an [`HttpServer`] with the
    /// [`http_limits`](Self::http_limits)), and only then registers the instance
    /// in the background (retrying with backoff while the registry is
    /// down). Returns at once; stop it through the returned [`Server`].
    ///
    /// # Errors
    /// [`LifecycleError::Serve`] if the listener's address cannot be read.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the server and the registration).
    pub fn spawn(
        mut self,
        listener: TcpListener,
        router: axum::Router,
    ) -> Result<Server, LifecycleError> {
        let limits = std::mem::take(&mut self.http_limits);
        let http = HttpServer::spawn(listener, router, limits)
            .map_err(|source| LifecycleError::Serve { source })?;
        let shutdown_timeout = self.shutdown_timeout;
        Ok(Server {
            local_addr: http.local_addr(),
            handle: self.start(),
            shutdown_timeout,
            http: Some(http),
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
    /// the drain delay so clients see the change, stops accepting, closes
    /// idle connections at once, and waits up to the shutdown timeout for
    /// in-flight requests; connections still open after that are cut.
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
        let result = http.shutdown(self.shutdown_timeout).await;
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
        http.kill();
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
        http.kill();
    }
}
