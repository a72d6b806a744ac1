# The replicated backend: 3 DBS replicas on tmpfs files under the engine,
# 2 queues. fio crc32c verify (8 KiB random writes QD 32 from a job per CPU;
# mixed 4 KiB-1 MiB); discard / write-zeroes / fio trim read back as zeros;
# every fsync reaches every replica as a FLUSH (and the store file as a device
# flush), every O_SYNC write as a FUA write; after a stop the replica files
# agree (ublkvol-replica-check, DBS directly, not the engine) and hold what the
# device showed; ext4 on the same volume, across a server restart, e2fsck clean.
. /opt/test/files/lib.sh

FILES="/dev/shm/r0 /dev/shm/r1 /dev/shm/r2"
REPLICAS=""
for f in $FILES; do REPLICAS="$REPLICAS --replica-file $f"; done

check_replicas() {
  ublkvol-replica-check $REPLICAS >"$STATE/check" 2>&1
  rc=$?
  cat "$STATE/check"
  [ "$rc" -eq 0 ] || fail "replica files differ or are inconsistent (exit $rc)"
  grep -q "^agree: 3 replica(s)" "$STATE/check" || fail "checker did not compare 3 replicas"
}

step "create 3 replicas (new store files) and serve them"
# Write-back (the default; --no-write-through spells it out): FUA reaches the
# replicas only where the kernel sent it, so the forwarding checks below are
# exact. The ext4 part runs its first server with --write-through.
start_server --backend replicated --size 256M $REPLICAS --queues 2 --depth 64 --no-write-through
echo "device $DEV"
for f in $FILES; do [ -s "$f" ] || fail "$f was not created"; done
refresh_stats
for r in 0 1 2; do
  [ "$(replica_stat $r state)" = "in-sync" ] || fail "replica $r is $(replica_stat $r state)"
done

step "random 8 KiB writes, QD 32, crc32c verify, one job per CPU (both queues)"
fio --name=rand8k --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=8k \
    --iodepth=32 --size=24M --numjobs=2 --offset_increment=32M --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --group_reporting --output-format=terse >"$STATE/fio1" || fail "fio verify (8k) failed"
refresh_stats
q0=$(stat q0 writes)
q1=$(stat q1 writes)
echo "writes: queue 0 $q0, queue 1 $q1"
[ "$q0" -gt 0 ] && [ "$q1" -gt 0 ] || fail "both queues should have served writes"
[ "$(stat total errors)" -eq 0 ] || fail "errors counted"
for r in 0 1 2; do
  w=$(replica_stat $r writes)
  echo "replica $r: $w writes"
  [ "$w" -ge 6144 ] || fail "replica $r saw $w writes, fio wrote 6144 x 8 KiB"
done
ok "8 KiB random write + verify on 2 queues, every replica written"

step "mixed sizes 4 KiB - 1 MiB, crc32c verify"
fio --name=mixed --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bsrange=4k-1m --iodepth=16 --offset=96M --size=64M --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse >"$STATE/fio2" || fail "fio verify (mixed) failed"
ok "mixed-size random write + verify"

step "discard and write-zeroes read back as zeros (DBS unmaps)"
refresh_stats
discards_before=$(replica_stat 2 discards)
zeroes_before=$(replica_stat 2 write_zeroes)
fill_discard_check_zeros 176
refresh_stats
[ "$(replica_stat 2 discards)" -gt "$discards_before" ] || fail "no discard reached replica 2"
[ "$(replica_stat 2 write_zeroes)" -gt "$zeroes_before" ] || fail "no write-zeroes reached replica 2"
ok "discard, write-zeroes and fio trim read back as zeros; neighbours intact"

step "fsync -> FLUSH and O_SYNC -> FUA reach every replica and its store file"
[ "$(cat /sys/block/ublkb$DEV_ID/queue/write_cache)" = "write back" ] || fail "no volatile cache"
[ "$(cat /sys/block/ublkb$DEV_ID/queue/fua)" = "1" ] || fail "no FUA"
refresh_stats
for r in 0 1 2; do
  eval "fl$r=$(replica_stat $r flushes) dfl$r=$(replica_stat $r device_flushes)"
  eval "fua$r=$(replica_stat $r fua_writes)"
