# Transparent restart of the replicated backend (3 DBS replicas on tmpfs
# files): fio writes with verify_backlog while the server detaches (SIGHUP)
# once and is SIGKILLed and re-attached 5 times. Each new server reopens the
# stores (DBS recovers its last commit), the engine resyncs what the dirty
# bitmaps name, and ublk user recovery re-attaches. fio must finish with 0
# errors, and after a stop the replica files must agree.
. /opt/test/files/lib.sh

RECORD=/run/ublk-repl.json
CYCLES=5
REPLICAS="--replica-file /dev/shm/r0 --replica-file /dev/shm/r1 --replica-file /dev/shm/r2"

ublkvol-ublkctl features | grep -q "USER_RECOVERY|USER_RECOVERY_REISSUE" ||
  fail "kernel lacks USER_RECOVERY_REISSUE"
start_server --backend replicated --size 96M $REPLICAS --state-file "$RECORD" --queues 2 --depth 64
grep -q 'replica_file.2".*"/dev/shm/r2"' "$RECORD" || fail "recovery record lacks the replicas"

# Replicas the crash caught mid-resync come back stale or rebuilding and
# catch up in the background; none may have failed.
replicas_after_reattach() {
  refresh_stats
  states=""
  for r in 0 1 2; do
    st=$(replica_stat $r state)
    [ "$st" != "failed" ] || fail "cycle $1: replica $r failed"
    states="$states $st"
  done
  echo "cycle $1: replicas:$states"
}

start_backlog_fio 48M 3
detach_and_reattach "$RECORD"
kill_and_reattach "$CYCLES" "$RECORD" replicas_after_reattach
finish_backlog_fio "$CYCLES"

step "all replicas back in sync; stop; the replica files agree"
all_in_sync() {
  refresh_stats
  [ "$(replica_stat 0 state) $(replica_stat 1 state) $(replica_stat 2 state)" = \
    "in-sync in-sync in-sync" ]
}
wait_until 300 all_in_sync || fail "replicas did not all get back in sync"
sum=$(device_sha256 "$DEV")
stop_server
[ ! -e "$RECORD" ] || fail "recovery record left behind after stop"
wait_until 60 no_ublk_devices || fail "device still present"
ublkvol-replica-check $REPLICAS >"$STATE/check" 2>&1
rc=$?
cat "$STATE/check"
[ "$rc" -eq 0 ] || fail "replica files differ or are inconsistent (exit $rc)"
fsum=$(ublkvol-replica-check --replica-file /dev/shm/r1 --dump | sha256sum | cut -d' ' -f1)
[ "$fsum" = "$sum" ] || fail "replica 1 holds other data than the device showed"
ok "3 replicas agree and equal the device content after $CYCLES crashes"
echo "PASS"
