//! `sdctl register` and `sdctl deregister`, for operators and scripts.
//!
//! `sdctl register SERVICE ID HOST:PORT [--tag T]... [--meta K=V]...
//! [--weight W]` registers the instance and holds the registration while
//! the command runs: it prints `registered SERVICE/ID HOST:PORT` once the
//! registration is in place (a line scripts can wait for), keeps it alive
//! as any server would, and on SIGINT or SIGTERM deregisters it, prints
//! `deregistered SERVICE/ID` and exits 0. Killed outright, it leaves the
//! instance to expire after the TTL, like a crashed server.
//!
//! `sdctl deregister SERVICE ID` removes an instance's record whoever
//! registered it ([`registry::Registrar::deregister_instance`]): for
//! records whose owner is gone (a crashed process, before its TTL or
//! session runs out; a record another tool wrote without a lease). If the
//! process that registered it is still running, it registers it again at
//! its next check, about one TTL later: stop that process instead.

use std::future::Future;
use std::io::Write;

use registry::{Instance, Registry};

use crate::error::{Error, Result};

/// Parses `HOST:PORT` (`[v6]:PORT` for IPv6) into a host and a port.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the value.
pub fn parse_host_port(value: &str) -> Result<(String, u16)> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "address {value:?} {why}; expected HOST:PORT such as 127.0.0.1:8080 or [::1]:8080"
        ))
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .ok_or_else(|| bad("has an unclosed '['"))?,
        None if host.contains(':') => return Err(bad("needs brackets around an IPv6 host")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("has no valid port (1-65535)"))?;
    Ok((host.to_owned(), port))
}

/// Parses a `--meta KEY=VALUE`.
///
/// # Errors
/// [`Error::InvalidArgument`] if there is no `=` or no key.
pub fn parse_key_value(value: &str) -> Result<(String, String)> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(Error::InvalidArgument(format!(
            "metadata {value:?} must be KEY=VALUE, such as zone=eu"
        ))),
    }
}

/// What `sdctl register` registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The service name.
    pub service: String,
    /// The instance id.
    pub id: String,
    /// `HOST:PORT` as given.
    pub addr: String,
    /// `--tag` values.
    pub tags: Vec<String>,
    /// `--meta KEY=VALUE` pairs.
    pub metadata: Vec<(String, String)>,
    /// `--weight`, 1 if not given.
    pub weight: Option<u32>,
}

impl InstanceSpec {
    /// The instance, checked against the model's rules.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad address; the registry's
    /// `InvalidInstance` for any other rule (names, tags, metadata, weight).
    pub fn to_instance(&self) -> Result<Instance> {
        let (host, port) = parse_host_port(&self.addr)?;
        let mut instance = Instance::new(&self.service, &self.id, host, port);
        instance.tags.clone_from(&self.tags);
        instance.metadata = self.metadata.iter().cloned().collect();
        if let Some(weight) = self.weight {
            instance.weight = weight;
        }
        instance.validate()?;
        Ok(instance)
    }
}

/// Registers `instance`, writes `registered SERVICE/ID HOST:PORT` to `out`,
/// holds the registration until `shutdown` completes, then deregisters it
/// and writes `deregistered SERVICE/ID`.
///
/// # Errors
/// A registry error if the registration or the deregistration fails;
/// [`Error::Io`] if `out` cannot be written (the registration is then
/// deregistered before returning).
pub async fn hold<R: Registry + ?Sized>(
    registry: &R,
    instance: Instance,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let name = format!("{}/{}", instance.service, instance.id);
    let authority = instance.authority();
    let registration = registry.register(instance).await?;
    let written = writeln!(out, "registered {name} {authority}").and_then(|()| out.flush());
    if let Err(error) = written {
        registration.deregister().await?;
        return Err(Error::io("stdout", error));
    }
    shutdown.await;
    registration.deregister().await?;
    // The caller is going away; a closed stdout changes nothing now.
    let _ = writeln!(out, "deregistered {name}").and_then(|()| out.flush());
    Ok(())
}

