//! compare-backends runs to the end and prints one JSON row per backend.
//! (A smoke test: the numbers themselves are printed, never asserted.)

use std::process::Command;

#[test]
fn compare_backends_prints_one_row_per_backend() {
    let output = Command::new(env!("CARGO_BIN_EXE_compare-backends"))
        .args([
            "--rounds",
            "3",
            "--load-requests",
            "200",
            "--json",
            "--only",
            "memory,etcd",
        ])
        .output()
        .expect("run compare-backends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "compare-backends failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON array");
    let backends: Vec<&str> = rows
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|row| row["backend"].as_str())
        .collect();
    assert_eq!(backends, ["memory", "etcd"]);
    println!("{stdout}");
}

#[test]
fn unknown_arguments_are_clear_errors() {
    let output = Command::new(env!("CARGO_BIN_EXE_compare-backends"))
        .args(["--only", "etc"])
        .output()
        .expect("run compare-backends");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown backend \"etc\""), "{stderr}");
}
