//! The ZooKeeper side of the registrar core: the registry's one session
//! (kept open for readers and registrations alike by [`keep_sessions`]) is
//! the lease, one ephemeral node per instance is the record.
//!
//! The state machine (when to re-register, undo, retry, give way) is the
//! core's (`crate::registrar`); this file only says how each step is done
//! with ZooKeeper's requests.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::watch;
use tokio::time::Instant;
use zookeeper_client as zk;

use super::{BACKEND, Params};
use crate::backoff::{Backoff, Outage};
use crate::error::{Error, Result};
use crate::record::{Store, owner_of};
use crate::registrar::{Backend, Found, LeaseEvent, Record, Renewal};

/// Our nodes without a digest identity: ephemeral, readable and writable by
/// anyone (like the parents), so that other tools can inspect and clean up
/// the registry.
const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

/// The options of an instance node: with a digest identity, an ACL that lets
/// anyone read it (discovery by other tools keeps working) and only our
/// identity change it or its ACL; the parents stay open to anyone (see
/// `EPHEMERAL` and `PERSISTENT`), so that other frameworks can register
/// beside us. ZooKeeper checks a delete against the *parent's* ACL, so
/// another identity can still delete the node: the registrar's check puts
/// it back (about once per TTL), as for any node deleted behind our back.
fn instance_node<'a>(params: &Params, acls: &'a [zk::Acl]) -> zk::CreateOptions<'a> {
    match &params.digest {
        Some(_) => zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(acls)),
        None => EPHEMERAL,
    }
}

/// The ACL entries of [`instance_node`]: read for `world:anyone`, all for
/// our digest id.
fn instance_acls(params: &Params) -> Vec<zk::Acl> {
    match &params.digest {
        Some(digest) => vec![
            zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", &digest.id)),
        ],
        None => Vec::new(),
    }
}
/// The parents `<prefix>/<service>`.
const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

/// How many times a create/replace races with another client before we give
/// up on one request.
const MAX_RACES: usize = 5;

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
        // A TLS failure is hidden behind "no available hosts": find out
        // which setting is wrong with a handshake of our own. A certificate
        // the server refuses (or we refuse) does not heal within seconds, so
        // it ends this attempt at once rather than at the deadline.
        let mut cause = String::new();
        if let Some(tls) = &params.tls_files {
            let within = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500));
            let (host, port) = &params.first;
            if let Some(failure) = crate::security::tls_failure(host, *port, tls, within).await {
                cause = format!("; {failure}");
            }
        }
        if matches!(last, zk::Error::AuthFailed)
            || !cause.is_empty()
            || Instant::now() + delay >= deadline
        {
            return Err(Error::unavailable(
                BACKEND,
                params.connect_string.clone(),
                NoSession {
                    timeout: params.timeout,
                    source: last,
                    cause,
                },
            ));
        }
        tracing::debug!(backend = BACKEND, addr = %params.connect_string, error = %last, retry_in = ?delay, "could not open a session yet");
        tokio::time::sleep(delay).await;
    }
}

/// Why [`open_session`] gave up.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not open a session within REGISTRY_TIMEOUT ({timeout:?}); last error: {source}{cause}"
)]
struct NoSession {
    timeout: Duration,
    /// What our own TLS handshake found, if TLS is on and it failed.
    cause: String,
    #[source]
    source: zk::Error,
}

/// One attempt at opening a session. A `detached` session is not closed when
/// its last client is dropped: the server expires it after its timeout.
async fn connect_once(params: &Params, detached: bool) -> Result<zk::Client, zk::Error> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(params.session_timeout)
        .with_connection_timeout(connection_timeout(params.session_timeout))
        .with_fail_eagerly();
    if detached {
        connector = connector.with_detached();
    }
    if let Some(digest) = &params.digest {
        connector = connector.with_auth("digest", digest.credentials.expose().as_bytes());
    }
    match &params.tls {
        Some(tls) => {
            connector
                .with_tls(tls.clone())
                .secure_connect(&params.connect_string)
                .await
        }
        None => connector.connect(&params.connect_string).await,
    }
}

/// How long one server may stay silent before the client gives up on it
/// and tries the next member of the ensemble: at most 1 s, and 2/5 of the
/// session timeout for short sessions (zookeeper-client's own default is
/// 2/5 of the session timeout, 2.4 s with the 6 s default session).
///
/// A member that hangs (it accepts connections and never answers) costs a
/// new process that tries it first this much before another member answers,
/// and a connected session this much before it moves on: short enough that
/// every call is answered by the others within 2 s; long enough to ride out
/// a busy server (the client pings every 3/8 of it).
fn connection_timeout(session_timeout: Duration) -> Duration {
    (session_timeout * 2 / 5).min(Duration::from_secs(1))
}

