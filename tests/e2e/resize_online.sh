# shellcheck shell=bash
# Online resize of an exposed volume (issue 15 item 3), 7.x only
# (resize_online_e2e_k7; the refusal on 6.12 is kernel_features_e2e's):
# ext4 on a 2-replica volume, mounted, fio verify writing a file in it;
# `ublk-volume volume resize` 64 -> 128 MiB while fio runs (every replica
# grown, UBLK_U_CMD_UPDATE_SIZE, the device quiesced around it); resize2fs
# online; the old data intact; a file written and verified in the new space;
# fio ends with 0 errors; shrinking is refused; after a daemon restart (the
# mounted device is re-attached) the device and the volume are 128 MiB; then
# the daemon (reactors by default: they release a quiesced queue's ring at
# once) restarts with reactors null (a thread per store and per queue) and
# grows it again, 128 -> 160 MiB, under fio verify.
# shellcheck disable=SC1091  # installed in the guest by the ctest registration
. /opt/test/files/daemon_lib.sh

CLI="ublk-volume --socket $SOCK"
OLD=$((64 << 20))
NEW=$((128 << 20))
command -v resize2fs >/dev/null || fail "resize2fs is not in the bed (scripts/vm/lib.sh tools)"
ublkvol-ublkctl features | grep -q "UPDATE_SIZE" || fail "kernel $(uname -r) lacks UPDATE_SIZE"

step "start ublk-volumed, 2 stores, a 64 MiB volume, exposed, ext4 mounted"
start_daemon
make_stores 192 a b
rpc volume.create "{\"name\":\"v0\",\"size\":$OLD,\"stores\":[\"a\",\"b\"]}" >/dev/null ||
  fail "volume.create"
out=$(rpc volume.expose '{"name":"v0","queues":2,"queue_depth":32}') || fail "volume.expose: $out"
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "volume.expose gave no block device: $out"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 $DEV"
mkdir -p /mnt/v0
mount "$DEV" /mnt/v0 || fail "mount $DEV"
# Old data: 8 MiB of random bytes, on disk before the resize.
dd if=/dev/urandom of=/mnt/v0/old bs=1M count=8 2>/dev/null || fail "writing /mnt/v0/old"
sync
old_sum=$(sha256sum /mnt/v0/old | cut -d' ' -f1)
fs_before=$(df -k /mnt/v0 | awk 'NR == 2 { print $2 }')
ok "$DEV: ext4 of $fs_before KiB mounted, /mnt/v0/old $old_sum"

step "fio verify (random 4 KiB writes, verify_backlog) on a 24 MiB file in the filesystem"
fio --name=bg --filename=/mnt/v0/bg --size=24M --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=4k --iodepth=16 --loops=4 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --do_verify=1 --output-format=terse >"$STATE/fio" 2>&1 &
FIO=$!
writes_base=$(volume_stat v0 writes)
writes_flowing() { [ "$(volume_stat v0 writes)" -gt $((writes_base + 1000)) ]; }
wait_until 180 writes_flowing || fail "no fio writes reached the daemon"
kill -0 "$FIO" 2>/dev/null || fail "fio ended before the resize: $(cat "$STATE/fio")"

step "shrinking is refused; growing 64 -> 128 MiB under fio works online"
if msg=$($CLI volume resize v0 32M 2>&1); then
  fail "shrinking the exposed volume succeeded: $msg"
fi
echo "$msg" | grep -qF "shrinking to 33554432 is not supported" || fail "shrink refusal: $msg"
start=$(now)
msg=$($CLI volume resize v0 128M 2>&1) || fail "volume resize v0 128M: $msg"
echo "$msg (in $(elapsed "$start") s)"
kill -0 "$FIO" 2>/dev/null || fail "fio ended during the resize: $(cat "$STATE/fio")"
size=$(blockdev --getsize64 "$DEV")
[ "$size" = "$NEW" ] || fail "$DEV is $size bytes after the resize"
rpc volume.show '{"name":"v0"}' | grep -q "\"size_bytes\":$NEW" ||
  fail "volume.show: $(rpc volume.show '{"name":"v0"}')"
line=$(grep "grown online to $NEW bytes" "$DAEMON_LOG") || fail "no 'grown online' line in the log"
echo "$line"
ok "$DEV is 128 MiB, fio still running"

