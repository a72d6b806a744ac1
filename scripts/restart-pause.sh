#!/usr/bin/env bash
# The I/O pause fio sees across 10 ublk-volumed restarts under fio verify, in the VM
# test bed (TCG: compare side by side, never as absolute figures), on the kernels and
# restart modes given (default: 6.12 with SIGKILL (kill + re-issue), 6.12 with SIGTERM
# (detach), 7 with SIGTERM (QUIESCE_DEV)). Prints one JSON object per run:
#   scripts/restart-pause.sh [--build DIR] [--cycles N] [KERNEL:MODE ...]
# e.g. scripts/restart-pause.sh 7:term 7:kill. The guest side is
# tests/e2e/restart_pause.sh (docs/performance.md "Restart pause").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$here/build/release
cycles=10
runs=()
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --cycles) cycles=$2; shift 2 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *:term | *:kill) runs+=("$1"); shift ;;
    *) echo "restart-pause.sh: unknown argument '$1' (KERNEL:term or KERNEL:kill)" >&2; exit 2 ;;
  esac
done
((${#runs[@]})) || runs=(6.12:kill 6.12:term 7:term)
for bin in src/daemon/ublk-volumed tests/daemon/ublkvol-daemon-rpc; do
  [[ -x "$build/$bin" ]] || { echo "restart-pause.sh: $build/$bin not built" >&2; exit 2; }
done
for run in "${runs[@]}"; do
  kernel=${run%%:*}
  mode=${run##*:}
  log=$(mktemp /tmp/ublkvol-restart-pause.XXXXXX.log)
  if ! "$here/scripts/vm/run.sh" --kernel "$kernel" --timeout 1200 --log "$log" \
      --binary "$build/src/daemon/ublk-volumed" --binary "$build/tests/daemon/ublkvol-daemon-rpc" \
      --file "$here/tests/daemon/e2e/daemon_lib.sh" \
      --file "$here/tests/ublk/e2e/lib.sh:/opt/test/files/ublk-lib.sh" \
      --env "RESTART_MODE=$mode" --env "RESTART_CYCLES=$cycles" \
      --script "$here/tests/e2e/restart_pause.sh" >/dev/null; then
    echo "restart-pause.sh: the $kernel/$mode run failed; console log: $log" >&2
    exit 1
  fi
  sed -n 's/.*RESTART_PAUSE_JSON //p' "$log" | tr -d '\r'
  rm -f "$log"
done
