# Shared helpers of the ublk frontend's VM tests (busybox sh).
# Sourced from /opt/test/files/lib.sh; the binaries are on PATH.
set -u

STATE=/tmp/ublk-e2e
mkdir -p "$STATE"
SRV=""
DEV_ID=""
echo "(start)" >"$STATE/step"

# step: prints the step and records it, so a hang report can say where.
step() {
  echo "=== $*"
  echo "$*" >"$STATE/step"
}
ok() { echo "ok: $*"; }
fail() {
  echo "FAIL: $*"
  [ -n "$SRV" ] && kill -9 "$SRV" 2>/dev/null
  exit 1
}

# Seconds since boot, with hundredths: timing without sleeps.
now() { cut -d' ' -f1 /proc/uptime; }
# elapsed START -> seconds since START, as a decimal
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# less_than A B -> success if A < B (decimals)
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# --- Hangs never go silent -------------------------------------------------
# Every wait on something that could hang (a server that does not exit, fio
# on a stuck device, ublkctl) is bounded; on expiry hang_report prints the
# current step and what the server and fio threads are blocked on, and the
# test fails. A watchdog bounds the whole script below run.sh's VM timeout.

# running PID : the process exists and is not a zombie (kill -0 succeeds on
# an exited child until it is waited for).
running() {
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# hang_report WHAT : where the test is and what its processes wait on.
hang_report() {
  echo "HANG: $1 (step: $(cat "$STATE/step"))"
  for p in $(pidof ublkvol-serve) $(pidof fio); do
    for t in /proc/"$p"/task/*; do
      echo "  pid $p tid ${t##*/} $(cat "$t/comm" 2>/dev/null)" \
        "state $(sed 's/.*) //' "$t/stat" 2>/dev/null | cut -d' ' -f1)" \
        "wchan $(cat "$t/wchan" 2>/dev/null)"
      [ -r "$t/stack" ] && sed 's/^/      /' "$t/stack" 2>/dev/null | head -8
    done
  done
  if [ -n "$DEV_ID" ]; then
    timeout 5 ublkvol-ublkctl info --id "$DEV_ID" 2>&1 | sed 's/^/  ublkctl: /'
  fi
  dmesg 2>/dev/null | tail -15 | sed 's/^/  dmesg: /'
}

# wait_exit SECONDS PID WHAT : waits for PID (a child) to exit and returns
# its exit status; fails with a hang report if it is still running after
# SECONDS.
wait_exit() {
  wstart=$(now)
  while running "$2"; do
    if ! less_than "$(elapsed "$wstart")" "$1"; then
      hang_report "$3 (pid $2) still running after $1 s"
      kill -9 "$2" 2>/dev/null
      fail "$3 did not exit within $1 s (step: $(cat "$STATE/step"))"
    fi
    sleep 0.02
  done
  wait "$2"
}

# bounded SECONDS WHAT CMD... : runs CMD (a program or a function that sets
# no variables) and returns its status; fails with a hang report if it runs
# longer than SECONDS.
bounded() {
  blimit=$1
  bwhat=$2
  shift 2
  "$@" &
  wait_exit "$blimit" $! "$bwhat"
}

# The whole script: with E2E_WATCHDOG_S set (tests/ublk/CMakeLists.txt sets
# it below the VM timeout), a watchdog fails the test with a report before
# run.sh would kill the VM with no word on where. Opt-in, because other
# suites source this file under longer timeouts.
E2E_WATCHDOG_S=${E2E_WATCHDOG_S:-}
watchdog() {
  wd_start=$(now)
  while less_than "$(elapsed "$wd_start")" "$E2E_WATCHDOG_S"; do
    sleep 1
  done
  hang_report "watchdog: the test is still running after $E2E_WATCHDOG_S s"
  echo "FAIL: watchdog expired (step: $(cat "$STATE/step"))"
  for p in $(pidof ublkvol-serve) $(pidof fio); do kill -9 "$p" 2>/dev/null; done
  kill -9 "$1" 2>/dev/null
}
if [ -n "$E2E_WATCHDOG_S" ]; then
  watchdog $$ &
  WATCHDOG=$!
  trap 'kill "$WATCHDOG" 2>/dev/null' EXIT
fi

# wait_until TIMEOUT_S CMD... : polls CMD every 20 ms until it succeeds.
# Its variables have names of their own: scripts time steps with `start`
# around wait_until calls, and a shared name would reset their clock.
wait_until() {
  wu_limit=$1
  shift
  wu_start=$(now)
  while ! "$@"; do
    less_than "$(elapsed "$wu_start")" "$wu_limit" || return 1
    sleep 0.02
  done
}

