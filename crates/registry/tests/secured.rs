//! Secured registries (issue 15), on real secured servers started by
//! testkit with certificates made for the test: what a wrong setting says
//! (within `REGISTRY_TIMEOUT`), who may delete or overwrite our records, an
//! etcd auth token that expires, and that no secret reaches the logs.
//!
//! Register / watch / crash / restart on the secured servers are the
//! conformance behaviours (`conformance.rs`, module `secured`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use registry::{
    BackendConfig, Error, Registrar, Security, Settings, Timing, Watcher, consul, etcd, zookeeper,
};
use testkit::{ETCD_READER, ETCD_USER, Pki, RegistryServer, SecuredConsul, SecuredEtcd, SecuredZk};

mod common;
use common::{await_snapshot, blocking, ids, instance};

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);
/// Slack on top of `REGISTRY_TIMEOUT` for an error to come back.
const SLACK: Duration = Duration::from_secs(2);

fn timing() -> Timing {
    Timing {
        ttl: TTL,
        timeout: TIMEOUT,
    }
}

/// Client TLS files of `pki`: CA, certificate and key.
fn mtls(pki: &Pki) -> Security {
    Security {
        ca: Some(pki.ca()),
        cert: Some(pki.client_cert()),
        key: Some(pki.client_key()),
        ..Security::default()
    }
}

fn etcd_config(server: &SecuredEtcd, security: Security) -> etcd::Config {
    etcd::Config {
        addr: vec![server.registry_addr()],
        security,
        ..etcd::Config::default()
    }
}

fn with_user(mut security: Security, (user, password): (&str, &str)) -> Security {
    security.user = Some(user.to_owned());
    security.password = Some(password.into());
    security
}

