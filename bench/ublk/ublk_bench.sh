#!/bin/sh
# The ublk frontend benchmark: one VM run, fio side by side on /dev/ublkbN
# (null backend), /dev/ublkbN (memory backend kept in a tmpfs file),
# /dev/ublkbN (replicated engine, 1 DBS replica in a tmpfs store file;
# write-through and --no-write-through) and a
# tmpfs file directly; prints a table (or --json) with IOPS, bandwidth, CPU
# per I/O and the ratios against the tmpfs file.
#
#   bench/ublk/ublk_bench.sh [--build-dir build/release] [--runtime 5] [--json]
#
# The full fio matrix (raw + ext4, target vs baseline, interleaved repeats,
# plots) is bench/run.sh (docs/performance.md); this script stays for its
# all-backends-in-one-VM table (docs/ublk.md).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$ROOT/build/release
RUNTIME=5
JSON=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --json) JSON=--json; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "ublk_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for bin in tools/ublkvol-serve bench/ublk/ublk_bench_report; do
  [ -x "$BUILD/$bin" ] || { echo "ublk_bench.sh: $BUILD/$bin missing: build it first" >&2; exit 2; }
done
LOG=$(mktemp /tmp/ublk-bench.XXXXXX.log)
# 4 jobs x 5 targets x (runtime + ramp), plus boot and fills.
TIMEOUT=$((12 * (RUNTIME + 1) * 5 + 300))
if ! "$ROOT/scripts/vm/run.sh" --binary "$BUILD/tools/ublkvol-serve" \
    --script "$ROOT/bench/ublk/guest_bench.sh" --env "UBLKVOL_BENCH_RUNTIME=$RUNTIME" \
    --timeout "$TIMEOUT" --log "$LOG" >/dev/null; then
  echo "ublk_bench.sh: the VM run failed; console log: $LOG" >&2
  exit 1
fi
"$BUILD/bench/ublk/ublk_bench_report" $JSON "$LOG"
rm -f "$LOG"
