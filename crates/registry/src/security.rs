//! Secured registries: TLS files, users, passwords and tokens, the same
//! settings for every backend.
//!
//! Every backend's `Config` carries one [`Security`] (flattened, so its keys
//! sit directly under `[backend]` in a settings file). What each backend does
//! with it:
//!
//! | setting (`[backend]` key)      | variable                          | Consul                  | etcd                    | ZooKeeper                     |
//! |--------------------------------|-----------------------------------|-------------------------|-------------------------|-------------------------------|
//! | `ca`                           | `REGISTRY_CA`                     | HTTPS trust anchor      | HTTPS trust anchor      | TLS trust anchor (secure port)|
//! | `cert`, `key`                  | `REGISTRY_CERT`, `REGISTRY_KEY`   | client certificate      | client certificate      | client certificate            |
//! | `tls_server_name`              | `REGISTRY_TLS_SERVER_NAME`        | name checked in the cert| name checked in the cert| refused (host name is used)   |
//! | `token`, `token_file`          | `REGISTRY_TOKEN(_FILE)`           | `X-Consul-Token`        | refused                 | refused                       |
//! | `user`, `password`(`_file`)    | `REGISTRY_USER`, `REGISTRY_PASSWORD(_FILE)` | refused       | etcd user (auth token refreshed) | digest identity, ACL on our nodes |
//!
//! Consul also reads its own variables (`CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`, `CONSUL_HTTP_TOKEN`,
//! `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_HTTP_SSL`); the settings above win when
//! both are set.
//!
//! TLS is on for an `https://` address, and for an address without a scheme
//! when a CA or a client certificate is configured.
//!
//! Why one type: the three backends need the same files and secrets, read
//! and checked the same way, and the one place that holds a secret is the one
//! place that must keep it out of logs: [`Secret`] prints `<redacted>` in
//! `Debug`, and no error message ever quotes a secret or a key's contents.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A password, token or private key: `Debug` prints `<redacted>`, and there
/// is no `Display`, so it cannot end up in a log line by accident.
///
/// It serializes as its value (settings are read, never written out, by this
/// crate); [`expose`](Self::expose) is the one way to read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one call that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// TLS files, user, password and token of a secured registry (the keys
/// `ca`, `cert`, `key`, `tls_server_name`, `token`, `token_file`, `user`,
/// `password`, `password_file` under `[backend]`; see the module table for
/// what each backend does with them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// PEM file of the CA(s) that signed the servers' certificates
    /// (`REGISTRY_CA`). Only these are trusted: the system roots are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM file of our client certificate, for mutual TLS (`REGISTRY_CERT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (`REGISTRY_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The name to expect in the server's certificate when it differs from
    /// the address's host (`REGISTRY_TLS_SERVER_NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Consul ACL token (`REGISTRY_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// File holding the Consul ACL token (`REGISTRY_TOKEN_FILE`), so that it
    /// stays out of the environment and the process list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// etcd user / ZooKeeper digest user (`REGISTRY_USER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's password (`REGISTRY_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the password (`REGISTRY_PASSWORD_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// The PEM contents read from the TLS files, ready for a backend's client.