/// Connects with `connect`, expecting an error within the timeout whose
/// message holds every one of `needles`.
async fn expect_error<T: std::fmt::Debug>(
    what: &str,
    connect: impl std::future::Future<Output = registry::Result<T>>,
    needles: &[&str],
) -> Error {
    let started = Instant::now();
    let result = tokio::time::timeout(TIMEOUT + SLACK * 2, connect)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {:?}", TIMEOUT + SLACK * 2));
    let elapsed = started.elapsed();
    let error = match result {
        Ok(ok) => panic!("{what}: expected an error, got {ok:?}"),
        Err(error) => error,
    };
    let text = error.to_string();
    println!("{what} ({elapsed:?}): {text}");
    for needle in needles {
        assert!(text.contains(needle), "{what}: {needle:?} not in: {text}");
    }
    assert!(
        elapsed <= TIMEOUT + SLACK,
        "{what}: took {elapsed:?}, more than REGISTRY_TIMEOUT {TIMEOUT:?} + {SLACK:?}"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wrong_settings_are_named() {
    let pki = Pki::generate().unwrap();
    let server = blocking(|| SecuredEtcd::start(&pki)).expect("start the secured etcd");
    let good = with_user(mtls(&pki), ETCD_USER);

    let no_ca = Security {
        ca: None,
        cert: None,
        key: None,
        ..good.clone()
    };
    let err = expect_error(
        "etcd https without a CA",
        etcd::EtcdRegistry::connect(&etcd_config(&server, no_ca), timing()),
        &["REGISTRY_CA"],
    )
    .await;
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");

    let wrong_ca = Security {
        ca: Some(pki.other_ca()),
        ..good.clone()
    };
    expect_error(
        "etcd with the wrong CA",
        etcd::EtcdRegistry::connect(&etcd_config(&server, wrong_ca), timing()),
        &["not signed by the CA in ca (REGISTRY_CA)"],
    )
    .await;

    let no_cert = Security {
        cert: None,
        key: None,
        ..good.clone()
    };
    expect_error(
        "etcd without a client certificate",
        etcd::EtcdRegistry::connect(&etcd_config(&server, no_cert), timing()),
        &["REGISTRY_CERT"],
    )
    .await;

    let untrusted_cert = Security {
        cert: Some(pki.other_client_cert()),
        key: Some(pki.other_client_key()),
        ..good.clone()
    };
    expect_error(
        "etcd with a client certificate of another CA",
        etcd::EtcdRegistry::connect(&etcd_config(&server, untrusted_cert), timing()),
        &["REGISTRY_CERT"],
    )
    .await;

    let wrong_password = with_user(mtls(&pki), (ETCD_USER.0, "not-the-password"));
    let err = expect_error(
        "etcd with a wrong password",
        etcd::EtcdRegistry::connect(&etcd_config(&server, wrong_password), timing()),
        &["REGISTRY_PASSWORD"],
    )
    .await;
    assert!(
        !err.to_string().contains("not-the-password"),
        "the password must not be quoted: {err}"
    );

    let no_user = mtls(&pki);
    expect_error(
        "etcd without a user",
        async {
            let registry =
                etcd::EtcdRegistry::connect(&etcd_config(&server, no_user), timing()).await?;
            registry.register(instance("svc-nouser", "a", 9100)).await
        },
        &["etcd"],
    )
    .await;

    let wrong_name = Security {
        tls_server_name: Some("not-in-the-cert.example".to_owned()),
        ..good.clone()
    };
    expect_error(
        "etcd with a server name the certificate does not have",
        etcd::EtcdRegistry::connect(&etcd_config(&server, wrong_name), timing()),
        &["REGISTRY_TLS_SERVER_NAME"],
    )
    .await;
    let named = Security {
        tls_server_name: Some("localhost".to_owned()),
        ..good.clone()
    };
    etcd::EtcdRegistry::connect(&etcd_config(&server, named), timing())
        .await
        .expect("connect with tls_server_name = localhost");

    // The right settings work.
    let registry = etcd::EtcdRegistry::connect(&etcd_config(&server, good), timing())
        .await
        .expect("connect with the right settings");
    registry
        .register(instance("svc-ok", "a", 9101))
        .await
        .expect("register")
        .deregister()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_identity_without_write_permission_cannot_touch_our_record() {
    let pki = Pki::generate().unwrap();
    let server = blocking(|| SecuredEtcd::start(&pki)).expect("start the secured etcd");
    let owner = etcd::EtcdRegistry::connect(
        &etcd_config(&server, with_user(mtls(&pki), ETCD_USER)),
        timing(),
    )
    .await
    .unwrap();
    let reader = etcd::EtcdRegistry::connect(
        &etcd_config(&server, with_user(mtls(&pki), ETCD_READER)),
        timing(),
    )
    .await
    .unwrap();
    let _ours = owner
        .register(instance("svc-perm", "a", 9110))
        .await
        .unwrap();

    // The reader sees it (discovery works for it)...
    assert_eq!(ids(&reader.instances("svc-perm").await.unwrap()), ["a"]);
    // ...but may neither delete nor overwrite it.
    let err = reader
        .deregister_instance("svc-perm", "a")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = reader
        .register(instance("svc-perm", "a", 9999))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = server
        .etcdctl_as(
            Some(ETCD_READER),
            &["del".into(), "/services/svc-perm/a".into()],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    let seen = owner.instances("svc-perm").await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].port, 9110, "our record is untouched");

    // sdctl with the right credentials can remove it.
    let out = sdctl_etcd(&server, &pki, ETCD_USER)
        .args(["deregister", "svc-perm", "a"])
        .output()
        .expect("run sdctl");
    assert!(
        out.status.success(),
        "sdctl deregister: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(owner.instances("svc-perm").await.unwrap().len() <= 1);
    // With the reader's credentials it cannot.
    let out = sdctl_etcd(&server, &pki, ETCD_READER)
        .args(["deregister", "svc-perm", "a"])
        .output()
        .expect("run sdctl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        !stderr.contains(ETCD_READER.1),
        "no password in sdctl's output: {stderr}"
    );
}

fn sdctl_etcd(
    server: &SecuredEtcd,
    pki: &Pki,
    (user, password): (&str, &str),
) -> std::process::Command {
    let mut command = std::process::Command::new(testkit::sdctl_bin().unwrap());
    command
        .env("REGISTRY", "etcd")
        .env("REGISTRY_ADDR", server.registry_addr())
        .env("REGISTRY_CA", pki.ca())
        .env("REGISTRY_CERT", pki.client_cert())
        .env("REGISTRY_KEY", pki.client_key())
        .env("REGISTRY_USER", user)
        .env("REGISTRY_PASSWORD", password)
        .env("REGISTRY_TIMEOUT", "5s")
        .env_remove("REGISTRY_CONFIG")
        .env_remove("REGISTRY_PREFIX")
        .stdin(std::process::Stdio::null());
    command
}

/// etcd started with `--auth-token-ttl 2`: a simple token unused for 2 s
/// expires. The registry keeps its registration, and every call after the
/// expiry works (etcd-client logs in again on "invalid auth token").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_expired_auth_tokens_are_refreshed() {
    let pki = Pki::generate().unwrap();
    let server = blocking(|| SecuredEtcd::start_with_token_ttl(&pki, Some(Duration::from_secs(2))))
        .expect("start the secured etcd");
    let config = etcd_config(&server, with_user(mtls(&pki), ETCD_USER));

    // Proof that tokens do expire: a client that does not refresh fails.
    let mut raw = etcd_client::Client::connect(
        [server.registry_addr()],
        Some(
            etcd_client::ConnectOptions::new()
                .with_user(ETCD_USER.0, ETCD_USER.1)
                .with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(
                            std::fs::read(pki.ca()).unwrap(),
                        ))
                        .identity(etcd_client::Identity::from_pem(
                            std::fs::read(pki.client_cert()).unwrap(),
                            std::fs::read(pki.client_key()).unwrap(),
                        )),
                ),
        ),
    )
    .await
    .expect("raw etcd client");
    raw.get("/services/x", None)
        .await
        .expect("fresh token works");

    let registry = etcd::EtcdRegistry::connect(&config, timing())
        .await
        .unwrap();
    let watcher = etcd::EtcdRegistry::connect(&config, timing())
        .await
        .unwrap();
    let _a = registry
        .register(instance("svc-token", "a", 9120))
        .await
        .unwrap();
    let mut watch = watcher.watch("svc-token");
    await_snapshot(&mut watch, TIMEOUT, "a", |s| ids(s) == ["a"]).await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    let err = raw.get("/services/x", None).await.unwrap_err().to_string();
    assert!(
        err.contains("invalid auth token"),
        "the token did not expire: {err}"
    );

    // Every kind of call still works, and nothing was lost.
    assert_eq!(ids(&registry.instances("svc-token").await.unwrap()), ["a"]);
    let b = registry
        .register(instance("svc-token", "b", 9121))
        .await
        .unwrap();
    await_snapshot(&mut watch, TIMEOUT, "a and b", |s| ids(s) == ["a", "b"]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.deregister()
        .await
        .expect("deregister after another expiry");
    await_snapshot(&mut watch, TIMEOUT, "a alone", |s| ids(s) == ["a"]).await;
    assert!(
        watcher
            .services()
            .await
            .unwrap()
            .contains(&"svc-token".to_owned())
    );
    // The registration lived through several TTLs and token expiries.
    assert_eq!(ids(&watcher.instances("svc-token").await.unwrap()), ["a"]);
}

fn consul_config(server: &SecuredConsul, security: Security) -> consul::Config {
    consul::Config {
        addr: vec![server.registry_addr()],
        security,
        ..consul::Config::default()
    }
}

fn with_token(mut security: Security, token: &str) -> Security {
    security.token = Some(token.into());
    security
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_wrong_settings_and_permissions() {
    let pki = Pki::generate().unwrap();
    let server = blocking(|| SecuredConsul::start(&pki))
        .expect("start the secured Consul (run scripts/build-consul.sh to build it)");
    let good = with_token(mtls(&pki), server.writer_token());

    let wrong_ca = Security {
        ca: Some(pki.other_ca()),
        ..good.clone()
    };
    expect_error(
        "consul with the wrong CA",
        consul::ConsulRegistry::connect(&consul_config(&server, wrong_ca), timing()),
        &["REGISTRY_CA"],
    )
    .await;
    let no_cert = Security {
        cert: None,
        key: None,
        ..good.clone()
    };
    expect_error(
        "consul without a client certificate",
        consul::ConsulRegistry::connect(&consul_config(&server, no_cert), timing()),
        &["REGISTRY_CERT"],
    )
    .await;
    let wrong_token = with_token(mtls(&pki), "00000000-1111-4222-8333-444444444444");
    let err = expect_error(
        "consul with a wrong token",
        consul::ConsulRegistry::connect(&consul_config(&server, wrong_token), timing()),
        &["ACL token is not accepted", "REGISTRY_TOKEN"],
    )
    .await;
    assert!(
        !err.to_string().contains("00000000-1111"),
        "no token in errors: {err}"
    );

    let wrong_name = Security {
        tls_server_name: Some("not-in-the-cert.example".to_owned()),
        ..good.clone()
    };
    expect_error(
        "consul with a server name the certificate does not have",
        consul::ConsulRegistry::connect(&consul_config(&server, wrong_name), timing()),
        &["REGISTRY_TLS_SERVER_NAME"],
    )
    .await;
    let named = Security {
        tls_server_name: Some("localhost".to_owned()),
        ..good.clone()
    };
    consul::ConsulRegistry::connect(&consul_config(&server, named), timing())
        .await
        .expect("connect with tls_server_name = localhost");

    // A token file works like the token.
    let token_file = pki.dir().join("writer.token");
    std::fs::write(&token_file, format!("{}\n", server.writer_token())).unwrap();
    let from_file = Security {
        token: None,
        token_file: Some(token_file),
        ..good.clone()
    };
    let owner = consul::ConsulRegistry::connect(&consul_config(&server, from_file), timing())
        .await
        .expect("connect with a token file");
    let _ours = owner
        .register(instance("svc-perm", "a", 9130))
        .await
        .unwrap();

    // A read-only token sees it but may neither remove nor overwrite it.
    let reader = consul::ConsulRegistry::connect(
        &consul_config(&server, with_token(mtls(&pki), server.reader_token())),
        timing(),
    )
    .await
    .unwrap();
    assert_eq!(ids(&reader.instances("svc-perm").await.unwrap()), ["a"]);
    let err = reader
        .deregister_instance("svc-perm", "a")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    // Overwriting our id is refused (it is another registrar's), and so is
    // any registration with a read-only token.
    let err = reader
        .register(instance("svc-perm", "a", 9999))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyRegistered { .. }), "{err}");
    let err = reader
        .register(instance("svc-perm", "b", 9999))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("permission denied"),
        "{err}"
    );
    // The writer may not register outside its services either.
    let err = owner
        .register(instance("other-service", "x", 9131))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("permission denied"),
        "{err}"
    );
    let seen = owner.instances("svc-perm").await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].port, 9130, "our record is untouched");

    // sdctl with the right token removes it; Consul's own variables work.
    let out = std::process::Command::new(testkit::sdctl_bin().unwrap())
        .env("REGISTRY", "consul")
        .env_remove("REGISTRY_ADDR")
        .env_remove("REGISTRY_CONFIG")
        .env("CONSUL_HTTP_ADDR", server.registry_addr())
        .env("CONSUL_CACERT", pki.ca())
        .env("CONSUL_CLIENT_CERT", pki.client_cert())
        .env("CONSUL_CLIENT_KEY", pki.client_key())
        .env("CONSUL_HTTP_TOKEN", server.writer_token())
        .env("REGISTRY_TIMEOUT", "5s")
        .args(["deregister", "svc-perm", "a"])
        .output()
        .expect("run sdctl");
    assert!(
        out.status.success(),
        "sdctl deregister: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(server.writer_token()), "{stderr}");
}

