# Data path on the memory backend, 2 queues: fio crc32c verify (8 KiB random
# writes QD 32 from one job per CPU; mixed 4 KiB-1 MiB), discard and
# write-zeroes read back as zeros, FLUSH and FUA reach the backend.
. /opt/test/files/lib.sh

start_server --backend memory --size 320M --queues 2 --depth 64
echo "device $DEV"

step "random 8 KiB writes, QD 32, crc32c verify, one job per CPU (both queues)"
fio --name=rand8k --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=8k \
    --iodepth=32 --size=48M --numjobs=2 --offset_increment=64M --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --group_reporting --output-format=terse >"$STATE/fio1" || fail "fio verify (8k) failed"
refresh_stats
q0=$(stat q0 writes)
q1=$(stat q1 writes)
echo "writes: queue 0 $q0, queue 1 $q1"
[ "$q0" -gt 0 ] && [ "$q1" -gt 0 ] || fail "both queues should have served writes"
[ "$(stat total errors)" -eq 0 ] || fail "errors counted"
ok "8 KiB random write + verify on 2 queues"

step "mixed sizes 4 KiB - 1 MiB, crc32c verify"
fio --name=mixed --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bsrange=4k-1m --iodepth=16 --offset=128M --size=128M --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse >"$STATE/fio2" || fail "fio verify (mixed) failed"
ok "mixed-size random write + verify"

step "discard and write-zeroes read back as zeros"
refresh_stats
discards_before=$(stat total discards)
zeroes_before=$(stat total write_zeroes)
fill_discard_check_zeros 0
refresh_stats
[ "$(stat total discards)" -gt "$discards_before" ] || fail "no DISCARD reached the backend"
[ "$(stat total write_zeroes)" -gt "$zeroes_before" ] || fail "no WRITE_ZEROES reached the backend"
ok "discard, write-zeroes and fio trim read back as zeros; neighbours intact"

step "FLUSH and FUA are forwarded"
[ "$(cat /sys/block/ublkb$DEV_ID/queue/write_cache)" = "write back" ] || fail "no volatile cache"
[ "$(cat /sys/block/ublkb$DEV_ID/queue/fua)" = "1" ] || fail "no FUA"
refresh_stats
flush_before=$(stat total flushes)
fua_before=$(stat total fua_writes)
fio --name=fsync --filename="$DEV" --ioengine=psync --direct=1 --rw=write --bs=4k --offset=32M \
    --size=1M --fsync=1 --output-format=terse >/dev/null || fail "fio fsync failed"
fio --name=osync --filename="$DEV" --ioengine=psync --direct=1 --sync=1 --rw=write --bs=4k \
    --offset=40M --size=1M --output-format=terse >/dev/null || fail "fio O_SYNC failed"
refresh_stats
flushes=$(($(stat total flushes) - flush_before))
fuas=$(($(stat total fua_writes) - fua_before))
echo "flushes seen by the backend: $flushes (fio issued 256 fsyncs); FUA writes: $fuas (256 O_SYNC writes)"
[ "$flushes" -ge 256 ] || fail "fsyncs did not all reach the backend as FLUSH"
[ "$fuas" -ge 256 ] || fail "O_SYNC writes did not reach the backend as FUA"
ok "every fsync reached the backend as FLUSH, every O_SYNC write as FUA"

stop_server
wait_until 60 no_ublk_devices || fail "device still present after stop"
ok "stopped and deleted"
echo "PASS"
