#!/usr/bin/env bash
# Backup and restore throughput of a DBS volume on a directory target, on
# tmpfs and on the disk, beside dd and cp of the same number of bytes in the
# same run (bench/backup/backup_bench.cpp does the backup side: a full
# backup, a --changed-percent incremental one, a restore). Prints one JSON
# object: per place, the three phases (seconds, MiB/s, CPU s per GiB) and the
# baselines (dd with 2 MiB blocks + fsync, cp + sync; wall and CPU s per GiB).
#
# Usage: bench/backup_bench.sh [--size-mib N] [--changed-percent P] [--workers W]
#                              [--tmpfs DIR] [--disk DIR] [--build-dir DIR]
#   --size-mib N         volume size (default 4096 = 4 GiB; the store file,
#                        the target and the baselines need ~4x that per place)
#   --changed-percent P  chunks rewritten before the incremental (default 10)
#   --workers W          threads hashing + compressing chunks (default 0 = one per CPU)
#   --tmpfs DIR          tmpfs place (default /dev/shm); --disk DIR (default /var/tmp)
#   --build-dir DIR      where backup_bench was built (default build/release)
# A quick check that it works: bench/backup_bench.sh --size-mib 64
# Real figures: run on a quiet machine (docs/performance.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MIB=4096
CHANGED=10
WORKERS=0
TMPFS=/dev/shm
DISK=/var/tmp
BUILD="$ROOT/build/release"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size-mib) SIZE_MIB="${2:?--size-mib needs a number}"; shift ;;
    --changed-percent) CHANGED="${2:?--changed-percent needs a number}"; shift ;;
    --workers) WORKERS="${2:?--workers needs a number}"; shift ;;
    --tmpfs) TMPFS="${2:?--tmpfs needs a directory}"; shift ;;
    --disk) DISK="${2:?--disk needs a directory}"; shift ;;
    --build-dir) BUILD="${2:?--build-dir needs a directory}"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "backup_bench.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || { echo "backup_bench.sh: --size-mib '$SIZE_MIB' is not a positive number" >&2; exit 2; }
[[ "$WORKERS" =~ ^[0-9]+$ ]] || { echo "backup_bench.sh: --workers '$WORKERS' is not a number" >&2; exit 2; }
BENCH="$BUILD/bench/backup/backup_bench"
[[ -x "$BENCH" ]] || { echo "backup_bench.sh: $BENCH is missing: cmake --build --preset release --target backup_bench" >&2; exit 2; }

# "<wall s> <cpu s>" of a command (bash's time: user + sys of it and its children).
timed() {
  local out TIMEFORMAT='%R %U %S'
  out=$( { time "$@" >/dev/null 2>&1; } 2>&1 | tail -1)
  awk '{ printf "%s %.2f", $1, $2 + $3 }' <<<"$out"
}

# JSON of a baseline: wall, MiB/s, CPU s per GiB for SIZE_MIB MiB.
baseline_json() {
  awk -v w="$1" -v c="$2" -v m="$SIZE_MIB" \
    'BEGIN { printf "{\"seconds\":%s,\"mib_per_s\":%.1f,\"cpu_s_per_gib\":%.3f}", w, (w > 0 ? m / w : 0), c / (m / 1024) }'
}

place() {  # name dir
  local name="$1" dir work
  dir="$2"
  [[ -d "$dir" && -w "$dir" ]] || { echo "backup_bench.sh: $name directory $dir is not writable" >&2; exit 2; }
  work="$(mktemp -d "$dir/ublkvol-backup-bench-XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  local backup
  backup="$("$BENCH" --dir "$work/bench" --size-mib "$SIZE_MIB" --changed-percent "$CHANGED" --workers "$WORKERS")"
  rm -rf "$work/bench"
  # The same number of bytes through dd and cp (from a file of random data,
  # made outside the timing).
  head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/source"
  sync -f "$work/source"
  local dd_oflag=""
  [[ "$name" == disk ]] && dd_oflag="oflag=direct"
  read -r dd_wall dd_cpu < <(timed dd if="$work/source" of="$work/dd" bs=2M $dd_oflag conv=fsync)
  rm -f "$work/dd"
  read -r cp_wall cp_cpu < <(timed sh -c "cp '$work/source' '$work/cp' && sync -f '$work/cp'")
  printf '"%s":{"dir":"%s","fs":"%s","backup":%s,"dd":%s,"cp":%s}' "$name" "$dir" \
    "$(stat -f -c %T "$dir")" "$backup" "$(baseline_json "$dd_wall" "$dd_cpu")" \
    "$(baseline_json "$cp_wall" "$cp_cpu")"
}

tmpfs_json="$(place tmpfs "$TMPFS")"
disk_json="$(place disk "$DISK")"
printf '{"size_mib":%s,"changed_percent":%s,"load_before":"%s",%s,%s}\n' "$SIZE_MIB" "$CHANGED" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$tmpfs_json" "$disk_json"