fn zk_config(server: &SecuredZk, addr: String, security: Security) -> zookeeper::Config {
    let _ = server;
    zookeeper::Config {
        addr: vec![addr],
        security,
        ..zookeeper::Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_wrong_settings_and_acls() {
    let pki = Pki::generate().unwrap();
    let server = blocking(|| SecuredZk::start(&pki)).expect("start the secured ZooKeeper");
    let secure = server.secure_addr();
    let ours = with_user(mtls(&pki), ("registry", "registry-pw"));

    let wrong_ca = Security {
        ca: Some(pki.other_ca()),
        ..ours.clone()
    };
    expect_error(
        "zookeeper with the wrong CA",
        zookeeper::ZookeeperRegistry::connect(
            &zk_config(&server, secure.clone(), wrong_ca),
            timing(),
        ),
        &["zookeeper", "REGISTRY_CA"],
    )
    .await;
    let no_cert = Security {
        cert: None,
        key: None,
        ..ours.clone()
    };
    expect_error(
        "zookeeper without a client certificate",
        zookeeper::ZookeeperRegistry::connect(
            &zk_config(&server, secure.clone(), no_cert),
            timing(),
        ),
        &["zookeeper", "REGISTRY_CERT"],
    )
    .await;

    let owner = zookeeper::ZookeeperRegistry::connect(
        &zk_config(&server, secure.clone(), ours.clone()),
        timing(),
    )
    .await
    .unwrap();
    let _a = owner
        .register(instance("svc-acl", "a", 9140))
        .await
        .unwrap();

    // The instance node carries the ACL, its parents do not.
    let intruder = zookeeper_client::Client::connector()
        .with_auth("digest", b"intruder:intruder-pw")
        .connect(&server.plain_addr())
        .await
        .expect("plain session");
    let (acl, _) = intruder.get_acl("/services/svc-acl/a").await.unwrap();
    let shown: Vec<String> = acl
        .iter()
        .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), a.permission()))
        .collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown
            .iter()
            .any(|a| a.starts_with("world:anyone:") && a.ends_with("READ")),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|a| a.starts_with("digest:registry:")),
        "{shown:?}"
    );
    let (parent_acl, _) = intruder.get_acl("/services/svc-acl").await.unwrap();
    assert!(
        parent_acl.iter().all(|a| a.scheme() == "world"),
        "parents stay open: {parent_acl:?}"
    );
    // Anyone may read it; another identity may not overwrite it nor change
    // its ACL.
    let (data, stat) = intruder.get_data("/services/svc-acl/a").await.unwrap();
    assert!(String::from_utf8_lossy(&data).contains("9140"));
    let err = intruder
        .set_data("/services/svc-acl/a", b"{}", None)
        .await
        .unwrap_err();
    assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err}");
    let err = intruder
        .set_acl(
            "/services/svc-acl/a",
            &zookeeper_client::Acls::anyone_all(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, zookeeper_client::Error::NoAuth), "{err}");
    let _ = stat;
    // Another registrar with another identity cannot take the id either.
    let other = zookeeper::ZookeeperRegistry::connect(
        &zk_config(
            &server,
            secure.clone(),
            with_user(mtls(&pki), ("intruder", "intruder-pw")),
        ),
        timing(),
    )
    .await
    .unwrap();
    assert!(
        other
            .register(instance("svc-acl", "a", 9999))
            .await
            .is_err()
    );
    let seen = owner.instances("svc-acl").await.unwrap();
    assert_eq!(seen[0].port, 9140, "our record is untouched");
    // Our identity (sdctl with the right settings) can remove it.
    let out = std::process::Command::new(testkit::sdctl_bin().unwrap())
        .env("REGISTRY", "zookeeper")
        .env("REGISTRY_ADDR", &secure)
        .env("REGISTRY_CA", pki.ca())
        .env("REGISTRY_CERT", pki.client_cert())
        .env("REGISTRY_KEY", pki.client_key())
        .env("REGISTRY_USER", "registry")
        .env("REGISTRY_PASSWORD", "registry-pw")
        .env("REGISTRY_TIMEOUT", "5s")
        .env_remove("REGISTRY_CONFIG")
        .env_remove("REGISTRY_PREFIX")
        .args(["deregister", "svc-acl", "a"])
        .output()
        .expect("run sdctl");
    assert!(
        out.status.success(),
        "sdctl deregister: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Servers (the lifecycle) whose registry refuses them keep retrying with
/// backoff and no storm: from 10 s on, at most one attempt per second, and
/// all of them together under 5% of a core. Three at once: etcd with a wrong
/// password, Consul with a wrong token, ZooKeeper with the wrong CA.
/// Attempts are counted as TCP connections through a counting proxy in
/// front of each server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_servers_retry_calmly() {
    let pki = Pki::generate().unwrap();
    let etcd = blocking(|| SecuredEtcd::start(&pki)).expect("start the secured etcd");
    let consul = blocking(|| SecuredConsul::start(&pki))
        .expect("start the secured Consul (run scripts/build-consul.sh to build it)");
    let zk = blocking(|| SecuredZk::start(&pki)).expect("start the secured ZooKeeper");
    let upstream = |addr: String| -> std::net::SocketAddr {
        addr.trim_start_matches("https://").parse().unwrap()
    };
    let (etcd_proxy, etcd_count) = counting_proxy(upstream(etcd.registry_addr())).await;
    let (consul_proxy, consul_count) = counting_proxy(upstream(consul.registry_addr())).await;
    let (zk_proxy, zk_count) = counting_proxy(upstream(zk.registry_addr())).await;
    let settings = |backend| Settings {
        backend,
        ttl: TTL,
        timeout: TIMEOUT,
    };
    let refused = [
        (
            "etcd, wrong password",
            settings(BackendConfig::Etcd(etcd::Config {
                addr: vec![format!("https://{etcd_proxy}")],
                security: with_user(mtls(&pki), (ETCD_USER.0, "wrong-password")),
                ..etcd::Config::default()
            })),
            etcd_count,
        ),
        (
            "consul, wrong token",
            settings(BackendConfig::Consul(consul::Config {
                addr: vec![format!("https://{consul_proxy}")],
                security: with_token(mtls(&pki), "00000000-1111-4222-8333-444444444444"),
                ..consul::Config::default()
            })),
            consul_count,
        ),
        (
            "zookeeper, wrong CA",
            settings(BackendConfig::Zookeeper(zookeeper::Config {
                addr: vec![zk_proxy.to_string()],
                security: Security {
                    ca: Some(pki.other_ca()),
                    ..with_user(mtls(&pki), ("registry", "registry-pw"))
                },
                ..zookeeper::Config::default()
            })),
            zk_count,
        ),
    ];
    let mut handles = Vec::new();
    for (i, (_, settings, _)) in refused.iter().enumerate() {
        let registrar = registry::lifecycle::ConnectOnDemand::new(settings.clone());
        let port = 9150 + i as u16;
        handles.push(
            registry::lifecycle::Lifecycle::new(registrar, instance("svc-storm", "a", port))
                .start(),
        );
    }
    let cpu_start = cpu_time();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let at_10s: Vec<usize> = refused
        .iter()
        .map(|(_, _, n)| n.load(Ordering::Relaxed))
        .collect();
    let cpu_10s = cpu_time();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let cpu = cpu_time().saturating_sub(cpu_10s);
    for ((what, _, count), first) in refused.iter().zip(&at_10s) {
        let late = count.load(Ordering::Relaxed) - first;
        println!(
            "refused server ({what}): {first} connection attempts in the first 10 s, {late} in the next 6 s"
        );
        assert!(*first >= 1, "{what}: it tried at all");
        assert!(
            late <= 6,
            "{what}: {late} attempts in 6 s after the first 10 s"
        );
    }
    println!(
        "CPU of the whole test process: {:?} in the first 10 s, {cpu:?} in the next 6 s",
        cpu_10s.saturating_sub(cpu_start)
    );
    assert!(
        cpu < Duration::from_millis(300),
        "{cpu:?} of CPU in 6 s for three refused servers (5% of a core is 300 ms)"
    );
    for handle in handles {
        assert!(!handle.is_registered());
        let _ = handle.shutdown().await;
    }
}

