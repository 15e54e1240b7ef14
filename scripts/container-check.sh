#!/usr/bin/env bash
# scripts/container-check.sh [--stand-ins-only|--images-only] [etcd|zk|consul]...
#
# The Docker path, run for real with podman (not part of CI: about 20 min
# of two cores the first time, most of it the Rust image build; later runs
# reuse the image layers):
#
#  1. images: every image the compose files and deploy/Dockerfile name is
#     used if present, else pulled, else (no registry reachable, as on this
#     project's machines) built from the stand-in recipe in
#     ../shared/containers (STAND_INS); then lorem-sd:dev is built from
#     deploy/Dockerfile, and built again after a one-line source change to
#     show that the dependency layer is reused;
#  2. for each compose file (default: all three), with docker-compose
#     (COMPOSE, default docker-compose 1.29) against podman's Docker API:
#     `up -d`; the gateway alternates between server1 and server2; under a
#     steady request loop (10/s), stop server2 and one registry member
#     (etcd1, zk1, consul1) and check that no request fails and the gateway
#     drops server2, then start them again; recreate that member
#     (`up -d --force-recreate`) and check that it rejoins (healthy, never
#     restarted, cluster whole); `down -v` and check nothing is left.
#
# --stand-ins-only stops after the third-party images (to prepare them
# ahead of time), --images-only after the lorem image.
#
# Exit 0 only if every check passed. A summary is printed at the end and
# kept in $CHECK_DIR/container-check-summary.txt, logs beside it.
#
# Needs root, podman 4.3+ with netavark (installed with apt if missing),
# docker-compose, curl, jq; for stand-ins: debootstrap, Go, the host's
# rustup toolchain 1.95.0 and Consul (scripts/build-consul.sh). Containers
# run in a private network namespace (podman-netns-service.sh from the
# recipe), so their published ports (8090, 2379, ...) never clash with this
# machine's; the checks reach them there with nsenter.
#
# Environment: STAND_INS (default ../shared/containers), CHECK_DIR (default
# /tmp/docker-check), COMPOSE (default docker-compose; Compose v2 works too),
# REBUILD_CHECK=0 to skip the second image build.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${ROOT}/scripts/lib.sh"
cd "${ROOT}"

usage() {
  echo "usage: $0 [--stand-ins-only|--images-only] [etcd|zk|consul]..." >&2
  exit 2
}
images_only=0
stand_ins_only=0
backends=()
for arg in "$@"; do
  case "${arg}" in
    --images-only) images_only=1 ;;
    --stand-ins-only) stand_ins_only=1 ;;
    etcd | zk | consul) backends+=("${arg}") ;;
    *) usage ;;
  esac
