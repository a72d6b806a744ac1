#!/usr/bin/env bash
# The "run it" demo: ublk-volumed + ublk-volume on file-backed stores.
#
#   scripts/demo.sh [--build-dir DIR] [--no-build] [--vm | --host] [--keep-logs]
#
# Builds the daemon and the CLI if needed (Release, build/release), then:
#   1. creates three file-backed stores in a temp dir and starts ublk-volumed on a
#      private socket and state dir (nothing under /etc, /run or /var is touched),
#   2. creates a 3-replica volume, exposes it as /dev/ublkbN, mkfs.ext4 + mount,
#   3. runs a short fio (random writes with verification) and shows
#      `ublk-volume stats` while it runs and `ublk-volume volume show` after,
#   4. fails one replica (`replica fail`), writes more while degraded, then resyncs
#      it with `replica rebuild --wait` (progress bar), and shows the volume again,
#   5. cleans up (unmount, unexpose, stop the daemon, delete the temp dir), also
#      when a step fails.
# The kernel needs ublk_drv. When this host has none (or we are not root), the same
# steps run inside the VM test bed (scripts/vm/run.sh: QEMU, Debian 6.12 kernel) and
# the demo says so; --host / --vm force one or the other.
# With UBLKVOL_DEMO_CHECK=1 every step also asserts its outcome (tests/e2e/demo_e2e).
# Exit status: 0 demo completed, 1 a step failed, 2 bad arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------
# The scenario: runs where ublk_drv is (this host or the VM guest). Needs ublk-volumed,
# ublk-volume, fio, mkfs.ext4 on PATH, and root.
# ---------------------------------------------------------------------------------------
CHECK="${UBLKVOL_DEMO_CHECK:-0}"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
die() { echo "demo: FAILED: $*" >&2; exit 1; }
# check CONDITION-COMMAND... MESSAGE: with UBLKVOL_DEMO_CHECK=1, fail unless it holds.
check() {
  local message="${*: -1}"
  [[ "$CHECK" == 1 ]] || return 0
  if "${@:1:$#-1}"; then echo "check ok: $message"; else die "$message"; fi
}

# JSON field of `ublk-volume --json ...` output without jq (not in the VM): the
# replica states in order, the device path, ...
replica_states() { ublk-volume --json replica list demo | grep -o '"state": "[a-z_]*"' | cut -d'"' -f4 | xargs; }
device_path() { ublk-volume --json volume show demo | grep -o '"/dev/ublkb[0-9]*"' | tr -d '"'; }
equals() { [[ "$1" == "$2" ]]; }

