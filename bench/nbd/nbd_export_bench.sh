#!/usr/bin/env bash
# NBD export vs nbdkit, same run, same kind of backing (docs/nbd-export.md):
# fio's nbd engine, 4K randread and randwrite at QD 32, against
#   (a) ublk-volumed's export of a 1-replica DBS volume on a store file, and
#   (b) `nbdkit file` on a plain file of the same size in the same directory,
# alternating a/b per round; prints IOPS per run and the ratio a/b (target >= 1.0).
#
#   bench/nbd/nbd_export_bench.sh [--dir DIR] [--size 1G] [--runtime 20] [--rounds 3]
#                                 [--build build/release] [--json]
# DIR must be on a filesystem with O_DIRECT (ext4, xfs; not tmpfs). Figures, not a test.
set -euo pipefail

dir="" size=1G runtime=20 rounds=3 build=build/release json=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --json) json=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "nbd_export_bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for tool in fio nbdkit; do
  command -v "$tool" >/dev/null || { echo "nbd_export_bench: $tool is not installed" >&2; exit 1; }
done
daemon=$build/src/daemon/ublk-volumed cli=$build/src/cli/ublk-volume
[[ -x $daemon && -x $cli ]] || { echo "nbd_export_bench: build $daemon and $cli first" >&2; exit 1; }

work=$(mktemp -d "${dir:-/var/tmp}/nbd-bench.XXXXXX")
daemon_pid="" nbdkit_pid=""
cleanup() {
  [[ -n $nbdkit_pid ]] && kill "$nbdkit_pid" 2>/dev/null && wait "$nbdkit_pid" 2>/dev/null
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# (a) a private daemon, one store file, one volume exported on a unix socket.
ctl=$work/ctl.sock
printf '{"state_dir":"%s/state","control_socket":"%s","log_level":"warn"}\n' "$work" "$ctl" \
  > "$work/config.json"
"$daemon" --config "$work/config.json" 2> "$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
  "$cli" --socket "$ctl" status >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
  sleep 0.1  # bounded wait for the daemon's socket (10 s)
done
bytes=$(numfmt --from=iec "$size")
store_bytes=$((bytes + bytes / 4 + (64 << 20)))
"$cli" --socket "$ctl" store add s0 "$work/store0" --format --size "$store_bytes" >/dev/null
"$cli" --socket "$ctl" volume create v0 --size "$size" --store s0 >/dev/null
"$cli" --socket "$ctl" volume export v0 --listen "unix:$work/ours.sock" >/dev/null
ours="nbd+unix:///v0?socket=$work/ours.sock"

# (b) nbdkit on a plain file of the same size, same directory.
truncate -s "$size" "$work/plain.img"
nbdkit --exit-with-parent -f -U "$work/theirs.sock" file "$work/plain.img" cache=none \
  2> "$work/nbdkit.log" &
nbdkit_pid=$!
for _ in $(seq 100); do [[ -S $work/theirs.sock ]] && break; sleep 0.1; done
theirs="nbd+unix:///?socket=$work/theirs.sock"

# Fill both once so reads hit written blocks on both sides.
for uri in "$ours" "$theirs"; do
  fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 --size="$size" \
    --output-format=terse >/dev/null
done

iops() {  # uri rw -> IOPS
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=32 --size="$size" \
    --time_based --runtime="$runtime" --output-format=json |
    python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'
}
results=()
for rw in randread randwrite; do
  for round in $(seq "$rounds"); do
    a=$(iops "$ours" "$rw")
    b=$(iops "$theirs" "$rw")
    ratio=$(python3 -c "print(f'{$a/$b:.2f}' if $b else 'n/a')")
    results+=("{\"rw\":\"$rw\",\"round\":$round,\"export_iops\":$a,\"nbdkit_iops\":$b,\"ratio\":\"$ratio\"}")
    [[ $json -eq 1 ]] || printf '%-10s round %d  export %8d IOPS  nbdkit %8d IOPS  ratio %s\n' \
      "$rw" "$round" "$a" "$b" "$ratio"
  done
done
if [[ $json -eq 1 ]]; then
  (IFS=,; echo "[${results[*]}]")
fi
