//! Secured registry servers: TLS with certificates made when the test runs
//! ([`Pki`], with `rcgen`; nothing is committed), users, passwords, tokens
//! and ACLs, one server per backend:
//!
//! | server           | TLS                                                       | identities                                                                 |
//! |------------------|-----------------------------------------------------------|----------------------------------------------------------------------------|
//! | [`SecuredEtcd`]  | `https://` client URL, `--client-cert-auth` (mutual TLS)  | `auth enable`; `root`, [`ETCD_USER`] whose role reads and writes only `/services/`, [`ETCD_READER`] who may only read it |
//! | [`SecuredConsul`]| HTTPS port with `verify_incoming` (client cert required)  | ACLs on, default deny; a management token, a writer token for services `sec-*`, a read-only token |
//! | [`SecuredZk`]    | `secureClientPort` (Netty, PEM key and trust stores, client cert required) | digest users are the client's business: the registry puts the ACL on its nodes |
//!
//! Each one also keeps a plain-text loopback port that only the kit uses, to
//! probe readiness and to set up users and policies (etcd's metrics URL,
//! Consul's HTTP port, ZooKeeper's `clientPort` for four-letter words).
//! Everything listens on 127.0.0.1 with ports from [`free_port`], in a temp
//! dir removed on drop, like the other servers of the kit.

use std::ffi::OsString;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tracing::info;

use crate::RegistryServer;
use crate::bins::{consul_bin, etcd_bin, etcdctl_bin, java_bin, zk_classpath};
use crate::process::{
    Proc, Spec, StartFailure, exchange, four_letter_word, free_port, http_get, temp_dir,
    wait_ready, with_port_retries,
};

/// How long a secured server may take to be ready (and set up).
const READY_TIMEOUT: Duration = Duration::from_secs(40);

/// The etcd user the registry logs in as: its role reads and writes the
/// keys under `/services/` and nothing else.
pub const ETCD_USER: (&str, &str) = ("registry", "registry-pw");
/// An etcd user who may read `/services/` but not write it.
pub const ETCD_READER: (&str, &str) = ("reader", "reader-pw");
/// etcd's `root` user (every permission).
pub const ETCD_ROOT: (&str, &str) = ("root", "root-pw");
/// The key prefix [`ETCD_USER`]'s role covers.
pub const ETCD_PREFIX: &str = "/services/";
/// The service-name prefix the Consul writer token may register (besides
/// `lorem`, for the secured local topology).
pub const CONSUL_SERVICE_PREFIX: &str = "svc";

/// Certificates and keys for one test run, as PEM files in a temp dir:
/// a CA, a server certificate for `localhost` and `127.0.0.1` signed by it,
/// a client certificate signed by it, and an unrelated CA with a client
/// certificate of its own (the "wrong CA" of failure tests).
#[derive(Debug)]
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates everything (ECDSA P-256 keys, aws-lc-rs).
    ///
    /// # Errors
    /// If a key cannot be generated or a file written.
    pub fn generate() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-pki-")
            .tempdir()
            .context("cannot create a temp dir for the certificates")?;
        let write = |name: &str, pem: &str| -> Result<()> {
            std::fs::write(dir.path().join(name), pem)
                .with_context(|| format!("cannot write {name}"))
        };
        for (prefix, cn) in [("", "testkit CA"), ("other-", "testkit other CA")] {
            let ca_key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let ca = CertifiedIssuer::self_signed(params, ca_key)?;
            write(&format!("{prefix}ca.pem"), &ca.pem())?;
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            for (who, usages) in [
                (
                    "server",
                    vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                ),
                ("client", vec![ExtendedKeyUsagePurpose::ClientAuth]),
            ] {
                if prefix == "other-" && who == "server" {
                    continue;
                }
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(names.clone())?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, format!("testkit {prefix}{who}"));
                params.extended_key_usages = usages;
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                let cert = params.signed_by(&key, &ca)?;
                write(&format!("{prefix}{who}.pem"), &cert.pem())?;
                write(&format!("{prefix}{who}-key.pem"), &key.serialize_pem())?;
                // Java's PEM key store wants the key and the chain in one file.
                write(
                    &format!("{prefix}{who}-bundle.pem"),
                    &format!("{}{}", key.serialize_pem(), cert.pem()),
                )?;
            }
        }
        Ok(Self { dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The CA that signed the servers' and the client's certificates.
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }
    /// The client certificate (signed by [`Self::ca`]).
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.pem")
    }
    /// The client certificate's private key.
    pub fn client_key(&self) -> PathBuf {
        self.file("client-key.pem")
    }
    /// The server certificate (`localhost`, `127.0.0.1`).
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }
    /// The server certificate's private key.
    pub fn server_key(&self) -> PathBuf {
        self.file("server-key.pem")
    }
    /// A CA that signed none of the servers' certificates.
    pub fn other_ca(&self) -> PathBuf {
        self.file("other-ca.pem")
    }
    /// A client certificate signed by [`Self::other_ca`], which the
    /// servers do not trust.
    pub fn other_client_cert(&self) -> PathBuf {
        self.file("other-client.pem")
    }
    /// Its private key.
    pub fn other_client_key(&self) -> PathBuf {
        self.file("other-client-key.pem")
    }
    /// The directory of all the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A random-looking UUID (Consul token secrets), from the std hasher's
