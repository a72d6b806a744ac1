# ext4 on a memory-backed device: mkfs, mount, write and checksum files,
# umount, e2fsck clean, remount and verify.
. /opt/test/files/lib.sh

start_server --backend memory --size 384M --queues 2 --depth 64
MNT=/tmp/mnt
mkdir -p "$MNT"

step "mkfs.ext4 and mount $DEV"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 failed"
mount -t ext4 "$DEV" "$MNT" || fail "mount failed"

step "write and checksum files"
i=1
while [ $i -le 24 ]; do
  dd if=/dev/urandom of="$MNT/file$i" bs=64k count=$((i * 3)) 2>/dev/null || fail "write file$i"
  i=$((i + 1))
done
mkdir -p "$MNT/dir/sub"
dd if=/dev/urandom of="$MNT/dir/sub/big" bs=1M count=40 2>/dev/null || fail "write big"
(cd "$MNT" && find . -type f -name 'file*' -o -type f -name big | sort | xargs sha256sum) \
    >"$STATE/sums" || fail "checksum"
[ "$(wc -l <"$STATE/sums")" -eq 25 ] || fail "expected 25 files"
sync
umount "$MNT" || fail "umount failed"
ok "25 files written, checksummed, unmounted"

step "e2fsck is clean"
e2fsck -fn "$DEV" >"$STATE/fsck" 2>&1
rc=$?
cat "$STATE/fsck"
[ "$rc" -eq 0 ] || fail "e2fsck exit $rc"
ok "e2fsck -fn exit 0"

step "remount and verify"
mount -t ext4 "$DEV" "$MNT" || fail "remount failed"
(cd "$MNT" && sha256sum -c "$STATE/sums" >/dev/null) || fail "checksums differ after remount"
umount "$MNT" || fail "umount failed"
ok "all checksums match after remount"

stop_server
echo "PASS"
