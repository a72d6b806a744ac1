# ublk-volumed e2e (VM): 3 stores on /dev/shm files, a 3-replica volume,
# exposed; the daemon's stats agree with fio's counts (within 10%); fio
# random writes with crc32c verify_backlog while the daemon is SIGKILLed and
# restarted 3 times (it re-attaches with ublk user recovery); fio ends with 0
# errors; a SIGTERM stops the device (not in use) and a new daemon re-exposes
# the volume with the same content; a mounted device is refused by unexpose
# (busy, naming the mount), detached at SIGTERM and re-attached by the next
# daemon with the filesystem intact; volume.resize is refused while exposed (6.12),
# and after unexpose/resize/expose the device has the new size, the old
# content and a zeroed tail.
. /opt/test/files/daemon_lib.sh

CYCLES=3
ublkvol-ublkctl features | grep -q "USER_RECOVERY|USER_RECOVERY_REISSUE" ||
  fail "kernel lacks USER_RECOVERY_REISSUE"

step "start ublk-volumed, 3 stores, a 3-replica volume, expose"
start_daemon
make_stores 160 a b c
rpc volume.create '{"name":"v0","size":100663296,"stores":["a","b","c"]}' >/dev/null ||
  fail "volume.create"
out=$(rpc volume.expose '{"name":"v0","queues":2,"queue_depth":64}') || fail "volume.expose"
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "volume.expose gave no block device: $out"
ok "v0 exposed as $DEV"
# The default (no config file) is write-back: what the SIGKILL cycles prove.
grep -q "writes: write-back" "$DAEMON_LOG" || fail "the daemon does not run write-back"
[ "$(replica_states v0)" = "in_sync in_sync in_sync" ] || fail "replicas: $(replica_states v0)"

step "stats agree with fio (4 KiB random writes then reads, 4096 each)"
w0=$(volume_stat v0 writes)
r0=$(volume_stat v0 reads)
bw0=$(volume_stat v0 bytes_written)
fio --name=count --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=16M --norandommap --randrepeat=0 --output-format=terse \
    >"$STATE/fio-count-w" 2>&1 || fail "fio write: $(cat "$STATE/fio-count-w")"
fio --name=count --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
    --iodepth=16 --size=16M --norandommap --randrepeat=0 --output-format=terse \
    >"$STATE/fio-count-r" 2>&1 || fail "fio read: $(cat "$STATE/fio-count-r")"
# terse v3: field 6 read KiB, 7 read bw, 8 read IOPS, ...; 47 write KiB, 49 write IOPS
fio_w_kib=$(terse_line "$STATE/fio-count-w" | cut -d';' -f47)
fio_r_kib=$(terse_line "$STATE/fio-count-r" | cut -d';' -f6)
dw=$(($(volume_stat v0 writes) - w0))
dr=$(($(volume_stat v0 reads) - r0))
dbw=$(($(volume_stat v0 bytes_written) - bw0))
fio_w=$((fio_w_kib / 4))
fio_r=$((fio_r_kib / 4))
echo "fio: $fio_w writes ($fio_w_kib KiB), $fio_r reads; daemon stats: $dw writes ($((dbw / 1024)) KiB), $dr reads"
within_10pct() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(b > 0 && a >= 0.9 * b && a <= 1.1 * b) }'; }
within_10pct "$dw" "$fio_w" || fail "daemon counted $dw writes, fio did $fio_w"
within_10pct "$dr" "$fio_r" || fail "daemon counted $dr reads, fio did $fio_r"
within_10pct "$((dbw / 1024))" "$fio_w_kib" || fail "daemon counted $dbw bytes written"
# Latency: the histogram counts every write; its mean is below fio's mean
# completion latency (fio's includes the kernel's ublk path).
hist_sum=$(rpc stats '{"volume":"v0"}' | grep -o '"write_latency_ns":{"buckets":\[[0-9,]*\]' |
  sed 's/.*\[//;s/\]//' | tr ',' '\n' | awk '{ s += $1 } END { print s }')
[ "$hist_sum" -ge "$dw" ] || fail "write latency histogram holds $hist_sum requests, fewer than $dw"
ok "stats within 10% of fio; write histogram holds $hist_sum requests"

step "fio verify writes; SIGKILL + restart the daemon $CYCLES times"
start_backlog_fio 48M 3
# Each kill waits for 1500 writes beyond what the daemon had counted when the
# cycle began: the first daemon already counted the 4096 writes above, and a
# bare "more than 1500" would let cycle 1 kill it before fio wrote anything.
writes_flowing() { [ "$(volume_stat v0 writes)" -gt $((writes_base + 1500)) ]; }
cycle=1
while [ $cycle -le $CYCLES ]; do
  writes_base=$(volume_stat v0 writes)
  [ -n "$writes_base" ] || fail "cycle $cycle: the daemon's stats give no write count"
  wait_until 180 writes_flowing || fail "cycle $cycle: no writes reached the daemon"
  kill -0 "$FIO" 2>/dev/null || fail "fio ended before cycle $cycle: $(cat "$STATE/fio")"
  kill -9 "$DAEMON"
  wait "$DAEMON" 2>/dev/null
  start=$(now)
  start_daemon
  out=$(rpc volume.show '{"name":"v0"}')
  [ "$(echo "$out" | json_get path)" = "$DEV" ] || fail "cycle $cycle: v0 is not on $DEV: $out"
  [ "$(grep -c "re-attached to $DEV" "$DAEMON_LOG")" -eq "$cycle" ] || fail "cycle $cycle: no re-attach in the log"
  echo "cycle $cycle: killed, daemon back in $(elapsed "$start") s, replicas: $(replica_states v0)"
  case "$(replica_states v0)" in *failed*) fail "cycle $cycle: a replica failed" ;; esac
  cycle=$((cycle + 1))
