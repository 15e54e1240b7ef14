//! `sdctl bench` smoke tests: `--quick --spawn` on all four backends (real
//! etcd, ZooKeeper and Consul started by the test kit on loopback), and a
//! run against a server given by address. They check the SHAPE of what is
//! printed and written (rows, columns, JSON keys, a well-formed SVG),
//! never the numbers, which are only printed.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{run_bounded, sdctl, text};
use testkit::{EtcdServer, RegistryServer};

/// A bound on a whole quick run (it takes about a minute): only to turn a
/// hang into a failure.
const BENCH_BOUND: Duration = Duration::from_secs(600);

const BACKENDS: [&str; 4] = ["memory", "etcd", "zookeeper", "consul"];

fn keys(value: &serde_json::Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

fn is_number(cell: &str) -> bool {
    cell.trim_end_matches('s').parse::<f64>().is_ok()
}

#[test]
fn quick_spawned_bench_prints_a_row_per_backend_and_writes_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (json_path, svg_path) = (dir.path().join("bench.json"), dir.path().join("bench.svg"));
    let mut command = sdctl(&[]);
    command.args(["bench", "--quick", "--spawn", "--no-progress", "--backends"]);
    command.arg(BACKENDS.join(",")).arg("--out").arg(&json_path);
    command.arg("--svg").arg(&svg_path);
    let (output, took) = run_bounded(command, BENCH_BOUND);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    println!("{stdout}");
    testkit::record_timing(
        env!("CARGO_TARGET_TMPDIR"),
        &format!(
            "sdctl bench --quick --spawn (4 backends): {:.1}s",
            took.as_secs_f64()
        ),
    );
    assert!(
        output.status.success(),
        "sdctl bench failed: {stderr}\n{stdout}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains("register/deregister round"),
        "no progress when stderr is not a terminal: {stderr}"
    );

    // The table: a title, the group and column headers, a row per backend
    // with a cell per column, then notes (never a failure).
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("sdctl bench: "), "{stdout}");
    for group in [
        "register ms",
        "propagate ms",
        "deregister ms",
        "crash ms",
        "sync 1000",
        "watcher MiB",
        "bulk",
        "lorem",
        "server",
    ] {
        assert!(lines[1].contains(group), "no {group:?} group: {stdout}");
    }
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "backend", "expiry", "p50", "p99", "p50", "p99", "p50", "p99", "p50", "p99", "p50",
            "p99", "@2000", "reg/s", "rps", "p99", "ms", "MiB"
        ],
        "{stdout}"
    );
    for (line, backend) in lines[3..7].iter().zip(BACKENDS) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), sdctl::bench::TABLE_COLUMNS, "{line}");
        assert_eq!(cells[0], backend, "{stdout}");
        for (i, cell) in cells.iter().enumerate().skip(1) {
            // Memory has no watcher process and no server to measure.
            let absent = backend == "memory" && (i == 12 || i == 16);
            assert!(
                if absent {
                    *cell == "-"
                } else {
                    is_number(cell)
                },
                "{backend} column {i} is {cell:?}: {stdout}"
            );
        }
    }
    // The scale rows (not for memory): a title, two header lines, one row
    // per backend and size (quick: 1,000), every cell measured.
    assert!(lines[7].starts_with("scale: "), "{stdout}");
    assert!(lines[8].contains("CPU ms/change"), "{stdout}");
    for (line, backend) in lines[10..13].iter().zip(&BACKENDS[1..]) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[..3], [*backend, "this", "1000"], "{stdout}");
        for cell in &cells[3..11] {
            // The gateway's columns need lorem-client beside sdctl; the
            // floor is not measured on Consul.
            assert!(is_number(cell) || *cell == "-", "{line}");
        }
        assert_eq!(cells[11], "40/40", "every change seen: {line}");
    }
    for note in &lines[13..] {
        // What does not apply, or was measured another way (memory, the
        // Consul catalog); never a failure.
        assert!(
            BACKENDS.iter().any(|b| note.starts_with(&format!("{b}: "))),
            "a note names its backend: {note}"
        );
        assert!(!note.contains("FAILED"), "{note}");
    }

    // The JSON: every key, for every backend.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(
        keys(&json),
        set(&["machine", "sizes", "seconds", "backends"])
    );
    assert_eq!(
        keys(&json["machine"]),
        set(&["cpus", "os", "spawned_on_loopback"])
    );
    assert_eq!(json["machine"]["spawned_on_loopback"], true);
    assert_eq!(
        keys(&json["sizes"]),
        set(&[
            "ttl_ms",
            "rounds",
            "gap_ms",
            "crash",
            "bulk",
            "sync",
            "watchers",
            "load_requests",
            "load_concurrency",
            "scale",
            "scale_changes",
            "scale_rate"
        ])
    );
    let rows = json["backends"].as_array().expect("a backends array");
    assert_eq!(
        rows.iter()
            .map(|r| r["backend"].as_str().unwrap())
            .collect::<Vec<_>>(),
        BACKENDS
    );
    for row in rows {
        let backend = row["backend"].as_str().unwrap();
        assert_eq!(
            keys(row),
            set(&[
                "backend",
                "addr",
                "expiry_ms",
                "register_ms",
                "propagation_ms",
                "deregistration_ms",
                "crash_detection_ms",
                "initial_sync_ms",
                "watcher_memory",
                "bulk",
                "lorem",
                "server_rss_mib",
                "scale",
                "notes",
                "error",
                "seconds"
            ]),
            "{backend}"
        );
        assert!(row["error"].is_null(), "{backend}: {}", row["error"]);
        for stat in [
            "register_ms",
            "propagation_ms",
            "deregistration_ms",
            "crash_detection_ms",
            "initial_sync_ms",
        ] {
            assert_eq!(
                keys(&row[stat]),
                set(&["p50", "p99", "n"]),
                "{backend} {stat}"
            );
            assert!(
                row[stat]["p99"].as_f64() >= row[stat]["p50"].as_f64(),
                "{backend} {stat}"
            );
        }
        assert_eq!(
            keys(&row["bulk"]),
            set(&["instances", "registered_ms", "visible_ms", "per_second"])
        );
        assert_eq!(
            keys(&row["lorem"]),
            set(&["ok", "failed", "rps", "p50_ms", "p99_ms"])
        );
        assert_eq!(row["lorem"]["failed"], 0, "{backend}");
        let scale = row["scale"].as_array().expect("a scale array");
        if backend == "memory" {
            assert!(scale.is_empty());
        } else {
            assert_eq!(scale.len(), 1, "{backend}");
            assert_eq!(
                keys(&scale[0]),
                set(&[
                    "children",
                    "instances",
                    "changes",
                    "rate_per_s",
                    "initial_sync_ms",
                    "floor_cpu_ms_per_change",
                    "watch_cpu_ms_per_change",
                    "gateway_cpu_ms_per_change",
                    "watch_peak_mib",
                    "gateway_peak_mib",
                    "propagation_ms",
                    "seen"
                ]),
                "{backend}"
            );
            assert!(scale[0]["watch_cpu_ms_per_change"].as_f64() > Some(0.0));
            // The bare client watch runs beside it on etcd and ZooKeeper.
            let floor = scale[0]["floor_cpu_ms_per_change"].as_f64();
            if backend == "consul" {
                assert_eq!(floor, None);
            } else {
                assert!(floor > Some(0.0), "{backend}: {floor:?}");
            }
        }
        if backend == "memory" {
            assert!(row["watcher_memory"].is_null() && row["server_rss_mib"].is_null());
            assert!(row["addr"].is_null());
        } else {
            assert_eq!(
                keys(&row["watcher_memory"]),
                set(&["instances", "empty_mib", "loaded_mib", "delta_mib"]),
                "{backend}"
            );
            assert!(row["server_rss_mib"].is_number(), "{backend}");
            assert!(
                row["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{backend}"
            );
        }
    }

    // The chart: well-formed SVG whose labels are text elements.
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    for label in
        BACKENDS
            .iter()
            .chain(&["register", "propagation", "crash detection", "milliseconds"])
    {
        assert!(
            texts.iter().any(|t| t == label),
            "no text {label:?} in {texts:?}"
        );
    }
    let bars = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
    assert!(bars >= 4 * 5, "{bars} rectangles");
}

