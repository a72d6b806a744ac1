# Transparent server restart (UBLK_F_USER_RECOVERY | REISSUE): fio writes with
# verify_backlog while the server detaches (SIGHUP) once and is SIGKILLed and
# re-attached 5 times; fio must finish with 0 errors. The memory volume lives in a tmpfs file, so the
# data outlives each server.
. /opt/test/files/lib.sh

BACKING=/dev/shm/ublk-vol.img
RECORD=/run/ublk-vol.json
CYCLES=5

ublkvol-ublkctl features | grep -q "USER_RECOVERY|USER_RECOVERY_REISSUE" ||
  fail "kernel lacks USER_RECOVERY_REISSUE"
start_server --backend memory --size 128M --backing-file "$BACKING" --state-file "$RECORD" \
    --queues 2 --depth 64
ublkvol-ublkctl info --id "$DEV_ID"
ublkvol-ublkctl info --id "$DEV_ID" | grep -q "USER_RECOVERY|USER_RECOVERY_REISSUE" ||
  fail "device not created recoverable"

step "fio: random 4 KiB writes with verify_backlog on $DEV"
fio --name=recover --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=32 --size=64M --loops=4 --verify=crc32c --verify_backlog=512 --verify_fatal=1 \
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
  state=$(ublkvol-ublkctl info --id "$DEV_ID")
  start_server --recover --state-file "$RECORD"
  grep -q '"recovered":true' "$STATE/ready" || fail "server did not re-attach"
  echo "cycle $cycle: killed, re-attached in $(elapsed "$start") s (state after kill: $state)"
  cycle=$((cycle + 1))
done

step "let fio finish"
wait "$FIO"
fio_rc=$?
cat "$STATE/fio"
[ "$fio_rc" -eq 0 ] || fail "fio exit $fio_rc"
# terse v3: field 5 is the job's error code
err=$(cut -d';' -f5 "$STATE/fio" | head -1)
[ "$err" = "0" ] || fail "fio reported error $err"
ok "fio finished with 0 errors across $CYCLES kill/restart cycles"

stop_server
[ ! -e "$RECORD" ] || fail "recovery record left behind after stop"
wait_until 10 no_ublk_devices || fail "device still present"
echo "PASS"
