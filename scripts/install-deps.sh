#!/usr/bin/env bash
# Installs (with apt, once) what building or testing needs:
#   scripts/install-deps.sh build   protoc + libprotobuf-dev only: etcd-client's
#                                   build compiles .proto files that import
#                                   google/protobuf/descriptor.proto
#   scripts/install-deps.sh test    also the real servers the tests start:
#                                   etcd + etcdctl (etcd-server, etcd-client),
#                                   ZooKeeper (zookeeper, a Java runtime),
#                                   docker-compose (validates the compose files),
#                                   a headless browser for the live page's
#                                   test (chromium, chromium-driver),
#                                   a JDK and Maven (openjdk-17-jdk-headless,
#                                   maven: the interop tests build small
#                                   Curator / Spring Cloud Zookeeper programs;
#                                   their Go programs use the Go toolchain
#                                   scripts/build-consul.sh uses)
# Works as root (CI: no stdin, no sudo) or as a user with sudo. Set DRY_RUN=1
# to only report what would be installed. Consul is built separately, by
# scripts/build-consul.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
mode="${1:-test}"
case "${mode}" in
  build|test) ;;
  *) echo "usage: $0 [build|test]" >&2; exit 2 ;;
esac

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# An override variable naming an executable counts as installed (testkit
# looks there first).
have_or_override() { [[ -n "${2:-}" && -x "${2}" ]] || have "$1"; }

step "checking tools ${mode}ing needs"
packages=()
missing=()
if [[ "${mode}" == test ]]; then
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
  if ! have docker-compose; then
    missing+=(docker-compose); packages+=(docker-compose)
  fi
  if ! have_or_override chromium "${TESTKIT_CHROMIUM_BIN:-}"; then
    missing+=(chromium); packages+=(chromium)
  fi
  if ! have_or_override chromedriver "${TESTKIT_CHROMEDRIVER_BIN:-}"; then
    missing+=(chromedriver); packages+=(chromium-driver)
  fi
  # The interop tests (crates/interop) compile Java against Curator and
  # Spring Cloud Zookeeper: a JDK (javac), not only a runtime, and Maven.
  if ! have javac; then
    missing+=(javac); packages+=(openjdk-17-jdk-headless)
  fi
  if ! have mvn; then
    missing+=(mvn); packages+=(maven)
  fi
fi
if ! have protoc; then
  missing+=(protoc); packages+=(protobuf-compiler)
fi
if [[ ! -f /usr/include/google/protobuf/descriptor.proto ]]; then
  missing+=(/usr/include/google/protobuf/descriptor.proto); packages+=(libprotobuf-dev)
fi
if ! have cargo; then
  die "cargo is not on PATH; install Rust with rustup (https://rustup.rs) and retry"
fi

if (( ${#packages[@]} == 0 )); then
  echo "    all present"
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


