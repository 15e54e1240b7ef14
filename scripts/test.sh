#!/usr/bin/env bash
# The one test command: installs what the tests need (once), then runs
# `cargo test --workspace` with any extra arguments passed through, and, on
# a whole-workspace run, `cargo fmt --check`, clippy with warnings denied
# and `cargo doc` with warnings denied; e.g.
#   scripts/test.sh                 # everything
#   scripts/test.sh -p registry     # one crate (then without --workspace)
#
# The tests start real servers on 127.0.0.1 (see crates/testkit); what they
# need is installed by scripts/install-deps.sh test:
#   etcd + etcdctl    Debian packages etcd-server, etcd-client
#   ZooKeeper         Debian package zookeeper (its jars in /usr/share/java)
#                     and a Java runtime (default-jre-headless if none)
#   protoc            protobuf-compiler + libprotobuf-dev (etcd-client's
#                     build compiles .proto files importing
#                     google/protobuf/descriptor.proto)
#   Consul 1.14.11    built once with Go by scripts/build-consul.sh
#   Chromium          Debian packages chromium, chromium-driver (the live
#                     page's browser test, crates/client/tests/ui_browser.rs)
#   JDK 17 + Maven    openjdk-17-jdk-headless, maven: the interop tests
#                     (crates/interop) build Curator / Spring Cloud
#                     Zookeeper programs (downloads cached in ~/.m2) and
#                     go-kit / Kratos programs with the same Go (module
#                     cache in Go's default GOMODCACHE, ~/go/pkg/mod)
#
# Works as root (CI: no stdin, no sudo) or as a user with sudo. Set
# DRY_RUN=1 to only report what would be installed, then stop.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
export DEBIAN_FRONTEND=noninteractive

script_start=$(date +%s)
source "${ROOT}/scripts/lib.sh"

step "installing what the tests need (scripts/install-deps.sh test)"
"${ROOT}/scripts/install-deps.sh" test
step_done
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  exit 0
fi

step "finding or building Consul (scripts/build-consul.sh)"
CONSUL_BIN="$("${ROOT}/scripts/build-consul.sh" | tail -1)" \
  || die "scripts/build-consul.sh failed (see above); it needs Go 1.22+ on PATH, or set CONSUL_BIN to a consul binary"
[[ -x "${CONSUL_BIN}" ]] || die "scripts/build-consul.sh printed ${CONSUL_BIN:-nothing}, which is not an executable"
export CONSUL_BIN
echo "    CONSUL_BIN=${CONSUL_BIN}"
step_done

step "validating docker-compose.{consul,etcd,zk}.yml (offline, no engine needed)"
for file in docker-compose.consul.yml docker-compose.etcd.yml docker-compose.zk.yml; do
  docker-compose -f "${file}" config -q || die "${file} is not a valid compose file (see above)"
done
step_done

# `--workspace` would override a `-p CRATE` given here, so it is added only
# when no package is named.
scope=(--workspace)
for arg in "$@"; do
  case "${arg}" in
    --) break ;;
    -p|-p*|--package|--package=*) scope=() ;;
  esac
done
step "cargo test ${scope[*]} $*"
status=0
# Tests append what they measured (crash detection, restart recovery, load)
# here; cargo hides the output of passing tests, so it is printed below.
timings="${CARGO_TARGET_DIR:-target}/tmp/timings.txt"
rm -f "${timings}"
cargo test "${scope[@]}" "$@" || status=$?
step_done
# The style checks run on whole-workspace runs only (no arguments), after
# the tests so that a lint never hides a test result.
if [[ $# -eq 0 ]]; then
  step "cargo fmt --check, cargo clippy --all-targets -- -D warnings, cargo doc (warnings denied)"
  cargo fmt --all --check || { echo "cargo fmt --check: run cargo fmt" >&2; status=1; }
  cargo clippy --workspace --all-targets -- -D warnings || status=1
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps || status=1
  step_done
fi
if [[ -s "${timings}" ]]; then
  echo "==> measured by the tests (${timings})"
  sort "${timings}" | sed 's/^/    /'
fi
echo "==> total $(( $(date +%s) - script_start )) s; exit status ${status}"
exit "${status}"
