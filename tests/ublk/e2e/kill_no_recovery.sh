# SIGKILL of a server whose device is not recoverable: pending and new I/O
# fail within 5 s, and the device can be removed.
. /opt/test/files/lib.sh

start_server --backend memory --size 256M --queues 2 --depth 64

fio --name=busy --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randrw --bs=4k \
    --iodepth=32 --size=200M --time_based=1 --runtime=120 --output-format=terse \
    >"$STATE/fio" 2>&1 &
FIO=$!
writes_flowing() {
  refresh_stats
  [ "$(stat total writes)" -gt 2000 ]
}
wait_until 60 writes_flowing || fail "fio did not get going"

step "SIGKILL the server under I/O"
start=$(now)
kill -9 "$SRV"
wait_exit 120 "$SRV" "ublkvol-serve after SIGKILL" 2>/dev/null
SRV=""
# The 5 s count from the server's exit: the kernel fails the device's I/O
# once the dead server's files are released, which is part of the exit.
exited=$(now)
fio_ended() { ! kill -0 "$FIO" 2>/dev/null; }
wait_until 5 fio_ended || fail "fio still running 5 s after the server exited"
wait "$FIO"
fio_rc=$?
took=$(elapsed "$exited")
echo "fio ended ${took} s after the server exited ($(elapsed "$start") s after the kill), exit $fio_rc"
[ "$fio_rc" -ne 0 ] || fail "fio should see I/O errors"
if dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; then
  fail "a read after the kill succeeded"
fi
ok "I/O failed within 5 s of the server's exit (${took} s)"

step "remove the device"
ublkvol-ublkctl list
ublkvol-ublkctl del --id "$DEV_ID" --wait || fail "del failed"
wait_until 60 no_ublk_devices || fail "device still present"
ok "device removed"
echo "PASS"