/// Removes the record of `service`/`id`, whoever registered it, and writes
/// `deregistered SERVICE/ID` to `out`.
///
/// `registry_name` names the registry in messages (see
/// [`describe`](crate::describe)).
///
/// # Errors
/// [`Error::UnknownInstance`] if there was nothing to remove (saying which
/// instances the service has, or, if the id is listed but could not be
/// removed, that it belongs to another Consul agent); a registry error for
/// invalid names or a failed call.
pub async fn deregister<R: Registry + ?Sized>(
    registry: &R,
    registry_name: &str,
    service: &str,
    id: &str,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    registry::validate_name("service", service)?;
    registry::validate_name("id", id)?;
    if registry.deregister_instance(service, id).await? {
        writeln!(out, "deregistered {service}/{id}")
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("stdout", e))?;
        return Ok(());
    }
    let listed = registry.instances(service).await.unwrap_or_default();
    let hint = if listed.iter().any(|i| i.id == id) {
        if registry_name.starts_with("consul") {
            "it is listed, but was registered through another Consul agent: run sdctl against \
             that agent (Consul keeps a registration with the agent it was made on)"
                .to_owned()
        } else {
            "it is listed again: its owner put it back (a live registration restores its \
             record); stop the process that holds it"
                .to_owned()
        }
    } else if listed.is_empty() {
        format!("service {service:?} has no live instances")
    } else {
        format!(
            "instances of {service}: {}",
            listed
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(Error::UnknownInstance {
        service: service.to_owned(),
        id: id.to_owned(),
        registry: registry_name.to_owned(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use registry::{MemoryRegistry, Registrar, Watcher};

    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_host_port("127.0.0.1:80").unwrap(),
            ("127.0.0.1".into(), 80)
        );
        assert_eq!(parse_host_port("[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(
            parse_host_port("lorem.local:8080").unwrap().0,
            "lorem.local"
        );
        for (bad, why) in [
            ("nohost", "has no port"),
            (":80", "has no host"),
            ("h:0", "no valid port"),
            ("h:x", "no valid port"),
            ("::1:80", "brackets"),
        ] {
            let error = parse_host_port(bad).unwrap_err().to_string();
            assert!(error.contains(why) && error.contains(bad), "{error}");
        }
        assert!(parse_key_value("=x").is_err());
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
    }

    #[test]
    fn a_spec_becomes_a_checked_instance() {
        let spec = InstanceSpec {
            service: "lorem".into(),
            id: "x".into(),
            addr: "127.0.0.1:9000".into(),
            tags: vec!["v1".into()],
            metadata: vec![("zone".into(), "eu".into())],
            weight: Some(3),
        };
        let instance = spec.to_instance().unwrap();
        assert_eq!(
            instance,
            Instance::new("lorem", "x", "127.0.0.1", 9000)
                .with_tag("v1")
                .with_metadata("zone", "eu")
                .with_weight(3)
        );
        let bad = InstanceSpec {
            weight: Some(0),
            ..spec
        };
        let error = bad.to_instance().unwrap_err().to_string();
        assert!(error.contains("weight"), "{error}");
    }

    #[tokio::test]
    async fn hold_registers_until_shutdown_and_deregister_removes_any_instance() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let held = registry.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            hold(
                &held,
                Instance::new("lorem", "a", "127.0.0.1", 1),
                &mut out,
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .map(|()| String::from_utf8(out).unwrap())
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while registry.instances("lorem").await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never registered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
        let out = task.await.unwrap().unwrap();
        assert_eq!(
            out,
            "registered lorem/a 127.0.0.1:1\nderegistered lorem/a\n"
        );
        assert!(registry.instances("lorem").await.unwrap().is_empty());

        let crashed = registry
            .register(Instance::new("lorem", "b", "127.0.0.1", 2))
            .await
            .unwrap();
        let _kept = registry
            .register(Instance::new("lorem", "c", "127.0.0.1", 3))
            .await
            .unwrap();
        crashed.abandon();
        let mut out = Vec::new();
        deregister(&registry, "memory", "lorem", "b", &mut out)
            .await
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "deregistered lorem/b\n");
        let error = deregister(&registry, "memory", "lorem", "b", &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no instance \"b\" of service \"lorem\" to deregister in memory; instances of lorem: c"
        );
    }
}
