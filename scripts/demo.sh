#!/usr/bin/env bash
# The README's first command: the lorem demo on the embedded in-process
# registry (no server needed). Installs protoc if missing (the etcd client
# library is compiled from .proto files), then runs
#   cargo run --bin lorem-demo
# Set REGISTRY / REGISTRY_ADDR to run the same demo against a real registry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
"${ROOT}/scripts/install-deps.sh" build >&2
exec cargo run --quiet --bin lorem-demo -- "$@"
