//! `lorem-demo`: two lorem servers, a crash and a return, and a client that
//! keeps every request succeeding. No flags: the registry comes from the
//! environment (default: in-process), with a 2 s TTL unless `REGISTRY_TTL`
//! is set. Logs go to stderr; the report to stdout, ending with
//! `requests: ok=<n> failed=<m>`. Exits 0 only if no request failed.

use std::process::ExitCode;

use client::demo::{self, DemoOptions};

#[tokio::main]
async fn main() -> ExitCode {
    client::init_tracing();
    let settings = match demo::settings_from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("lorem-demo: {error}");
            return ExitCode::FAILURE;
        }
    };
    match demo::run(settings, DemoOptions::default()).await {
        Ok(report) => {
            println!("{report}");
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("lorem-demo: {message}");
            ExitCode::FAILURE
        }
    }
}