done
fua_before=$(stat total fua_writes)
fio --name=fsync --filename="$DEV" --ioengine=psync --direct=1 --rw=write --bs=4k --offset=200M \
    --size=1M --fsync=1 --output-format=terse >/dev/null || fail "fio fsync failed"
fio --name=osync --filename="$DEV" --ioengine=psync --direct=1 --sync=1 --rw=write --bs=4k \
    --offset=204M --size=1M --output-format=terse >/dev/null || fail "fio O_SYNC failed"
refresh_stats
fuas=$(($(stat total fua_writes) - fua_before))
[ "$fuas" -ge 256 ] || fail "the kernel sent $fuas FUA writes for 256 O_SYNC writes"
for r in 0 1 2; do
  eval "f=\$((\$(replica_stat $r flushes) - fl$r))"
  eval "d=\$((\$(replica_stat $r device_flushes) - dfl$r))"
  eval "u=\$((\$(replica_stat $r fua_writes) - fua$r))"
  echo "replica $r: $f FLUSHes, $d store-file flushes, $u FUA writes (fio: 256 fsyncs, 256 O_SYNC writes)"
  [ "$f" -ge 256 ] || fail "replica $r got $f FLUSHes for 256 fsyncs"
  [ "$d" -ge 256 ] || fail "replica $r's store file got $d flushes for 256 fsyncs"
  [ "$u" -ge 256 ] || fail "replica $r got $u FUA writes for 256 O_SYNC writes"
done
ok "every fsync reached all 3 replicas as FLUSH (and their files), every O_SYNC write as FUA"

step "stop; the replica files agree and hold what the device showed"
sum=$(device_sha256 "$DEV")
stop_server
wait_until 60 no_ublk_devices || fail "device still present after stop"
check_replicas
for f in $FILES; do
  fsum=$(ublkvol-replica-check --replica-file "$f" --dump | sha256sum | cut -d' ' -f1)
  [ "$fsum" = "$sum" ] || fail "$f holds other data than the device showed ($fsum vs $sum)"
done
ok "3 replicas agree (DBS check clean) and equal the device content ($sum)"

step "ext4 on the replicated volume, across a server restart"
# No --size: the existing replica files say how big the volume is.
start_server --backend replicated $REPLICAS --queues 2 --depth 64 --write-through
[ "$(blockdev --getsize64 "$DEV")" = "$((256 << 20))" ] || fail "reopened volume has another size"
[ "$(device_sha256 "$DEV")" = "$sum" ] || fail "content changed across the restart"
MNT=/tmp/mnt
mkdir -p "$MNT"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 failed"
mount -t ext4 "$DEV" "$MNT" || fail "mount failed"
i=1
while [ $i -le 12 ]; do
  dd if=/dev/urandom of="$MNT/file$i" bs=64k count=$((i * 3)) 2>/dev/null || fail "write file$i"
  i=$((i + 1))
done
mkdir -p "$MNT/dir"
dd if=/dev/urandom of="$MNT/dir/big" bs=1M count=24 2>/dev/null || fail "write big"
(cd "$MNT" && find . -type f | grep -v lost+found | sort | xargs sha256sum) >"$STATE/sums" ||
  fail "checksum"
[ "$(wc -l <"$STATE/sums")" -eq 13 ] || fail "expected 13 files"
umount "$MNT" || fail "umount failed"
stop_server
start_server --backend replicated $REPLICAS --queues 2 --depth 64
e2fsck -fn "$DEV" >"$STATE/fsck" 2>&1
rc=$?
cat "$STATE/fsck"
[ "$rc" -eq 0 ] || fail "e2fsck exit $rc"
mount -t ext4 "$DEV" "$MNT" || fail "remount failed"
(cd "$MNT" && sha256sum -c "$STATE/sums" >/dev/null) || fail "checksums differ after restart"
umount "$MNT" || fail "umount failed"
stop_server
check_replicas
ok "ext4: 13 files, restart, e2fsck -fn clean, checksums match, replicas agree"
echo "PASS"