/// random keys, the time and the process id.
fn uuid() -> String {
    let state = RandomState::new();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let a = state.hash_one((nanos, std::process::id(), 1u8));
    let b = state.hash_one((nanos, std::process::id(), 2u8));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// A single etcd node with mutual TLS on its client URL and authentication
/// on: users `root`, [`ETCD_USER`] (read-write on [`ETCD_PREFIX`]) and
/// [`ETCD_READER`] (read-only there). Simple auth tokens, whose TTL can be
/// made short to test their refresh ([`Self::start_with_token_ttl`]).
#[derive(Debug)]
pub struct SecuredEtcd {
    proc: Proc,
    client_port: u16,
    metrics_port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    dir: TempDir,
}

impl SecuredEtcd {
    /// Starts the node with `pki`'s server certificate and sets up the
    /// users (default auth token TTL, 300 s).
    ///
    /// # Errors
    /// If etcd or etcdctl is missing, or the node is not ready or cannot be
    /// set up within 40 s (the message quotes its log or etcdctl's output).
    pub fn start(pki: &Pki) -> Result<Self> {
        Self::start_with_token_ttl(pki, None)
    }

    /// As [`Self::start`], with `--auth-token-ttl` (whole seconds): a simple
    /// token unused for that long expires.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with_token_ttl(pki: &Pki, token_ttl: Option<Duration>) -> Result<Self> {
        let bin = etcd_bin()?;
        etcdctl_bin()?;
        let etcd = with_port_retries("secured etcd", || {
            let dir = temp_dir("testkit-etcd-tls-", "etcd")?;
            let (client, peer, metrics) = (free_port(), free_port(), free_port());
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut args: Vec<OsString> = vec![
                "--name".into(),
                "s".into(),
                "--data-dir".into(),
                dir.path().join("data").into(),
                "--listen-client-urls".into(),
                client_url.clone().into(),
                "--advertise-client-urls".into(),
                client_url.into(),
                "--listen-peer-urls".into(),
                peer_url.clone().into(),
                "--initial-advertise-peer-urls".into(),
                peer_url.clone().into(),
                "--initial-cluster".into(),
                format!("s={peer_url}").into(),
                "--listen-metrics-urls".into(),
                format!("http://127.0.0.1:{metrics}").into(),
                "--cert-file".into(),
                pki.server_cert().into(),
                "--key-file".into(),
                pki.server_key().into(),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                pki.ca().into(),
                "--auth-token".into(),
                "simple".into(),
                "--logger=zap".into(),
                "--log-level=warn".into(),
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
            ];
            if let Some(ttl) = token_ttl {
                args.push(format!("--auth-token-ttl={}", ttl.as_secs().max(1)).into());
            }
            let proc = Proc::new(Spec {
                label: format!("secured etcd (client port {client})"),
                program: bin.clone(),
                args,
                cwd: dir.path().to_owned(),
                log: dir.path().join("etcd.log"),
                env: Vec::new(),
                clear_env: false,
                cleanup: Some(dir.path().to_owned()),
            });
            let mut etcd = SecuredEtcd {
                proc,
                client_port: client,
                metrics_port: metrics,
                ca: pki.ca(),
                cert: pki.client_cert(),
                key: pki.client_key(),
                dir,
            };
            etcd.spawn_and_wait()?;
            Ok(etcd)
        })?;
        etcd.set_up_auth()?;
        info!(endpoint = %etcd.endpoint(), "secured etcd started");
        Ok(etcd)
    }

    fn spawn_and_wait(&mut self) -> std::result::Result<(), StartFailure> {
        self.proc.spawn().map_err(StartFailure::Other)?;
        let metrics = self.metrics_port;
        wait_ready([&mut self.proc], READY_TIMEOUT, "secured etcd", |_| {
            matches!(http_get(metrics, "/health"), Ok((200, _)))
        })
    }

    fn set_up_auth(&self) -> Result<()> {
        let (root, root_pw) = ETCD_ROOT;
        let (user, user_pw) = ETCD_USER;
        let (reader, reader_pw) = ETCD_READER;
        let steps: Vec<Vec<String>> = vec![
            vec!["user".into(), "add".into(), format!("{root}:{root_pw}")],
            vec![
                "user".into(),
                "grant-role".into(),
                root.into(),
                "root".into(),
            ],
            vec!["role".into(), "add".into(), "registry".into()],
            vec![
                "role".into(),
                "grant-permission".into(),
                "registry".into(),
                "--prefix=true".into(),
                "readwrite".into(),
                ETCD_PREFIX.into(),
            ],
            vec!["user".into(), "add".into(), format!("{user}:{user_pw}")],
            vec![
                "user".into(),
                "grant-role".into(),
                user.into(),
                "registry".into(),
            ],
            vec!["role".into(), "add".into(), "reader".into()],
            vec![
                "role".into(),
                "grant-permission".into(),
                "reader".into(),
                "--prefix=true".into(),
                "read".into(),
                ETCD_PREFIX.into(),
            ],
            vec!["user".into(), "add".into(), format!("{reader}:{reader_pw}")],
            vec![
                "user".into(),
                "grant-role".into(),
                reader.into(),
                "reader".into(),
            ],
            vec!["auth".into(), "enable".into()],
        ];
        for step in steps {
            self.etcdctl_as(None, &step)?;
        }
        Ok(())
    }

    /// Runs `etcdctl` over mutual TLS as `user` (`None`: no user, as
    /// before `auth enable`), returning its standard output.
    ///
    /// # Errors
    /// If etcdctl fails; the message quotes its output.
    pub fn etcdctl_as(&self, user: Option<(&str, &str)>, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(etcdctl_bin()?);
        cmd.env_clear()
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg(format!("--cacert={}", self.ca.display()))
            .arg(format!("--cert={}", self.cert.display()))
            .arg(format!("--key={}", self.key.display()))
            .arg("--command-timeout=10s");
        if let Some((name, password)) = user {
            cmd.arg(format!("--user={name}:{password}"));
        }
        cmd.args(args);
        let out = cmd.output().context("cannot run etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `https://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// The PID while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The temp dir with the data and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl RegistryServer for SecuredEtcd {
    fn backend(&self) -> &'static str {
        "etcd"
    }
    fn registry_addr(&self) -> String {
        self.endpoint()
    }
    fn stop(&mut self) -> Result<()> {
        self.proc.stop()
    }
    fn start(&mut self) -> Result<()> {
        if self.proc.is_running() {
            return Ok(());
        }
        self.spawn_and_wait().map_err(StartFailure::into_error)
    }
    fn pause(&mut self) -> Result<()> {
        self.proc.set_paused(true)
    }
    fn resume(&mut self) -> Result<()> {
        self.proc.set_paused(false)
    }
}

/// A Consul dev agent with an HTTPS port that requires a client certificate
/// signed by the kit's CA (`verify_incoming`) and ACLs on with default deny:
/// a management token, a writer token whose policy may register services
/// named [`CONSUL_SERVICE_PREFIX`]`*` and `lorem` and read everything, and a read-only
/// token. A dev agent keeps no data, so a restart sets the same tokens up
/// again.
#[derive(Debug)]
pub struct SecuredConsul {
    proc: Proc,
    http_port: u16,
    https_port: u16,
    management: String,
    writer: String,
    reader: String,
    dir: TempDir,
}

impl SecuredConsul {
    /// Starts the agent with `pki`'s server certificate and sets up the
    /// tokens and policies.
    ///
    /// # Errors
    /// If Consul is missing (the message says how to get it) or the agent
    /// is not ready within 40 s (the message quotes its log).
    pub fn start(pki: &Pki) -> Result<Self> {
        let bin = consul_bin()?;
        let management = uuid();
        let writer = uuid();
        let reader = uuid();
        let consul = with_port_retries("secured Consul", || {
            let dir = temp_dir("testkit-consul-tls-", "Consul")?;
            let (http, https, server, lan, wan) = (
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            );
            let config = serde_like_json(&[
                (
                    "ports",
                    format!(
                        "{{\"http\": {http}, \"https\": {https}, \"grpc\": -1, \"grpc_tls\": -1, \"dns\": -1, \
                         \"server\": {server}, \"serf_lan\": {lan}, \"serf_wan\": {wan}}}"
                    ),
                ),
                (
                    "tls",
                    format!(
                        "{{\"defaults\": {{\"ca_file\": {ca:?}, \"cert_file\": {cert:?}, \"key_file\": {key:?}}}, \
                         \"https\": {{\"verify_incoming\": true}}}}",
                        ca = pki.ca().display().to_string(),
                        cert = pki.server_cert().display().to_string(),
                        key = pki.server_key().display().to_string(),
                    ),
                ),
                (
                    "acl",
                    format!(
                        "{{\"enabled\": true, \"default_policy\": \"deny\", \"enable_token_persistence\": false, \
                         \"tokens\": {{\"initial_management\": {management:?}, \"agent\": {management:?}}}}}"
                    ),
                ),
            ]);
            let config_path = dir.path().join("secured.json");
            std::fs::write(&config_path, config)
                .context("cannot write the Consul config")
                .map_err(StartFailure::Other)?;
            let node = format!("testkit-secured-{}-{https}", std::process::id());
            let args: Vec<OsString> = [
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
                "-log-level=warn",
                "-node",
                &node,
                "-config-file",
                &config_path.display().to_string(),
            ]
            .iter()
            .map(OsString::from)
            .collect();
            let proc = Proc::new(Spec {
                label: format!("secured Consul (HTTPS port {https})"),
                program: bin.clone(),
                args,
                cwd: dir.path().to_owned(),
                log: dir.path().join("consul.log"),
                env: vec![("CHECKPOINT_DISABLE".into(), "1".into())],
                clear_env: false,
                cleanup: Some(dir.path().to_owned()),
            });
            let mut consul = SecuredConsul {
                proc,
                http_port: http,
                https_port: https,
                management: management.clone(),
                writer: writer.clone(),
                reader: reader.clone(),
                dir,
            };
            consul.spawn_and_wait()?;
            Ok(consul)
        })?;
        consul.set_up_acl()?;
        info!(https = %consul.https_addr(), "secured Consul started");
        Ok(consul)
    }

    fn spawn_and_wait(&mut self) -> std::result::Result<(), StartFailure> {
        self.proc.spawn().map_err(StartFailure::Other)?;
        let port = self.http_port;
        let management = self.management.clone();
        wait_ready([&mut self.proc], READY_TIMEOUT, "secured Consul", |_| {
            matches!(
                http_get(port, "/v1/status/leader"),
                Ok((200, body)) if body.trim().len() > 2
            ) && matches!(
                http_request(port, "GET", "/v1/acl/token/self", &management, ""),
                Ok((200, _))
            )
        })
    }

    fn set_up_acl(&self) -> Result<()> {
        let writer_rules = format!(
            "service_prefix \\\"{CONSUL_SERVICE_PREFIX}\\\" {{ policy = \\\"write\\\" }}\\n\
             service \\\"lorem\\\" {{ policy = \\\"write\\\" }}\\n\
             service_prefix \\\"\\\" {{ policy = \\\"read\\\" }}\\n\
             node_prefix \\\"\\\" {{ policy = \\\"read\\\" }}\\n\
             agent_prefix \\\"\\\" {{ policy = \\\"read\\\" }}"
        );
        let reader_rules = "service_prefix \\\"\\\" { policy = \\\"read\\\" }\\n\
             node_prefix \\\"\\\" { policy = \\\"read\\\" }\\n\
             agent_prefix \\\"\\\" { policy = \\\"read\\\" }";
        for (policy, rules, secret) in [
            ("registry-writer", writer_rules.as_str(), &self.writer),
            ("registry-reader", reader_rules, &self.reader),
        ] {
            let body = format!("{{\"Name\": \"{policy}\", \"Rules\": \"{rules}\"}}");
            self.put("/v1/acl/policy", &body)?;
            let body = format!(
                "{{\"SecretID\": \"{secret}\", \"Description\": \"testkit {policy}\", \
                 \"Policies\": [{{\"Name\": \"{policy}\"}}]}}"
            );
            self.put("/v1/acl/token", &body)?;
        }
        Ok(())
    }

    fn put(&self, path: &str, body: &str) -> Result<()> {
        match http_request(self.http_port, "PUT", path, &self.management, body)? {
            (200, _) => Ok(()),
            (status, answer) => Err(anyhow!("PUT {path} answered {status}: {answer}")),
        }
    }

    /// `https://127.0.0.1:port`: the HTTPS API.
    pub fn https_addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// The token allowed everything.
    pub fn management_token(&self) -> &str {
        &self.management
    }

    /// The token whose policy may register services named
    /// [`CONSUL_SERVICE_PREFIX`]`*` and read the catalog.
    pub fn writer_token(&self) -> &str {
        &self.writer
    }

    /// The token that may only read.
    pub fn reader_token(&self) -> &str {
        &self.reader
    }

    /// The PID while the agent runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The temp dir with the config and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl RegistryServer for SecuredConsul {
    fn backend(&self) -> &'static str {
        "consul"
    }
    fn registry_addr(&self) -> String {
        self.https_addr()
    }
    fn stop(&mut self) -> Result<()> {
        self.proc.stop()
    }
    fn start(&mut self) -> Result<()> {
        if self.proc.is_running() {
            return Ok(());
        }
        self.spawn_and_wait().map_err(StartFailure::into_error)?;
        self.set_up_acl()
    }
    fn pause(&mut self) -> Result<()> {
        self.proc.set_paused(true)
    }
    fn resume(&mut self) -> Result<()> {
        self.proc.set_paused(false)
    }
}

