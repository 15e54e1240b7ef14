//! Building and running the peer programs (Java on Curator / Spring Cloud
//! Zookeeper, Go on go-kit / Kratos), our registry with interop settings,
//! and in-process lorem servers for the mixed-service tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use registry::interop::Interop;
use registry::{BackendConfig, DynRegistry, Instance, Settings};

/// The crate's folder (sources of the peers).
fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the peers are built: outside the sources, inside cargo's target.
fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop")
}

/// The built peers.
pub struct Peers {
    curator_cp: String,
    spring_cp: String,
    go_bin: PathBuf,
    java: PathBuf,
}

/// Builds the peers once per test process (and skips Maven when the Java
/// sources have not changed since the last build).
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(|| {
        let java = tool(
            "java",
            &[],
            "a JDK: apt-get install openjdk-17-jdk-headless maven (scripts/install-deps.sh test installs them)",
        );
        Peers {
            curator_cp: build_java("curator"),
            spring_cp: build_java("spring"),
            go_bin: build_go(),
            java,
        }
    })
}

/// `name` on `PATH`, else the first of `fallbacks` that exists; a missing
/// tool fails the test saying how to get it.
fn tool(name: &str, fallbacks: &[&str], how: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    for fallback in fallbacks {
        if Path::new(fallback).is_file() {
            return PathBuf::from(fallback);
        }
    }
    panic!("the interop tests need `{name}`, which is not on PATH: install {how}");
}

/// A digest of the files a build depends on.
fn digest(files: &[PathBuf]) -> String {
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
            .hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// Compiles `java/<name>` with Maven (offline first: the dependencies are in
/// `~/.m2` after the first run) and returns its classpath.
fn build_java(name: &str) -> String {
    let src = crate_dir().join("java").join(name);
    let out = out_dir().join("java").join(name);
    let classpath_file = out.join("classpath.txt");
    let stamp_file = out.join("stamp");
    let stamp = digest(&[
        src.join("pom.xml"),
        src.join("src/main/java/interop/Main.java"),
    ]);
    let built = || -> Option<String> {
        let deps = std::fs::read_to_string(&classpath_file).ok()?;
        Some(format!("{}:{}", out.join("classes").display(), deps.trim()))
    };
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        if let Some(classpath) = built() {
            return classpath;
        }
    }
    tool(
        "javac",
        &[],
        "a JDK: apt-get install openjdk-17-jdk-headless (scripts/install-deps.sh test installs it)",
    );
    let mvn = tool(
        "mvn",
        &[],
        "Maven: apt-get install maven (scripts/install-deps.sh test installs it)",
    );
    std::fs::create_dir_all(&out).expect("create the Java build folder");
    let started = Instant::now();
    let run = |offline: bool| {
        let mut command = Command::new(&mvn);
        command.args(["-q", "-B"]);
        if offline {
            command.arg("-o");
        }
        let output = command
            .arg("-f")
            .arg(src.join("pom.xml"))
            .arg(format!("-Dout={}", out.display()))
            .args(["compile", "dependency:build-classpath"])
            .arg(format!("-Dmdep.outputFile={}", classpath_file.display()))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", mvn.display()));
        (output.status.success(), output)
    };
    let (ok, output) = match run(true) {
        (true, output) => (true, output),
        // Not everything is in ~/.m2 yet: download from Maven Central.
        (false, _) => run(false),
    };
    assert!(
        ok,
        "Maven could not build the {name} peer (java/{name}; needs Maven Central once):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&stamp_file, &stamp).expect("write the build stamp");
    eprintln!(
        "built the {name} peer with Maven in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    built().expect("Maven wrote the classpath")
}

/// Builds `go/` (go-kit, Kratos) with the Go toolchain found as
/// scripts/build-consul.sh finds it (`go` on PATH), plus Go's default
/// install path; Go's caches make a rebuild of unchanged sources quick.
fn build_go() -> PathBuf {
    let go = tool(
        "go",
        &["/usr/local/go/bin/go"],
        "Go 1.22 or newer (the same toolchain scripts/build-consul.sh uses)",
    );
    let bin = out_dir().join("peers-go");
    std::fs::create_dir_all(out_dir()).expect("create the build folder");
    let started = Instant::now();
    let output = Command::new(&go)
        .current_dir(crate_dir().join("go"))
        .env("GOTOOLCHAIN", "local")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", go.display()));
    assert!(
        output.status.success(),
        "go build of the go-kit/Kratos peer (crates/interop/go; needs the Go module proxy once) failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "built the Go peer in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    bin
}

impl Peers {
    /// The Curator x-discovery peer with `args`.
    pub fn curator(&self, args: &[&str]) -> Command {
        self.java_command(&self.curator_cp, args)
    }

    /// The Spring Cloud Zookeeper peer with `args`.
    pub fn spring(&self, args: &[&str]) -> Command {
        self.java_command(&self.spring_cp, args)
    }

    /// The go-kit / Kratos peer with `args`.
    pub fn go(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.go_bin);
        command.args(args);
        command
    }

    fn java_command(&self, classpath: &str, args: &[&str]) -> Command {
        let mut command = Command::new(&self.java);
        command
            .args(["-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", classpath])
            .arg("interop.Main")
            .args(args);
        command
    }
}

/// A registration held by a peer process: it registered when this was
/// made, and deregisters when this is dropped (its stdin closes).
pub struct Held {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    what: String,
}

/// Starts a peer's register command and waits (30 s at most) for it to say
/// `registered`.
pub fn hold(mut command: Command, what: &str) -> Held {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim() == "registered" {
                let _ = tx.send(());
            }
        }
    });
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        let _ = etx.send(text);
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let log = erx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        panic!("{what} did not register within 30 s; its stderr:\n{log}");
    }
    Held {
        child: Some(child),
        stdin,
        what: what.to_owned(),
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        eprintln!("{} did not exit within 10 s; killing it", self.what);
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                }
            }
        }
    }
}

