//! The demo that `cargo run --bin lorem-demo` runs: two lorem
//! servers, a crash, a return, and a client that never fails a request.
//!
//! Every server and the client get their own registry connection from
//! [`registry::connect`], as separate processes would (with the `memory`
//! backend they share the process-wide store).
//!
//! | phase | what happens                                           | ends when                               |
//! |-------|--------------------------------------------------------|-----------------------------------------|
//! | 1     | `a` and `b` serve; requests alternate                  | after [`DemoOptions::phase1`]           |
//! | 2     | `b` crashes (no deregistration); retries go to `a`     | the client sees `b` expire, then [`DemoOptions::settle`] |
//! | 3     | `b` comes back with the same id on a new port          | `b` serves again, then [`DemoOptions::settle`] |
//!
//! The client sends one request every [`DemoOptions::interval`]. Each phase
//! is bounded, and so is the whole run ([`DemoOptions::overall`]). A run
//! that stops early still reports what it saw: [`DemoFailure::report`] has
//! the phases so far (the interrupted one included) and the request counts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use lorem::server::{RunningServer, ServerError, ServerOptions};
use registry::Settings;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::client::{LoremClient, LoremRequest};
use balancer::{Balancer, BalancerOptions, deadline_after};
use http_client::ClientOptions;

/// The TTL the demo uses unless `REGISTRY_TTL` is set: short, so that the
/// crash shows within seconds.
pub const DEMO_TTL: Duration = Duration::from_secs(2);

/// The id of the server that stays up.
const STAYS: &str = "a";
/// The id of the server that crashes and comes back.
const CRASHES: &str = "b";

/// A demo run that stopped early: why, and what it saw until then.
#[derive(Debug, thiserror::Error)]
#[error("the demo stopped early")]
pub struct DemoFailure {
    /// The phases gathered so far (the interrupted one last) and the
    /// request counts; its [`DemoReport::error`] holds the reason in words.
    pub report: DemoReport,
    /// Why it stopped.
    #[source]
    pub error: DemoError,
}

/// Why the demo could not run to the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The registry settings are unusable or the registry is unreachable.
    #[error("registry: {0}")]
    Registry(#[from] registry::Error),

    /// A lorem server could not start.
    #[error("lorem server {id:?} could not start")]
    Server {
        /// The server's id.
        id: String,
        /// Why.
        #[source]
        source: ServerError,
    },

    /// The client could not be built.
    #[error("client: {0}")]
    Client(#[from] http_client::Error),

    /// A phase did not reach its goal in time.
    #[error("phase {phase}: {what} did not happen within {}", humantime::format_duration(*waited))]
    PhaseTimeout {
        /// The phase (`start`, `2`, `3`).
        phase: &'static str,
        /// What was awaited.
        what: &'static str,
        /// How long we waited.
        waited: Duration,
    },

    /// The whole run took longer than [`DemoOptions::overall`].
    #[error("the demo did not finish within {}", humantime::format_duration(*after))]
    TimedOut {
        /// The overall bound.
        after: Duration,
    },
}

/// Timings and sizes of the demo. The defaults are what `lorem-demo` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// The service name the servers register under: tests give each run its
    /// own, since `memory` registries are shared by the whole process.
    pub service: String,
    /// Time between two requests.
    pub interval: Duration,
    /// Length of phase 1.
    pub phase1: Duration,
    /// How long phases 2 and 3 go on after their event.
    pub settle: Duration,
    /// Bound on waiting for an event: both servers listed at the start, `b`
    /// gone in phase 2, `b` serving again in phase 3.
    pub event_timeout: Duration,
    /// Bound on the whole run.
    pub overall: Duration,
    /// The client's retry settings.
    pub client: ClientOptions,
    /// The request sent every interval.
    pub request: LoremRequest,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            service: "lorem".to_owned(),
            interval: Duration::from_millis(100),
            phase1: Duration::from_secs(3),
            settle: Duration::from_secs(1),
            event_timeout: Duration::from_secs(60),
            overall: Duration::from_secs(120),
            client: ClientOptions::default(),
            request: LoremRequest::default(),
        }
    }
}

/// What happened in one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseReport {
    /// `1`, `2` or `3`.
    pub number: u8,
    /// What the phase shows.
    pub title: String,
    /// How long it ran.
    pub duration: Duration,
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed even after retries.
    pub failed: u64,
    /// Failed tries that were retried on another instance.
    pub retries: u64,
    /// Answered requests by instance id.
    pub per_instance: BTreeMap<String, u64>,
}