/// `{"k": v, ...}` from already-encoded JSON values.
fn serde_like_json(fields: &[(&str, String)]) -> String {
    let body = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect::<Vec<_>>()
        .join(",\n");
    format!("{{\n{body}\n}}\n")
}

/// One HTTP/1.0 request with a Consul token on the kit's plain port.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let reply = exchange(
        port,
        format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nX-Consul-Token: {token}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status line"))?;
    Ok((status, body.to_owned()))
}

/// A standalone ZooKeeper with a TLS `secureClientPort` (Netty; PEM key and
/// trust stores; client certificates required). Its plain `clientPort` is
/// kept on loopback for the kit's four-letter-word probe.
#[derive(Debug)]
pub struct SecuredZk {
    proc: Proc,
    client_port: u16,
    secure_port: u16,
    dir: TempDir,
}

impl SecuredZk {
    /// Starts the server with `pki`'s server certificate.
    ///
    /// # Errors
    /// If Java or ZooKeeper is missing (the message says how to install
    /// them) or the server does not serve within 40 s.
    pub fn start(pki: &Pki) -> Result<Self> {
        let java = java_bin()?;
        // zookeeper.jar's manifest names netty-handler and netty-transport
        // but not the codec and resolver jars the TLS server also loads
        // (Debian's libnetty-java, a dependency of the zookeeper package).
        let classpath = zk_classpath()?;
        for jar in ["netty-codec.jar", "netty-resolver.jar"] {
            let path = Path::new("/usr/share/java").join(jar);
            if !path.is_file() {
                bail!(
                    "ZooKeeper's TLS server needs {}: apt-get install libnetty-java (a dependency \
                     of Debian's zookeeper package; scripts/install-deps.sh test installs it)",
                    path.display()
                );
            }
        }
        let classpath = format!(
            "{classpath}:/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar"
        );
        let zk = with_port_retries("secured ZooKeeper", || {
            let dir = temp_dir("testkit-zk-tls-", "ZooKeeper")?;
            let (client, secure) = (free_port(), free_port());
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data)
                .context("cannot create the data dir")
                .map_err(StartFailure::Other)?;
            let cfg = format!(
                "tickTime=500\n\
                 dataDir={data}\n\
                 clientPort={client}\n\
                 clientPortAddress=127.0.0.1\n\
                 secureClientPort={secure}\n\
                 secureClientPortAddress=127.0.0.1\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                 ssl.keyStore.location={keystore}\n\
                 ssl.keyStore.type=PEM\n\
                 ssl.trustStore.location={ca}\n\
                 ssl.trustStore.type=PEM\n\
                 ssl.clientAuth=need\n\
                 ssl.hostnameVerification=false\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,mntr\n\
                 maxClientCnxns=0\n",
                data = data.display(),
                keystore = pki.file("server-bundle.pem").display(),
                ca = pki.ca().display(),
            );
            let cfg_path = dir.path().join("zoo.cfg");
            std::fs::write(&cfg_path, cfg)
                .context("cannot write zoo.cfg")
                .map_err(StartFailure::Other)?;
            let args = crate::zookeeper::server_args(
                crate::zookeeper::DEFAULT_HEAP_MIB,
                &classpath,
                &cfg_path,
            );
            let proc = Proc::new(Spec {
                label: format!("secured ZooKeeper (secure port {secure})"),
                program: java.clone(),
                args,
                cwd: dir.path().to_owned(),
                log: dir.path().join("zookeeper.log"),
                env: Vec::new(),
                clear_env: false,
                cleanup: Some(dir.path().to_owned()),
            });
            let mut zk = SecuredZk {
                proc,
                client_port: client,
                secure_port: secure,
                dir,
            };
            zk.spawn_and_wait()?;
            Ok(zk)
        })?;
        info!(secure = %zk.secure_addr(), "secured ZooKeeper started");
        Ok(zk)
    }

    fn spawn_and_wait(&mut self) -> std::result::Result<(), StartFailure> {
        self.proc.spawn().map_err(StartFailure::Other)?;
        let (client, secure) = (self.client_port, self.secure_port);
        wait_ready([&mut self.proc], READY_TIMEOUT, "secured ZooKeeper", |_| {
            matches!(four_letter_word(client, "srvr"), Ok(answer) if answer.contains("Mode: standalone"))
                && crate::process::accepts_tcp(secure)
        })
    }

    /// `127.0.0.1:port` of the TLS port.
    pub fn secure_addr(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }

    /// `127.0.0.1:port` of the plain port (the kit's probe; also shows what
    /// an unencrypted client sees).
    pub fn plain_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The JVM's PID while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// The temp dir with `zoo.cfg`, the data and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl RegistryServer for SecuredZk {
    fn backend(&self) -> &'static str {
        "zookeeper"
    }
    fn registry_addr(&self) -> String {
        self.secure_addr()
    }
    fn stop(&mut self) -> Result<()> {
        self.proc.stop()
    }
    fn start(&mut self) -> Result<()> {
        if self.proc.is_running() {
            return Ok(());
        }
        self.spawn_and_wait().map_err(StartFailure::into_error)
    }
    fn pause(&mut self) -> Result<()> {
        self.proc.set_paused(true)
    }
    fn resume(&mut self) -> Result<()> {
        self.proc.set_paused(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_files_are_pem() {
        let pki = Pki::generate().unwrap();
        for path in [
            pki.ca(),
            pki.client_cert(),
            pki.server_cert(),
            pki.other_ca(),
        ] {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("-----BEGIN CERTIFICATE-----"),
                "{}",
                path.display()
            );
        }
        let key = std::fs::read_to_string(pki.client_key()).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert_ne!(uuid(), uuid());
        assert_eq!(uuid().len(), 36);
    }
}
