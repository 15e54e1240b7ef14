#!/usr/bin/env bash
# Builds a real Consul v1.14.11 (the newest MPL-2.0 release) with this
# machine's Go toolchain from the Go module proxy, once, and caches the binary
# at ~/.cache/consul/1.14.11/consul. Prints the path of the binary it found or
# built on its last line.
#
# Lookup order, shared with the test kit: $CONSUL_BIN, `consul` on PATH, the
# cache path. Only when none of them exists is anything built.
set -euo pipefail

VERSION=1.14.11
CACHE_DIR="${HOME}/.cache/consul/${VERSION}"
CACHE_BIN="${CACHE_DIR}/consul"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${ROOT}/tools/consul"

if [[ -n "${CONSUL_BIN:-}" ]]; then
  if [[ -x "${CONSUL_BIN}" ]]; then
    echo "${CONSUL_BIN}"
    exit 0
  fi
  echo "CONSUL_BIN=${CONSUL_BIN} is not an executable file; unset it to build Consul here" >&2
  exit 1
fi
if command -v consul >/dev/null 2>&1; then
  command -v consul
  exit 0
fi
if [[ -x "${CACHE_BIN}" ]]; then
  echo "${CACHE_BIN}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "cannot build Consul: no Go toolchain on PATH (install Go 1.22 or newer, or set CONSUL_BIN)" >&2
  exit 1
fi

echo "building Consul v${VERSION} from the Go module proxy (first run only; several minutes)..." >&2
start=$(date +%s)
mkdir -p "${BUILD_DIR}" "${CACHE_DIR}"
cd "${BUILD_DIR}"
# go.mod is committed; go.sum and bin/ are not (see .gitignore).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
go get "github.com/hashicorp/consul@v${VERSION}" >&2
go build -trimpath -o bin/consul github.com/hashicorp/consul >&2
install -m 0755 bin/consul "${CACHE_BIN}.tmp"
mv "${CACHE_BIN}.tmp" "${CACHE_BIN}"
echo "built Consul v${VERSION} in $(( $(date +%s) - start )) s: ${CACHE_BIN}" >&2
echo "${CACHE_BIN}"