impl fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "phase {} ({}): {:.1}s ok={} failed={} retries={} served:",
            self.number,
            self.title,
            self.duration.as_secs_f64(),
            self.ok,
            self.failed,
            self.retries
        )?;
        if self.per_instance.is_empty() {
            write!(f, " none")?;
        }
        for (id, count) in &self.per_instance {
            write!(f, " {id}={count}")?;
        }
        Ok(())
    }
}

/// The outcome of a demo run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoReport {
    /// The three phases, in order.
    pub phases: Vec<PhaseReport>,
    /// Requests answered, all phases.
    pub ok: u64,
    /// Requests that failed, all phases. The demo succeeds when it is 0.
    pub failed: u64,
    /// Why the run stopped early (the error and its causes), if it did.
    pub error: Option<String>,
}

impl DemoReport {
    /// True when the run went to the end and no request failed.
    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.ok > 0 && self.error.is_none()
    }
}

/// One line per phase, an `error: ...` line if the run stopped early, and
/// always `requests: ok=<n> failed=<m>` last.
impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for phase in &self.phases {
            writeln!(f, "{phase}")?;
        }
        if let Some(error) = &self.error {
            writeln!(f, "error: {error}")?;
        }
        write!(f, "requests: ok={} failed={}", self.ok, self.failed)
    }
}

/// `error` and its causes on one line, skipping a cause whose text the
/// line already holds (as `#[error("client: {0}")]` wrappers repeat it).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The registry settings of `lorem-demo`: [`Settings::from_env`], with
/// [`DEMO_TTL`] unless `REGISTRY_TTL` is set.
///
/// # Errors
/// As [`Settings::from_env`].
pub fn settings_from_env() -> Result<Settings, registry::Error> {
    let mut settings = Settings::from_env()?;
    if std::env::var_os("REGISTRY_TTL").is_none() {
        settings.ttl = DEMO_TTL;
    }
    Ok(settings)
}

/// Runs the three phases and reports them; servers are shut down gracefully
/// at the end.
///
/// # Errors
/// A [`DemoFailure`] (with the report so far) if the service name is
/// invalid, if the registry, a server or the client cannot start, if a
/// phase's event does not happen within [`DemoOptions::event_timeout`], or
/// if the run takes longer than [`DemoOptions::overall`]. Failed requests
/// are not errors: they are counted in the report.
pub async fn run(settings: Settings, options: DemoOptions) -> Result<DemoReport, DemoFailure> {
    let mut report = DemoReport::default();
    let outcome = match tokio::time::timeout(
        options.overall,
        run_phases(&settings, &options, &mut report),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Err(DemoError::TimedOut {
            after: options.overall,
        }),
    };
    match outcome {
        Ok(()) => Ok(report),
        Err(error) => {
            let message = error_chain(&error);
            tracing::error!(error = %message, "the demo stopped early");
            report.error = Some(message);
            Err(DemoFailure { report, error })
        }
    }
}

async fn start_server(
    settings: &Settings,
    options: &DemoOptions,
    id: &str,
) -> Result<RunningServer, DemoError> {
    let registry = registry::connect(settings).await?;
    let mut server = ServerOptions::new(id);
    server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    server.service.clone_from(&options.service);
    server.drain_delay = Duration::from_millis(200);
    server.shutdown_timeout = Duration::from_secs(5);
    lorem::server::start(server, registry)
        .await
        .map_err(|source| DemoError::Server {
            id: id.to_owned(),
            source,
        })
}

/// The client side: one request per tick, counted at once into the
/// current (last) phase of the report, so that a run cut short still has
/// every count.
struct Traffic<'r> {
    client: LoremClient,
    ticks: Interval,
    request: LoremRequest,
    report: &'r mut DemoReport,
    started: Instant,
}