/// A TCP proxy to `upstream` on a free loopback port that counts the
/// connections it accepts; runs until the test ends.
async fn counting_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (proxy, connections)
}

/// User + system CPU time of this process, from /proc/self/stat (clock
/// ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Settings from the environment and a file, printed with `{:?}`: the
/// password, the token and the key's contents never show; nor do they in
/// the logs of a connect that fails on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_debug_and_logs() {
    let pki = Pki::generate().unwrap();
    let file = pki.dir().join("registry.toml");
    std::fs::write(
        &file,
        "[backend]\ntype = \"etcd\"\naddr = \"127.0.0.1:1\"\nuser = \"svc\"\npassword = \"pw-in-file-1234\"\n",
    )
    .unwrap();
    let settings = Settings::from_file(&file).unwrap();
    let shown = format!("{settings:?} {settings:#?}");
    assert!(!shown.contains("pw-in-file-1234"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    let consul = consul::Config {
        security: Security {
            token: Some("tok-5678-secret".into()),
            ..Security::default()
        },
        ..consul::Config::default()
    };
    let shown = format!("{consul:?}");
    assert!(!shown.contains("tok-5678"), "{shown}");

    // The logs of a real failing connect (wrong password) hold neither.
    let logs = capture_logs();
    let server = blocking(|| SecuredEtcd::start(&pki)).expect("start the secured etcd");
    let err = etcd::EtcdRegistry::connect(
        &etcd_config(
            &server,
            with_user(mtls(&pki), (ETCD_USER.0, "pw-in-log-9876")),
        ),
        timing(),
    )
    .await
    .unwrap_err();
    let key = std::fs::read_to_string(pki.client_key()).unwrap();
    let key_line = key.lines().nth(1).unwrap().to_owned();
    let text = format!(
        "{err} {err:?} {}",
        String::from_utf8_lossy(&logs.lock().unwrap())
    );
    assert!(!text.contains("pw-in-log-9876"), "{text}");
    assert!(
        !text.contains(&key_line),
        "the key's contents leaked: {text}"
    );
    assert!(text.contains("etcd"), "the logs were captured: {text}");
}

type Logs = Arc<std::sync::Mutex<Vec<u8>>>;

/// Captures this process's trace output at debug level.
fn capture_logs() -> Logs {
    #[derive(Clone)]
    struct Writer(Logs);
    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs: Logs = Arc::default();
    let writer = Writer(logs.clone());
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init();
    logs
}
