//! Finding the server binaries; a missing one is an error that says how to
//! install it.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The Consul version `scripts/build-consul.sh` builds and caches.
const CONSUL_VERSION: &str = "1.14.11";

const ETCD_HINT: &str = "install it with `apt-get install etcd-server etcd-client` \
     (or run scripts/test.sh, which installs it), or point TESTKIT_ETCD_BIN at an etcd binary";
const ETCDCTL_HINT: &str = "install it with `apt-get install etcd-server etcd-client` \
     (or run scripts/test.sh, which installs it), or point TESTKIT_ETCDCTL_BIN at an etcdctl binary";
const JAVA_HINT: &str = "install it with `apt-get install zookeeper default-jre-headless` \
     (or run scripts/test.sh, which installs it), or point TESTKIT_JAVA at a java binary";
const ZK_HINT: &str = "install it with `apt-get install zookeeper default-jre-headless` \
     (or run scripts/test.sh, which installs it), or set TESTKIT_ZK_CLASSPATH to a classpath \
     holding ZooKeeper's server and its dependencies";
const CONSUL_HINT: &str = "run scripts/build-consul.sh (builds Consul 1.14.11 with Go and \
     caches it at ~/.cache/consul/1.14.11/consul), or point CONSUL_BIN at a consul binary";

/// Where to look for one binary.
struct Lookup {
    /// The program's name, also looked up on `PATH`.
    name: &'static str,
    /// The variable that overrides the lookup; if set it must name an
    /// executable file.
    env_var: &'static str,
    /// Paths tried after `PATH`.
    fallbacks: Vec<PathBuf>,
    /// How to install it.
    hint: &'static str,
}

