# shellcheck shell=bash
# Helpers of the systemd bed's guest tests (tests/e2e/systemd_*.sh; bash, run by
# scripts/vm/systemd/run.sh inside ublkvol-bed.service). Sourced from
# /opt/test/files/systemd_lib.sh.
set -u

STATE=/tmp/systemd-e2e
mkdir -p "$STATE"
FIO=""

step() { echo "=== $*"; }
ok() { echo "ok: $*"; }
fail() {
  echo "FAIL: $*"
  [[ -n "$FIO" ]] && kill -9 "$FIO" 2>/dev/null
  exit 1
}

# Seconds since boot, with hundredths: timing without sleeps.
now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# wait_until TIMEOUT_S CMD... : polls CMD every 50 ms until it succeeds (1 = timed out).
wait_until() {
  local limit=$1 start
  shift
  start=$(now)
  while ! "$@"; do
    less_than "$(elapsed "$start")" "$limit" || return 1
    sleep 0.05
  done
}

# unit_prop UNIT PROPERTY: one property of a unit (systemctl show).
unit_prop() { systemctl show -p "$2" --value "$1"; }

# journal_cursor: the journal's current end, for journal_errors_since.
journal_cursor() { journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }

# journal_errors_since CURSOR UNIT: messages of priority err or worse logged by or about
# UNIT after CURSOR (empty when there are none).
journal_errors_since() {
  journalctl -q --no-pager -o short-monotonic -p err -u "$2" --after-cursor="$1"
}

# journal_has CURSOR UNIT PATTERN: a message of UNIT after CURSOR matches PATTERN (grep).
# journald reads a service's stdout stream on its own schedule, so a line the daemon
# wrote before it sent READY=1 or exited can reach the journal after systemctl reports
# the state change: wait for it (wait_until 30 journal_has ...), don't grep once.
journal_has() {
  journalctl -q --no-pager -u "$2" --after-cursor="$1" | grep -q -- "$3"
}

# writes_completed DEV: write requests the block layer completed on DEV (/sys/block stat).
writes_completed() { awk '{ print $5 }' "/sys/block/${1##*/}/stat"; }

# start_verify_fio DEV SIZE LOOPS : random 4 KiB O_DIRECT writes on DEV, each block
# verified (crc32c) soon after it is written (verify_backlog) and again at the end; any
# mismatch ends fio with an error (verify_fatal). Background; sets FIO, output in
# $STATE/fio.
start_verify_fio() {
  step "fio: random 4 KiB writes with crc32c verify_backlog on $1 (size $2, $3 loops)"
  fio --name=systemd-e2e --filename="$1" --ioengine=io_uring --direct=1 --rw=randwrite \
      --bs=4k --iodepth=32 --size="$2" --loops="$3" --verify=crc32c --verify_backlog=512 \
      --verify_fatal=1 --do_verify=1 --output-format=terse >"$STATE/fio" 2>&1 &
  FIO=$!
}

# writes_flowing DEV BASE N: at least N writes completed on DEV since the count was BASE.
writes_flowing() { [[ $(($(writes_completed "$1") - $2)) -ge $3 ]]; }

# finish_verify_fio : fio must exit 0 and report error 0.
finish_verify_fio() {
  step "let fio finish"
  local rc err
  wait "$FIO"
  rc=$?
  FIO=""
  cat "$STATE/fio"
  [[ $rc -eq 0 ]] || fail "fio exit status $rc"
  # terse v3: field 5 is the job's error code; 6-... are read then write figures. The
  # file also holds fio's stderr: take the result line ("3;fio-...").
  err=$(grep '^3;' "$STATE/fio" | head -n1 | cut -d';' -f5)
  [[ "$err" == 0 ]] || fail "fio reported error '$err' (no terse result line?)"
  ok "fio finished: exit 0, 0 errors, every written block verified (crc32c)"
}

# unit_running UNIT RESTARTS: UNIT is active/running after exactly RESTARTS automatic
# restarts.
unit_running() {
  [[ "$(unit_prop "$1" NRestarts)" == "$2" && "$(unit_prop "$1" ActiveState)" == active &&
     "$(unit_prop "$1" SubState)" == running ]]
}

# kill_unit_and_wait_restart UNIT : SIGKILL every process of UNIT (systemctl kill -s KILL);
# systemd must restart it (Restart=on-failure) and the new process must report READY.
kill_unit_and_wait_restart() {
  local unit=$1 restarts pid start
  restarts=$(unit_prop "$unit" NRestarts)
  pid=$(unit_prop "$unit" MainPID)
  step "systemctl kill -s KILL $unit (main PID $pid, $restarts restarts so far)"
  start=$(now)
  systemctl kill -s KILL "$unit" || fail "systemctl kill failed"
  # Usually seconds; 29 s were seen on a loaded 2-core host (stores re-opened, the device
  # re-attached once the kernel quiesced it). The bound only catches a restart that never
  # comes.
  wait_until 240 unit_running "$unit" $((restarts + 1)) ||
    fail "$unit was not restarted and running within 240 s:" \
      "$(systemctl status --no-pager "$unit" 2>&1 | head -n 20)"
  [[ "$(unit_prop "$unit" MainPID)" != "$pid" ]] || fail "$unit still has the killed main PID $pid"
  ok "systemd restarted $unit (NRestarts $((restarts + 1)), main PID $(unit_prop "$unit" MainPID)) and it is READY again $(elapsed "$start") s after the kill"
}

# stop_unit_cleanly UNIT : systemctl stop must leave UNIT inactive (not failed) with result
# success.
stop_unit_cleanly() {
  local unit=$1 start state
  step "systemctl stop $unit"
  start=$(now)
  systemctl stop "$unit" || fail "systemctl stop $unit failed"
  state=$(systemctl is-active "$unit")
  [[ "$state" == inactive ]] || fail "$unit is '$state' after stop, expected inactive"
  ! systemctl is-failed -q "$unit" || fail "$unit is failed after stop"
  [[ "$(unit_prop "$unit" Result)" == success ]] ||
    fail "$unit stopped with result '$(unit_prop "$unit" Result)', expected success"
  ok "$unit stopped in $(elapsed "$start") s: inactive, result success"
}

# no_ublk_devices: no /dev/ublkbN and no /dev/ublkcN left.
no_ublk_devices() { ! compgen -G '/dev/ublk[bc][0-9]*' >/dev/null; }