#[test]
fn a_bench_against_a_given_server_leaves_nothing_behind() {
    let server = EtcdServer::start().expect("start etcd (see testkit for how to install it)");
    let addr = server.registry_addr();
    let mut command = sdctl(&[]);
    command.args([
        "bench",
        "--backends",
        "etcd",
        "--etcd-addr",
        &addr,
        "--rounds",
        "3",
        "--crash",
        "1",
        "--bulk",
        "50",
        "--sync",
        "1",
        "--watchers",
        "100",
        "--load-requests",
        "100",
        "--gap",
        "10ms",
    ]);
    let (output, _) = run_bounded(command, BENCH_BOUND);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    println!("{stdout}");
    assert!(
        output.status.success(),
        "sdctl bench failed: {stderr}\n{stdout}"
    );
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with("servers given by address"),
        "{stdout}"
    );
    let row: Vec<&str> = stdout
        .lines()
        .nth(3)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.len(), sdctl::bench::TABLE_COLUMNS, "{stdout}");
    assert_eq!(
        (row[0], row[16]),
        ("etcd", "-"),
        "no server RSS for a server not spawned: {stdout}"
    );

    // Every registration of the run was removed (or expired: the crash).
    let mut command = sdctl(&[("REGISTRY", "etcd"), ("REGISTRY_ADDR", &addr)]);
    command.args(["ls", "--json"]);
    let (output, _) = run_bounded(command, Duration::from_secs(30));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        json["services"],
        serde_json::json!([]),
        "left behind: {json}"
    );
}

/// Runs a tiny memory-only bench under `script`, which gives it a terminal
/// (util-linux's `script`, in Debian's essential bsdutils package), and
/// returns what the terminal showed.
fn bench_on_a_terminal(extra: &str) -> String {
    let command = format!(
        "{} bench --backends memory --ttl 1s --rounds 2 --gap 0s --crash 1 --bulk 10 --sync 1 \
         --watchers 0 --load-requests 10 {extra} >/dev/null",
        env!("CARGO_BIN_EXE_sdctl")
    );
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "cannot run `script` to give sdctl a terminal; install it with `apt-get install bsdutils`"
        );
    }
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &command, "/dev/null"]);
    let (output, _) = run_bounded(script, BENCH_BOUND);
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn progress_shows_on_a_terminal_unless_turned_off() {
    let shown = bench_on_a_terminal("");
    assert!(
        shown.contains("memory: register/deregister round 2/2") && shown.contains('\r'),
        "{shown:?}"
    );
    let quiet = bench_on_a_terminal("--no-progress");
    assert!(!quiet.contains("register/deregister round"), "{quiet:?}");
}
