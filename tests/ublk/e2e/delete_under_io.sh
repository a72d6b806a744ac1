# Deleting the device while fio writes to it: nothing hangs, fio ends with
# errors, the server notices and exits, the device is gone.
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
wait_until 30 fio_ended || fail "fio still running 30 s after the delete (hang)"
wait "$FIO"
fio_rc=$?
echo "fio ended $(elapsed "$start") s after the delete, exit $fio_rc"
[ "$fio_rc" -ne 0 ] || fail "fio should report I/O errors"
server_ended() { ! kill -0 "$SRV" 2>/dev/null; }
wait_until 30 server_ended || fail "server still running 30 s after the delete"
wait "$SRV"
echo "server exit $?"
SRV=""
wait_until 10 no_ublk_devices || fail "device still listed: $(ublkvol-ublkctl list)"
ok "fio failed, server exited, device gone, in $(elapsed "$start") s"

step "a new device can be created afterwards"
start_server --backend null --size 64M
fio --name=after --filename="$DEV" --ioengine=psync --direct=1 --rw=read --bs=4k --size=4M \
    --output-format=terse >/dev/null || fail "I/O on the new device failed"
stop_server
echo "PASS"
