# Helpers of ublk-volumed's VM tests (bash in the guest). Builds on the ublk
# frontend's lib.sh (step/ok/fail/now/elapsed/wait_until/start_backlog_fio/
# finish_backlog_fio), installed as /opt/test/files/ublk-lib.sh.
# These tests run longer than the frontend's (restarts re-open stores and
# resync): the watchdog stays below the VM timeout (TIMEOUT 600).
E2E_WATCHDOG_S=${E2E_WATCHDOG_S:-540}
. /opt/test/files/ublk-lib.sh

SOCK=/run/ublk-volumed/control.sock
SD=/var/lib/ublk-volumed
DAEMON_LOG=$STATE/daemon.log

rpc() { ublkvol-daemon-rpc --socket "$SOCK" "$@"; }
# json_get KEY < JSON : the first value of "KEY" (number or string, no quotes).
json_get() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" | head -1; }
# json_first KEY < JSON : the FIRST occurrence (sed's greedy .* finds the last).
json_first() { grep -o "\"$1\":\"\\{0,1\\}[^\",}]*" | head -1 | sed "s/\"$1\":\"\\{0,1\\}//"; }

# fail also shows what the daemon logged.
fail() {
  echo "FAIL: $*"
  echo "--- daemon log (last 40 lines):"
  tail -40 "$DAEMON_LOG" 2>/dev/null
  [ -n "$SRV" ] && kill -9 "$SRV" 2>/dev/null
  exit 1
}

daemon_up() { rpc daemon.status >/dev/null 2>&1; }

# start_daemon : ublk-volumed in the background (pid in DAEMON and SRV, so
# lib.sh's fail kills it); waits until it answers.
start_daemon() {
  # An explicit --config must exist: an empty object means all defaults.
  # ($STATE exists in every bed; /var/lib may not exist before the daemon
  # creates its state dir.)
  # DAEMON_REACTORS (config key reactors): unset = the default (one reactor
  # per CPU); N; null (a thread per store and per queue: the *_threads_e2e
  # variants).
  if [ -n "${DAEMON_REACTORS:-}" ]; then
    printf '{"reactors":%s}\n' "$DAEMON_REACTORS" >"$STATE/config.json"
  else
    printf '{}\n' >"$STATE/config.json"
  fi || fail "cannot write $STATE/config.json"
  ublk-volumed --config "$STATE/config.json" --state-dir "$SD" --socket "$SOCK" >>"$DAEMON_LOG" 2>&1 &
  DAEMON=$!
  SRV=$DAEMON
  wait_until 120 daemon_up || { tail -30 "$DAEMON_LOG"; fail "ublk-volumed did not come up"; }
  if [ "${DAEMON_REACTORS:-}" = null ]; then
    rpc daemon.status | grep -q '"reactors":\[\]' ||
      fail "daemon.status lists reactors with reactors null: $(rpc daemon.status)"
  else
    # The stores run on the reactors: daemon.status lists them (the last one
    # is reactor<N-1>; by default one per CPU), and the daemon has no store
    # thread (store-*).
    last=$((${DAEMON_REACTORS:-$(nproc)} - 1))
    rpc daemon.status | grep -q "\"name\":\"reactor$last\"" ||
      fail "daemon.status lists no reactor$last: $(rpc daemon.status)"
    ! grep -q '^store-' /proc/"$DAEMON"/task/*/comm || fail "store threads with reactors on"
  fi
}

# stop_daemon : SIGTERM; the daemon must exit 0.
stop_daemon() {
  kill -TERM "$DAEMON"
  wait_exit 120 "$DAEMON" "ublk-volumed (SIGTERM)"
  rc=$?
  [ "$rc" -eq 0 ] || { tail -30 "$DAEMON_LOG"; fail "ublk-volumed exited $rc on SIGTERM"; }
  SRV=""
}

# volume_stat VOLUME KEY : a counter from the daemon's `stats`.
volume_stat() { rpc stats "{\"volume\":\"$1\"}" | json_first "$2"; }

# replica_states VOLUME : "in_sync in_sync failed" (index order).
replica_states() {
  rpc volume.show "{\"name\":\"$1\"}" | grep -o '"state":"[a-z_]*"' | sed 's/"state":"//;s/"//' |
    tr '\n' ' ' | sed 's/ $//'
}

# make_stores SIZE_MIB NAME... : formatted stores on /dev/shm files.
make_stores() {
  size=$1
  shift
  for n in "$@"; do
    rpc store.add "{\"name\":\"$n\",\"path\":\"/dev/shm/store-$n\",\"format\":true,\"size\":$((size << 20))}" \
      >/dev/null || fail "store.add $n"
  done
}
