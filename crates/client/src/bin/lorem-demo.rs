//! `lorem-demo`: two lorem servers, a crash and a return, and a client that
//! keeps every request succeeding. No flags: the registry comes from the
//! environment (default: in-process), with a 2 s TTL unless `REGISTRY_TTL`
//! is set. Logs go to stderr; the report to stdout, ending with
//! `requests: ok=<n> failed=<m>` even when the run stops early (the phases
//! so far and an `error: ...` line come before it). Exits 0 only if the run
//! went to the end and no request failed.

use std::process::ExitCode;

use client::demo::{self, DemoOptions, DemoReport};

#[tokio::main]
async fn main() -> ExitCode {
    logging::init("info");
    let report = match demo::settings_from_env() {
        Ok(settings) => match demo::run(settings, DemoOptions::default()).await {
            Ok(report) => report,
            Err(failure) => {
                eprintln!("lorem-demo: {}", demo::error_chain(&failure));
                failure.report
            }
        },
        Err(error) => {
            let message = demo::error_chain(&error);
            eprintln!("lorem-demo: {message}");
            DemoReport {
                error: Some(message),
                ..DemoReport::default()
            }
        }
    };
    println!("{report}");
    if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