/// Runs a peer's list command (which waits for what it wants, 15 s at
/// most) and returns the JSON it printed; fails the test with its output
/// if it fails or runs past 60 s.
pub fn list(command: Command, what: &str) -> serde_json::Value {
    let (output, stdout) = run(command, what);
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what} printed {stdout:?}: {e}"))
}

/// Runs a peer's list command that must fail, and returns its stderr.
pub fn list_fails(command: Command, what: &str) -> String {
    let (output, stdout) = run(command, what);
    assert!(
        !output.status.success(),
        "{what} should have failed; it printed {stdout}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn run(mut command: Command, what: &str) -> (std::process::Output, String) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} ran for more than 60 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

/// Our registry on `backend` (whose interop settings are set by the
/// caller), TTL 3 s.
pub async fn ours(backend: BackendConfig) -> DynRegistry {
    registry::connect(&Settings {
        backend,
        ttl: Duration::from_secs(3),
        timeout: Duration::from_secs(5),
    })
    .await
    .expect("connect our registry")
}

/// Waits (15 s at most) until `registry` lists at least `want` instances
/// of `service`, and returns them sorted by id.
pub async fn wait_instances(registry: &DynRegistry, service: &str, want: usize) -> Vec<Instance> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut found = registry.instances(service).await.unwrap_or_default();
        if found.len() >= want {
            found.sort_by(|a, b| a.id.cmp(&b.id));
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "our client saw {} instances of {service} after 15 s, wanted {want}: {found:?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Interop settings with `f` applied to the defaults.
pub fn interop(f: impl FnOnce(&mut Interop)) -> Interop {
    let mut interop = Interop::default();
    f(&mut interop);
    interop
}

/// A lorem server answering as `instance_id` on a free loopback port, in
/// the current runtime; returns the port.
pub async fn lorem_server(instance_id: &str) -> u16 {
    lorem_server_named(|_| instance_id.to_owned()).await
}

/// A lorem server answering as `name(its port)` on a free loopback port,
/// in the current runtime; returns the port.
pub async fn lorem_server_named(name: impl FnOnce(u16) -> String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let app = lorem::http::router(name(port));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// Sends `requests` lorem requests through our balancer over `service`
/// and counts the answers per instance id.
pub async fn balance(
    registry: DynRegistry,
    service: &str,
    want_instances: usize,
    requests: usize,
) -> std::collections::BTreeMap<String, usize> {
    use client::{Balancer, BalancerOptions, ClientOptions, Kind, LoremClient, LoremRequest};
    let balancer =
        Balancer::new(registry, service, BalancerOptions::default()).expect("a balancer");
    let deadline = Instant::now() + Duration::from_secs(15);
    while balancer.instances().len() < want_instances {
        assert!(
            Instant::now() < deadline,
            "the balancer saw {} instances of {service}, wanted {want_instances}",
            balancer.instances().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = LoremClient::new(balancer, ClientOptions::default()).expect("a client");
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..requests {
        let lorem = client
            .lorem(&LoremRequest::new(Kind::Word, 1, 3))
            .await
            .expect("a lorem answer");
        *answers.entry(lorem.instance).or_default() += 1;
    }
    answers
}
