//! The demo, in-process and as the `lorem-demo` binary, on the in-process
//! registry. Both full runs go at once (about 8 s each); the runs that stop
//! early take about a second.

use std::process::Stdio;
use std::time::Duration;

use client::demo::{self, DemoError, DemoOptions};
use registry::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_to_completion_without_a_failed_request() {
    let settings = Settings {
        ttl: demo::DEMO_TTL,
        ..Settings::default()
    };
    let options = DemoOptions {
        // The memory store is process-wide: keep clear of other tests.
        service: "lorem-demo-test".to_owned(),
        ..DemoOptions::default()
    };
    let report = demo::run(settings, options)
        .await
        .unwrap_or_else(|failure| panic!("the demo runs: {failure:?}"));
    assert_eq!(report.failed, 0, "{report}");
    assert!(report.succeeded(), "{report}");
    assert_eq!(report.phases.len(), 3, "{report}");
    let [one, two, three] = &report.phases[..] else {
        unreachable!()
    };
    assert!(
        one.per_instance.contains_key("a") && one.per_instance.contains_key("b"),
        "{report}"
    );
    assert_eq!(
        two.per_instance.get("a").copied().unwrap_or(0),
        two.ok,
        "{report}"
    );
    assert!(
        two.retries > 0,
        "requests were retried away from b: {report}"
    );
    assert!(
        three.per_instance.contains_key("a") && three.per_instance.contains_key("b"),
        "both ids serve in phase 3: {report}"
    );
    assert!(
        report
            .to_string()
            .ends_with(&format!("requests: ok={} failed=0", report.ok)),
        "{report}"
    );
}

#[tokio::test]
async fn the_demo_binary_ends_with_the_request_counts() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lorem-demo"));
    for (key, _) in std::env::vars() {
        if key.starts_with("REGISTRY") {
            command.env_remove(key);
        }
    }
    command
        .env("REGISTRY", "memory")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(150), command.output())
        .await
        .expect("lorem-demo finishes within its own 120 s bound")
        .expect("lorem-demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let ok: u64 = last
        .strip_prefix("requests: ok=")
        .and_then(|rest| rest.strip_suffix(" failed=0"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!("unexpected last line {last:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
    assert!(ok > 0, "{stdout}");
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("phase ")).count(),
        3,
        "{stdout}"
    );
}

#[tokio::test]
async fn a_demo_that_stops_early_still_reports_its_phases() {
    let settings = Settings {
        // b cannot expire within the phase-2 bound below.
        ttl: Duration::from_secs(60),
        ..Settings::default()
    };
    let options = DemoOptions {
        service: "lorem-demo-early".to_owned(),
        phase1: Duration::from_millis(300),
        event_timeout: Duration::from_millis(300),
        ..DemoOptions::default()
    };
    let failure = demo::run(settings, options)
        .await
        .expect_err("b cannot expire in time");
    assert!(
        matches!(failure.error, DemoError::PhaseTimeout { phase: "2", .. }),
        "{:?}",
        failure.error
    );
    let report = &failure.report;
    assert!(!report.succeeded(), "{report}");
    assert_eq!(
        report.phases.len(),
        2,
        "phase 1 and the interrupted 2: {report}"
    );
    assert_eq!(
        report.ok,
        report.phases.iter().map(|p| p.ok).sum::<u64>(),
        "{report}"
    );
    assert!(report.phases[0].ok > 0, "{report}");
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().filter(|l| l.starts_with("phase ")).count() == 2,
        "{text}"
    );
    let [.., error, last] = lines[..] else {
        panic!("too few lines: {text}")
    };
    assert!(error.starts_with("error: phase 2:"), "{text}");
    assert_eq!(
        last,
        format!("requests: ok={} failed={}", report.ok, report.failed),
        "{text}"
    );

    // An invalid service name stops it before anything starts.
    let failure = demo::run(
        Settings::default(),
        DemoOptions {
            service: "no/such".to_owned(),
            ..DemoOptions::default()
        },
    )
    .await
    .expect_err("an invalid service name");
    assert!(
        failure
            .report
            .to_string()
            .ends_with("requests: ok=0 failed=0"),
        "{}",
        failure.report
    );
    assert!(
        failure
            .report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("service \"no/such\" must match")),
        "{:?}",
        failure.report
    );
}

#[tokio::test]
async fn the_demo_binary_ends_with_the_counts_when_it_fails() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lorem-demo"));
    for (key, _) in std::env::vars() {
        if key.starts_with("REGISTRY") {
            command.env_remove(key);
        }
    }
    command
        .env("REGISTRY", "etc")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("lorem-demo finishes")
        .expect("lorem-demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some("requests: ok=0 failed=0"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("unknown registry \"etc\"")),
        "{stdout}"
    );
    assert!(stderr.contains("unknown registry \"etc\""), "{stderr}");
}
