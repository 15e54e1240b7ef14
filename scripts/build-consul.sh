#!/usr/bin/env bash
# Builds a real Consul v1.14.11 (the newest MPL-2.0 release) with this
# machine's Go toolchain from the Go module proxy, once, and caches the binary
# at ~/.cache/consul/1.14.11/consul. Prints the path of the binary it found or
# built on its last line.
#
# Lookup order, shared with the test kit: $CONSUL_BIN, `consul` on PATH, the
# cache path. Only when none of them exists is anything built. The build
# folder (a go.mod written below) lives next to the cached binary, outside
# the repository.
set -euo pipefail

VERSION=1.14.11
CACHE_DIR="${HOME}/.cache/consul/${VERSION}"
CACHE_BIN="${CACHE_DIR}/consul"
BUILD_DIR="${CACHE_DIR}/build"

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
mkdir -p "${BUILD_DIR}"
cd "${BUILD_DIR}"
# Consul's own go.mod pins go-msgpack with a replace directive, which does not
# apply when Consul is built as a dependency; excluding these two versions
# keeps the resolution on one Consul builds with.
cat > go.mod <<'GOMOD'
module consulbuild.invalid/consul

go 1.22

exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
GOMOD
rm -f go.sum
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
if ! go get "github.com/hashicorp/consul@v${VERSION}" >&2; then
  echo "go get failed; retrying without the checksum database (GOSUMDB=off)" >&2
  GOSUMDB=off go get "github.com/hashicorp/consul@v${VERSION}" >&2
fi
go build -trimpath -o consul github.com/hashicorp/consul >&2
install -m 0755 consul "${CACHE_BIN}.tmp"
mv "${CACHE_BIN}.tmp" "${CACHE_BIN}"
rm -f consul
echo "built Consul v${VERSION} in $(( $(date +%s) - start )) s: ${CACHE_BIN}" >&2
echo "${CACHE_BIN}"
