//! The registrar task: owns the session and the set of live registrations,
//! and re-establishes both when the session is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use zookeeper_client as zk;

use super::{BACKEND, Params};
use crate::error::{Error, Result, with_deadline};
use crate::model::Instance;
use crate::util::{Backoff, Outage};

/// Our nodes: ephemeral, readable and writable by anyone (like the parents),
/// so that other tools can inspect and clean up the registry.
const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
/// The parents `<prefix>/<service>`.
const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

/// How many times a create/replace races with another client before we give
/// up on one request.
const MAX_RACES: usize = 5;

/// What the handles ask of the registrar task.
#[derive(Debug)]
pub(super) enum Command {
    /// Create (or replace) the instance's node; reply with its token.
    Register {
        instance: Instance,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Delete the node, if `token` is still the registration holding it.
    Deregister {
        path: String,
        token: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop keeping the node alive and leave it to expire.
    Abandon { path: String, token: u64 },
}

/// One node the registrar is responsible for.
#[derive(Debug)]
enum Node {
    /// Kept alive: re-created whenever it is missing.
    Live {
        instance: Instance,
        data: Vec<u8>,
        token: u64,
    },
    /// Deregistered, but the delete did not go through: retried until it does
    /// or until the session (which would take the node with it) is lost.
    Deleting,
}

/// What woke the task up.
enum Event {
    Command(Option<Command>),
    State(zk::SessionState),
    Retry,
    Verify,
}

/// Opens a session, retrying with backoff until `params.timeout` has passed.
///
/// # Errors
/// [`Error::Unavailable`] naming the address, with the last failure.
pub(super) async fn open_session(params: &Params) -> Result<zk::Client> {
    let deadline = Instant::now() + params.timeout;
    let mut backoff = Backoff::reconnect();
    loop {
        let last = match tokio::time::timeout_at(deadline, connect_once(params, false)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(error)) => error,
            Err(_) => zk::Error::Timeout,
        };
        if let zk::Error::BadArguments(why) = last {
            return Err(Error::InvalidConfig(format!(
                "zookeeper address {:?} is not usable: {why}",
                params.connect_string
            )));
        }
        let delay = backoff.next_delay();
        if matches!(last, zk::Error::AuthFailed) || Instant::now() + delay >= deadline {
            return Err(Error::unavailable(
                BACKEND,
                params.connect_string.clone(),
                NoSession {
                    timeout: params.timeout,
                    source: last,
                },
            ));
        }
        tracing::debug!(backend = BACKEND, addr = %params.connect_string, error = %last, retry_in = ?delay, "could not open a session yet");
        tokio::time::sleep(delay).await;
    }
}

/// Why [`open_session`] gave up.
#[derive(Debug, thiserror::Error)]
#[error("could not open a session within REGISTRY_TIMEOUT ({timeout:?}); last error: {source}")]
struct NoSession {
    timeout: Duration,
    #[source]
    source: zk::Error,
}

/// One attempt at opening a session. A `detached` session is not closed when
/// its last client is dropped: the server expires it after its timeout.
async fn connect_once(params: &Params, detached: bool) -> Result<zk::Client, zk::Error> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(params.session_timeout)
        .with_fail_eagerly();
    if detached {
        connector = connector.with_detached();
    }
    connector.connect(&params.connect_string).await
}

/// The background task that owns the session.
pub(super) struct Registrar {
    params: Params,
    /// The session; `None` between its loss and its replacement.
    client: Option<zk::Client>,
    states: Option<zk::StateWatcher>,
    /// True between `Disconnected` and the next `SyncConnected`.
    disconnected: bool,
    /// Tells readers and watches which session is current.
    publish: watch::Sender<Option<zk::Client>>,
    mailbox: mpsc::UnboundedReceiver<Command>,
    /// By node path.
    nodes: BTreeMap<String, Node>,
    next_token: u64,
    /// When to try again what failed: opening a session, or restoring nodes.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Whether the periodic check of our nodes is failing: an outage logs
    /// one warning when it starts and one info line when it ends.
    verify_outage: Outage,
}

