//! The ZooKeeper backend: one session per registrar, one ephemeral node per
//! instance.
//!
//! | operation    | ZooKeeper                                                                  |
//! |--------------|----------------------------------------------------------------------------|
//! | connect      | open a session (timeout below), over TLS to a `secureClientPort` with `REGISTRY_CA` (and a client certificate), with `addauth digest user:password` given `REGISTRY_USER`; retried with backoff until `REGISTRY_TIMEOUT` |
//! | ACL          | with a digest identity, instance nodes are created with `world:anyone:r` + `digest:<user>:<hash>:cdrwa` (anyone reads, only we change them); parents stay `world:anyone:cdrwa` so others can register beside us. ZooKeeper checks a delete against the parent's ACL, so another identity can still delete our node: the check below puts it back |
//! | register     | `mkdir -p <prefix>/<service>` (persistent), then `create -e <prefix>/<service>/<id>` holding [`Instance::to_json`] plus our `owner` token; if the node exists, its data (read then) names its owner: another registrar's token is a refusal ([`Error::AlreadyRegistered`]) |
//! | keep alive   | the session itself: zookeeper-client pings every third of the session timeout |
//! | replace      | our own node: `set`; a node of ours left by an earlier session, or one without an owner token (a tool's): one `multi { delete; create -e }` |
//! | deregister   | `delete` the node, if our session owns it                                  |
//! | deregister_instance | `delete` the node whichever session owns it (or none); a live owner creates it again at its next check (one session timeout) |
//! | abandon      | one `multi { delete; create -e }` moves the node to a throwaway session, which is then dropped without `CloseSession`: the server expires it after the session timeout, exactly as after a crash |
//! | session lost | open a new session and create every live node again, with backoff          |
//! | reconnected  | verify every node we own (events and requests may have been lost)          |
//! | check        | every session timeout, one multi-read of our nodes: put back the missing or changed, give way where another registrar's token is found |
//! | instances    | `ls <prefix>/<service>`, then one multi-read of every child's data         |
//! | services     | `ls <prefix>`, then the above for every service                            |
//! | watch        | `addWatch -m PERSISTENT_RECURSIVE <prefix>/<service>` (works before the node exists), one `get` per changed child; after every reconnect, `addWatch` again and a full re-read |
//!
//! # Layout
//!
//! Each instance is an EPHEMERAL node `<prefix>/<service>/<id>` (prefix
//! `REGISTRY_PREFIX`, default `/services`) whose data is the instance JSON,
//! the `owner` token, and Curator x-discovery's fields (`name`, `sslPort`,
//! `payload`, `registrationTimeUTC`, `serviceType`, `uriSpec`), so that
//! Curator, Spring Cloud Zookeeper and Dubbo 3 list our instances too
//! (`docs/interop.md`, [`crate::interop`]); the parents are persistent and
//! left in place. With `lorem` instances `a`
//! and `b` registered, `zkCli.sh`:
//!
//! ```text
//! [zk: 127.0.0.1:2181(CONNECTED) 0] ls /services
//! [lorem]
//! [zk: 127.0.0.1:2181(CONNECTED) 1] ls /services/lorem
//! [a, b]
//! [zk: 127.0.0.1:2181(CONNECTED) 2] get /services/lorem/a
//! {"id":"a","service":"lorem","address":"127.0.0.1","port":8080,"tags":["v1"],"metadata":{},"weight":1,"owner":"pid4242-5f0c2a9e1b7d","name":"lorem","sslPort":null,"payload":null,"registrationTimeUTC":1796563553564,"serviceType":"DYNAMIC","uriSpec":{"parts":[...]}}
//! [zk: 127.0.0.1:2181(CONNECTED) 3] stat /services/lorem/a
//! ...
//! ephemeralOwner = 0x1000017d3f50000
//! ...
//! ```
//!
//! Another tool may write instances in that layout (`create -e
//! /services/lorem/c '{"id":"c",...}'`, ephemeral or not): they are discovered
//! like ours, and so are Curator x-discovery's (Spring Cloud Zookeeper,
//! Dubbo 3), Kratos' and go-kit's records ([`crate::interop`]). Children
//! whose data is none of these, or whose JSON names another service or id
//! than its path, are skipped with a warning (once per content at a path).
//! (The model refuses the ids `.` and `..`, which cannot be node names.)
//!
//! # Session timeout
//!
//! The session timeout is [`Config::effective_session_timeout`]:
//! the `session_timeout` setting if given, else the TTL but never less than
//! 6 s. An instance of a crashed process disappears one session timeout
//! (plus up to one server `tickTime`) after its last ping. The 6 s floor is
//! there because zookeeper-client gives a session up about 1.4 x its timeout
//! after the last reply it received, and a ZooKeeper restart takes 3-4 s
//! (SIGTERM about 2 s, then JVM start): shorter sessions would be lost across
//! every restart, and their instances would flicker out of the registry.
//! The server clamps the timeout it grants to 2..20 x its `tickTime`
//! (4-40 s with the default 2 s tick); the granted value is logged.
//!
//! # One session per registry value
//!
//! [`ZookeeperRegistry::connect`] opens one session, kept by a background
//! task that logs `Disconnected` and `SyncConnected`, and opens the next
//! session when one ends (`Expired`, closed). The registrar (the core of
//! `crate::registrar`, over this backend) uses that session as its lease:
//! when it ends, every live node is created again on the next one. Reads and
//! watches made through the same value (or its clones) use that same
//! session rather than one of their own: a persistent watch is only
//! server-side state of a session, so one session means one recovery path
//! for registrations and watches alike, and one connection for a process
//! that both registers and discovers. Watching never holds back registering:
//! each watch stream reads in its own task. When the session is replaced,
//! every watch stream adds its watch on the new one and re-reads the full
//! state. Besides the session events, the registrar checks every session
//! timeout, in one multi-read, that its nodes are still there and its own
//! (another client may have deleted one), and restores them if not. Ids
//! are unique within a service: a node holding another registrar's owner
//! token is never taken over (registering it is refused, and a node of ours
//! found holding another's token is given up), so two registrars never
//! fight over an id.
//!
//! # Outages
//!
//! A watch follows the contract of [`WatchStream`] (kept by the shared
//! sink): one `Err` item per outage, however many retries follow, and the
//! next snapshot always sent. zookeeper-client notices a server that went
//! silent (a hung process keeps its connections open) after 2/5 of the
//! session timeout without a reply, and tries the servers in turn, each
//! attempt bounded by that same 2/5. A watch that is still disconnected
//! once max(2 x TTL, 5 s) has passed since the last reply sends its `Err`,
//! but gives the reconnection at least one such attempt (a hung server
//! tried first costs one), and never waits more than `REGISTRY_TIMEOUT`
//! after the disconnection: with the 6 s session of a 2 s TTL, a hung
//! standalone server is reported about 5.4 s after it stopped answering.
//! A reconnection before that is no outage: a watch whose ensemble member
//! hangs moves to another with no `Err` and no change of the set.
//!
//! After a reconnect that keeps the session, zookeeper-client leaves two
//! things to us: events that happened while disconnected are lost
//! (ZOOKEEPER-4698), hence a full re-read; and version 0.11.2 does not
//! re-send persistent watches to the server at all (its `resend_watches`
//! only sends the data, exist and child lists), hence each watch stream adds
//! its watch again before that re-read.
//!
//! Abandoned nodes are the one exception to one session per value: each is
//! handed to a throwaway session opened for that purpose and never closed,
//! so that only that node expires while the registrar keeps the others
//! alive.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::endpoint::{Endpoint, endpoints_or_default};
use crate::error::{Error, Result, with_deadline};
use crate::interop::Interop;
use crate::model::{Instance, validate_name};
use crate::registrar::Registrar as Core;
use crate::security::Secret;
use crate::timing::Timing;
use crate::traits::{Registrar, Registration, WatchStream, Watcher};