#[derive(Clone)]
pub(crate) struct TlsFiles {
    /// The CA bundle, if one is configured.
    pub(crate) ca: Option<String>,
    /// Client certificate chain and private key, if configured.
    pub(crate) identity: Option<(String, Secret)>,
    /// `tls_server_name`.
    pub(crate) server_name: Option<String>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Security {
    /// Whether any TLS setting is given (which turns TLS on for addresses
    /// without a scheme).
    pub fn wants_tls(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Checks that the settings fit together and suit `backend`: a
    /// certificate needs its key, a password its user, a value and its file
    /// exclude each other, and a backend refuses what it cannot use (so that
    /// a forgotten setting is not silently ignored).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the settings.
    pub fn validate(&self, backend: &'static str) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidConfig(format!("{backend}: {why}")));
        if self.cert.is_some() != self.key.is_some() {
            return bad(
                "a client certificate needs both cert (REGISTRY_CERT) and key (REGISTRY_KEY)"
                    .to_owned(),
            );
        }
        if self.password.is_some() && self.password_file.is_some() {
            return bad(
                "give either password (REGISTRY_PASSWORD) or password_file (REGISTRY_PASSWORD_FILE), not both"
                    .to_owned(),
            );
        }
        if self.token.is_some() && self.token_file.is_some() {
            return bad(
                "give either token (REGISTRY_TOKEN) or token_file (REGISTRY_TOKEN_FILE), not both"
                    .to_owned(),
            );
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        let has_token = self.token.is_some() || self.token_file.is_some();
        if let Some(name) = &self.tls_server_name {
            if name.trim().is_empty() || name.contains(['/', ' ', ':']) {
                return bad(format!(
                    "tls_server_name {name:?} is not a DNS name or IP address"
                ));
            }
        }
        match backend {
            "consul" if self.user.is_some() || has_password => {
                return bad(
                    "Consul authenticates with an ACL token (token, token_file or CONSUL_HTTP_TOKEN), \
                     not with user/password"
                        .to_owned(),
                );
            }
            "etcd" | "zookeeper" => {
                if has_token {
                    return bad(format!(
                        "{backend} authenticates with user and password (REGISTRY_USER, REGISTRY_PASSWORD), \
                         a token is for Consul"
                    ));
                }
                if self.user.is_some() != has_password {
                    return bad(
                        "user (REGISTRY_USER) and password (REGISTRY_PASSWORD or REGISTRY_PASSWORD_FILE) \
                         go together"
                            .to_owned(),
                    );
                }
                if let Some(user) = &self.user {
                    if user.is_empty() || (backend == "zookeeper" && user.contains(':')) {
                        return bad(format!("user {user:?} is empty or contains ':'"));
                    }
                }
                if backend == "zookeeper" && self.tls_server_name.is_some() {
                    return bad(
                        "tls_server_name is not supported for ZooKeeper: the server's certificate must \
                         name the host of the address"
                            .to_owned(),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reads the TLS files named by the settings; `None` when none is set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting and the file that cannot
    /// be read or holds no PEM block.
    pub(crate) fn tls_files(&self, backend: &'static str) -> Result<Option<TlsFiles>> {
        if !self.wants_tls() && self.tls_server_name.is_none() {
            return Ok(None);
        }
        let ca = self
            .ca
            .as_deref()
            .map(|path| read_pem(backend, "ca (REGISTRY_CA)", path, "CERTIFICATE"))
            .transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read_pem(backend, "cert (REGISTRY_CERT)", cert, "CERTIFICATE")?,
                Secret(read_pem(backend, "key (REGISTRY_KEY)", key, "PRIVATE KEY")?),
            )),
            _ => None,
        };
        Ok(Some(TlsFiles {
            ca,
            identity,
            server_name: self.tls_server_name.clone(),
        }))
    }

    /// The password, from `password` or `password_file`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the file cannot be read or is empty.
    pub(crate) fn password(&self, backend: &'static str) -> Result<Option<Secret>> {
        secret_of(
            backend,
            &self.password,
            self.password_file.as_deref(),
            "password_file (REGISTRY_PASSWORD_FILE)",
        )
    }

    /// The token, from `token` or `token_file`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the file cannot be read or is empty.
    pub(crate) fn token(&self, backend: &'static str) -> Result<Option<Secret>> {
        secret_of(
            backend,
            &self.token,
            self.token_file.as_deref(),
            "token_file (REGISTRY_TOKEN_FILE)",
        )
    }

    /// The user and password, if a user is configured.
    ///
    /// # Errors
    /// As [`password`](Self::password).
    pub(crate) fn credentials(&self, backend: &'static str) -> Result<Option<(String, Secret)>> {
        match (&self.user, self.password(backend)?) {
            (Some(user), Some(password)) => Ok(Some((user.clone(), password))),
            _ => Ok(None),
        }
    }
}

/// A secret given inline or in a file (trailing newline trimmed).
pub(crate) fn secret_of(
    backend: &'static str,
    inline: &Option<Secret>,
    file: Option<&Path>,
    setting: &str,
) -> Result<Option<Secret>> {
    if let Some(secret) = inline {
        return Ok(Some(secret.clone()));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidConfig(format!(
            "{backend}: {setting} {} cannot be read: {e}",
            path.display()
        ))
    })?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.trim().is_empty() {
        return Err(Error::InvalidConfig(format!(
            "{backend}: {setting} {} is empty",
            path.display()
        )));
    }
    Ok(Some(Secret(value.to_owned())))
}

/// Reads a PEM file and checks that it holds a block of the expected kind
/// (`CERTIFICATE`; `PRIVATE KEY` also matches `RSA PRIVATE KEY`, `EC PRIVATE
/// KEY`). The contents never appear in the error.
fn read_pem(backend: &'static str, setting: &str, path: &Path, kind: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidConfig(format!(
            "{backend}: {setting} file {} cannot be read: {e}",
            path.display()
        ))
    })?;
    let found = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains(kind));
    if !found {
        return Err(Error::InvalidConfig(format!(
            "{backend}: {setting} file {} holds no PEM {kind} block",
            path.display()
        )));
    }
    Ok(text)
}

