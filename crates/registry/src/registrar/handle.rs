//! The user's side of a registrar: `register` and the keep-alive handles,
//! written once for every backend.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use super::Backend;
use super::core::{Command, Core, Key, Ticket, Timing};
use crate::error::{Error, Result, with_deadline};
use crate::model::Instance;
use crate::record::new_owner;
use crate::traits::{KeepAlive, Registration, RegistrationState};

/// A registrar over backend `B`: cheap to clone; clones share one task, one
/// lease and one owner token.
///
/// The task starts with the first call (so that a registry value can be
/// made outside a Tokio runtime) and ends once every clone and every
/// registration made through them is gone.
pub(crate) struct Registrar<B: Backend> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: Backend> {
    backend: Arc<B>,
    owner: Arc<str>,
    timing: Timing,
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
}

impl<B: Backend> Clone for Registrar<B> {
    fn clone(&self) -> Self {
        Registrar {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Registrar<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("backend", &B::NAME)
            .field("owner", &self.inner.owner)
            .field("ttl", &self.inner.timing.ttl)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Registrar<B> {
    /// A registrar writing through `backend`, whose records live `ttl`
    /// without renewal; every call but renewals is bounded by `timeout`.
    pub(crate) fn new(backend: B, ttl: Duration, timeout: Duration) -> Self {
        Registrar {
            inner: Arc::new(Inner {
                backend: Arc::new(backend),
                owner: new_owner(),
                timing: Timing { ttl, timeout },
                commands: OnceLock::new(),
            }),
        }
    }

    /// This registrar's owner token, written into every record it puts.
    pub(crate) fn owner(&self) -> &str {
        &self.inner.owner
    }

    fn commands(&self) -> &mpsc::UnboundedSender<Command> {
        self.inner.commands.get_or_init(|| {
            Core::spawn(
                self.inner.backend.clone(),
                self.inner.owner.clone(),
                self.inner.timing,
            )
        })
    }

    /// Registers `instance` (already validated by the caller) and returns
    /// its handle, within `REGISTRY_TIMEOUT`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the registry did not take it in time (the
    /// registration is then undone); the backend's error otherwise, e.g.
    /// [`Error::AlreadyRegistered`].
    pub(crate) async fn register(&self, instance: Instance) -> Result<Registration> {
        let key: Key = (instance.service.clone(), instance.id.clone());
        let commands = self.commands().clone();
        let ticket: Ticket = ask(
            &commands,
            B::NAME,
            self.inner.timing.timeout,
            "register",
            |reply| Command::Register {
                instance: instance.clone(),
                reply,
            },
        )
        .await?;
        Ok(Registration::new(
            instance,
            Box::new(Keep {
                commands,
                key,
                token: ticket.token,
                timeout: self.inner.timing.timeout,
                state: ticket.state,
                backend: B::NAME,
            }),
        ))
    }
}

/// Sends a command to the registrar task and waits for its reply under the
/// `REGISTRY_TIMEOUT` deadline. Once sent, a command is carried out even if
/// the deadline passes (a register is then undone).
async fn ask<T>(
    commands: &mpsc::UnboundedSender<Command>,
    backend: &'static str,
    timeout: Duration,
    operation: &'static str,
    command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(command(reply))
        .map_err(|_| Error::Closed { backend })?;
    with_deadline(backend, operation, timeout, async {
        answer.await.map_err(|_| Error::Closed { backend })?
    })
    .await
}

/// The keep-alive of one registration: a ticket with the registrar task.
struct Keep {
    commands: mpsc::UnboundedSender<Command>,
    key: Key,
    token: u64,
    timeout: Duration,
    state: watch::Receiver<RegistrationState>,
    backend: &'static str,
}

#[async_trait]
impl KeepAlive for Keep {
    async fn deregister(self: Box<Self>) -> Result<()> {
        let Keep {
            commands,
            key,
            token,
            timeout,
            backend,
            ..
        } = *self;
        ask(&commands, backend, timeout, "deregister", |reply| {
            Command::Deregister { key, token, reply }
        })
        .await
    }

    fn abandon(self: Box<Self>) {
        // Fails only if the task is gone, and then nothing renews anyway.
        let _ = self.commands.send(Command::Abandon {
            key: self.key,
            token: self.token,
        });
    }

    fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }
}