impl Registrar {
    /// A task for the freshly opened session `client`.
    pub(super) fn new(
        params: Params,
        client: zk::Client,
        publish: watch::Sender<Option<zk::Client>>,
        mailbox: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let mut registrar = Registrar {
            params,
            client: None,
            states: None,
            disconnected: false,
            publish,
            mailbox,
            nodes: BTreeMap::new(),
            next_token: 0,
            retry_at: None,
            backoff: Backoff::reconnect(),
            verify_outage: Outage::default(),
        };
        registrar.install(client);
        registrar
    }

    /// Runs until every handle on the registry is dropped, then closes the
    /// session.
    pub(super) async fn run(mut self) {
        // A safety net besides the session events: every session timeout,
        // check in one round trip that our nodes are still there and ours
        // (another client may have deleted one).
        let period = self.params.session_timeout.max(Duration::from_secs(1));
        let mut verify = tokio::time::interval_at(Instant::now() + period, period);
        verify.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let event = {
                let retry_at = self.retry_at;
                let states = &mut self.states;
                let mailbox = &mut self.mailbox;
                tokio::select! {
                    biased;
                    state = next_state(states) => Event::State(state),
                    () = sleep_until(retry_at) => Event::Retry,
                    command = mailbox.recv() => Event::Command(command),
                    _ = verify.tick() => Event::Verify,
                }
            };
            match event {
                Event::State(state) => self.on_state(state).await,
                Event::Retry => self.on_retry().await,
                Event::Command(Some(command)) => self.on_command(command).await,
                Event::Command(None) => break,
                Event::Verify => self.verify().await,
            }
        }
        tracing::debug!(
            backend = BACKEND,
            "registry dropped; closing the zookeeper session"
        );
        self.publish.send_replace(None);
        // Dropping the last client sends CloseSession: any node left goes now.
    }

    fn session_fields(&self) -> String {
        self.client
            .as_ref()
            .map(|c| c.session_id().to_string())
            .unwrap_or_else(|| "none".to_owned())
    }

    /// Makes `client` the current session and tells the readers.
    fn install(&mut self, client: zk::Client) {
        let states = client.state_watcher();
        self.disconnected = client.state() == zk::SessionState::Disconnected;
        self.states = Some(states);
        self.client = Some(client.clone());
        self.publish.send_replace(Some(client));
    }

    async fn on_state(&mut self, state: zk::SessionState) {
        use zk::SessionState as S;
        let session = self.session_fields();
        match state {
            S::Disconnected => {
                self.disconnected = true;
                tracing::warn!(
                    backend = BACKEND,
                    addr = %self.params.connect_string,
                    %session,
                    session_timeout = ?self.params.session_timeout,
                    "disconnected from zookeeper; the session and our nodes survive if a server answers within the session timeout"
                );
            }
            S::SyncConnected | S::ConnectedReadOnly => {
                if self.disconnected {
                    self.disconnected = false;
                    tracing::info!(backend = BACKEND, %session, "reconnected to zookeeper; checking our nodes");
                    self.reconcile().await;
                }
            }
            terminal => self.session_lost(&terminal.to_string()),
        }
    }

    /// Forgets the dead session and schedules opening a new one at once.
    fn session_lost(&mut self, why: &str) {
        tracing::warn!(
            backend = BACKEND,
            session = %self.session_fields(),
            state = why,
            instances = self.live_count(),
            "zookeeper session lost; opening a new one to register every live instance again"
        );
        self.client = None;
        self.states = None;
        self.disconnected = false;
        self.publish.send_replace(None);
        // Nodes waiting for their delete went with the session.
        self.nodes
            .retain(|_, node| matches!(node, Node::Live { .. }));
        self.backoff.reset();
        self.retry_at = Some(Instant::now());
    }

    fn live_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| matches!(n, Node::Live { .. }))
            .count()
    }

    async fn on_retry(&mut self) {
        self.retry_at = None;
        if self.client.is_none() {
            let attempt =
                tokio::time::timeout(self.params.timeout, connect_once(&self.params, false))
                    .await
                    .unwrap_or(Err(zk::Error::Timeout));
            match attempt {
                Ok(client) => {
                    tracing::info!(
                        backend = BACKEND,
                        session = %client.session_id(),
                        granted = ?client.session_timeout(),
                        "new zookeeper session opened"
                    );
                    self.install(client);
                }
                Err(error) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        backend = BACKEND,
                        addr = %self.params.connect_string,
                        %error,
                        retry_in = ?delay,
                        "could not open a new zookeeper session"
                    );
                    self.retry_at = Some(Instant::now() + delay);
                    return;
                }
            }
        }
        self.reconcile().await;
    }

    /// Makes the registry match `nodes`: every live node present and ours,
    /// every pending delete done. On failure, tries again after a backoff.
    async fn reconcile(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let mut created = 0usize;
        let mut failure = None;
        let paths: Vec<String> = self.nodes.keys().cloned().collect();
        for path in paths {
            let result = match self.nodes.get(&path) {
                Some(Node::Live { data, .. }) => {
                    let data = data.clone();
                    self.deadline("register", ensure_node(&self.params, &client, &path, &data))
                        .await
                        .map(|ensured| {
                            if ensured != Ensured::Kept {
                                created += 1;
                            }
                        })
                }
                Some(Node::Deleting) => self
                    .deadline("deregister", delete_ours(&self.params, &client, &path))
                    .await
                    .map(|()| {
                        self.nodes.remove(&path);
                    }),
                None => Ok(()),
            };
            if let Err(error) = result {
                failure = Some(error);
                break;
            }
        }
        match failure {
            None => {
                self.backoff.reset();
                if created > 0 {
                    tracing::info!(
                        backend = BACKEND,
                        session = %client.session_id(),
                        restored = created,
                        instances = self.live_count(),
                        "registered our instances again"
                    );
                }
            }
            Some(error) => self.retry_later(&error, "could not restore our nodes"),
        }
    }

    /// Schedules a reconcile after the next backoff delay.
    fn retry_later(&mut self, error: &Error, what: &str) {
        let delay = self.backoff.next_delay();
        tracing::warn!(backend = BACKEND, %error, retry_in = ?delay, "{what}; will retry");
        let at = Instant::now() + delay;
        self.retry_at = Some(self.retry_at.map_or(at, |current| current.min(at)));
    }

    /// Checks in one multi-read that every live node exists and is ours,
    /// and restores those that are not. A failed check is retried at the
    /// next period; the first failure of a run is logged at warn, the others
    /// at debug, and the first success after them at info.
    async fn verify(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.disconnected || self.retry_at.is_some() || self.nodes.is_empty() {
            return;
        }
        match self.verify_nodes(&client).await {
            Ok(()) => {
                if let Some(after) = self.verify_outage.recovered() {
                    tracing::info!(backend = BACKEND, session = %client.session_id(), after = ?after,
                        "the periodic check of our nodes works again");
                }
            }
            Err(error) => {
                let period = self.params.session_timeout.max(Duration::from_secs(1));
                if self.verify_outage.failed() {
                    tracing::warn!(backend = BACKEND, session = %client.session_id(), %error, retry_in = ?period,
                        "could not check our nodes; retrying every period (further failures are logged at debug until it works again)");
                } else {
                    tracing::debug!(backend = BACKEND, %error, "could not check our nodes, again");
                }
            }
        }
    }

    /// The work of [`Registrar::verify`].
    async fn verify_nodes(&mut self, client: &zk::Client) -> Result<()> {
        let paths: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, node)| matches!(node, Node::Live { .. }))
            .map(|(path, _)| path.clone())
            .collect();
        let me = client.session_id().0;
        let mut all_ours = true;
        for chunk in paths.chunks(super::read::MULTI_READ_CHUNK) {
            let mut reader = client.new_multi_reader();
            for path in chunk {
                reader
                    .add_get_data(path)
                    .map_err(|e| self.params.error("check our nodes", e))?;
            }
            let results = self
                .deadline("check our nodes", async {
                    reader
                        .commit()
                        .await
                        .map_err(|e| self.params.error("check our nodes", e))
                })
                .await?;
            for (path, result) in chunk.iter().zip(results) {
                let ours = match result {
                    zk::MultiReadResult::Data { stat, data } => {
                        stat.ephemeral_owner == me
                            && matches!(self.nodes.get(path), Some(Node::Live { data: want, .. }) if *want == data)
                    }
                    _ => false,
                };
                if !ours {
                    tracing::warn!(backend = BACKEND, %path, "one of our nodes is missing or was changed by another client; restoring it");
                    all_ours = false;
                }
            }
        }
        if !all_ours {
            // Its failures are logged and retried by itself.
            self.reconcile().await;
        }
        Ok(())
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Register { instance, reply } => self.register(instance, reply).await,
            Command::Deregister { path, token, reply } => {
                let result = self.deregister(path, token).await;
                let _ = reply.send(result);
            }
            Command::Abandon { path, token } => self.abandon(path, token).await,
        }
    }

    async fn register(&mut self, instance: Instance, reply: oneshot::Sender<Result<u64>>) {
        let Some(client) = self.client.clone() else {
            let _ = reply.send(Err(Error::LeaseLost {
                backend: BACKEND,
                reason: "the session is being re-established; retry shortly".to_owned(),
            }));
            return;
        };
        let path = self.params.node_path(&instance.service, &instance.id);
        let data = instance.to_json();
        let ensured = self
            .deadline("register", ensure_node(&self.params, &client, &path, &data))
            .await;
        if let Err(error) = ensured {
            if error.is_transient() && !self.nodes.contains_key(&path) {
                // The create may have gone through with its reply lost: make
                // sure no node of ours is left that nobody holds a handle on.
                self.nodes.insert(path, Node::Deleting);
                self.retry_later(&error, "a registration failed; cleaning up after it");
            }
            let _ = reply.send(Err(error));
            return;
        }
        self.next_token += 1;
        let token = self.next_token;
        tracing::info!(backend = BACKEND, %path, session = %client.session_id(), "registered");
        let previous = self.nodes.insert(
            path.clone(),
            Node::Live {
                instance,
                data,
                token,
            },
        );
        if reply.send(Ok(token)).is_ok() {
            return;
        }
        // The caller gave up waiting: nobody holds a handle on this
        // registration, so do not keep it. Put back what it replaced.
        tracing::info!(backend = BACKEND, %path, "register call gave up before its reply; undoing it");
        if let Some(Node::Live {
            instance,
            data,
            token,
        }) = previous
        {
            let restore = data.clone();
            self.nodes.insert(
                path.clone(),
                Node::Live {
                    instance,
                    data,
                    token,
                },
            );
            if let Err(error) = self
                .deadline(
                    "register",
                    ensure_node(&self.params, &client, &path, &restore),
                )
                .await
            {
                self.retry_later(&error, "could not restore a replaced registration");
            }
        } else {
            self.nodes.remove(&path);
            self.delete_or_retry(&client, path).await;
        }
    }

    async fn deregister(&mut self, path: String, token: u64) -> Result<()> {
        if !self.holds(&path, token) {
            // A newer registration of the same id replaced this one.
            return Ok(());
        }
        let Some(client) = self.client.clone() else {
            // The node went (or goes) with the lost session.
            self.nodes.remove(&path);
            return Ok(());
        };
        match self
            .deadline("deregister", delete_ours(&self.params, &client, &path))
            .await
        {
            Ok(()) => {
                tracing::info!(backend = BACKEND, %path, "deregistered");
                self.nodes.remove(&path);
                Ok(())
            }
            Err(error) => {
                self.nodes.insert(path, Node::Deleting);
                self.retry_later(&error, "could not delete a deregistered node");
                Err(error)
            }
        }
    }

    async fn abandon(&mut self, path: String, token: u64) {
        if !self.holds(&path, token) {
            return;
        }
        self.nodes.remove(&path);
        let Some(client) = self.client.clone() else {
            return;
        };
        match self
            .deadline("abandon", hand_over(&self.params, &client, &path))
            .await
        {
            Ok(Some((session, granted))) => tracing::info!(
                backend = BACKEND,
                %path,
                orphan_session = %session,
                expires_after = ?granted,
                "abandoned: the node now belongs to a session nobody keeps alive, and expires as after a crash"
            ),
            Ok(None) => {
                tracing::debug!(backend = BACKEND, %path, "abandoned node was already gone or not ours")
            }
            Err(error) => {
                tracing::warn!(backend = BACKEND, %path, %error, "could not hand the abandoned node to an expiring session; deleting it instead");
                self.delete_or_retry(&client, path).await;
            }
        }
    }

    /// Deletes the node if ours; if that fails, keeps trying in the background.
    async fn delete_or_retry(&mut self, client: &zk::Client, path: String) {
        if let Err(error) = self
            .deadline("deregister", delete_ours(&self.params, client, &path))
            .await
        {
            self.nodes.insert(path, Node::Deleting);
            self.retry_later(&error, "could not delete a node");
        }
    }

    fn holds(&self, path: &str, token: u64) -> bool {
        matches!(self.nodes.get(path), Some(Node::Live { token: t, .. }) if *t == token)
    }

    async fn deadline<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        with_deadline(BACKEND, operation, self.params.timeout, fut).await
    }
}