/// Keeps the registry's one session open for readers, watches and the
/// registrar alike: publishes it, notices when it ends (expired, closed by
/// the server), and opens the next one with backoff. Ends, closing the
/// session, once nothing reads the published session any more (every
/// registry value, watch stream and registration is gone).
pub(super) async fn keep_sessions(
    params: Params,
    publish: watch::Sender<Option<zk::Client>>,
    mut client: zk::Client,
) {
    loop {
        let mut states = client.state_watcher();
        let mut disconnected = false;
        let ended = loop {
            let state = tokio::select! {
                state = states.changed() => state,
                () = publish.closed() => return,
            };
            match state {
                zk::SessionState::Disconnected => {
                    disconnected = true;
                    tracing::warn!(
                        backend = BACKEND,
                        addr = %params.connect_string,
                        session = %client.session_id(),
                        session_timeout = ?params.session_timeout,
                        "disconnected from zookeeper; the session and our nodes survive if a server answers within the session timeout"
                    );
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    if std::mem::take(&mut disconnected) {
                        tracing::info!(backend = BACKEND, session = %client.session_id(), "reconnected to zookeeper");
                    }
                }
                terminal => break terminal,
            }
        };
        tracing::warn!(backend = BACKEND, session = %client.session_id(), state = %ended,
            "zookeeper session ended; opening a new one");
        publish.send_replace(None);
        let mut backoff = Backoff::reconnect();
        let mut outage = Outage::default();
        client = loop {
            let attempt = tokio::select! {
                attempt = tokio::time::timeout(params.timeout, connect_once(&params, false)) => attempt,
                () = publish.closed() => return,
            };
            match attempt.unwrap_or(Err(zk::Error::Timeout)) {
                Ok(client) => break client,
                Err(error) => {
                    let delay = backoff.next_delay();
                    if outage.failed() {
                        tracing::warn!(backend = BACKEND, addr = %params.connect_string, %error, retry_in = ?delay,
                            "could not open a new zookeeper session; retrying with backoff (further failures at debug)");
                    } else {
                        tracing::debug!(backend = BACKEND, %error, retry_in = ?delay, "could not open a new zookeeper session, again");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = publish.closed() => return,
                    }
                }
            }
        };
        tracing::info!(
            backend = BACKEND,
            session = %client.session_id(),
            granted = ?client.session_timeout(),
            "new zookeeper session opened"
        );
        publish.send_replace(Some(client.clone()));
    }
}

/// The ZooKeeper [`Backend`]: the registry's current session is the lease,
/// ephemeral nodes are the records.
pub(super) struct Sessions {
    params: Params,
    /// The session [`keep_sessions`] publishes.
    session: watch::Receiver<Option<zk::Client>>,
}

impl Sessions {
    pub(super) fn new(params: Params, session: watch::Receiver<Option<zk::Client>>) -> Self {
        Sessions { params, session }
    }
}

#[async_trait]
impl Backend for Sessions {
    type Lease = zk::Client;
    const NAME: &'static str = BACKEND;

    /// The session [`keep_sessions`] keeps open (waiting for the next one
    /// while it is being replaced; the core bounds the wait).
    async fn open(&self) -> Result<zk::Client> {
        super::read::current_session(&self.session).await
    }

    async fn put(&self, client: &zk::Client, record: &Record) -> Result<()> {
        let path = self
            .params
            .node_path(&record.instance.service, &record.instance.id);
        ensure_node(&self.params, client, &path, record)
            .await
            .map(drop)
    }

    async fn delete(&self, client: &zk::Client, record: &Record) -> Result<()> {
        let path = self
            .params
            .node_path(&record.instance.service, &record.instance.id);
        delete_ours(&self.params, client, &path).await
    }