/// Reads an environment variable; injectable so tests need not mutate the
/// process environment.
type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn process_env(key: &str) -> Option<OsString> {
    std::env::var_os(key)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn find(lookup: &Lookup, env: Env<'_>) -> Result<PathBuf> {
    if let Some(value) = env(lookup.env_var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&value);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "{}={} is not an executable file; fix or unset it. To get {}: {}",
            lookup.env_var,
            path.display(),
            lookup.name,
            lookup.hint
        );
    }
    if let Some(path_var) = env("PATH") {
        for dir in std::env::split_paths(&path_var) {
            let candidate = dir.join(lookup.name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    for candidate in &lookup.fallbacks {
        if is_executable(candidate) {
            return Ok(candidate.clone());
        }
    }
    let tried = lookup
        .fallbacks
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    bail!(
        "cannot find `{}`: {} is not set, it is not on PATH{}{}; {}",
        lookup.name,
        lookup.env_var,
        if tried.is_empty() { "" } else { " nor at " },
        tried,
        lookup.hint
    )
}

/// A Debian-packaged binary: `name` on `PATH`, else `/usr/bin/<name>`.
fn usr_bin_lookup(name: &'static str, env_var: &'static str, hint: &'static str) -> Lookup {
    Lookup {
        name,
        env_var,
        fallbacks: vec![Path::new("/usr/bin").join(name)],
        hint,
    }
}

fn etcd_lookup() -> Lookup {
    usr_bin_lookup("etcd", "TESTKIT_ETCD_BIN", ETCD_HINT)
}

fn consul_lookup(env: Env<'_>) -> Lookup {
    let fallbacks = env("HOME")
        .map(|home| {
            vec![
                PathBuf::from(home)
                    .join(".cache/consul")
                    .join(CONSUL_VERSION)
                    .join("consul"),
            ]
        })
        .unwrap_or_default();
    Lookup {
        name: "consul",
        env_var: "CONSUL_BIN",
        fallbacks,
        hint: CONSUL_HINT,
    }
}

/// The `etcd` server binary: `$TESTKIT_ETCD_BIN`, else `etcd` on `PATH`,
/// else `/usr/bin/etcd`.
///
/// (The variable is not called `ETCD_*` because etcd reads every such
/// variable as one of its flags.)
///
/// # Errors
///
/// If none is found, or the variable names something that is not an
/// executable file; the message says how to install etcd.
pub fn etcd_bin() -> Result<PathBuf> {
    find(&etcd_lookup(), &process_env)
}

/// The `etcdctl` client: `$TESTKIT_ETCDCTL_BIN`, else `etcdctl` on `PATH`,
/// else `/usr/bin/etcdctl`.
///
/// # Errors
///
/// As [`etcd_bin`].
pub fn etcdctl_bin() -> Result<PathBuf> {
    find(
        &usr_bin_lookup("etcdctl", "TESTKIT_ETCDCTL_BIN", ETCDCTL_HINT),
        &process_env,
    )
}

const CHROMIUM_HINT: &str = "install it with `apt-get install chromium chromium-driver` \
     (scripts/install-deps.sh test does), or point TESTKIT_CHROMIUM_BIN at a Chromium or Chrome binary";
const CHROMEDRIVER_HINT: &str = "install it with `apt-get install chromium chromium-driver` \
     (scripts/install-deps.sh test does), or point TESTKIT_CHROMEDRIVER_BIN at a chromedriver \
     of the same version as the browser";

/// The browser the page tests drive: `$TESTKIT_CHROMIUM_BIN`, else
/// `chromium` on `PATH`, else `/usr/bin/chromium` (Debian's `chromium`).
///
/// # Errors
///
/// If none is found; the message says how to install it.
pub fn chromium_bin() -> Result<PathBuf> {
    find(
        &usr_bin_lookup("chromium", "TESTKIT_CHROMIUM_BIN", CHROMIUM_HINT),
        &process_env,
    )
}

/// The WebDriver server for it: `$TESTKIT_CHROMEDRIVER_BIN`, else
/// `chromedriver` on `PATH`, else `/usr/bin/chromedriver` (Debian's
/// `chromium-driver`).
///
/// # Errors
///
/// If none is found; the message says how to install it.
pub fn chromedriver_bin() -> Result<PathBuf> {
    find(
        &usr_bin_lookup(
            "chromedriver",
            "TESTKIT_CHROMEDRIVER_BIN",
            CHROMEDRIVER_HINT,
        ),
        &process_env,
    )
}

/// The Consul binary: `$CONSUL_BIN`, else `consul` on `PATH`, else
/// `~/.cache/consul/1.14.11/consul` (where `scripts/build-consul.sh` puts it).
///
/// # Errors
///
/// If none is found; the message says to run `scripts/build-consul.sh`.
pub fn consul_bin() -> Result<PathBuf> {
    find(&consul_lookup(&process_env), &process_env)
}

/// This workspace's `sdctl` (crates/sdctl), for tests of other packages
/// that need a separate process holding a registration (Cargo gives
/// `CARGO_BIN_EXE_*` only for a package's own binaries): `$SDCTL_BIN`, else
/// `sdctl` in the profile directory of the running executable (the
/// `target/debug` of `target/debug/deps/<test>`), which `cargo test
/// --workspace` builds before running any test.
///
/// # Errors
///
/// If neither is an executable file; the message says how to build it.
pub fn sdctl_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    sdctl_bin_in(&process_env, exe.as_deref())
}

fn sdctl_bin_in(env: Env<'_>, exe: Option<&Path>) -> Result<PathBuf> {
    const HINT: &str = "build it with `cargo build -p sdctl` (`cargo test --workspace` \
         builds it), or point SDCTL_BIN at an sdctl binary";
    if let Some(value) = env("SDCTL_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!(
            "SDCTL_BIN={} is not an executable file; fix or unset it, or {HINT}",
            path.display()
        );
    }
    // <target>/<profile>/deps/<test-binary> -> <target>/<profile>/sdctl
    let candidate = exe
        .and_then(Path::parent)
        .map(|dir| {
            if dir.ends_with("deps") {
                dir.parent().unwrap_or(dir)
            } else {
                dir
            }
        })
        .map(|dir| dir.join("sdctl"));
    match candidate {
        Some(path) if is_executable(&path) => Ok(path),
        Some(path) => bail!("cannot find sdctl at {}; {HINT}", path.display()),
        None => bail!("cannot find sdctl: the running executable's path is unknown; {HINT}"),
    }
}

/// The Java runtime that runs ZooKeeper: `$TESTKIT_JAVA`, else `java` on
/// `PATH`, else `/usr/bin/java`.
///
/// # Errors
///
/// If none is found; the message says how to install it.
pub fn java_bin() -> Result<PathBuf> {
    find(
        &usr_bin_lookup("java", "TESTKIT_JAVA", JAVA_HINT),
        &process_env,
    )
}

