# Zero copy (docs/zero-copy.md): the replicated backend with one DBS replica
# on one reactor that also runs both queues - the case zero copy fits. On a
# kernel with UBLK_F_AUTO_BUF_REG (7.x) the device must be created zero-copy
# and every READ/WRITE served on the request's own pages (zero_copy_ios > 0,
# copied_ios 0); on 6.12 the same workload runs in copy mode (both 0).
# Either way: fio crc32c verify with 4 KiB random and 1 MiB sequential
# writes and reads, 0 errors; never-written ranges read as zeros (DBS fills
# holes through the device, never touching the request); re-attached by a
# server with --no-zero-copy the same device is served by copy (USER_COPY,
# copied_ios > 0 on 7.x) under fio verify; after a DBS
# snapshot, partial overwrites read back through the snapshot's layer
# exactly as an image file updated alongside says; the replica file equals
# the device byte for byte.
. /opt/test/files/lib.sh

SERVE_ARGS="--reactors 1"
R=/dev/shm/zc0
IMG=/dev/shm/zc-image
RECORD=/run/ublk-zc.json

if ublkvol-ublkctl features | grep -q "AUTO_BUF_REG"; then
  ZC=1
  echo "kernel $(uname -r): AUTO_BUF_REG offered: expecting zero copy"
else
  ZC=0
  echo "kernel $(uname -r): no AUTO_BUF_REG: expecting copy mode"
fi

expect_mode() {
  refresh_stats
  zc=$(stat total zero_copy_ios)
  cp=$(stat total copied_ios)
  echo "$1: zero_copy_ios=$zc copied_ios=$cp errors=$(stat total errors)"
  [ "$(stat total errors)" -eq 0 ] || fail "$1: errors counted"
  if [ "$ZC" -eq 1 ]; then
    [ "$zc" -gt 0 ] || fail "$1: zero copy not used on a kernel with AUTO_BUF_REG"
    [ "$cp" -eq 0 ] || fail "$1: $cp requests copied although the queue serves zero copy"
  else
    [ "$zc" -eq 0 ] && [ "$cp" -eq 0 ] || fail "$1: zero-copy counters on a copy-mode kernel"
  fi
}

step "1 replica, 2 queues on 1 reactor: fio verify, 4 KiB random and 1 MiB sequential"
start_server --backend replicated --size 64M --replica-file "$R" --queues 2 --depth 32 \
    --state-file "$RECORD"
fio --name=zc4k --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --offset=0 --size=8M --numjobs=2 --offset_increment=8M --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --group_reporting --output-format=terse >"$STATE/fio4k" || fail "fio 4 KiB verify failed"
fio --name=zc1m --filename="$DEV" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
    --iodepth=4 --offset=16M --size=16M --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --output-format=terse >"$STATE/fio1m" || fail "fio 1 MiB verify failed"
ok "fio verify 4 KiB random (2 queues) and 1 MiB sequential: no errors"
expect_mode "after fio"
[ "$(stat q0 writes)" -gt 0 ] && [ "$(stat q1 writes)" -gt 0 ] ||
  fail "both queues should have served writes"

step "never-written ranges read as zeros, also inside 1 MiB reads that cover data"
n=$(count_nonzero_bytes "$DEV" 32 32)
[ "$n" -eq 0 ] || fail "$n non-zero bytes in the never-written 32M..64M"
# A 4 KiB write in the middle of a hole: each 1 MiB read around it is a hole,
# data and hole again.
head -c 4096 /dev/urandom >"$STATE/blk"
dd if="$STATE/blk" of="$DEV" bs=4k seek=$((40 * 256 + 100)) oflag=direct conv=notrunc 2>/dev/null ||
  fail "4 KiB write into a hole failed"
