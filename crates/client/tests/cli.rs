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
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        lorem_client()
            .args([
                "load",
                "--requests",
                "3",
                "--wait-timeout",
                "200ms",
                "--json",
            ])
            .output(),
    )
    .await
    .expect("lorem-client finishes")
    .expect("lorem-client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one line: {stdout}"
    );
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(report["ok"], 0, "{report}");
    assert_eq!(report["failed"], 3, "{report}");
    for key in ["p50_ms", "p99_ms", "rps"] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
    assert!(report["per_instance"].is_object(), "{report}");
    // The reason is logged on stderr.
    assert!(stderr.contains("no instance"), "{stderr}");
}

#[tokio::test]
async fn load_without_a_bound_is_a_usage_error() {
    let output = lorem_client()
        .args(["load", "--json"])
        .output()
        .await
        .expect("lorem-client runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--requests"), "{stderr}");
}

#[tokio::test]
async fn a_bad_registry_name_is_reported() {
    let output = lorem_client()
        .env("REGISTRY", "etc")
        .args(["loop", "--count", "1"])
        .output()
        .await
        .expect("lorem-client runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown registry \"etc\""), "{stderr}");
}
