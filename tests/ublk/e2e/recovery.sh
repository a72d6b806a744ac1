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

# The memory volume has nothing to check per cycle: fio's verify does it.
memory_after_reattach() { :; }

start_backlog_fio 64M 4
detach_and_reattach "$RECORD"
kill_and_reattach "$CYCLES" "$RECORD" memory_after_reattach
finish_backlog_fio "$CYCLES"

stop_server
[ ! -e "$RECORD" ] || fail "recovery record left behind after stop"
wait_until 60 no_ublk_devices || fail "device still present"
echo "PASS"