/// The Java classpath of the ZooKeeper server: `$TESTKIT_ZK_CLASSPATH`, else
/// Debian's `/usr/share/java/zookeeper.jar` (whose manifest lists its own
/// dependencies) plus `slf4j-simple.jar` as the logging backend.
///
/// # Errors
///
/// If `zookeeper.jar` is missing; the message says how to install it.
pub fn zk_classpath() -> Result<String> {
    zk_classpath_in(&process_env, Path::new("/usr/share/java"))
}

fn zk_classpath_in(env: Env<'_>, java_dir: &Path) -> Result<String> {
    if let Some(cp) = env("TESTKIT_ZK_CLASSPATH").filter(|v| !v.is_empty()) {
        return cp
            .into_string()
            .map_err(|cp| anyhow::anyhow!("TESTKIT_ZK_CLASSPATH={cp:?} is not valid UTF-8"));
    }
    let zk = java_dir.join("zookeeper.jar");
    if !zk.is_file() {
        bail!(
            "cannot find ZooKeeper: {} does not exist; {ZK_HINT}",
            zk.display()
        );
    }
    let mut cp = vec![zk];
    // Without a binding slf4j logs nothing (and says so once); not fatal.
    let simple = java_dir.join("slf4j-simple.jar");
    if simple.is_file() {
        cp.push(simple);
    }
    Ok(cp
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn override_pointing_nowhere_fails_with_hint() {
        let env = env_of(&[
            ("TESTKIT_ETCD_BIN", "/nonexistent/etcd"),
            ("PATH", "/usr/bin"),
        ]);
        let err = find(&etcd_lookup(), &env).unwrap_err().to_string();
        assert!(err.contains("TESTKIT_ETCD_BIN=/nonexistent/etcd"), "{err}");
        assert!(
            err.contains("apt-get install etcd-server etcd-client"),
            "{err}"
        );
    }

    #[test]
    fn nothing_found_fails_with_hint() {
        let env = env_of(&[("PATH", "/nonexistent")]);
        let lookup = Lookup {
            fallbacks: vec![PathBuf::from("/nonexistent/consul")],
            ..consul_lookup(&env)
        };
        let err = find(&lookup, &env).unwrap_err().to_string();
        assert!(err.contains("scripts/build-consul.sh"), "{err}");
        assert!(err.contains("/nonexistent/consul"), "{err}");
    }

    #[test]
    fn zk_classpath_missing_jar_fails_with_hint() {
        let env = env_of(&[]);
        let err = zk_classpath_in(&env, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apt-get install zookeeper default-jre-headless"),
            "{err}"
        );
    }

    #[test]
    fn zk_classpath_override_wins() {
        let env = env_of(&[("TESTKIT_ZK_CLASSPATH", "/a.jar:/b.jar")]);
        assert_eq!(
            zk_classpath_in(&env, Path::new("/nonexistent")).unwrap(),
            "/a.jar:/b.jar"
        );
    }

    #[test]
    fn sdctl_is_found_next_to_the_test_binary_or_through_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let deps = dir.path().join("deps");
        std::fs::create_dir(&deps).unwrap();
        let test_exe = deps.join("conformance-0123");
        let err = sdctl_bin_in(&env_of(&[]), Some(&test_exe))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build -p sdctl"), "{err}");
        assert!(
            err.contains(&dir.path().join("sdctl").display().to_string()),
            "{err}"
        );

        let sdctl = dir.path().join("sdctl");
        std::fs::write(&sdctl, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&sdctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(sdctl_bin_in(&env_of(&[]), Some(&test_exe)).unwrap(), sdctl);

        let env = env_of(&[("SDCTL_BIN", "/nonexistent/sdctl")]);
        let err = sdctl_bin_in(&env, Some(&test_exe)).unwrap_err().to_string();
        assert!(err.contains("SDCTL_BIN=/nonexistent/sdctl"), "{err}");
    }

    #[test]
    fn path_is_searched_before_fallbacks() {
        let env = env_of(&[("PATH", "/nonexistent:/bin:/usr/bin")]);
        let lookup = Lookup {
            name: "sh",
            env_var: "TESTKIT_TEST_SH",
            fallbacks: vec![],
            hint: "",
        };
        let found = find(&lookup, &env).unwrap();
        assert!(found.ends_with("sh"), "{}", found.display());
    }
}
