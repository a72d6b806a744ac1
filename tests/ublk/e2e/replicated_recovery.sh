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

step "fio: random 4 KiB writes with verify_backlog on $DEV"
fio --name=recover --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=32 --size=48M --loops=3 --verify=crc32c --verify_backlog=512 --verify_fatal=1 \
    --do_verify=1 --output-format=terse >"$STATE/fio" 2>&1 &
FIO=$!
writes_flowing() {
  refresh_stats
  [ "$(stat total writes)" -gt 1500 ]
}

step "graceful restart: SIGHUP detaches, a new server re-attaches"
wait_until 120 writes_flowing || fail "no writes reached the server"
kill -HUP "$SRV"
wait "$SRV"
rc=$?
[ "$rc" -eq 0 ] || fail "server exit $rc on SIGHUP"
start=$(now)
start_server --recover --state-file "$RECORD"
grep -q '"recovered":true' "$STATE/ready" || fail "server did not re-attach after SIGHUP"
ok "detached and re-attached in $(elapsed "$start") s"

step "$CYCLES x SIGKILL and re-attach while fio runs"
cycle=1
while [ $cycle -le $CYCLES ]; do
  wait_until 120 writes_flowing || fail "cycle $cycle: no writes reached the server"
  kill -0 "$FIO" 2>/dev/null || fail "fio ended before cycle $cycle: $(cat "$STATE/fio")"
  kill -9 "$SRV"
  wait "$SRV" 2>/dev/null
  start=$(now)
  start_server --recover --state-file "$RECORD"
  grep -q '"recovered":true' "$STATE/ready" || fail "server did not re-attach"
  refresh_stats
  states=""
  for r in 0 1 2; do
    st=$(replica_stat $r state)
    # Replicas the crash caught mid-resync come back stale or rebuilding and
    # catch up in the background; none may have failed.
    [ "$st" != "failed" ] || fail "cycle $cycle: replica $r failed"
    states="$states $st"
  done
  echo "cycle $cycle: killed, re-attached in $(elapsed "$start") s; replicas:$states"
  cycle=$((cycle + 1))
done

step "let fio finish"
wait "$FIO"
fio_rc=$?
cat "$STATE/fio"
[ "$fio_rc" -eq 0 ] || fail "fio exit $fio_rc"
err=$(cut -d';' -f5 "$STATE/fio" | head -1)
[ "$err" = "0" ] || fail "fio reported error $err"
ok "fio finished with 0 errors across $CYCLES kill/restart cycles"

step "all replicas back in sync; stop; the replica files agree"
all_in_sync() {
  refresh_stats
  [ "$(replica_stat 0 state) $(replica_stat 1 state) $(replica_stat 2 state)" = \
    "in-sync in-sync in-sync" ]
}
wait_until 120 all_in_sync || fail "replicas did not all get back in sync"
sum=$(device_sha256 "$DEV")
stop_server
[ ! -e "$RECORD" ] || fail "recovery record left behind after stop"
wait_until 10 no_ublk_devices || fail "device still present"
ublkvol-replica-check $REPLICAS >"$STATE/check" 2>&1
rc=$?
cat "$STATE/check"
[ "$rc" -eq 0 ] || fail "replica files differ or are inconsistent (exit $rc)"
fsum=$(ublkvol-replica-check --replica-file /dev/shm/r1 --dump | sha256sum | cut -d' ' -f1)
[ "$fsum" = "$sum" ] || fail "replica 1 holds other data than the device showed"
ok "3 replicas agree and equal the device content after $CYCLES crashes"
echo "PASS"