mod config;
mod read;
mod session;

pub use self::config::{Builder, Config, MIN_DEFAULT_SESSION};

/// The backend's name in errors and logs.
const BACKEND: &str = "zookeeper";
/// Where to connect when `REGISTRY_ADDR` is not set.
const DEFAULT_ADDR: &str = "127.0.0.1:2181";

/// A connection to a ZooKeeper ensemble: registers instances as ephemeral
/// nodes of one session, and reads and watches them.
///
/// Cheap to clone; clones share the session and its background task. The
/// session is closed (and every node still registered through it removed)
/// once the last clone, registration and watch stream are dropped.
#[derive(Clone)]
pub struct ZookeeperRegistry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ZookeeperRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZookeeperRegistry")
            .field("addr", &self.shared.params.connect_string)
            .field("prefix", &self.shared.params.prefix)
            .field("session_timeout", &self.shared.params.session_timeout)
            .finish_non_exhaustive()
    }
}

/// What every handle, registration and watch of one registry shares.
#[derive(Debug)]
struct Shared {
    params: Params,
    /// The registrar: its records are ephemeral nodes of the session.
    registrar: Core<session::Sessions>,
    /// The current session; `None` while a lost one is being replaced.
    session: watch::Receiver<Option<zk::Client>>,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
struct Params {
    /// `host:port,host:port`, as zookeeper-client wants it; also the address
    /// named in errors.
    connect_string: String,
    /// The root of our nodes, `/services` by default.
    prefix: String,
    /// The deadline of every call (`REGISTRY_TIMEOUT`).
    timeout: Duration,
    /// The session timeout we ask for.
    session_timeout: Duration,
    /// `REGISTRY_TTL`: sets how soon a watch reports a server that went
    /// silent ([`silence_limit`](crate::watch_sink::silence_limit)).
    ttl: Duration,
    /// How foreign records are read and ours written.
    interop: Arc<Interop>,
    /// TLS to the ensemble's `secureClientPort`, if a CA is set.
    tls: Option<zk::TlsOptions>,
    /// The files behind `tls`, to find out why a handshake fails
    /// (zookeeper-client only says "no available hosts").
    tls_files: Option<crate::security::TlsFiles>,
    /// The first member, for that diagnosis.
    first: (String, u16),
    /// The digest identity (`REGISTRY_USER`, `REGISTRY_PASSWORD`), if set:
    /// sent with every session, and owner of our instance nodes' ACL.
    digest: Option<Digest>,
}

/// A digest identity: what the session sends (`user:password`) and the id
/// the ACLs name (`user:base64(sha1(user:password))`).
#[derive(Clone)]
pub(super) struct Digest {
    /// `user:password`, for `addauth digest`.
    credentials: Secret,
    /// `user:base64(sha1(user:password))`: not a secret in ZooKeeper's model
    /// (anyone may read ACLs), but not logged either.
    id: String,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digest(<redacted>)")
    }
}