done
finish_backlog_fio "$CYCLES"

step "replicas back in sync; SIGTERM stops the device; a new daemon re-exposes v0"
all_in_sync() { [ "$(replica_states v0)" = "in_sync in_sync in_sync" ]; }
start=$(now)
wait_until 240 all_in_sync || fail "replicas did not get back in sync: $(replica_states v0)"
ok "replicas in sync after $(elapsed "$start") s"
sum=$(device_sha256 "$DEV")
stop_daemon
grep -q "v0.*stopped and deleted" "$DAEMON_LOG" || fail "device not reported deleted"
wait_until 60 no_ublk_devices || fail "device still present after SIGTERM"
start_daemon
out=$(rpc volume.show '{"name":"v0"}')
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "v0 not re-exposed after restart: $out"
[ "$(device_sha256 "$DEV")" = "$sum" ] || fail "content changed across the clean restart"
rpc store.check '{"name":"a"}' | grep -q '"ok":true' || fail "store a check failed"
ok "v0 re-exposed as $DEV with the same content"

step "in use at SIGTERM: a mounted device is detached and re-attached by the next daemon"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 $DEV"
mkdir -p /mnt/v0
mount "$DEV" /mnt/v0 || fail "mount $DEV"
echo hello >/mnt/v0/f && sync
rpc volume.unexpose '{"name":"v0"}' 2>"$STATE/unexpose" && fail "unexpose of a mounted device succeeded"
grep -q "busy: .*mounted on /mnt/v0" "$STATE/unexpose" || fail "unexpose: $(cat "$STATE/unexpose")"
stop_daemon
grep -q "left for recovery: v0 ($DEV): mounted on /mnt/v0" "$DAEMON_LOG" ||
  fail "the mounted device was not reported as detached"
[ -b "$DEV" ] || fail "$DEV disappeared although it was mounted"
start_daemon
[ "$(grep -c "re-attached to $DEV" "$DAEMON_LOG")" -eq $((CYCLES + 1)) ] ||
  fail "the new daemon did not re-attach to $DEV"
grep -q hello /mnt/v0/f || fail "file lost across the detach"
echo more >/mnt/v0/g && sync || fail "writes fail after the re-attach"
umount /mnt/v0 || fail "umount"
ok "mounted device survived a daemon stop/start"

step "resize: refused while exposed; unexpose, grow 96 -> 128 MiB, expose: old data, zero tail"
# On 7.x (UPDATE_SIZE + QUIESCE) an exposed volume grows online instead:
# resize_online_e2e_k7 tests that.
if [ "${UBLKVOL_VM_KERNEL:-6.12}" = 6.12 ]; then
  rpc volume.resize '{"name":"v0","size":134217728}' 2>"$STATE/resize" &&
    fail "resize of an exposed volume succeeded"
  grep -q "busy: .*unexpose it" "$STATE/resize" || fail "resize while exposed: $(cat "$STATE/resize")"
fi
sum=$(device_sha256 "$DEV")
rpc volume.unexpose '{"name":"v0"}' >/dev/null || fail "unexpose after umount"
wait_until 60 no_ublk_devices || fail "device still present after unexpose"
out=$(rpc volume.resize '{"name":"v0","size":134217728}') || fail "volume.resize"
echo "$out" | grep -q '"size_bytes":134217728' || fail "resize answered $out"
out=$(rpc volume.expose '{"name":"v0"}') || fail "volume.expose after resize"
DEV=$(echo "$out" | json_get path)
[ "$(blockdev --getsize64 "$DEV")" = 134217728 ] ||
  fail "$DEV is $(blockdev --getsize64 "$DEV") bytes after the resize"
head_sum=$(timeout 120 dd if="$DEV" bs=1M count=96 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$head_sum" = "$sum" ] || fail "the first 96 MiB changed across the resize"
tail_nonzero=$(timeout 60 dd if="$DEV" bs=1M skip=96 iflag=direct 2>/dev/null | tr -d '\0' | wc -c)
[ "$tail_nonzero" -eq 0 ] || fail "the new 32 MiB hold $tail_nonzero non-zero bytes"
e2fsck -fn "$DEV" >"$STATE/fsck" 2>&1 || fail "e2fsck after resize: $(cat "$STATE/fsck")"
rpc volume.unexpose '{"name":"v0"}' >/dev/null || fail "unexpose after the resize"
wait_until 60 no_ublk_devices || fail "device still present after unexpose"
stop_daemon
ok "resized to 128 MiB: old content intact, new tail zeros, filesystem clean"
echo "PASS"