dd if="$DEV" of="$STATE/mib" bs=1M skip=40 count=1 iflag=direct 2>/dev/null || fail "read failed"
dd if="$STATE/mib" of="$STATE/mid" bs=4k skip=100 count=1 2>/dev/null
cmp -s "$STATE/mid" "$STATE/blk" || fail "the 4 KiB block read back differs"
nz=$(tr -d '\000' <"$STATE/mib" | wc -c)
nzb=$(tr -d '\000' <"$STATE/blk" | wc -c)
[ "$nz" -eq "$nzb" ] || fail "the hole around the block is not zeros ($nz vs $nzb non-zero bytes)"
expect_mode "after hole reads"
ok "holes read as zeros, data between them intact"

step "re-attached with --no-zero-copy: the same device served by copy (USER_COPY)"
kill -HUP "$SRV"
wait_exit 120 "$SRV" "ublkvol-serve after SIGHUP"
[ $? -eq 0 ] || fail "server exit status on SIGHUP"
start_server --recover --state-file "$RECORD" --no-zero-copy
grep -q '"recovered":true' "$STATE/ready" || fail "server did not re-attach"
fio --name=zccopy --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randrw --bs=64k \
    --iodepth=8 --offset=4M --size=8M --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --output-format=terse >"$STATE/fiocopy" || fail "fio verify through the copy path failed"
refresh_stats
zc=$(stat total zero_copy_ios)
cp=$(stat total copied_ios)
echo "re-attached: zero_copy_ios=$zc copied_ios=$cp errors=$(stat total errors)"
[ "$(stat total errors)" -eq 0 ] || fail "errors counted on the copy path"
[ "$zc" -eq 0 ] || fail "zero copy used although --no-zero-copy"
if [ "$ZC" -eq 1 ]; then
  [ "$cp" -gt 0 ] || fail "the zero-copy device's requests were not copied (USER_COPY)"
else
  [ "$cp" -eq 0 ] || fail "copied_ios on a copy-mode device"
fi
ok "fio verify through the copy path of a zero-copy device: no errors"

step "snapshot layer: restart with --snapshot, overwrite pieces, read through both layers"
dd if="$DEV" of="$IMG" bs=1M iflag=direct 2>/dev/null || fail "cannot image the device"
stop_server
wait_until 60 no_ublk_devices || fail "device still present"
start_server --backend replicated --replica-file "$R" --queues 2 --depth 32 --snapshot s1
# Overwrite 4 KiB runs every 64 KiB across data and holes, in the device and
# in the image: 1 MiB reads then take each run from the head, the rest from
# the snapshot, and holes from neither.
head -c $((4096 * 4)) /dev/urandom >"$STATE/runs"
for mib in 2 17 40 50; do
  for k in 0 16 32 48; do
    blk=$((mib * 256 + k * 4 + 1))
    dd if="$STATE/runs" of="$DEV" bs=4k seek=$blk count=4 oflag=direct conv=notrunc 2>/dev/null ||
      fail "overwrite at block $blk failed"
    dd if="$STATE/runs" of="$IMG" bs=4k seek=$blk count=4 conv=notrunc 2>/dev/null
  done
done
dev_sum=$(dd if="$DEV" bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
img_sum=$(sha256sum "$IMG" | cut -d' ' -f1)
[ "$dev_sum" = "$img_sum" ] || fail "device ($dev_sum) differs from the image ($img_sum)"
expect_mode "after snapshot reads"
ok "reads through the snapshot layer and holes equal the image"

step "stop; the replica file equals the device"
stop_server
wait_until 60 no_ublk_devices || fail "device still present"
ublkvol-replica-check --replica-file "$R" >"$STATE/check" 2>&1 || {
  cat "$STATE/check"
  fail "replica check failed"
}
fsum=$(ublkvol-replica-check --replica-file "$R" --dump | sha256sum | cut -d' ' -f1)
[ "$fsum" = "$dev_sum" ] || fail "the replica file holds other data than the device showed"
ok "replica file checks clean and equals the device"
echo "PASS"