impl Digest {
    fn new(user: &str, password: &Secret) -> Self {
        use base64::Engine as _;
        let credentials = format!("{user}:{}", password.expose());
        let hash = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            credentials.as_bytes(),
        );
        let id = format!(
            "{user}:{}",
            base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
        );
        Digest {
            credentials: Secret::new(credentials),
            id,
        }
    }
}

impl Params {
    /// `<prefix>/<service>`.
    fn service_path(&self, service: &str) -> String {
        format!("{}/{service}", self.prefix)
    }

    /// `<prefix>/<service>/<id>`.
    fn node_path(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.prefix)
    }

    /// Maps a zookeeper-client error into ours, naming what we were doing.
    fn error(&self, operation: &'static str, error: zk::Error) -> Error {
        map_error(&self.connect_string, operation, error)
    }
}

/// A failed ZooKeeper request, kept as the `source` of an [`Error`].
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {source}")]
struct RequestError {
    operation: &'static str,
    #[source]
    source: zk::Error,
}

/// Maps a zookeeper-client error into our error type.
fn map_error(addr: &str, operation: &'static str, error: zk::Error) -> Error {
    use zk::Error as Z;
    match error {
        Z::SessionExpired | Z::SessionMoved | Z::ClientClosed => Error::LeaseLost {
            backend: BACKEND,
            reason: format!("{operation} failed: {error}; a new session is being opened"),
        },
        Z::NoAuth
        | Z::AuthFailed
        | Z::InvalidAcl
        | Z::QuotaExceeded
        | Z::NoChildrenForEphemerals
        | Z::NotEmpty
        | Z::NotReadOnly
        | Z::BadArguments(_) => Error::Rejected {
            backend: BACKEND,
            operation,
            reason: error.to_string(),
        },
        other => Error::unavailable(
            BACKEND,
            addr,
            RequestError {
                operation,
                source: other,
            },
        ),
    }
}