impl Traffic<'_> {
    fn begin(&mut self, number: u8, title: &str) {
        tracing::info!(phase = number, "phase {number}: {title}");
        self.report.phases.push(PhaseReport {
            number,
            title: title.to_owned(),
            ..PhaseReport::default()
        });
        self.started = Instant::now();
    }

    /// Counts one request into the current phase and the totals.
    fn count(&mut self, served_by: Option<&str>, retries: u64) {
        let elapsed = self.started.elapsed();
        let report = &mut *self.report;
        match served_by {
            Some(_) => report.ok += 1,
            None => report.failed += 1,
        }
        let Some(phase) = report.phases.last_mut() else {
            return;
        };
        phase.duration = elapsed;
        phase.retries += retries;
        match served_by {
            Some(id) => {
                phase.ok += 1;
                *phase.per_instance.entry(id.to_owned()).or_default() += 1;
            }
            None => phase.failed += 1,
        }
    }

    /// Waits for the next tick and sends one request; returns the id of the
    /// instance that answered.
    async fn tick(&mut self) -> Option<String> {
        self.ticks.tick().await;
        match self.client.lorem(&self.request).await {
            Ok(lorem) => {
                tracing::info!(
                    instance = %lorem.instance,
                    retries = lorem.retries,
                    latency = ?lorem.latency,
                    "request served"
                );
                // Keyed by the registry id of the instance the balancer
                // picked, whatever its x-instance-id header says.
                self.count(Some(&lorem.instance), u64::from(lorem.retries));
                Some(lorem.instance)
            }
            Err(error) => {
                tracing::warn!(%error, "request failed");
                let retries = match error {
                    http_client::Error::Exhausted { attempts, .. } => {
                        u64::from(attempts.saturating_sub(1))
                    }
                    _ => 0,
                };
                self.count(None, retries);
                None
            }
        }
    }

    /// Sends requests for `length`.
    async fn run_for(&mut self, length: Duration) {
        let until = deadline_after(length);
        while Instant::now() < until {
            self.tick().await;
        }
    }

    fn end(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(phase) = self.report.phases.last_mut() {
            phase.duration = elapsed;
            tracing::info!("{phase}");
        }
    }
}

/// The three phases, counted into `report` as they go.
async fn run_phases(
    settings: &Settings,
    options: &DemoOptions,
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    balancer::check_service(&options.service).map_err(http_client::Error::from)?;
    tracing::info!(
        backend = settings.backend.name(),
        ttl = ?settings.ttl,
        service = %options.service,
        "starting the demo: servers a and b, and a client"
    );
    let a = start_server(settings, options, STAYS).await?;
    let b = start_server(settings, options, CRASHES).await?;
    let balancer = Balancer::new(
        registry::connect(settings).await?,
        &options.service,
        BalancerOptions::default(),
    )
    .map_err(http_client::Error::from)?;
    let client = LoremClient::new(balancer.clone(), options.client.clone())?;

    let mut set = balancer.subscribe();
    // The guard `wait_for` returns locks the set: turn it into a bool at once.
    let both = tokio::time::timeout(
        options.event_timeout,
        set.wait_for(|set| {
            set.iter().any(|i| i.id == STAYS) && set.iter().any(|i| i.id == CRASHES)
        }),
    )
    .await
    .is_ok_and(|seen| seen.is_ok());
    if !both {
        return Err(DemoError::PhaseTimeout {
            phase: "start",
            what: "both servers a and b in the client's instance set",
            waited: options.event_timeout,
        });
    }

    // Tokio's interval adds the period to an instant at every tick.
    let mut ticks = tokio::time::interval(
        options
            .interval
            .clamp(Duration::from_millis(1), crate::MAX_TIMEOUT),
    );
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut traffic = Traffic {
        client,
        ticks,
        request: options.request,
        report,
        started: Instant::now(),
    };

    traffic.begin(1, "a and b serve");
    traffic.run_for(options.phase1).await;
    traffic.end();

    traffic.begin(2, "b crashed; retries go to a until b expires");
    b.crash();
    let deadline = deadline_after(options.event_timeout);
    while balancer.instances().iter().any(|i| i.id == CRASHES) {
        if Instant::now() >= deadline {
            return Err(DemoError::PhaseTimeout {
                phase: "2",
                what: "the crashed server b expiring from the registry",
                waited: options.event_timeout,
            });
        }
        traffic.tick().await;
    }
    tracing::info!(
        instances = balancer.instances().len(),
        "b expired from the registry"
    );
    traffic.run_for(options.settle).await;
    traffic.end();

    traffic.begin(3, "b is back with the same id");
    let b = start_server(settings, options, CRASHES).await?;
    let deadline = deadline_after(options.event_timeout);
    loop {
        if Instant::now() >= deadline {
            return Err(DemoError::PhaseTimeout {
                phase: "3",
                what: "the restarted server b serving a request",
                waited: options.event_timeout,
            });
        }
        if traffic.tick().await.as_deref() == Some(CRASHES) {
            break;
        }
    }
    traffic.run_for(options.settle).await;
    traffic.end();

    drop(traffic);
    drop(balancer);
    let (a_stopped, b_stopped) = tokio::join!(a.shutdown(), b.shutdown());
    for (id, stopped) in [(STAYS, a_stopped), (CRASHES, b_stopped)] {
        if let Err(error) = stopped {
            tracing::warn!(id, %error, "server did not stop cleanly");
        }
    }
    Ok(())
}
