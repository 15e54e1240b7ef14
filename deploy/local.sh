#!/usr/bin/env bash
# deploy/local.sh consul|etcd|zk [options]: the topology of
# docker-compose.<backend>.yml without Docker, as processes on 127.0.0.1:
# the registry from local binaries (three Consul servers and a client agent
# per lorem process, a 3-member etcd cluster or a 3-member ZooKeeper
# ensemble), server1 and server2 on 8081 and 8082, the gateway on 8090, with
# the compose file's environment variables.
# It prints where everything is and runs until Ctrl-C or SIGTERM, which
# stop everything it started.
#
# Installs what is missing (scripts/install-deps.sh test; Consul is built
# once by scripts/build-consul.sh), builds lorem-server, lorem-client and
# local-topology (crates/testkit/src/bin), then runs local-topology, which
# does the work. Its options (deploy/local.sh etcd --help):
#   --registry-ports P[,P,P]  --server-ports P,P  --gateway-port P
#   --ephemeral (free ports for everything)  --quiet (no lorem logs)
#   --secured (one member with TLS, client certificates and a user, or for
#     Consul ACLs and a token; the lorem processes get REGISTRY_CA,
#     REGISTRY_CERT, REGISTRY_KEY and REGISTRY_USER + REGISTRY_PASSWORD_FILE
#     or REGISTRY_TOKEN_FILE: docs/secured-registries.md)
# e.g. deploy/local.sh etcd --gateway-port 9090
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  echo "usage: $0 consul|etcd|zk [--registry-ports P,..] [--server-ports P,P] [--gateway-port P] [--ephemeral] [--quiet] [--secured]" >&2
  echo "       $0 etcd --help   (every option)" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
case "$1" in
  consul | etcd | zk | zookeeper) ;;
  *) usage ;;
esac

cd "${ROOT}"
source "${ROOT}/scripts/lib.sh"
"${ROOT}/scripts/install-deps.sh" test >&2
if [[ "$1" == consul ]]; then
  step "finding or building Consul (scripts/build-consul.sh)" >&2
  CONSUL_BIN="$("${ROOT}/scripts/build-consul.sh" | tail -1)" \
    || die "scripts/build-consul.sh failed (see above); it needs Go 1.22+ on PATH, or set CONSUL_BIN to a consul binary"
  export CONSUL_BIN
  step_done >&2
fi
step "cargo build --bin local-topology --bin lorem-server --bin lorem-client" >&2
cargo build --quiet --bin local-topology --bin lorem-server --bin lorem-client
step_done >&2
# cargo run replaces itself with the program (exec), so Ctrl-C and SIGTERM
# reach local-topology directly.
exec cargo run --quiet --bin local-topology -- "$@"
