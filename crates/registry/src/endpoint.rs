//! Registry addresses: parsing `REGISTRY_ADDR` entries (`host:port`,
//! `[v6]:port`, `scheme://host:port`) once, for every backend.

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// One parsed entry of `REGISTRY_ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https` if one was given.
    pub scheme: Option<String>,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`, `[v6]:port` or `scheme://host:port[/]`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the entry.
    pub fn parse(entry: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidConfig(format!(
                "registry address {entry:?} {why}; expected host:port, optionally with http:// or https://"
            ))
        };
        let entry_trim = entry.trim();
        let (scheme, rest) = match entry_trim.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "http" | "https") {
                    return Err(bad("has an unsupported scheme"));
                }
                (Some(scheme), rest)
            }
            None => (None, entry_trim),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, port) = v6.split_once("]:").ok_or_else(|| bad("has no port"))?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("has no port"))?
        };
        if host.is_empty() || host.contains(['/', ' ', ',', '@', '?', '#']) {
            return Err(bad("has no valid host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("has no valid port (1-65535)"))?;
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, with brackets for IPv6.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port`, with `default_scheme` if none was given.
    pub fn url(&self, default_scheme: &str) -> String {
        format!(
            "{}://{}",
            self.scheme.as_deref().unwrap_or(default_scheme),
            self.authority()
        )
    }
}

/// Parses a list of addresses, logging `default` when the list is empty.
pub(crate) fn endpoints_or_default(
    backend: &'static str,
    addrs: &[String],
    default: &str,
) -> Result<Vec<Endpoint>> {
    if addrs.is_empty() {
        tracing::info!(
            backend,
            addr = default,
            "REGISTRY_ADDR not set; using the default"
        );
        return Ok(vec![Endpoint::parse(default)?]);
    }
    addrs.iter().map(|a| Endpoint::parse(a)).collect()
}

/// Accepts `"a:1,b:2"` or `["a:1", "b:2"]`.
pub(crate) fn addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addrs {
        One(String),
        Many(Vec<String>),
    }
    let list = match Addrs::deserialize(deserializer)? {
        Addrs::One(s) => s.split(',').map(str::to_owned).collect(),
        Addrs::Many(v) => v,
    };
    Ok(list
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://[::1]:8501/").unwrap();
        assert_eq!(e.url("http"), "https://[::1]:8501");
        let e = Endpoint::parse("localhost:2181").unwrap();
        assert_eq!(e.url("http"), "http://localhost:2181");
        assert!(Endpoint::parse("zk://h:1").is_err());
        assert!(Endpoint::parse("h:0").is_err());
        assert!(Endpoint::parse("h:x").is_err());
        assert!(Endpoint::parse("a:1,b:2").is_err());
    }
}
