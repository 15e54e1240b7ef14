#!/usr/bin/env bash
# The balancer's overhead: `lorem-client load` through discovery and the
# balancer versus the same HTTP client straight to the same two lorem-server
# processes, alternating rounds in one run (crates/client/examples/overhead.rs).
# Release builds, since that is what the numbers are about. Needs etcd (the
# testkit starts it on 127.0.0.1; scripts/install-deps.sh test installs it).
#   scripts/overhead.sh [--rounds N] [--requests N] [--concurrency N]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
source "${ROOT}/scripts/lib.sh"
"${ROOT}/scripts/install-deps.sh" test
step "cargo build --release (lorem-server, lorem-client, the overhead example)"
cargo build --release -q --bin lorem-server --bin lorem-client
cargo build --release -q -p client --example overhead
step_done
exec "${CARGO_TARGET_DIR:-target}/release/examples/overhead" "$@"
