//! The binaries' logs (the one set-up in the `logging` crate), seen from
//! outside through `lorem-client`: no ANSI escapes when stderr is not a
//! terminal or `NO_COLOR` is set, and the structured fields stay greppable.

use std::process::{Command, Output, Stdio};

/// `lorem-client loop --count 1` on an empty memory registry: it logs its
/// warning and `client ready` (with `service=lorem`), then gives up after
/// 200 ms.
fn lorem_client_args() -> [&'static str; 5] {
    ["loop", "--count", "1", "--wait-timeout", "200ms"]
}

fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("REGISTRY") || key.starts_with("LB_") || key == "LOREM_SERVICE" {
            command.env_remove(key);
        }
    }
    command
        .env("REGISTRY", "memory")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

fn has_escape(text: &str) -> bool {
    text.contains("\x1b[")
}

#[test]
fn logs_to_a_pipe_have_no_ansi_escapes_and_stay_greppable() {
    let output = run(command(env!("CARGO_BIN_EXE_lorem-client")).args(lorem_client_args()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("service=lorem") && stderr.contains("client ready"),
        "the log has no `service=lorem ... client ready` line:\n{stderr}"
    );
    assert!(
        !has_escape(&stderr),
        "ANSI escapes in a piped log:\n{stderr:?}"
    );
}

#[test]
fn no_color_keeps_escapes_out_of_a_piped_log() {
    let output = run(command(env!("CARGO_BIN_EXE_lorem-client"))
        .args(lorem_client_args())
        .env("NO_COLOR", "1"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("service=lorem"), "no log line:\n{stderr}");
    assert!(
        !has_escape(&stderr),
        "ANSI escapes with NO_COLOR=1:\n{stderr:?}"
    );
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), colours
/// appear, unless `NO_COLOR` is non-empty.
#[test]
fn on_a_terminal_colours_follow_no_color() {
    let line = std::iter::once(env!("CARGO_BIN_EXE_lorem-client"))
        .chain(lorem_client_args())
        .map(|word| format!("'{word}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let on_terminal = |no_color: Option<&str>| {
        let mut script = command("script");
        script.args(["-qec", &line, "/dev/null"]);
        if let Some(value) = no_color {
            script.env("NO_COLOR", value);
        }
        let output = script.output().unwrap_or_else(|error| {
            panic!("cannot run `script` (util-linux) to give lorem-client a terminal: {error}")
        });
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(
        coloured.contains("client ready"),
        "no log line:\n{coloured}"
    );
    assert!(
        has_escape(&coloured),
        "no colours on a terminal:\n{coloured:?}"
    );
    for value in ["", "0"] {
        let log = on_terminal(Some(value));
        let expected = value.is_empty();
        assert_eq!(
            has_escape(&log),
            expected,
            "NO_COLOR={value:?} on a terminal: colours {}expected:\n{log:?}",
            if expected { "" } else { "not " }
        );
    }
}
