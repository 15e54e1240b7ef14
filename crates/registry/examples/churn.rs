//! Grows a service to N instances on the registry of the usual settings
//! (`REGISTRY`, `REGISTRY_ADDR`, ...), then makes changes at a fixed rate,
//! holding everything between: a load to point a watcher process at while
//! it is profiled (`perf record -p`, `/proc/PID/task/*/schedstat`), one
//! process at a time, without the whole `sdctl bench`.
//!
//! ```sh
//! REGISTRY=etcd REGISTRY_ADDR=http://127.0.0.1:2379 \
//!   cargo run --release -p registry --example churn -- big 100000 0 1 600   # hold 100,000
//! REGISTRY=etcd REGISTRY_ADDR=http://127.0.0.1:2379 \
//!   cargo run --release -p registry --example churn -- big 0 400 40 0 run1 # 400 changes at 40/s
//! ```
//!
//! Arguments: SERVICE N CHANGES RATE HOLD_S [TAG]. Ids are
//! `instance-000000`...; the changes register `churn<TAG><k>` and, once
//! ten are live, remove the oldest every other change (as `sdctl bench`'s
//! scale rows do). Prints `grown`, `churn start` and `churn done` on stderr
//! with timings; holds HOLD_S seconds after growing and after the changes.
//! Bounded: N <= 200,000, CHANGES <= 100,000, RATE 1..=1,000/s, HOLD_S <=
//! 3,600.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;
use registry::{Instance, Registration};

fn arg<T>(n: usize, name: &str, max: T) -> T
where
    T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let value = std::env::args()
        .nth(n)
        .and_then(|a| a.parse::<T>().ok())
        .unwrap_or_else(|| {
            eprintln!(
                "usage: churn SERVICE N CHANGES RATE HOLD_S [TAG] ({name} missing or not a number)"
            );
            std::process::exit(2)
        });
    if value > max {
        eprintln!("churn: {name} is at most {max}");
        std::process::exit(2);
    }
    value
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = std::env::args().nth(1).unwrap_or_default();
    registry::validate_name("service", &service)?;
    let n: usize = arg(2, "N", 200_000);
    let changes: usize = arg(3, "CHANGES", 100_000);
    let rate: u64 = arg::<u64>(4, "RATE", 1_000).max(1);
    let hold = Duration::from_secs(arg(5, "HOLD_S", 3_600));
    let tag = std::env::args().nth(6).unwrap_or_default();
    let registry = registry::connect(&registry::Settings::from_env()?).await?;

    let started = Instant::now();
    let held: Vec<Registration> = futures::stream::iter(0..n)
        .map(|i| {
            let instance = Instance::new(&service, format!("instance-{i:06}"), "127.0.0.1", 9);
            let registry = registry.clone();
            async move { registry.register(instance).await }
        })
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    eprintln!("grown {} in {:?}", held.len(), started.elapsed());
    tokio::time::sleep(hold).await;

    eprintln!("churn start");
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut live: VecDeque<Registration> = VecDeque::new();
    for k in 0..changes {
        ticks.tick().await;
        match live.pop_front() {
            Some(oldest) if k % 2 == 1 && live.len() >= 9 => oldest.deregister().await?,
            oldest => {
                if let Some(oldest) = oldest {
                    live.push_front(oldest);
                }
                let instance = Instance::new(&service, format!("churn{tag}{k}"), "127.0.0.1", 9);
                live.push_back(registry.register(instance).await?);
            }
        }
    }
    eprintln!("churn done: {changes} changes in {:?}", started.elapsed());
    tokio::time::sleep(hold).await;
    for registration in live {
        let _ = registration.deregister().await;
    }
    // The grown instances' records go with their lease or session (one
    // TTL) rather than in 100,000 deletes.
    drop(held);
    Ok(())
}
