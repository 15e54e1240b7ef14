//! The healthcheck a container runs: probe `GET /ready` and say whether
//! the server is registered (`lorem-server healthcheck`).
//!
//! ```
//! use lorem::health::ready_url;
//!
//! assert_eq!(ready_url("0.0.0.0:8080".parse().unwrap()), "http://127.0.0.1:8080/ready");
//! assert_eq!(ready_url("[::]:80".parse().unwrap()), "http://[::1]:80/ready");
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// `http://<listen>/ready`, probing loopback when listening on all addresses.
///
/// `/ready` rather than `/health`: a container marked healthy is one that
/// clients can discover (compose starts the gateway once both servers are
/// healthy), and a server answers `/health` before its registration lands.
pub fn ready_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/ready", SocketAddr::new(ip, listen.port()))
}

/// Why a probe says "unhealthy".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The HTTP client could not be built (TLS set-up and the like).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Nothing answered within the timeout: not listening, or hung.
    #[error("no answer: {0}")]
    NoAnswer(#[source] reqwest::Error),
    /// The answer was not the JSON the lorem routes send.
    #[error("answer {status} is not JSON: {source}")]
    NotJson {
        /// The HTTP status of the answer.
        status: reqwest::StatusCode,
        /// What the decoder said.
        #[source]
        source: reqwest::Error,
    },
    /// An answer other than 2xx `{"status": true}`: `/ready` says 503
    /// `{"status": false, "reason": ...}` while the instance is not
    /// registered.
    #[error("answer {status} {body}")]
    NotReady {
        /// The HTTP status of the answer.
        status: reqwest::StatusCode,
        /// The answer's body, which says why.
        body: serde_json::Value,
    },
}

/// Probes `url`: `Ok` if it answers 2xx `{"status": true}` within
/// `timeout` (`/ready`: registered; `/health`: serving).
///
/// # Errors
/// A [`ProbeError`] saying what was wrong with the answer, or that there
/// was none.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(ProbeError::Client)?;
    let response = client.get(url).send().await.map_err(ProbeError::NoAnswer)?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|source| ProbeError::NotJson { status, source })?;
    if status.is_success() && body.get("status") == Some(&serde_json::Value::Bool(true)) {
        Ok(())
    } else {
        Err(ProbeError::NotReady { status, body })
    }
}