done
[[ ${#backends[@]} -gt 0 ]] || backends=(etcd zk consul)

export CHECK_DIR="${CHECK_DIR:-/tmp/docker-check}"
STAND_INS="$(cd "${STAND_INS:-${ROOT}/../shared/containers}" 2>/dev/null && pwd)" \
  || die "no stand-in recipe at ${STAND_INS:-${ROOT}/../shared/containers}: set STAND_INS to the folder holding build-images.sh and podman-netns-service.sh"
COMPOSE="${COMPOSE:-docker-compose}"
export DOCKER_HOST=unix:///run/podman/check.sock
LOGS="${CHECK_DIR}/container-check"
SUMMARY="${CHECK_DIR}/container-check-summary.txt"
mkdir -p "${LOGS}"
: > "${SUMMARY}"
[[ $(id -u) == 0 ]] || die "run as root: rootful podman, and nsenter into the containers' network namespace"
script_start=$(date +%s)

say() { echo "$*" | tee -a "${SUMMARY}"; }
failed=0
fail() {
  say "    FAIL: $*"
  failed=1
}

step "tools: podman, docker-compose, curl, jq"
packages=()
have podman || packages+=(podman buildah crun runc netavark aardvark-dns slirp4netns fuse-overlayfs
  uidmap debootstrap busybox-static catatonit conmon iptables)
have "${COMPOSE}" || packages+=(docker-compose)
have curl || packages+=(curl)
have jq || packages+=(jq)
have nsenter || packages+=(util-linux)
if [[ ${#packages[@]} -gt 0 ]]; then
  echo "    installing ${packages[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" \
    || die "apt-get install ${packages[*]} failed"
fi
# This workplace's podman settings (runc, rlimits within the host's hard
# limits: see the recipe's README).
mkdir -p /etc/containers
cmp -s "${STAND_INS}/containers.conf" /etc/containers/containers.conf \
  || cp "${STAND_INS}/containers.conf" /etc/containers/containers.conf
echo "    $(podman --version), $("${COMPOSE}" version --short 2>/dev/null || "${COMPOSE}" --version)"
step_done

# --- 1. images ---------------------------------------------------------------
# image reference -> the stand-in recipe's name for it
declare -A recipe=(
  [docker.io/library/debian:bookworm-slim]=base
  [docker.io/library/rust:1.95.0-slim-bookworm]=rust
  [gcr.io/etcd-development/etcd:v3.5.17]=etcd
  [docker.io/library/zookeeper:3.8.4]=zk
  [docker.io/hashicorp/consul:1.14.11]=consul
)
wanted=(docker.io/library/debian:bookworm-slim docker.io/library/rust:1.95.0-slim-bookworm)
for b in "${backends[@]}"; do
  case "${b}" in
    etcd) wanted+=(gcr.io/etcd-development/etcd:v3.5.17) ;;
    zk) wanted+=(docker.io/library/zookeeper:3.8.4) ;;
    consul) wanted+=(docker.io/hashicorp/consul:1.14.11) ;;
  esac
done
for image in "${wanted[@]}"; do
  step "image ${image}"
  if podman image exists "${image}"; then
    echo "    present"
  elif timeout 300 podman pull -q "${image}" >"${LOGS}/pull.log" 2>&1; then
    say "image ${image}: pulled"
  else
    echo "    cannot be pulled ($(tail -1 "${LOGS}/pull.log")); building the stand-in (${recipe[${image}]})"
    if [[ "${recipe[${image}]}" == consul && -z "${CONSUL_BIN:-}" ]]; then
      CONSUL_BIN="$("${ROOT}/scripts/build-consul.sh" | tail -1)" || die "no Consul binary for the stand-in"
      export CONSUL_BIN
    fi
    began=$(date +%s)
    "${STAND_INS}/build-images.sh" "${recipe[${image}]}" >"${LOGS}/stand-in-${recipe[${image}]}.log" 2>&1 \
      || die "building the stand-in ${recipe[${image}]} failed: see ${LOGS}/stand-in-${recipe[${image}]}.log"
    podman image exists "${image}" || die "the stand-in recipe did not tag ${image}"
    say "image ${image}: local stand-in, built in $(( $(date +%s) - began )) s"
  fi
  step_done
done

if [[ ${stand_ins_only} == 1 ]]; then
  say "third-party images ready in $(( $(date +%s) - script_start )) s"
  exit 0
fi

# The build context: the working tree's files (tracked, and new ones that
# are not ignored), copied, so that the cache check below can change one
# without touching the working tree. .dockerignore applies on top.
context="${CHECK_DIR}/context"
snapshot() {
  rm -rf "${context}" && mkdir -p "${context}"
  git -C "${ROOT}" ls-files -z --cached --others --exclude-standard \
    | (cd "${ROOT}" && tar --null --ignore-failed-read -T - -cf -) | tar -x -C "${context}"
}

step "image lorem-sd:dev from deploy/Dockerfile (the Rust build: the longest step)"
snapshot
began=$(date +%s)
if podman build --format docker -f "${context}/deploy/Dockerfile" -t lorem-sd:dev "${context}" \
  >"${LOGS}/lorem-build.log" 2>&1; then
  build_s=$(( $(date +%s) - began ))
  say "image lorem-sd:dev: built in ${build_s} s ($(podman image inspect lorem-sd:dev --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
else
  tail -30 "${LOGS}/lorem-build.log"
  die "podman build of deploy/Dockerfile failed after $(( $(date +%s) - began )) s: see ${LOGS}/lorem-build.log"
fi
step_done

if [[ "${REBUILD_CHECK:-1}" != 0 ]]; then
  step "cache check: the same build after a one-line change to crates/lorem/src/lib.rs"
  echo "// container-check $(date +%s): a source change that must not rebuild the dependencies" \
    >>"${context}/crates/lorem/src/lib.rs"
  began=$(date +%s)
  if podman build --format docker -f "${context}/deploy/Dockerfile" -t lorem-sd:cache-check "${context}" \
    >"${LOGS}/lorem-rebuild.log" 2>&1; then
    rebuild_s=$(( $(date +%s) - began ))
    # The step after `cargo chef cook` must come from the cache: it is the
    # dependency layer.
    if grep -A1 'cargo chef cook' "${LOGS}/lorem-rebuild.log" | grep -q 'Using cache'; then
      say "rebuild after a source change: ${rebuild_s} s, the dependency layer (cargo chef cook) reused"
    else
      fail "rebuild after a source change took ${rebuild_s} s and did not reuse the cargo chef cook layer (see ${LOGS}/lorem-rebuild.log)"
    fi
  else
    fail "the rebuild after a source change failed: see ${LOGS}/lorem-rebuild.log"
  fi
  podman rmi lorem-sd:cache-check >/dev/null 2>&1
  step_done
fi
if [[ ${images_only} == 1 ]]; then
  say "images only: done in $(( $(date +%s) - script_start )) s"
  exit "${failed}"
fi

# --- 2. compose files ----------------------------------------------------------
"${STAND_INS}/podman-netns-service.sh" start >/dev/null || die "cannot start podman's API service"
NS="$("${STAND_INS}/podman-netns-service.sh" pid)"
in_ns() { nsenter -t "${NS}" -n "$@"; }
BODY='{"requestType":"word","min":4,"max":8}'

# Polls "$@" every second until it succeeds or $1 seconds pass.
within() {
  local secs=$1 deadline
  shift
  deadline=$(( $(date +%s) + secs ))
  until "$@"; do
    (( $(date +%s) < deadline )) || return 1
    sleep 1
  done
}

check_backend() {
  local b=$1 member file project
  file="docker-compose.${b}.yml"
  project="lorem-check-${b}"
  case "${b}" in
    etcd) member=etcd1 ;;
    zk) member=zk1 ;;
    consul) member=consul1 ;;
  esac
  local log="${LOGS}/${b}.log"
  : >"${log}"
  compose() { timeout 600 "${COMPOSE}" -p "${project}" -f "${file}" "$@" >>"${log}" 2>&1; }
  ctr() { podman ps -aq --filter "label=com.docker.compose.project=${project}" \
    --filter "label=com.docker.compose.service=$1" | head -1; }
  healthy() { [[ "$(podman inspect "$(ctr "$1")" --format '{{.State.Health.Status}}' 2>/dev/null)" == healthy ]]; }
  gw_ids() {
    in_ns curl -s -m 3 127.0.0.1:8090/instances | jq -r '[.instances[].id] | sort | join(",")' 2>/dev/null
  }
  gw_is() { [[ "$(gw_ids)" == "$1" ]]; }
  local started=$(date +%s)

  step "${file}: up -d (project ${project})"
  compose down -v --remove-orphans # a previous run's leftovers
  local began=$(date +%s) up_s
  if ! compose up -d; then
    fail "${b}: up -d failed (see ${log})"
    tail -20 "${log}"
  fi
  if within 300 healthy client; then
    up_s=$(( $(date +%s) - began ))
  else
    fail "${b}: the gateway was not healthy 300 s after up"
    up_s="-"
  fi
  podman ps -a --filter "label=com.docker.compose.project=${project}" --format '{{.Names}}\t{{.Status}}' \
    | sed 's/^/    /'
  step_done

  step "${b}: the gateway alternates between server1 and server2"
  local seq=() id i
  for i in $(seq 10); do
    id=$(in_ns curl -s -m 5 -D - -o /dev/null -XPOST 127.0.0.1:8090/sd-lorem -d "${BODY}" \
      | tr -d '\r' | awk -F': ' 'tolower($1)=="x-instance-id" {print $2}')
    seq+=("${id:-none}")
  done
  echo "    answered by: ${seq[*]}"
  local alternates=yes
  for i in $(seq 1 9); do
    [[ "${seq[i]}" != "${seq[i-1]}" && "${seq[i]}" != none ]] || alternates=no
  done
  [[ "${seq[0]}" != none ]] || alternates=no
  [[ " ${seq[*]} " == *" server1 "* && " ${seq[*]} " == *" server2 "* ]] || alternates=no
  [[ ${alternates} == yes ]] || fail "${b}: the gateway did not alternate: ${seq[*]}"
  step_done

  step "${b}: under load (10 requests/s), stop server2 and ${member}, then start them"
  local codes="${LOGS}/${b}-codes.txt" stopfile="${LOGS}/${b}-stop"
  rm -f "${codes}" "${stopfile}"
  (
    n=0
    while [[ ! -f "${stopfile}" ]] && (( n < 6000 )); do
      n=$((n + 1))
      in_ns curl -s -o /dev/null -w '%{http_code}\n' -m 5 -XPOST 127.0.0.1:8090/sd-lorem -d "${BODY}" >>"${codes}"
      sleep 0.1
    done
  ) &
  local loader=$!
  sleep 2
  compose stop server2
  within 30 gw_is server1 || fail "${b}: the gateway still lists $(gw_ids) 30 s after server2 stopped"
  compose stop "${member}"
  sleep 13 # REGISTRY_TTL (10 s) + 3 s: a lost registration would have expired
  gw_is server1 || fail "${b}: with ${member} stopped the gateway lists '$(gw_ids)', not server1"
  compose start "${member}" server2
  within 120 healthy "${member}" || fail "${b}: ${member} not healthy again within 120 s of its start"
  within 60 gw_is server1,server2 || fail "${b}: server2 not back in the gateway's set 60 s after its start"
  step_done

  step "${b}: recreate ${member} (up -d --force-recreate --no-deps): it must rejoin"
  local old new restarts
  old=$(ctr "${member}")
  compose up -d --force-recreate --no-deps "${member}"
  new=$(ctr "${member}")
  [[ -n "${new}" && "${new}" != "${old}" ]] || fail "${b}: ${member} was not recreated (${old} -> ${new})"
  within 180 healthy "${member}" || fail "${b}: recreated ${member} not healthy within 180 s"
  restarts=$(podman inspect "${new}" --format '{{.RestartCount}}' 2>/dev/null)
  [[ "${restarts}" == 0 ]] || fail "${b}: recreated ${member} restarted ${restarts} times (crash loop?)"
  if podman logs "${new}" 2>&1 | grep -qi 'already been bootstrapped'; then
    fail "${b}: recreated ${member} says it has already been bootstrapped"
  fi
  # Whole again: every member serving. A recreated container has a new
  # address, so a Consul server comes back as a non-voter until autopilot
  # has seen it stable (10 s) and promotes it: poll.
  cluster_whole() {
    case "${b}" in
      etcd)
        podman exec "$(ctr etcd2)" etcdctl --endpoints=http://etcd1:2379,http://etcd2:2379,http://etcd3:2379 \
          endpoint health >>"${log}" 2>&1 ;;
      zk)
        podman exec "$(ctr zk2)" bash -c 'for h in zk1 zk2 zk3; do exec 3<>/dev/tcp/$h/2181; echo srvr >&3;
          grep -qE "Mode: (leader|follower)" <&3 || exit 1; exec 3<&-; done' >>"${log}" 2>&1 ;;
      consul)
        podman exec "$(ctr consul2)" curl -s 127.0.0.1:8500/v1/operator/autopilot/health \
          | jq -e '.Healthy and ([.Servers[] | select(.Voter)] | length) == 3' >>"${log}" 2>&1 ;;
    esac
  }
  local whole=no
  within 120 cluster_whole && whole=yes
  [[ ${whole} == yes ]] || fail "${b}: the cluster is not whole after recreating ${member} (see ${log})"
  echo "    ${member}: container ${old:0:12} -> ${new:0:12}, healthy, restarts ${restarts}, cluster whole: ${whole}"
  within 60 gw_is server1,server2 || fail "${b}: the gateway lists '$(gw_ids)' after recreating ${member}"
  touch "${stopfile}"
  wait "${loader}"
  local total bad
  total=$(wc -l <"${codes}")
  bad=$(grep -vc '^200$' "${codes}")
  echo "    requests during the faults: ${total}, not 200: ${bad}"
  (( total > 0 && bad == 0 )) || fail "${b}: ${bad} of ${total} requests failed during the faults: $(grep -v '^200$' "${codes}" | sort | uniq -c | tr '\n' ' ')"
  step_done

  step "${b}: down -v"
  compose down -v
  local left
  left=$(podman ps -aq --filter "label=com.docker.compose.project=${project}" | wc -l)
  left=$(( left + $(podman volume ls -q --filter "label=com.docker.compose.project=${project}" | wc -l) ))
  [[ ${left} == 0 ]] || fail "${b}: ${left} containers or volumes left after down -v"
  step_done
  say "${file}: up (all healthy) in ${up_s} s; gateway answers: ${seq[*]}; stop server2 + ${member} and recreate ${member} under load: ${bad} of ${total} requests failed; ${member} rejoined: ${whole} (restarts ${restarts}); down -v left ${left}; $(( $(date +%s) - started )) s"
}

for b in "${backends[@]}"; do
  before=${failed}
  failed=0
  check_backend "${b}"
  [[ ${failed} == 0 ]] && say "RESULT ${b}: OK" || say "RESULT ${b}: FAILED (log: ${LOGS}/${b}.log)"
  (( failed |= before ))
done
"${STAND_INS}/podman-netns-service.sh" stop

echo
echo "== container check summary ($(podman --version), ${COMPOSE} $("${COMPOSE}" version --short 2>/dev/null)); total $(( $(date +%s) - script_start )) s"
cat "${SUMMARY}"
exit "${failed}"