/// zookeeper-client's TLS options from our files: the CA (required: TLS is
/// only on when one is set) and the client certificate.
fn zk_tls(tls: crate::security::TlsFiles) -> Result<zk::TlsOptions> {
    let bad = |setting: &str, e: zk::Error| {
        Error::InvalidConfig(format!("zookeeper: {setting} cannot be used: {e}"))
    };
    let Some(ca) = tls.ca else {
        return Err(Error::InvalidConfig(
            "zookeeper: TLS needs ca (REGISTRY_CA), the PEM file of the CA that signed the \
             servers' certificates"
                .to_owned(),
        ));
    };
    let mut options = zk::TlsOptions::new()
        .with_pem_ca(&ca)
        .map_err(|e| bad("ca (REGISTRY_CA)", e))?;
    if let Some((cert, key)) = tls.identity {
        options = options
            .with_pem_identity(&cert, key.expose())
            .map_err(|e| bad("cert and key (REGISTRY_CERT, REGISTRY_KEY)", e))?;
    }
    Ok(options)
}

/// Checks a service name or id: the model's rules, plus ZooKeeper's own
/// (`.` and `..` are not node names).
fn validate_node_name(what: &str, value: &str) -> Result<()> {
    validate_name(what, value)?;
    if value == "." || value == ".." {
        return Err(Error::InvalidInstance(format!(
            "{what} {value:?} cannot be a ZooKeeper node name; use letters, digits, '.', '_' or '-' but not \".\" or \"..\" alone"
        )));
    }
    Ok(())
}