async fn next_state(states: &mut Option<zk::StateWatcher>) -> zk::SessionState {
    match states {
        Some(states) => states.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How [`ensure_node`] left the node.
#[derive(Debug, PartialEq, Eq)]
enum Ensured {
    /// It was missing and is now created.
    Created,
    /// It was ours already, with the right data.
    Kept,
    /// It was ours, with other data, now updated.
    Updated,
    /// It belonged to another session (or was persistent) and is now ours.
    Replaced,
}

/// Makes `path` an ephemeral node of our session holding `data`, creating
/// the parents as needed and replacing a node of another session.
async fn ensure_node(
    params: &Params,
    client: &zk::Client,
    path: &str,
    data: &[u8],
) -> Result<Ensured> {
    let me = client.session_id().0;
    let fail = |operation, error| params.error(operation, error);
    for _ in 0..MAX_RACES {
        match client.create(path, data, &EPHEMERAL).await {
            Ok(_) => return Ok(Ensured::Created),
            Err(zk::Error::NoNode) => {
                let parent = parent_of(path);
                client
                    .mkdir(parent, &PERSISTENT)
                    .await
                    .map_err(|e| fail("create the service node", e))?;
                continue;
            }
            Err(zk::Error::NodeExists) => {}
            Err(error) => return Err(fail("create", error)),
        }
        let (current, stat) = match client.get_data(path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => continue,
            Err(error) => return Err(fail("read", error)),
        };
        if stat.ephemeral_owner == me {
            if current == data {
                return Ok(Ensured::Kept);
            }
            match client.set_data(path, data, Some(stat.version)).await {
                Ok(_) => return Ok(Ensured::Updated),
                Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                Err(error) => return Err(fail("set", error)),
            }
        }
        // A stale node of an earlier session of ours (the server has not
        // expired it yet), another registrar's, or a persistent node written
        // by a tool: replace it in one transaction, so that watchers never
        // see the instance missing.
        let mut multi = client.new_multi_writer();
        multi
            .add_delete(path, Some(stat.version))
            .and_then(|()| multi.add_create(path, data, &EPHEMERAL))
            .map_err(|e| fail("replace", e))?;
        match multi.commit().await {
            Ok(_) => {
                tracing::warn!(
                    backend = BACKEND,
                    %path,
                    previous_owner = %zk::SessionId(stat.ephemeral_owner),
                    session = %client.session_id(),
                    "replaced a node held by another session (a stale node of an earlier session, or another registrar using the same id)"
                );
                return Ok(Ensured::Replaced);
            }
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::NoNode | zk::Error::BadVersion | zk::Error::NodeExists,
                ..
            }) => continue,
            Err(error) => return Err(fail("replace", error.into())),
        }
    }
    Err(Error::Rejected {
        backend: BACKEND,
        operation: "register",
        reason: format!(
            "node {path} kept changing under us ({MAX_RACES} attempts); is another client writing it?"
        ),
    })
}