step "resize2fs online; a 48 MiB file written and verified in the new space"
resize2fs "$DEV" >"$STATE/resize2fs" 2>&1 || fail "resize2fs: $(cat "$STATE/resize2fs")"
fs_after=$(df -k /mnt/v0 | awk 'NR == 2 { print $2 }')
[ "$fs_after" -gt $((fs_before + 50000)) ] || fail "ext4 is $fs_after KiB after resize2fs (was $fs_before)"
# 48 MiB does not fit beside bg (24) and old (8) in the old 64 MiB.
fio --name=new --filename=/mnt/v0/new --size=48M --ioengine=io_uring --direct=1 --rw=write \
    --bs=1M --iodepth=4 --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse \
    >"$STATE/fio-new" 2>&1 || fail "fio write+verify in the new space: $(cat "$STATE/fio-new")"
echo 3 >/proc/sys/vm/drop_caches
[ "$(sha256sum /mnt/v0/old | cut -d' ' -f1)" = "$old_sum" ] || fail "/mnt/v0/old changed"
ok "ext4 $fs_before -> $fs_after KiB; 48 MiB written and verified; old data intact"

step "let fio finish"
wait_exit 420 "$FIO" "fio (verify_backlog)"
fio_rc=$?
cat "$STATE/fio"
[ "$fio_rc" -eq 0 ] || fail "fio exit $fio_rc"
err=$(terse_line "$STATE/fio" | cut -d';' -f5)
[ "$err" = "0" ] || fail "fio reported error '$err'"
ok "fio: 0 errors across the online resize"

step "daemon restart with the filesystem mounted: the device and the volume stay 128 MiB"
sync
stop_daemon
[ -b "$DEV" ] || fail "$DEV disappeared although it was mounted"
start_daemon
grep -q "re-attached to $DEV" "$DAEMON_LOG" || fail "the new daemon did not re-attach to $DEV"
rpc volume.show '{"name":"v0"}' | grep -q "\"size_bytes\":$NEW" ||
  fail "after the restart: $(rpc volume.show '{"name":"v0"}')"
[ "$(blockdev --getsize64 "$DEV")" = "$NEW" ] || fail "$DEV is $(blockdev --getsize64 "$DEV") bytes"
[ "$(sha256sum /mnt/v0/old | cut -d' ' -f1)" = "$old_sum" ] || fail "/mnt/v0/old changed"
echo 3 >/proc/sys/vm/drop_caches
fio --name=new --filename=/mnt/v0/new --size=48M --ioengine=io_uring --direct=1 --rw=write \
    --bs=1M --iodepth=4 --verify=crc32c --verify_only=1 --output-format=terse \
    >"$STATE/fio-new2" 2>&1 || fail "re-verifying /mnt/v0/new: $(cat "$STATE/fio-new2")"
ok "128 MiB after the restart, data verified"

step "with a thread per store and per queue (config reactors null): grow 128 -> 160 MiB under fio"
stop_daemon
DAEMON_REACTORS=null start_daemon
fio --name=bg2 --filename=/mnt/v0/bg2 --size=8M --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=4k --iodepth=16 --loops=2 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --do_verify=1 --output-format=terse >"$STATE/fio2" 2>&1 &
FIO=$!
writes_base=$(volume_stat v0 writes)
wait_until 180 writes_flowing || fail "no fio writes reached the daemon on threads"
msg=$($CLI volume resize v0 160M 2>&1) || fail "volume resize v0 160M on threads: $msg"
[ "$(blockdev --getsize64 "$DEV")" = $((160 << 20)) ] || fail "$DEV is not 160 MiB"
resize2fs "$DEV" >"$STATE/resize2fs2" 2>&1 || fail "resize2fs: $(cat "$STATE/resize2fs2")"
wait_exit 420 "$FIO" "fio on threads"
fio_rc=$?
[ "$fio_rc" -eq 0 ] || fail "fio exit $fio_rc: $(cat "$STATE/fio2")"
[ "$(terse_line "$STATE/fio2" | cut -d';' -f5)" = "0" ] || fail "fio errors: $(cat "$STATE/fio2")"
[ "$(sha256sum /mnt/v0/old | cut -d' ' -f1)" = "$old_sum" ] || fail "/mnt/v0/old changed"
umount /mnt/v0 || fail "umount"
e2fsck -fn "$DEV" >"$STATE/fsck" 2>&1 || fail "e2fsck: $(cat "$STATE/fsck")"
rpc volume.unexpose '{"name":"v0"}' >/dev/null || fail "unexpose"
stop_daemon
ok "160 MiB on threads, fio 0 errors, old data intact, filesystem clean"
echo "PASS"