impl ZookeeperRegistry {
    /// A builder that checks its settings as [`connect`](crate::connect)
    /// does, for a direct user who does not go through
    /// [`Settings`](crate::Settings).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Opens a session to the ensemble in `config.addr` (default
    /// `127.0.0.1:2181`) and starts the task that keeps it, and every
    /// instance registered through it, alive.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an address with a scheme (TLS is turned
    /// on by `REGISTRY_CA`, not by the address) or an unusable security
    /// setting; [`Error::Unavailable`] naming the address(es) if no session
    /// could be opened within `timing.timeout`, with the TLS setting that is
    /// wrong when a handshake failed.
    pub async fn connect(config: &Config, timing: Timing) -> Result<Self> {
        config.validate()?;
        timing.validate()?;
        // Accept "a:1,b:2" in one entry too, as a ZooKeeper connect string.
        let addrs: Vec<String> = config
            .addr
            .iter()
            .flat_map(|entry| entry.split(','))
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let endpoints = endpoints_or_default(BACKEND, &addrs, DEFAULT_ADDR)?;
        let tls = config.security.tls_files(BACKEND)?;
        if let Some(endpoint) = endpoints.iter().find(|e| e.scheme.is_some()) {
            return Err(Error::InvalidConfig(format!(
                "zookeeper address {} has a scheme; give host:port (TLS is on when ca / REGISTRY_CA \
                 is set, to the ensemble's secureClientPort)",
                endpoint.url("http")
            )));
        }
        let tls_files = tls.clone();
        let tls = tls.map(zk_tls).transpose()?;
        let digest = config
            .security
            .credentials(BACKEND)?
            .map(|(user, password)| Digest::new(&user, &password));
        let params = Params {
            connect_string: endpoints
                .iter()
                .map(Endpoint::authority)
                .collect::<Vec<_>>()
                .join(","),
            prefix: config.prefix.clone(),
            timeout: timing.timeout,
            session_timeout: config.effective_session_timeout(timing.ttl),
            ttl: timing.ttl,
            interop: Arc::new(config.interop.clone()),
            tls,
            tls_files,
            first: (endpoints[0].host.clone(), endpoints[0].port),
            digest,
        };
        let client = session::open_session(&params).await?;
        tracing::info!(
            backend = BACKEND,
            addr = %params.connect_string,
            session = %client.session_id(),
            requested = ?params.session_timeout,
            granted = ?client.session_timeout(),
            tls = params.tls.is_some(),
            digest_auth = params.digest.is_some(),
            "zookeeper session opened"
        );
        let (publish, session) = watch::channel(Some(client.clone()));
        tokio::spawn(session::keep_sessions(params.clone(), publish, client));
        let registrar = Core::new(
            session::Sessions::new(params.clone(), session.clone()),
            params.session_timeout,
            params.timeout,
        );
        Ok(ZookeeperRegistry {
            shared: Arc::new(Shared {
                params,
                registrar,
                session,
            }),
        })
    }

    /// This registrar's owner token: the `owner` field of every node it
    /// writes (`pid<process id>-<random>`), and what another registrar's
    /// refusal of the same id names as the holder.
    pub fn owner(&self) -> &str {
        self.shared.registrar.owner()
    }
}

#[async_trait]
impl Registrar for ZookeeperRegistry {
    async fn register(&self, instance: Instance) -> Result<Registration> {
        instance.validate()?;
        validate_node_name("service", &instance.service)?;
        validate_node_name("id", &instance.id)?;
        self.shared.registrar.register(instance).await
    }

    async fn deregister_instance(&self, service: &str, id: &str) -> Result<bool> {
        validate_node_name("service", service)?;
        validate_node_name("id", id)?;
        let shared = &self.shared;
        let path = shared.params.node_path(service, id);
        let removed = with_deadline(BACKEND, "deregister", shared.params.timeout, async {
            let client = read::current_session(&shared.session).await?;
            match client.delete(&path, None).await {
                Ok(()) => Ok(true),
                Err(zk::Error::NoNode) => Ok(false),
                Err(error) => Err(shared.params.error("deregister", error)),
            }
        })
        .await?;
        tracing::info!(backend = BACKEND, path, removed, "operator deregistration");
        Ok(removed)
    }
}

#[async_trait]
impl Watcher for ZookeeperRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_node_name("service", service)?;
        let shared = &self.shared;
        with_deadline(BACKEND, "read", shared.params.timeout, async {
            let client = read::current_session(&shared.session).await?;
            let instances = read::read_service(&shared.params, &client, service).await?;
            Ok(instances.into_values().collect())
        })
        .await
    }

    async fn services(&self) -> Result<Vec<String>> {
        let shared = &self.shared;
        with_deadline(BACKEND, "read", shared.params.timeout, async {
            let client = read::current_session(&shared.session).await?;
            read::read_services(&shared.params, &client).await
        })
        .await
    }

    fn watch(&self, service: &str) -> WatchStream {
        crate::changes::snapshots(self.watch_changes(service))
    }

    fn watch_changes(&self, service: &str) -> crate::changes::ChangeStream {
        read::watch(self.shared.clone(), service.to_owned())
    }
}
