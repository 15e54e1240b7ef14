//! A real browser for page tests: Debian's `chromium`, headless, driven
//! over WebDriver through `chromedriver`.
//!
//! [`Chromedriver`] is a process like the registry servers (ephemeral
//! port, temp dir, stopped by PID, a watchdog); [`Browser`] is a WebDriver
//! session spoken to with a few W3C WebDriver calls over HTTP (new session,
//! navigate, find elements, read text, run a script, screenshot, end the
//! session). A small client of our own rather than `fantoccini` or
//! `thirtyfour`: those bring TLS stacks of their own, and a test on
//! loopback needs none. Unlike the rest of the kit the session is `async`
//! (reqwest), as the tests that drive pages are.
//!
//! As root, Chromium refuses to start with its sandbox; the browser then
//! runs with `--no-sandbox` (it only ever loads pages from 127.0.0.1).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::bins::{chromedriver_bin, chromium_bin};
use crate::process::{Proc, Spec, free_port, wait_ready, with_port_retries};

/// How long chromedriver may take to answer `/status`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The key under which WebDriver names an element (W3C).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The size of the browser window, and so of screenshots.
pub const WINDOW: (u32, u32) = (1280, 1000);

/// A `chromedriver` process on 127.0.0.1, stopped (SIGTERM, then SIGKILL)
/// by PID when dropped.
#[derive(Debug)]
pub struct Chromedriver {
    proc: Proc,
    port: u16,
    chromium: PathBuf,
    dir: TempDir,
}

impl Chromedriver {
    /// Starts chromedriver on a free port and waits until it is ready.
    ///
    /// # Errors
    ///
    /// If `chromium` or `chromedriver` is missing (the message says how to
    /// install them) or chromedriver is not ready in time (the message
    /// quotes its log).
    pub fn start() -> Result<Self> {
        let chromium = chromium_bin()?;
        let program = chromedriver_bin()?;
        with_port_retries("chromedriver", || {
            let dir = crate::process::temp_dir("testkit-chromedriver-", "chromedriver")?;
            let port = free_port();
            let mut proc = Proc::new(Spec {
                label: "chromedriver".to_owned(),
                program: program.clone(),
                args: vec![format!("--port={port}").into()],
                cwd: dir.path().to_owned(),
                log: dir.path().join("chromedriver.log"),
                env: Vec::new(),
                clear_env: false,
                cleanup: Some(dir.path().to_owned()),
            });
            proc.spawn().map_err(crate::process::StartFailure::Other)?;
            wait_ready([&mut proc], READY_TIMEOUT, "chromedriver", |_| {
                status_ready(port)
            })?;
            Ok(Chromedriver {
                proc,
                port,
                chromium: chromium.clone(),
                dir,
            })
        })
    }

    /// The PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Opens a headless browser window of [`WINDOW`] size.
    ///
    /// # Errors
    ///
    /// If chromedriver cannot start the browser (the message is
    /// chromedriver's).
    pub async fn session(&self) -> Result<Browser> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build an HTTP client")?;
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!(
                "--user-data-dir={}",
                self.dir.path().join("profile").display()
            ),
        ];
        if is_root() {
            args.push("--no-sandbox".to_owned());
        }
        let base = format!("http://127.0.0.1:{}", self.port);
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": self.chromium.display().to_string(),
                        "args": args,
                    }
                }
            }
        });
        let value = call(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await
        .with_context(|| format!("chromedriver could not start {}", self.chromium.display()))?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver answered a new session without an id: {value}"))?;
        Ok(Browser {
            http,
            session: format!("{base}/session/{id}"),
        })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Err(error) = self.proc.stop() {
            tracing::warn!(%error, "cannot stop chromedriver");
        }
    }
}

/// Whether chromedriver's `GET /status` says it is ready. Raw, like the
/// kit's other probes, but HTTP/1.1 (chromedriver refuses 1.0) and read
/// only as far as the answer (it keeps the connection open regardless).
fn status_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&reply);
        if text.contains("\"ready\":true") {
            return text.starts_with("HTTP/1.1 200");
        }
    }
    false
}

/// True when this process runs as root (Chromium's sandbox refuses it).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
            .unwrap_or(false)
    })
}

/// One WebDriver call; the `value` of the answer, or its error.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("WebDriver {method} {url}"))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .with_context(|| format!("WebDriver {method} {url}: the answer is not JSON"))?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "WebDriver {method} {url}: {status} {}: {}",
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or_default()
        );
    }
    Ok(value)
}

/// A WebDriver session: one browser window. End it with
/// [`close`](Self::close) (chromedriver's own stop ends it too).
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.session),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        call(
            &self.http,
            reqwest::Method::GET,
            &format!("{}{path}", self.session),
            None,
        )
        .await
    }

    /// Loads `url` and waits for it to load (not for its scripts' work).
    ///
    /// # Errors
    /// A WebDriver error (the page does not load).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// The elements that match the CSS `selector` now (maybe none).
    ///
    /// # Errors
    /// A WebDriver error (an invalid selector).
    pub async fn find_all(&self, selector: &str) -> Result<Vec<Element>> {
        let value = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": selector }),
            )
            .await?;
        Ok(value
            .as_array()
            .map(|found| {
                found
                    .iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str().map(|id| Element(id.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The rendered text of `element`.
    ///
    /// # Errors
    /// A WebDriver error (the element went).
    pub async fn text(&self, element: &Element) -> Result<String> {
        let value = self.get(&format!("/element/{}/text", element.0)).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns what it returns.
    ///
    /// # Errors
    /// A WebDriver error (the script threw).
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs `script` until it returns `true`, every 50 ms, for up to
    /// `within`; returns how long that took.
    ///
    /// # Errors
    /// `what` and the script's last answer if it never did.
    pub async fn wait_for(&self, what: &str, script: &str, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let value = self.execute(script, Vec::new()).await?;
            if value == Value::Bool(true) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!("{what}: not seen within {within:?} (last answer: {value})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the window.
    ///
    /// # Errors
    /// A WebDriver error, or an answer that is not base64.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        let value = self.get("/screenshot").await?;
        let encoded = value
            .as_str()
            .ok_or_else(|| anyhow!("the screenshot answer is not a string"))?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("the screenshot is not base64")
    }

    /// Ends the session (closes the browser).
    ///
    /// # Errors
    /// A WebDriver error.
    pub async fn close(self) -> Result<()> {
        call(&self.http, reqwest::Method::DELETE, &self.session, None)
            .await
            .map(drop)
    }
}
