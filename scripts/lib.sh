# Shared by the scripts: step timing and error helpers. Source it.
step_start=$(date +%s)
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
