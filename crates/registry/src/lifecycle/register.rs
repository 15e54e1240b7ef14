//! The registration side of the lifecycle: register in the background with
//! backoff, hold, give way and register again, deregister or abandon.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{LifecycleError, REGISTER_BACKOFF_BASE, REGISTER_BACKOFF_MAX, Readiness};
use crate::backoff::Backoff;
use crate::{Instance, Registrar, Registration, RegistrationState};

/// The registration of one server, kept in the background: what
/// [`Lifecycle::start`](super::Lifecycle::start) returns.
///
/// This is the protocol-agnostic half of the lifecycle, for servers that
/// [`Lifecycle::spawn`](super::Lifecycle::spawn) does not run (hyper,
/// tonic, anything that takes a shutdown future): start it once the server
/// listens, and await [`shutdown`](Self::shutdown) inside the server's
/// graceful-shutdown future, so that the server stops accepting only after
/// the deregistration and the drain. Dropping it deregisters on a
/// best-effort basis.
///
/// ```
/// use std::time::Duration;
/// use registry::lifecycle::Lifecycle;
/// use registry::{Instance, MemoryRegistry, Watcher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = MemoryRegistry::new(Duration::from_secs(10));
/// // Once the server listens (here on port 8080):
/// let handle = Lifecycle::new(registry.clone(), Instance::new("lorem", "a", "127.0.0.1", 8080))
///     .drain_delay(Duration::ZERO)
///     .start();
/// handle.readiness().registered().await;
/// assert_eq!(registry.instances("lorem").await?.len(), 1);
///
/// // In the server's graceful-shutdown future, e.g. tonic's
/// // `serve_with_shutdown(addr, async { shutdown_signal().await; handle.shutdown().await... })`:
/// handle.shutdown().await?;
/// assert!(registry.instances("lorem").await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a lifecycle Handle deregisters the instance"]
#[derive(Debug)]
pub struct Handle {
    instance: Instance,
    registered: Arc<watch::Sender<bool>>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    /// `None` once stopped.
    task: Option<Task>,
}

#[derive(Debug)]
struct Task {
    /// The supervisor of the registration task: `Err` with what happened if
    /// that task panicked.
    supervisor: JoinHandle<Result<(), String>>,
    stop: oneshot::Sender<Stop>,
}

/// What the registration task is told when the server stops.
#[derive(Debug)]
enum Stop {
    /// Deregister, and say how it went.
    Deregister(oneshot::Sender<crate::Result<()>>),
    /// Stop the keep-alive but leave the instance to expire.
    Abandon,
}

impl Handle {
    pub(super) fn start<R: Registrar + 'static>(
        registrar: R,
        instance: Instance,
        registered: Arc<watch::Sender<bool>>,
        drain_delay: Duration,
        shutdown_timeout: Duration,
    ) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        let supervisor = supervise(
            tokio::spawn(keep_registered(
                registrar,
                instance.clone(),
                registered.clone(),
                stop_rx,
            )),
            instance.id.clone(),
            registered.clone(),
        );
        Handle {
            instance,
            registered,
            drain_delay,
            shutdown_timeout,
            task: Some(Task { supervisor, stop }),
        }
    }

    /// The instance being registered.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// True while the registry holds our registration: false until the
    /// background task gets it through, while it is being restored or was
    /// displaced, and from the deregistration on.
    pub fn is_registered(&self) -> bool {
        *self.registered.borrow()
    }

    /// The same answer as [`is_registered`](Self::is_registered), as a
    /// cheap clone to hand to a readiness route, with a way to wait for it.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.registered.subscribe())
    }

    /// Deregisters (errors are logged; bounded by the shutdown timeout),
    /// then waits for the drain delay so that clients watching the registry
    /// move away while the server still serves. Stop the server after it.
    ///
    /// # Errors
    /// [`LifecycleError::RegistrationTask`] if the registration task had
    /// died (a panic in the registrar): the server had been serving
    /// unregistered. Registry errors are not errors here: an instance that
    /// could not be removed expires after its TTL, which is logged.
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
        let supervisor = self.deregister().await;
        self.drain(end_drain).await;
        match supervisor {
            Some(supervisor) => supervisor.finish().await,
            None => Ok(()),
        }
    }

    /// Step one of a shutdown: deregisters (bounded by the shutdown
    /// timeout) and marks the instance unregistered. Returns the
    /// supervisor, which says whether the registration task had died: kept
    /// apart so that [`Server`](super::Server) can report the HTTP
    /// server's failure first.
    pub(super) async fn deregister(&mut self) -> Option<Supervisor> {
        let task = self.task.take()?;
        let id = self.instance.id.clone();
        tracing::info!(%id, "shutting down: deregistering");
        let (reply, outcome) = oneshot::channel();
        if task.stop.send(Stop::Deregister(reply)).is_ok() {
            match tokio::time::timeout(self.shutdown_timeout, outcome).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%id, %error, "deregistration failed; the instance will expire after its TTL");
                }
                Ok(Err(_)) => {
                    tracing::warn!(%id, "the registration task ended before deregistering");
                }
                Err(_) => {
                    tracing::warn!(%id, timeout = ?self.shutdown_timeout,
                        "deregistration did not finish in time; the instance will expire after its TTL");
                }
            }
        } else {
            tracing::error!(%id, "cannot deregister: the registration task is gone; the instance, if registered, will expire after its TTL");
        }
        self.registered.send_replace(false);
        Some(Supervisor {
            id,
            task: task.supervisor,
            timeout: self.shutdown_timeout,
        })
    }

    /// Step two: keeps serving for the drain delay, or until `end_drain`.
    pub(super) async fn drain<F: Future<Output = ()>>(&self, end_drain: F) {
        if self.drain_delay.is_zero() {
            return;
        }
        let id = &self.instance.id;
        tracing::info!(%id, drain_delay = ?self.drain_delay, "draining: still serving while clients move away");
        tokio::select! {
            () = tokio::time::sleep(self.drain_delay) => {}
            () = end_drain => {
                tracing::info!(%id, "drain ended early on request");
            }
        }
    }

    /// Simulates a crash: stops the keep-alive without deregistering; the
    /// instance stays listed until its TTL or session runs out.
    pub fn abandon(mut self) {
        self.abandon_now();
    }

    pub(super) fn abandon_now(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.stop.send(Stop::Abandon);
        }
        self.registered.send_replace(false);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.task.take().is_some() {
            // Dropping the sender makes the registration task drop its
            // `Registration`, which deregisters on a best-effort basis.
            self.registered.send_replace(false);
        }
    }
}