    async fn abandon(&self, client: &zk::Client, record: &Record) -> Result<()> {
        let path = self
            .params
            .node_path(&record.instance.service, &record.instance.id);
        match hand_over(&self.params, client, &path).await {
            Ok(Some((session, granted))) => {
                tracing::info!(
                    backend = BACKEND,
                    %path,
                    orphan_session = %session,
                    expires_after = ?granted,
                    "the abandoned node now belongs to a session nobody keeps alive, and expires as after a crash"
                );
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => {
                tracing::warn!(backend = BACKEND, %path, %error,
                    "could not hand the abandoned node to an expiring session; deleting it instead");
                delete_ours(&self.params, client, &path).await
            }
        }
    }

    /// The client pings the session by itself: a renewal only reports
    /// whether the session is connected (so that delayed removals wait for
    /// a server that answers) or gone.
    async fn renew(&self, client: &zk::Client, _records: &[Record]) -> Result<Renewal> {
        match client.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                Ok(Renewal::Alive)
            }
            zk::SessionState::Disconnected => Err(Error::unavailable(
                BACKEND,
                self.params.connect_string.clone(),
                "disconnected; the session survives if a server answers within the session timeout",
            )),
            terminal => Ok(Renewal::Lost(format!("the session is {terminal}"))),
        }
    }

    /// One multi-read of our nodes: each must exist, belong to our session
    /// and hold our record.
    async fn verify(&self, client: &zk::Client, records: &[Record]) -> Result<Vec<Found>> {
        let me = client.session_id().0;
        let mut found = Vec::with_capacity(records.len());
        for chunk in records.chunks(super::read::MULTI_READ_CHUNK) {
            let mut reader = client.new_multi_reader();
            for record in chunk {
                let path = self
                    .params
                    .node_path(&record.instance.service, &record.instance.id);
                reader
                    .add_get_data(&path)
                    .map_err(|e| self.params.error("check our nodes", e))?;
            }
            let results = reader
                .commit()
                .await
                .map_err(|e| self.params.error("check our nodes", e))?;
            for (record, result) in chunk.iter().zip(results) {
                found.push(match result {
                    zk::MultiReadResult::Data { stat, data } => match owner_of(&data) {
                        Some(holder) if *holder != *record.owner => Found::Held { holder },
                        _ if stat.ephemeral_owner == me
                            && data == record.encode(&self.params.interop, Store::Zookeeper) =>
                        {
                            Found::Ours
                        }
                        _ => Found::Changed,
                    },
                    zk::MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => Found::Missing,
                    _ => Found::Changed,
                });
            }
        }
        Ok(found)
    }

    /// `Reconnected` after a disconnection the session survived (events
    /// may have been missed: check our nodes), `Lost` when it ends.
    fn events(&self, client: &zk::Client) -> Option<BoxStream<'static, LeaseEvent>> {
        let states = client.state_watcher();
        Some(Box::pin(futures::stream::unfold(
            (states, false, false),
            |(mut states, mut disconnected, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match states.changed().await {
                        zk::SessionState::Disconnected => disconnected = true,
                        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                            if std::mem::take(&mut disconnected) {
                                return Some((LeaseEvent::Reconnected, (states, false, false)));
                            }
                        }
                        terminal => {
                            return Some((
                                LeaseEvent::Lost(format!("the session is {terminal}")),
                                (states, false, true),
                            ));
                        }
                    }
                }
            },
        )))
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
    record: &Record,
) -> Result<Ensured> {
    let me = client.session_id().0;
    let data = &record.encode(&params.interop, Store::Zookeeper)[..];
    let acls = instance_acls(params);
    let node = instance_node(params, &acls);
    let fail = |operation, error| params.error(operation, error);
    for _ in 0..MAX_RACES {
        match client.create(path, data, &node).await {
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
        // Another registrar's live node: refuse, never replace.
        let holder = owner_of(&current);
        if let Some(holder) = holder.clone().filter(|h| **h != *record.owner) {
            return Err(Error::AlreadyRegistered {
                backend: BACKEND,
                service: record.instance.service.clone(),
                id: record.instance.id.clone(),
                holder,
            });
        }
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
        // expired it yet), or a node without an owner token (written by a
        // tool): replace it in one transaction, so that watchers never see
        // the instance missing.
        let mut multi = client.new_multi_writer();
        multi
            .add_delete(path, Some(stat.version))
            .and_then(|()| multi.add_create(path, data, &node))
            .map_err(|e| fail("replace", e))?;
        match multi.commit().await {
            Ok(_) => {
                tracing::warn!(
                    backend = BACKEND,
                    %path,
                    previous_owner = %zk::SessionId(stat.ephemeral_owner),
                    session = %client.session_id(),
                    stale_of_ours = holder.is_some(),
                    "replaced a node held by another session (a stale node of an earlier session of ours, or one written by a tool)"
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
    let acls = instance_acls(params);
    let mut multi = orphan.new_multi_writer();
    multi
        .add_delete(path, Some(stat.version))
        .and_then(|()| multi.add_create(path, &data, &instance_node(params, &acls)))
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