/// Deletes `path` if our session owns it; a missing node or another's is
/// left alone.
async fn delete_ours(params: &Params, client: &zk::Client, path: &str) -> Result<()> {
    let me = client.session_id().0;
    for _ in 0..MAX_RACES {
        let stat = match client.check_stat(path).await {
            Ok(Some(stat)) => stat,
            Ok(None) => return Ok(()),
            Err(error) => return Err(params.error("read", error)),
        };
        if stat.ephemeral_owner != me {
            return Ok(());
        }
        match client.delete(path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
            Err(zk::Error::BadVersion) => continue,
            Err(error) => return Err(params.error("delete", error)),
        }
    }
    Err(Error::Rejected {
        backend: BACKEND,
        operation: "deregister",
        reason: format!("node {path} kept changing under us ({MAX_RACES} attempts)"),
    })
}

/// Moves our node at `path` to a new, detached session and drops that
/// session's client without closing it, so that the server expires the node
/// one session timeout from now. Returns the orphan session and its granted
/// timeout, or `None` if the node is gone or not ours.
async fn hand_over(
    params: &Params,
    client: &zk::Client,
    path: &str,
) -> Result<Option<(zk::SessionId, Duration)>> {
    let (data, stat) = match client.get_data(path).await {
        Ok(found) => found,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(error) => return Err(params.error("read", error)),
    };
    if stat.ephemeral_owner != client.session_id().0 {
        return Ok(None);
    }
    let orphan = connect_once(params, true)
        .await
        .map_err(|e| params.error("open a session for the abandoned node", e))?;
    let mut multi = orphan.new_multi_writer();
    multi
        .add_delete(path, Some(stat.version))
        .and_then(|()| multi.add_create(path, &data, &EPHEMERAL))
        .map_err(|e| params.error("abandon", e))?;
    multi
        .commit()
        .await
        .map_err(|e| params.error("abandon", e.into()))?;
    let session = orphan.session_id();
    let granted = orphan.session_timeout();
    // Detached: dropping the last client closes the connection without
    // CloseSession; the server expires the session, and the node with it.
    drop(orphan);
    Ok(Some((session, granted)))
}

/// The parent of a node path (`/services/lorem` for `/services/lorem/a`).
fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zookeeper::map_error;

    #[test]
    fn parents() {
        assert_eq!(parent_of("/services/lorem/a"), "/services/lorem");
        assert_eq!(parent_of("/a"), "/");
    }

    #[test]
    fn errors_map_to_domain_words() {
        let e = map_error("h:1", "create", zk::Error::ConnectionLoss);
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("h:1"), "{e}");
        let e = map_error("h:1", "create", zk::Error::SessionExpired);
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
        let e = map_error("h:1", "create", zk::Error::NoAuth);
        assert!(matches!(e, Error::Rejected { .. }), "{e}");
    }
}