/// The end of a registration task, once told to stop.
#[derive(Debug)]
pub(super) struct Supervisor {
    id: String,
    task: JoinHandle<Result<(), String>>,
    timeout: Duration,
}

impl Supervisor {
    /// Waits (up to the shutdown timeout) for the registration task to end.
    ///
    /// # Errors
    /// [`LifecycleError::RegistrationTask`] if it had died.
    pub(super) async fn finish(self) -> Result<(), LifecycleError> {
        let id = self.id;
        let mut task = self.task;
        match tokio::time::timeout(self.timeout, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(LifecycleError::RegistrationTask { reason }),
            Ok(Err(join)) => {
                tracing::error!(%id, error = %join, "the registration supervisor failed");
                Err(LifecycleError::RegistrationTask {
                    reason: join.to_string(),
                })
            }
            Err(_) => {
                // Still deregistering past the timeout (logged above):
                // dropping its registration deregisters in the background.
                task.abort();
                Ok(())
            }
        }
    }
}

/// Registers `instance`, retrying until it works or the server stops, then
/// holds the registration until told what to do with it.
async fn keep_registered<R: Registrar>(
    registrar: R,
    instance: Instance,
    registered: Arc<watch::Sender<bool>>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let id = instance.id.clone();
    let mut backoff = Backoff::new(REGISTER_BACKOFF_BASE, REGISTER_BACKOFF_MAX);
    let mut attempt: u32 = 0;
    // Registered, then held until told what to do, or until another
    // registrar takes the id over (ours had gone in the meantime): then
    // back to registering, which waits until the other one goes.
    let (registration, stop) = 'register: loop {
        let registration: Registration = loop {
            attempt = attempt.saturating_add(1);
            let result = tokio::select! {
                stop = &mut stop => {
                    finish_unregistered(&id, stop.ok());
                    return;
                }
                result = registrar.register(instance.clone()) => result,
            };
            match result {
                Ok(registration) => break registration,
                Err(crate::Error::InvalidInstance(reason)) => {
                    tracing::error!(%id, %reason, "the registry refused this instance; not retrying");
                    let stop = (&mut stop).await.ok();
                    finish_unregistered(&id, stop);
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%id, %error, attempt, retry_in = ?delay, "registration failed; retrying");
                    tokio::select! {
                        stop = &mut stop => {
                            finish_unregistered(&id, stop.ok());
                            return;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        registered.send_replace(true);
        tracing::info!(
            %id,
            service = %instance.service,
            address = %instance.authority(),
            attempts = attempt,
            "registered"
        );
        let mut state = registration.state();
        loop {
            tokio::select! {
                stop = &mut stop => break 'register (registration, stop),
                changed = state.changed() => {
                    if changed.is_err() {
                        // The registrar is gone: nothing more will change.
                        let stop = (&mut stop).await;
                        break 'register (registration, stop);
                    }
                    let now = state.borrow_and_update().clone();
                    registered.send_replace(now == RegistrationState::Registered);
                    if let RegistrationState::Displaced { holder } = now {
                        tracing::error!(%id, %holder,
                            "another registrar took this instance id over after our record had gone; registering again once it is free");
                        drop(registration);
                        attempt = 0;
                        continue 'register;
                    }
                }
            }
        }
    };
    registered.send_replace(false);
    match stop {
        Ok(Stop::Deregister(reply)) => {
            let result = registration.deregister().await;
            if result.is_ok() {
                tracing::info!(%id, "deregistered");
            }
            let _ = reply.send(result);
        }
        Ok(Stop::Abandon) => registration.abandon(),
        Err(_) => drop(registration),
    }
}

/// Waits for the registration task and reports, as soon as it happens, a
/// panic that would otherwise leave the server serving unregistered until
/// shutdown. Resolves to `Err` with what happened if the task did not end
/// normally.
fn supervise(
    task: JoinHandle<()>,
    id: String,
    registered: Arc<watch::Sender<bool>>,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        match task.await {
            Ok(()) => Ok(()),
            Err(error) => {
                registered.send_replace(false);
                tracing::error!(%id, %error,
                    "the registration task died; still serving, but no longer registered (or kept alive) in the registry");
                Err(format!("the registration task died: {error}"))
            }
        }
    })
}

fn finish_unregistered(id: &str, stop: Option<Stop>) {
    tracing::info!(%id, "stopping before the registration went through");
    if let Some(Stop::Deregister(reply)) = stop {
        let _ = reply.send(Ok(()));
    }
}
