# Deleting the device while fio writes to it: nothing hangs, fio ends with
# errors, the server notices and exits, the device is gone. Then the same
# for a SIGTERM (stop and delete) of the server under I/O.
. /opt/test/files/lib.sh

start_server --backend memory --size 256M --queues 2 --depth 64

step "fio writes to $DEV in the background"
fio --name=busy --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=32 --size=200M --time_based=1 --runtime=120 --output-format=terse \
    >"$STATE/fio" 2>&1 &
FIO=$!
writes_flowing() {
  refresh_stats
  [ "$(stat total writes)" -gt 2000 ]
}
wait_until 60 writes_flowing || fail "fio did not get going"

step "delete the device under I/O"
start=$(now)
ublkvol-ublkctl del --id "$DEV_ID" || fail "del failed"
fio_ended() { ! kill -0 "$FIO" 2>/dev/null; }
wait_until 120 fio_ended || fail "fio still running 120 s after the delete (hang)"
wait "$FIO"
fio_rc=$?
echo "fio ended $(elapsed "$start") s after the delete, exit $fio_rc"
[ "$fio_rc" -ne 0 ] || fail "fio should report I/O errors"
server_ended() { ! kill -0 "$SRV" 2>/dev/null; }
wait_until 120 server_ended || fail "server still running 120 s after the delete"
wait "$SRV"
echo "server exit $?"
SRV=""
wait_until 60 no_ublk_devices || fail "device still listed: $(ublkvol-ublkctl list)"
ok "fio failed, server exited, device gone, in $(elapsed "$start") s"

step "SIGTERM the server under I/O: clean stop, no hang (also: a new device after the delete)"
start_server --backend memory --size 256M --queues 2 --depth 64
fio --name=busy2 --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randrw --bs=4k \
    --iodepth=32 --size=200M --time_based=1 --runtime=120 --output-format=terse \
    >"$STATE/fio2" 2>&1 &
FIO=$!
wait_until 60 writes_flowing || fail "fio did not get going on the new device"
start=$(now)
kill -TERM "$SRV"
wait_until 120 server_ended || fail "server still running 120 s after SIGTERM (hang)"
wait "$SRV"
rc=$?
SRV=""
[ "$rc" -eq 0 ] || fail "server exit $rc after SIGTERM"
wait_until 120 fio_ended || fail "fio still running 120 s after the stop"
wait "$FIO"
fio_rc=$?
[ "$fio_rc" -ne 0 ] || fail "fio should report errors after the device went away"
wait_until 60 no_ublk_devices || fail "device still listed after SIGTERM"
ok "server stopped under I/O in $(elapsed "$start") s, exit 0; fio saw errors; device gone"
echo "PASS"
