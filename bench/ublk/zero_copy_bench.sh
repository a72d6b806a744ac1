#!/bin/sh
# Zero copy vs copy mode in one VM run (docs/zero-copy.md, docs/performance.md):
# the replicated backend, 1 DBS replica on tmpfs, 1 queue on 1 reactor, on the
# 7.x kernel (AUTO_BUF_REG); fio 4 KiB random read/write QD32 and 1 MiB
# sequential read/write QD4, alternating the two servers per job. Prints one
# JSON document: per job and mode IOPS, MiB/s, server CPU per I/O (µs) and
# the server's zero_copy_ios / copied_ios, and the zero-copy / copy ratios.
#
#   bench/ublk/zero_copy_bench.sh [--build-dir build/release] [--runtime 5]
#                                 [--kernel 7] [--syscalls]
#
# --syscalls: also the copy-mode server's syscalls per I/O at QD1 and QD32
# (strace -c -f during a 4 KiB random read run; issue 15, BATCH_IO).
# Under TCG only ratios within one run mean anything.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$ROOT/build/release
RUNTIME=5
KERNEL=7
SYSCALLS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --kernel) KERNEL=$2; shift 2 ;;
    --syscalls) SYSCALLS=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "zero_copy_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$BUILD/tools/ublkvol-serve" ] ||
  { echo "zero_copy_bench.sh: $BUILD/tools/ublkvol-serve missing: build it first" >&2; exit 2; }
LOG=$(mktemp /tmp/zc-bench.XXXXXX.log)
# 8 runs + 2 syscall runs of runtime, 2 fills, boot.
TIMEOUT=$((12 * (RUNTIME + 2) + 600))
if ! "$ROOT/scripts/vm/run.sh" --kernel "$KERNEL" --binary "$BUILD/tools/ublkvol-serve" \
    --script "$ROOT/bench/ublk/zero_copy_guest.sh" --env "UBLKVOL_BENCH_RUNTIME=$RUNTIME" \
    --env "UBLKVOL_ZC_SYSCALLS=$SYSCALLS" --timeout "$TIMEOUT" --log "$LOG" >/dev/null; then
  echo "zero_copy_bench.sh: the VM run failed; console log: $LOG" >&2
  exit 1
fi
grep -q '@@zc done@@' "$LOG" || { echo "zero_copy_bench.sh: incomplete run; log: $LOG" >&2; exit 1; }
# {"kernel": ..., "runs": [...], "ratios": [...], "syscalls": [...]}
sed -n 's/.*@@zc \({.*}\)@@.*/\1/p' "$LOG" >"$LOG.runs"
sed -n 's/.*@@syscalls \({.*}\)@@.*/\1/p' "$LOG" >"$LOG.sys"
awk -v kernel="$KERNEL" -v sysfile="$LOG.sys" '
  function num(s, key,   m) {
    if (match(s, "\"" key "\":[0-9.]+")) { m = substr(s, RSTART, RLENGTH); sub(/.*:/, "", m); return m + 0 }
    return 0
  }
  function str(s, key,   m) {
    if (match(s, "\"" key "\":\"[^\"]*\"")) { m = substr(s, RSTART, RLENGTH); sub(/.*:"/, "", m); sub(/"$/, "", m); return m }
    return ""
  }
  { runs[NR] = $0; j = str($0, "job"); m = str($0, "mode"); iops[j, m] = num($0, "iops")
    cpu[j, m] = num($0, "server_cpu_us_per_io"); if (!(j in seen)) { seen[j] = 1; order[++n] = j } }
  END {
    printf "{\"kernel\":\"%s\",\"runs\":[", kernel
    for (i = 1; i <= NR; i++) printf "%s%s", ((i > 1) ? "," : ""), runs[i]
    printf "],\"ratios\":["
    for (i = 1; i <= n; i++) {
      j = order[i]
      ri = iops[j, "copy"] > 0 ? iops[j, "zero-copy"] / iops[j, "copy"] : 0
      rc = cpu[j, "copy"] > 0 ? cpu[j, "zero-copy"] / cpu[j, "copy"] : 0
      printf "%s{\"job\":\"%s\",\"iops_zc_over_copy\":%.3f,\"cpu_per_io_zc_over_copy\":%.3f}",
             ((i > 1) ? "," : ""), j, ri, rc
    }
    printf "],\"syscalls\":["
    k = 0
    while ((getline line < sysfile) > 0) printf "%s%s", ((k++) ? "," : ""), line
    printf "]}\n"
  }' "$LOG.runs"
rm -f "$LOG" "$LOG.runs" "$LOG.sys"