/// Names the likely cause of a TLS or authentication failure from the text
/// of an error chain, so that the error says what is wrong in our settings'
/// words instead of only a library's.
pub(crate) fn diagnose(chain: &str) -> Option<&'static str> {
    let lower = chain.to_ascii_lowercase();
    let rules: &[(&[&str], &str)] = &[
        (
            &[
                "unknownissuer",
                "unknown issuer",
                "unknownca",
                "unknown ca",
                "badsignature",
            ],
            "the server's certificate is not signed by the CA in ca (REGISTRY_CA)",
        ),
        (
            &[
                "notvalidforname",
                "not valid for name",
                "certificate is not valid for",
            ],
            "the server's certificate does not name this host; set tls_server_name (REGISTRY_TLS_SERVER_NAME) to a name it has",
        ),
        (
            &[
                "certificaterequired",
                "certificate required",
                "bad certificate",
                "badcertificate",
            ],
            "the server requires a client certificate it accepts: set cert and key (REGISTRY_CERT, REGISTRY_KEY) to one signed by its CA",
        ),
        (
            &[
                "invalidcontenttype",
                "corrupt message",
                "received corrupt message",
                "invalid http version",
                "http2 error",
                "frame with invalid size",
            ],
            "TLS and plain-text do not match: the address's scheme (http/https) or the TLS settings disagree with what the server speaks",
        ),
        (
            &[
                "authentication failed",
                "invalid user id or password",
                "invalid password",
            ],
            "the user or password (REGISTRY_USER, REGISTRY_PASSWORD) is wrong",
        ),
        (
            &["acl not found", "permission denied", "acl: permission"],
            "the credentials lack a permission: check the ACL token / user's role",
        ),
        (
            &["user name is empty"],
            "the server requires a user: set user and password (REGISTRY_USER, REGISTRY_PASSWORD)",
        ),
    ];
    rules
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| lower.contains(n)))
        .map(|(_, hint)| *hint)
}

/// Finds out why a TLS connection to `host:port` with `tls` fails, by doing
/// one handshake of our own (and reading for a moment, since with TLS 1.3 a
/// refused client certificate only shows after the handshake): for client
/// libraries that only say "no available hosts" or "connection closed".
/// Returns the failure with the likely cause in our settings' words, or
/// `None` if the handshake works (or the server cannot be reached at all).
pub(crate) async fn tls_failure(
    host: &str,
    port: u16,
    tls: &TlsFiles,
    within: std::time::Duration,
) -> Option<String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt as _;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca.as_deref()?.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let config = match &tls.identity {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
                .flatten()
                .collect();
            let key = PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        None => builder.with_no_client_auth(),
    };
    let name = tls.server_name.as_deref().unwrap_or(host).to_owned();
    let name = ServerName::try_from(name).ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut stream = match connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(error) => return Some(chain(&error)),
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(
            std::time::Duration::from_millis(300),
            stream.read(&mut byte),
        )
        .await
        {
            Ok(Err(error)) => Some(chain(&error)),
            _ => None,
        }
    };
    let failure = tokio::time::timeout(within, attempt).await.ok()??;
    Some(match diagnose(&failure) {
        Some(hint) => format!("TLS: {failure} (likely: {hint})"),
        None => format!("TLS: {failure}"),
    })
}

/// The whole `source` chain of an error, `: `-separated.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let security = Security {
            user: Some("svc".into()),
            password: Some(Secret::new("hunter2-password")),
            token: Some(Secret::new("s3cr3t-token")),
            ..Security::default()
        };
        let shown = format!("{security:?} {security:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("svc"), "the user is not a secret: {shown}");
    }

    #[test]
    fn settings_must_fit_together() {
        let cert_only = Security {
            cert: Some("c.pem".into()),
            ..Security::default()
        };
        assert!(
            cert_only
                .validate("etcd")
                .unwrap_err()
                .to_string()
                .contains("key")
        );
        let token = Security {
            token: Some("t".into()),
            ..Security::default()
        };
        assert!(token.validate("consul").is_ok());
        assert!(
            token
                .validate("etcd")
                .unwrap_err()
                .to_string()
                .contains("token is for Consul")
        );
        let user = Security {
            user: Some("u".into()),
            ..Security::default()
        };
        assert!(
            user.validate("etcd")
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
        let both = Security {
            user: Some("u".into()),
            password: Some("p".into()),
            password_file: Some("f".into()),
            ..Security::default()
        };
        assert!(
            both.validate("zookeeper")
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
    }

    #[test]
    fn files_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("registry-security-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a pem").unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "pa55word\n").unwrap();
        let security = Security {
            ca: Some(ca.clone()),
            user: Some("u".into()),
            password_file: Some(pw),
            ..Security::default()
        };
        let err = security.tls_files("etcd").unwrap_err().to_string();
        assert!(
            err.contains("ca (REGISTRY_CA)") && err.contains("no PEM"),
            "{err}"
        );
        assert_eq!(
            security.password("etcd").unwrap().unwrap().expose(),
            "pa55word"
        );
        let missing = Security {
            ca: Some(dir.join("absent.pem")),
            ..Security::default()
        };
        let err = missing.tls_files("consul").unwrap_err().to_string();
        assert!(err.contains("cannot be read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn diagnoses_name_the_setting() {
        assert!(
            diagnose("invalid peer certificate: UnknownIssuer")
                .unwrap()
                .contains("REGISTRY_CA")
        );
        assert!(
            diagnose("received fatal alert: CertificateRequired")
                .unwrap()
                .contains("REGISTRY_CERT")
        );
        assert!(
            diagnose("etcdserver: authentication failed, invalid user ID or password")
                .unwrap()
                .contains("REGISTRY_PASSWORD")
        );
        assert_eq!(diagnose("connection refused"), None);
    }
}
