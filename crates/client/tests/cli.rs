//! `lorem-client` as a process.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

fn lorem_client() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lorem-client"));
    for (key, _) in std::env::vars() {
        if key.starts_with("REGISTRY") || key == "LOREM_SERVICE" {
            command.env_remove(key);
        }
    }
    command
        .env("REGISTRY", "memory")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn load_json_prints_one_object_even_when_nothing_answers() {
    let (code, stdout, stderr) = run(
        "memory",
        &[
            "load",
            "--requests",
            "3",
            "--wait-timeout",
            "200ms",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    no_success_report(&stdout, 3);
    // The reason is logged on stderr.
    assert!(stderr.contains("no instance"), "{stderr}");
    // So is the warning that the memory registry sees only this process.
    assert!(
        stderr.contains("REGISTRY is memory (the default)"),
        "{stderr}"
    );
}

/// Runs `lorem-client` with `args` (and `REGISTRY=registry`), bounded in
/// time: `(exit code, stdout, stderr)`.
async fn run(registry: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        lorem_client().env("REGISTRY", registry).args(args).output(),
    )
    .await
    .expect("lorem-client finishes")
    .expect("lorem-client runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Checks that `stdout` is exactly one JSON report of `failed` failed
/// requests and none that succeeded, and returns it.
fn no_success_report(stdout: &str, failed: u64) -> Value {
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one line: {stdout}"
    );
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(report["failed"], failed, "{report}");
    for key in ["p50_ms", "p99_ms", "p999_ms", "max_ms", "rps"] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
    assert!(report["per_instance"].is_object(), "{report}");
    report
}

/// Checks that `stdout` is exactly one all-failed JSON report whose
/// `error` contains `reason`, and returns it.
fn all_failed_report(stdout: &str, failed: u64, reason: &str) -> Value {
    let report = no_success_report(stdout, failed);
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(reason),
        "error should mention {reason:?}: {report}"
    );
    report
}

/// Runs `lorem-client` with `args` (and `REGISTRY=registry`), checks that it
/// exits with 1 and prints an all-failed report of `failed` requests whose
/// error contains `reason`, and returns its stderr.
async fn run_all_failed(registry: &str, args: &[&str], failed: u64, reason: &str) -> String {
    let (code, stdout, stderr) = run(registry, args).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    all_failed_report(&stdout, failed, reason);
    stderr
}

#[tokio::test]
async fn load_json_reports_usage_errors_as_json() {
    // No bound at all: one failed request.
    let stderr = run_all_failed("memory", &["load", "--json"], 1, "--requests").await;
    assert!(stderr.contains("--requests"), "{stderr}");

    // A bad duration: every requested request failed.
    let stderr = run_all_failed(
        "memory",
        &["load", "--requests", "5", "--duration", "soon", "--json"],
        5,
        "--duration",
    )
    .await;
    assert!(stderr.contains("--duration"), "{stderr}");

    // An unknown flag, with --json before the subcommand's other flags.
    let stderr = run_all_failed(
        "memory",
        &["load", "--json", "--requests=2", "--no-such-flag"],
        2,
        "--no-such-flag",
    )
    .await;
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[tokio::test]
async fn load_json_reports_setting_errors_as_json() {
    let stderr = run_all_failed(
        "etc",
        &["load", "--requests", "4", "--json"],
        4,
        "unknown registry \"etc\"",
    )
    .await;
    assert!(stderr.contains("unknown registry \"etc\""), "{stderr}");

    // A service name no registry can hold fails at once, not after a wait
    // per request.
    run_all_failed(
        "memory",
        &["load", "--service", "a/b", "--requests", "3", "--json"],
        3,
        "service \"a/b\" must match",
    )
    .await;
}

#[tokio::test]
async fn usage_errors_without_json_are_clap_errors() {
    let (code, stdout, stderr) = run("memory", &["load"]).await;
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("--requests"), "{stderr}");
}

#[tokio::test]
async fn an_invalid_service_name_is_refused_at_start() {
    let (code, stdout, stderr) = run("memory", &["loop", "--count", "1", "--service", ".."]).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("service \"..\" must match"), "{stderr}");
    assert!(
        !stderr.contains("no instance"),
        "no wait for an instance: {stderr}"
    );
}

#[tokio::test]
async fn a_bad_registry_name_is_reported() {
    let (code, stdout, stderr) = run("etc", &["loop", "--count", "1"]).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("unknown registry \"etc\""), "{stderr}");
}

#[tokio::test]
async fn absurd_timeouts_are_refused_without_a_panic() {
    // Once a panic: an Instant plus 2^64 - 1 seconds overflowed.
    let (code, stdout, stderr) = run(
        "memory",
        &[
            "--wait-timeout",
            "18446744073709551615s",
            "load",
            "--requests",
            "2",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    all_failed_report(&stdout, 2, "must be at most 24h");
    assert!(!stderr.contains("panicked"), "{stderr}");

    for args in [
        [
            "--try-timeout",
            "18446744073709551615s",
            "load",
            "--requests",
            "1",
        ],
        [
            "loop",
            "--count",
            "1",
            "--interval",
            "18446744073709551615s",
        ],
    ] {
        let (code, stdout, stderr) = run("memory", &args).await;
        assert_eq!(code, Some(2), "{args:?}: {stdout}\n{stderr}");
        assert!(stderr.contains("must be at most 24h"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
