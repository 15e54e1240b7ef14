#!/usr/bin/env bash
# The one test command: installs what the tests need (once), then runs
# `cargo test --workspace` with any extra arguments passed through, e.g.
#   scripts/test.sh                 # everything
#   scripts/test.sh -p registry     # one crate (then without --workspace)
#
# The tests start real servers on 127.0.0.1 (see crates/testkit):
#   etcd + etcdctl    Debian packages etcd-server, etcd-client
#   ZooKeeper         Debian package zookeeper (its jars in /usr/share/java)
#                     and a Java runtime (default-jre-headless if none)
#   protoc            protobuf-compiler + libprotobuf-dev (etcd-client's
#                     build compiles .proto files importing
#                     google/protobuf/descriptor.proto)
#   Consul 1.14.11    built once with Go by scripts/build-consul.sh
#
# Works as root (CI: no stdin, no sudo) or as a user with sudo. Set
# DRY_RUN=1 to only report what would be installed, then stop.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
export DEBIAN_FRONTEND=noninteractive

script_start=$(date +%s)
step_start=${script_start}
step() {
  step_start=$(date +%s)
  echo "==> $*"
}
step_done() {
  echo "    done in $(( $(date +%s) - step_start )) s"
}
die() {
  echo "error: $*" >&2
  exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }
# An override variable naming an executable counts as installed (testkit
# looks there first).
have_or_override() { [[ -n "${2:-}" && -x "${2}" ]] || have "$1"; }

step "checking tools the tests need"
packages=()
missing=()
if ! have_or_override etcd "${TESTKIT_ETCD_BIN:-}"; then
  missing+=(etcd); packages+=(etcd-server)
fi
if ! have_or_override etcdctl "${TESTKIT_ETCDCTL_BIN:-}"; then
  missing+=(etcdctl); packages+=(etcd-client)
fi
if ! have_or_override java "${TESTKIT_JAVA:-}"; then
  missing+=(java); packages+=(default-jre-headless)
fi
if [[ -z "${TESTKIT_ZK_CLASSPATH:-}" ]] && ! [[ -f /usr/share/java/zookeeper.jar && -f /usr/share/java/slf4j-simple.jar ]]; then
  missing+=(/usr/share/java/zookeeper.jar); packages+=(zookeeper)
fi
if ! have protoc; then
  missing+=(protoc); packages+=(protobuf-compiler)
fi
if [[ ! -f /usr/include/google/protobuf/descriptor.proto ]]; then
  missing+=(/usr/include/google/protobuf/descriptor.proto); packages+=(libprotobuf-dev)
fi
if ! have docker-compose; then
  missing+=(docker-compose); packages+=(docker-compose)
fi
if ! have cargo; then
  die "cargo is not on PATH; install Rust with rustup (https://rustup.rs) and retry"
fi

if (( ${#packages[@]} == 0 )); then
  echo "    all present: etcd, etcdctl, java, zookeeper.jar, protoc, descriptor.proto"
else
  echo "    missing: ${missing[*]}"
  echo "    packages to install: ${packages[*]}"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "DRY_RUN=1: not installing; stopping here"
    exit 0
  fi
  sudo_cmd=()
  if [[ "$(id -u)" != 0 ]]; then
    if have sudo; then
      sudo_cmd=(sudo -n)
    else
      die "not root and no sudo: run as root: apt-get update && apt-get install -y --no-install-recommends ${packages[*]}"
    fi
  fi
  have apt-get || die "no apt-get (not Debian/Ubuntu?): install ${packages[*]} (or equivalents) yourself, then retry"
  step_done
  step "apt-get update"
  "${sudo_cmd[@]}" apt-get update -q \
    || die "apt-get update failed (network or apt sources?); fix it, or install ${packages[*]} yourself, then retry"
  step_done
  step "apt-get install ${packages[*]}"
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}" \
    || die "apt-get install ${packages[*]} failed (see above); fix apt, or install them yourself, then retry"
fi
step_done

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "DRY_RUN=1: nothing to install; stopping here"
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
cargo test "${scope[@]}" "$@" || status=$?
step_done
echo "==> total $(( $(date +%s) - script_start )) s; cargo test exit status ${status}"
exit "${status}"
