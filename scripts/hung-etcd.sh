#!/usr/bin/env bash
# Measures what a hung etcd member (SIGSTOP: it keeps its ports and accepts
# connections, but answers nothing) costs the tools of this workspace:
#
#   1. `sdctl ls lorem`, 8 fresh processes, against a cluster of 3 whose
#      first member is hung (each call should be answered by the others);
#   2. `lorem-client load --requests 10`, 10 fresh processes, against the
#      same cluster, with a `lorem-server` registered before the hang;
#   3. the gateway's `GET /instances`, once a second, while a single etcd is
#      hung for 17 s (it should turn `stale: true`, with the reason, within
#      about max(2 x REGISTRY_TTL, 5 s), and fresh again after SIGCONT).
#
# Usage: scripts/hung-etcd.sh [BIN_DIR]   (default: target/debug; build
# first with `cargo build -p sdctl -p client -p lorem --bins`). REGISTRY_TTL and
# REGISTRY_TIMEOUT are passed on. Everything runs on 127.0.0.1 with free
# ports and temp dirs, and is stopped by PID at the end.
set -uo pipefail

BIN=${1:-target/debug}
for b in sdctl lorem-client lorem-server; do
  [[ -x "$BIN/$b" ]] || { echo "no $BIN/$b; run: cargo build -p sdctl -p client -p lorem --bins" >&2; exit 1; }
done
command -v etcd >/dev/null || { echo "no etcd; run: apt-get install etcd-server etcd-client" >&2; exit 1; }

DIR=$(mktemp -d -t hung-etcd.XXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc)"; }

# etcd NAME CLIENT_PORT PEER_PORT INITIAL_CLUSTER: starts one member; its PID in $!.
etcd_member() {
  # etcd reads every ETCD_* variable as a flag: pass none on.
  env $(env | grep -o '^ETCD_[^=]*' | sed 's/^/-u /') \
  etcd --name "$1" --data-dir "$DIR/$1" \
    --listen-client-urls "http://127.0.0.1:$2" --advertise-client-urls "http://127.0.0.1:$2" \
    --listen-peer-urls "http://127.0.0.1:$3" --initial-advertise-peer-urls "http://127.0.0.1:$3" \
    --initial-cluster "$4" --initial-cluster-token "hung-$$" \
    --logger=zap --log-level=error --heartbeat-interval=50 --election-timeout=500 \
    >"$DIR/$1.log" 2>&1 &
}

healthy() {
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done
  echo "etcd on port $1 not healthy; log:" >&2; cat "$DIR"/*.log >&2; exit 1
}

echo "== 1. sdctl ls lorem: 8 fresh processes, member 0 of 3 hung"
C=(); P=(); M=()
for i in 0 1 2; do C[i]=$(port); P[i]=$(port); done
CLUSTER="m0=http://127.0.0.1:${P[0]},m1=http://127.0.0.1:${P[1]},m2=http://127.0.0.1:${P[2]}"
for i in 0 1 2; do etcd_member "m$i" "${C[i]}" "${P[i]}" "$CLUSTER"; M[i]=$!; PIDS+=("$!"); done
for i in 0 1 2; do healthy "${C[i]}"; done
export REGISTRY=etcd REGISTRY_ADDR="127.0.0.1:${C[0]},127.0.0.1:${C[1]},127.0.0.1:${C[2]}"
"$BIN/sdctl" register lorem a 127.0.0.1:9001 >/dev/null 2>&1 &
PIDS+=("$!")
sleep 1
kill -STOP "${M[0]}"
for n in $(seq 8); do
  start=$(now)
  out=$("$BIN/sdctl" ls lorem 2>&1)
  rc=$?
  echo "call $n: $(since "$start") s, exit $rc: $(echo "$out" | tail -1 | cut -c1-70)"
done
kill -CONT "${M[0]}"

echo "== 2. lorem-client load --requests 10: 10 fresh processes, member 0 of 3 hung"
L=$(port)
"$BIN/lorem-server" --listen "127.0.0.1:$L" >"$DIR/lorem.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do "$BIN/sdctl" ls lorem 2>/dev/null | grep -q ":$L" && break; sleep 0.1; done
kill -STOP "${M[0]}"
ok=0
for n in $(seq 10); do
  start=$(now)
  if "$BIN/lorem-client" load --requests 10 >"$DIR/load.out" 2>&1; then ok=$((ok + 1)); rc=0; else rc=$?; fi
  echo "load $n: $(since "$start") s, exit $rc"
done
echo "load runs that succeeded: $ok of 10"
kill -CONT "${M[0]}"
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
wait 2>/dev/null
PIDS=()

echo "== 3. gateway GET /instances while a single etcd is hung for 17 s (REGISTRY_TTL=${REGISTRY_TTL:-default})"
C1=$(port); P1=$(port); G=$(port)
etcd_member single "$C1" "$P1" "single=http://127.0.0.1:$P1"
E=$!; PIDS+=("$E")
healthy "$C1"
export REGISTRY_ADDR="127.0.0.1:$C1"
"$BIN/sdctl" register lorem a 127.0.0.1:9001 >/dev/null 2>&1 &
PIDS+=("$!")
"$BIN/lorem-client" gateway --listen "127.0.0.1:$G" >"$DIR/gateway.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$G/health" >/dev/null && break; sleep 0.1; done
sleep 1
freshness() {
  curl -s -m 2 "http://127.0.0.1:$G/instances" | python3 -c '
import json, sys
def find(o, k):
    if isinstance(o, dict):
        if k in o: return o[k]
        for v in o.values():
            r = find(v, k)
            if r is not None: return r
    return None
try:
    j = json.load(sys.stdin)
    print("stale=%s last_error=%s" % (find(j, "stale"), (find(j, "last_error") or "null")[:100]))
except Exception as e:
    print("no answer:", e)'
}
echo "before: $(freshness)"
kill -STOP "$E"
start=$(now)
for _ in $(seq 17); do sleep 1; echo "hung    t=$(since "$start") s: $(freshness)"; done
kill -CONT "$E"
for _ in $(seq 5); do sleep 1; echo "resumed t=$(since "$start") s: $(freshness)"; done