scenario() {
  [[ $(id -u) -eq 0 ]] || die "the scenario needs root (ublk devices, mount)"
  for tool in ublk-volumed ublk-volume fio mkfs.ext4; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
  done
  [[ -e /dev/ublk-control ]] || modprobe ublk_drv 2>/dev/null || true
  [[ -e /dev/ublk-control ]] || die "/dev/ublk-control missing: ublk_drv is not loaded"

  work="$(mktemp -d "${TMPDIR:-/tmp}/ublk-volume-demo.XXXXXX")"
  daemon_pid="" mounted=""
  export UBLK_VOLUME_SOCKET="$work/control.sock"
  # shellcheck disable=SC2317  # invoked by the EXIT trap
  cleanup() {
    local status=$?
    set +e
    [[ $status -ne 0 ]] && echo "demo: cleaning up after a failure (daemon log: $work/daemon.log)" >&2
    [[ -n "$mounted" ]] && umount "$work/mnt"
    if [[ -n "$daemon_pid" ]]; then
      ublk-volume volume unexpose demo >/dev/null 2>&1
      kill -TERM "$daemon_pid" 2>/dev/null
      wait "$daemon_pid" 2>/dev/null
    fi
    if [[ $status -ne 0 && -f "$work/daemon.log" ]]; then
      echo "--- last lines of the daemon log ---" >&2
      tail -20 "$work/daemon.log" >&2
    fi
    [[ "${UBLKVOL_DEMO_KEEP:-0}" == 1 ]] || rm -rf "$work"
    exit "$status"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  say "start ublk-volumed (state, socket and stores in $work)"
  cat >"$work/config.json" <<JSON
{"state_dir": "$work/state", "control_socket": "$work/control.sock",
 "queues": 2, "queue_depth": 64, "min_replicas": 2}
JSON
  ublk-volumed --config "$work/config.json" >"$work/daemon.log" 2>&1 &
  daemon_pid=$!
  local tries=0
  until ublk-volume status >/dev/null 2>&1; do
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log"; die "ublk-volumed exited"; }
    ((++tries <= 300)) || die "ublk-volumed did not answer within 30 s"
    sleep 0.1
  done
  run ublk-volume status

  say "three file-backed stores (sparse files: space is used as data is written)"
  for s in 0 1 2; do
    run ublk-volume store add "s$s" "$work/s$s.img" --format --size 512M
  done
  run ublk-volume store list

  say "a 256 MiB volume with a replica on each store, exposed as a block device"
  run ublk-volume volume create demo --size 256M --store s0 s1 s2 --min-replicas 2
  run ublk-volume volume expose demo
  dev="$(device_path)"
  [[ -b "$dev" ]] || die "volume expose reported '$dev', which is not a block device"
  check equals "$(replica_states)" "in_sync in_sync in_sync" "3 replicas in sync after create"

  say "ext4 on $dev, mounted on $work/mnt"
  mkdir -p "$work/mnt"
  run mkfs.ext4 -q -F "$dev"
  run mount "$dev" "$work/mnt"
  mounted=1

  say "fio: random 4 KiB writes with crc32c verification, while 'stats' watches"
  fio --name=demo --directory="$work/mnt" --size=48M --rw=randwrite --bs=4k \
      --ioengine=io_uring --direct=1 --iodepth=16 --verify=crc32c --verify_fatal=1 \
      --do_verify=1 --output-format=terse --terse-version=3 >"$work/fio1.out" 2>&1 &
  local fio_pid=$!
  # fio first lays out its file (page cache); sample once its direct writes reach
  # the volume (bounded: at most 60 s, then sample anyway).
  writes() { ublk-volume stats --prometheus demo | grep '^ublkvol_volume_writes_total' | cut -d' ' -f2; }
  local start_writes waited=0
  start_writes="$(writes)"
  while kill -0 "$fio_pid" 2>/dev/null && (($(writes) < start_writes + 500 && waited < 600)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  run ublk-volume stats demo --interval 2 --count 2
  local fio_status=0
  wait "$fio_pid" || fio_status=$?
  check equals "$fio_status" 0 "fio with verification exited 0 ($(tail -1 "$work/fio1.out" | cut -d';' -f1-5))"
  [[ $fio_status -eq 0 ]] || { cat "$work/fio1.out"; die "fio failed"; }
  # terse v3: field 5 is the error count.
  check equals "$(tail -1 "$work/fio1.out" | cut -d';' -f5)" 0 "fio reported 0 errors"
  echo "fio: wrote and verified 48 MiB through ext4 on $dev"
  run ublk-volume volume show demo

  say "fail replica 1 (as if its disk died): the volume stays online on 2 replicas"
  run ublk-volume replica fail demo 1 --reason "demo: simulated disk failure"
  check equals "$(replica_states)" "in_sync failed in_sync" "replica 1 failed, 0 and 2 in sync"
  fio --name=degraded --directory="$work/mnt" --size=32M --rw=write --bs=64k \
      --ioengine=io_uring --direct=1 --iodepth=8 --verify=crc32c --verify_fatal=1 \
      --output-format=terse --terse-version=3 >"$work/fio2.out" 2>&1 ||
    { cat "$work/fio2.out"; die "fio on the degraded volume failed"; }
  check equals "$(tail -1 "$work/fio2.out" | cut -d';' -f5)" 0 "fio on the degraded volume: 0 errors"
  echo "fio: wrote and verified 32 MiB more while degraded"
  run ublk-volume volume show demo

  say "resync replica 1 (only the regions written while it was out)"
  run ublk-volume replica rebuild demo 1 --wait --timeout 600
  check equals "$(replica_states)" "in_sync in_sync in_sync" "3 replicas in sync after the rebuild"
  run ublk-volume volume show demo
  echo '$ ublk-volume stats --prometheus demo | grep _total'
  ublk-volume stats --prometheus demo | grep -E '^ublkvol_volume_[a-z_]*_total' | tee "$work/prom"
  # fio wrote 12288 x 4 KiB + 512 x 64 KiB through ext4 (plus ext4's own writes).
  writes_total="$(grep '^ublkvol_volume_writes_total' "$work/prom" | cut -d' ' -f2)"
  check test "${writes_total:-0}" -ge 12800 "the daemon counted $writes_total writes (fio: 12800)"
  check grep -q '^ublkvol_volume_errors_total{volume="demo"} 0$' "$work/prom" "no I/O errors counted"

  if [[ "$CHECK" == 1 ]]; then
    say "check: the replicas hold the same bytes (DBS read directly, daemon stopped)"
    umount "$work/mnt"   # first: unmounting writes the superblock and journal
    mounted=""
    sha_device="$(sha256sum <"$dev" | cut -d' ' -f1)"
    run ublk-volume volume unexpose demo
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || die "ublk-volumed exited with status $? on SIGTERM"
    daemon_pid=""
    run ublkvol-replica-check --volume-name demo --replica-file "$work/s0.img" \
        --replica-file "$work/s1.img" --replica-file "$work/s2.img" >"$work/agree.out" 2>&1 ||
      { cat "$work/agree.out"; die "replicas differ"; }
    cat "$work/agree.out"
    check grep -q "^agree: 3 replica(s)" "$work/agree.out" "the 3 replicas agree"
    sha_replica="$(ublkvol-replica-check --volume-name demo --replica-file "$work/s1.img" --dump | sha256sum | cut -d' ' -f1)"
    check equals "$sha_replica" "$sha_device" "rebuilt replica 1 holds what the device showed"
  fi
  say "demo complete"
}

# ---------------------------------------------------------------------------------------
# The launcher: build, then run the scenario here or in the VM.
# ---------------------------------------------------------------------------------------
if [[ "${1:-}" == "--scenario" ]]; then
  scenario
  exit 0
fi

build_dir="$ROOT/build/release" build=1 where=auto keep_logs=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="${2:?--build-dir needs a directory}"; shift 2 ;;
    --no-build) build=0; shift ;;
    --vm) where=vm; shift ;;
    --host) where=host; shift ;;
    --keep-logs) keep_logs=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