# start_server ARGS... : starts ublkvol-serve in the background and waits for
# its ready file. Sets SRV (pid) and DEV (/dev/ublkbN).
# SERVE_ARGS (unquoted, may be empty) goes to every server, re-attaching ones too.
start_server() {
  rm -f "$STATE/ready"
  # shellcheck disable=SC2086
  ublkvol-serve --ready-file "$STATE/ready" --stats-file "$STATE/stats" ${SERVE_ARGS:-} "$@" &
  SRV=$!
  wait_until 120 test -s "$STATE/ready" || fail "server did not become ready: ublkvol-serve $*"
  DEV=$(sed -n 's/.*"block_device":"\([^"]*\)".*/\1/p' "$STATE/ready")
  DEV_ID=$(sed -n 's/.*"dev_id":\([0-9]*\).*/\1/p' "$STATE/ready")
  [ -b "$DEV" ] || fail "$DEV is not a block device"
}

# stop_server: SIGTERM, wait; the server stops and deletes the device.
stop_server() {
  kill -TERM "$SRV"
  wait_exit 120 "$SRV" "ublkvol-serve after SIGTERM"
  rc=$?
  [ "$rc" -eq 0 ] || fail "server exited with $rc on SIGTERM"
  SRV=""
}

# refresh_stats: asks the server (SIGUSR1) for its counters.
refresh_stats() {
  rm -f "$STATE/stats"
  kill -USR1 "$SRV"
  wait_until 60 test -s "$STATE/stats" || fail "no stats from the server"
}

