//! The secured servers start, and refuse what they should.

use testkit::{ETCD_READER, ETCD_USER, Pki, RegistryServer, SecuredConsul, SecuredEtcd, SecuredZk};

#[test]
fn secured_etcd_starts_with_auth_and_roles() -> anyhow::Result<()> {
    let pki = Pki::generate()?;
    let mut etcd = SecuredEtcd::start(&pki)?;
    let put =
        |user, key: &str| etcd.etcdctl_as(Some(user), &["put".into(), key.into(), "v".into()]);
    put(ETCD_USER, "/services/a/1")?;
    let err = put(ETCD_READER, "/services/a/2").unwrap_err().to_string();
    assert!(err.contains("permission denied"), "{err}");
    let err = put(ETCD_USER, "/elsewhere").unwrap_err().to_string();
    assert!(err.contains("permission denied"), "{err}");
    let err = etcd
        .etcdctl_as(None, &["get".into(), "/services/a/1".into()])
        .unwrap_err()
        .to_string();
    assert!(!err.is_empty());
    etcd.restart()?;
    let got = etcd.etcdctl_as(Some(ETCD_READER), &["get".into(), "/services/a/1".into()])?;
    assert!(got.contains("/services/a/1"), "{got}");
    Ok(())
}

#[test]
fn secured_consul_starts_with_acls() -> anyhow::Result<()> {
    let pki = Pki::generate()?;
    let consul = SecuredConsul::start(&pki)?;
    assert!(consul.https_addr().starts_with("https://127.0.0.1:"));
    assert_ne!(consul.writer_token(), consul.reader_token());
    Ok(())
}

#[test]
fn secured_zookeeper_starts_with_a_tls_port() -> anyhow::Result<()> {
    let pki = Pki::generate()?;
    let mut zk = SecuredZk::start(&pki)?;
    assert_ne!(zk.secure_addr(), zk.plain_addr());
    zk.restart()?;
    Ok(())
}