if [[ $build -eq 1 ]]; then
  if [[ ! -f "$build_dir/build.ninja" ]]; then
    if [[ "$build_dir" == "$ROOT/build/release" ]]; then
      (cd "$ROOT" && cmake --preset release)
    else
      cmake -S "$ROOT" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
    fi
  fi
  echo "demo: building ublk-volumed and ublk-volume in $build_dir"
  cmake --build "$build_dir" --target ublk-volumed ublk-volume ublkvol-replica-check
fi
daemon="$build_dir/src/daemon/ublk-volumed"
cli="$build_dir/src/cli/ublk-volume"
checker="$build_dir/tools/ublkvol-replica-check"
for b in "$daemon" "$cli" "$checker"; do
  [[ -x "$b" ]] || { echo "demo.sh: $b is not built (drop --no-build?)" >&2; exit 1; }
done

host_has_ublk() {
  [[ $(id -u) -eq 0 ]] || return 1
  [[ -e /dev/ublk-control ]] || modprobe ublk_drv 2>/dev/null || return 1
  [[ -e /dev/ublk-control ]]
}
if [[ "$where" == auto ]]; then
  if host_has_ublk; then where=host; else where=vm; fi
fi

if [[ "$where" == host ]]; then
  echo "demo: running on this host (ublk_drv is available)"
  PATH="$(dirname "$daemon"):$(dirname "$cli"):$(dirname "$checker"):$PATH" \
    UBLKVOL_DEMO_KEEP="$keep_logs" exec "$0" --scenario
fi

echo "demo: this host has no usable ublk_drv (kernel $(uname -r)$([[ $(id -u) -ne 0 ]] && echo ', not root'));"
echo "demo: running the same steps inside the VM test bed (QEMU TCG, Debian 6.12 kernel with"
echo "demo: ublk_drv; everything is ~10x slower than native: a few minutes)."
vm_args=(--binary "$daemon" --binary "$cli" --binary "$checker" --file "$0:/opt/test/files/demo.sh"
         --timeout "${UBLKVOL_DEMO_VM_TIMEOUT:-900}")
[[ -n "${UBLKVOL_DEMO_CHECK:-}" ]] && vm_args+=(--env "UBLKVOL_DEMO_CHECK=$UBLKVOL_DEMO_CHECK")
[[ -n "${UBLKVOL_DEMO_LOG:-}" ]] && vm_args+=(--log "$UBLKVOL_DEMO_LOG")
exec "$ROOT/scripts/vm/run.sh" "${vm_args[@]}" --cmd "bash /opt/test/files/demo.sh --scenario"