# stat SECTION KEY: SECTION is total, q0, q1, ... (from the last refresh).
stat() {
  awk -v sec="$1" -v key="$2" '
    {
      s = $0
      if (sec == "total") {
        s = substr(s, index(s, "\"total\":{") + 9)
      } else {
        n = substr(sec, 2) + 0
        s = substr(s, index(s, "\"queues\":[") + 10)
        for (k = 0; k < n; k++) s = substr(s, index(s, "}") + 2)
        s = substr(s, 2)
      }
      s = substr(s, 1, index(s, "}") - 1)
      m = split(s, a, ",")
      for (j = 1; j <= m; j++) {
        split(a[j], kv, ":")
        gsub(/"/, "", kv[1])
        if (kv[1] == key) print kv[2]
      }
    }' "$STATE/stats"
}

# count_nonzero_bytes DEV OFFSET_MIB LENGTH_MIB
count_nonzero_bytes() {
  timeout 60 dd if="$1" bs=1M skip="$2" count="$3" iflag=direct 2>/dev/null | tr -d '\000' | wc -c
}

no_ublk_devices() {
  [ -z "$(ublkvol-ublkctl list)" ] && ! ls /dev/ublkb* >/dev/null 2>&1
}

# replica_stat R KEY: a counter of replica R (0, 1, ...) of the replicated
# backend, from the last refresh ({"replicas":[{...},...]}, flat objects).
replica_stat() {
  awk -v n="$1" -v key="$2" '
    {
      s = substr($0, index($0, "\"replicas\":[") + 12)
      for (k = 0; k < n; k++) s = substr(s, index(s, "}") + 2)
      s = substr(s, 2, index(s, "}") - 2)
      m = split(s, a, ",")
      for (j = 1; j <= m; j++) {
        split(a[j], kv, ":")
        gsub(/"/, "", kv[1])
        gsub(/"/, "", kv[2])
        if (kv[1] == key) print kv[2]
      }
    }' "$STATE/stats"
}

# device_sha256 DEV: checksum of the whole device (O_DIRECT reads).
device_sha256() {
  timeout 120 dd if="$1" bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
}

# --- Recovery under load: shared by recovery.sh and replicated_recovery.sh ---

# start_backlog_fio SIZE LOOPS : random 4 KiB writes with verify_backlog on
# $DEV in the background. Sets FIO (pid); output goes to $STATE/fio.
start_backlog_fio() {
  step "fio: random 4 KiB writes with verify_backlog on $DEV"
  fio --name=recover --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
      --iodepth=32 --size="$1" --loops="$2" --verify=crc32c --verify_backlog=512 \
      --verify_fatal=1 --do_verify=1 --output-format=terse >"$STATE/fio" 2>&1 &
  FIO=$!
}

writes_flowing() {
  refresh_stats
  [ "$(stat total writes)" -gt 1500 ]
}

# detach_and_reattach RECORD : SIGHUP detaches the server, a new one re-attaches.
detach_and_reattach() {
  step "graceful restart: SIGHUP detaches, a new server re-attaches"
  wait_until 120 writes_flowing || fail "no writes reached the server"
  kill -HUP "$SRV"
  wait_exit 120 "$SRV" "ublkvol-serve after SIGHUP"
  rc=$?
  [ "$rc" -eq 0 ] || fail "server exit $rc on SIGHUP"
  start=$(now)
  start_server --recover --state-file "$1"
  grep -q '"recovered":true' "$STATE/ready" || fail "server did not re-attach after SIGHUP"
  ok "detached and re-attached in $(elapsed "$start") s"
}

# kill_and_reattach CYCLES RECORD AFTER : CYCLES times, once writes flow,
# SIGKILL the server and re-attach a new one; then runs `AFTER CYCLE` in this
# shell (so its `fail` ends the test), which checks the backend and prints
# what it saw.
kill_and_reattach() {
  step "$1 x SIGKILL and re-attach while fio runs"
  cycle=1
  while [ $cycle -le "$1" ]; do
    wait_until 120 writes_flowing || fail "cycle $cycle: no writes reached the server"
    running "$FIO" || fail "fio ended before cycle $cycle: $(cat "$STATE/fio")"
    kill -9 "$SRV"
    wait_exit 120 "$SRV" "ublkvol-serve after SIGKILL (cycle $cycle)" 2>/dev/null
    start=$(now)
    state=$(timeout 10 ublkvol-ublkctl info --id "$DEV_ID") ||
      { hang_report "ublkctl info after SIGKILL (cycle $cycle)"; fail "ublkctl info failed or hung"; }
    start_server --recover --state-file "$2"
    grep -q '"recovered":true' "$STATE/ready" || fail "cycle $cycle: server did not re-attach"
    echo "cycle $cycle: killed, re-attached in $(elapsed "$start") s (state after kill: $state)"
    "$3" "$cycle"
    cycle=$((cycle + 1))
  done
}

# terse_line FILE : fio's terse v3 result line ("3;fio-...;job;...") in FILE,
# which also holds fio's stderr: a notice printed before the result must
# not be read as the result.
terse_line() { grep '^3;' "$1" | head -1; }

# finish_backlog_fio CYCLES : fio must end with exit 0 and 0 errors.
# The bound only catches a hang (the watchdog is 540 s): on a loaded 2-core
# host fio's writes alone took 93-116 s in the daemon tests (13 s when quiet).
finish_backlog_fio() {
  step "let fio finish"
  wait_exit 420 "$FIO" "fio (verify_backlog)"
  fio_rc=$?
  cat "$STATE/fio"
  [ "$fio_rc" -eq 0 ] || fail "fio exit $fio_rc"
  # terse v3: field 5 is the job's error code
  err=$(terse_line "$STATE/fio" | cut -d';' -f5)
  [ "$err" = "0" ] || fail "fio reported error '$err' (no terse result line?)"
  ok "fio finished with 0 errors across $1 kill/restart cycles"
}

# fill_discard_check_zeros BASE_MIB : fills 16 MiB at BASE, then discards
# BASE+1..+3 MiB, write-zeroes BASE+8..+11 MiB and fio-trims BASE+12..+13 MiB;
# the three ranges must read zeros and the data around them must survive.
# (Counting what reached the backend is the caller's: backends count apart.)
fill_discard_check_zeros() {
  b=$1
  fio --name=fill --filename="$DEV" --ioengine=psync --direct=1 --rw=write --bs=1M \
      --offset="${b}M" --size=16M --output-format=terse >/dev/null || fail "fill failed"
  [ "$(count_nonzero_bytes "$DEV" $((b + 1)) 2)" -gt 0 ] || fail "fill wrote zeros?"
  blkdiscard -o $(((b + 1) << 20)) -l $((2 << 20)) "$DEV" || fail "blkdiscard failed"
  blkdiscard -z -o $(((b + 8) << 20)) -l $((3 << 20)) "$DEV" || fail "blkdiscard -z failed"
  fio --name=trim --filename="$DEV" --ioengine=psync --direct=1 --rw=trim --bs=64k \
      --offset="$((b + 12))M" --size=1M --output-format=terse >/dev/null || fail "fio trim failed"
  [ "$(count_nonzero_bytes "$DEV" $((b + 1)) 2)" -eq 0 ] || fail "discarded range is not zeros"
  [ "$(count_nonzero_bytes "$DEV" $((b + 8)) 3)" -eq 0 ] || fail "write-zeroes range is not zeros"
  [ "$(count_nonzero_bytes "$DEV" $((b + 12)) 1)" -eq 0 ] || fail "fio-trimmed range is not zeros"
  [ "$(count_nonzero_bytes "$DEV" "$b" 1)" -gt 0 ] || fail "data before the discard was lost"
  [ "$(count_nonzero_bytes "$DEV" $((b + 3)) 5)" -gt 0 ] || fail "data between the ranges was lost"
  [ "$(count_nonzero_bytes "$DEV" $((b + 11)) 1)" -gt 0 ] || fail "data after write-zeroes was lost"
}
