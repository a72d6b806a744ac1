# ublk-volumed e2e (VM): a replica store fails while fio writes. Stores a and
# b are /dev/shm files, store c is a memory-backed null_blk device; mid-run,
# null_blk's configfs `badblocks` makes every sector of c fail with EIO. The
# volume must stay online on a and b, volume.show must report c's replica as
# failed, store.show must count write errors on c, and fio (crc32c
# verify_backlog) must finish with 0 errors. A SIGTERM then stops the daemon
# cleanly.
# Which request meets the bad blocks first is up to timing: a data write, a
# journal commit (both count as write errors), or one of fio's verify reads
# (read errors do not fail a replica: the engine repairs the block by
# rewriting it on c, and that write fails and counts). So c's write errors
# can be as few as 1, and its store may stay "online": data errors fail the
# replica, only a failed metadata write or flush fails the store.
. /opt/test/files/daemon_lib.sh

step "memory-backed null_blk device for store c"
if [ ! -d /sys/module/null_blk ]; then
  # vm-load-module loads dependencies but passes no parameters: configfs
  # first, then null_blk without its default (non memory-backed) device.
  vm-load-module configfs || fail "cannot load configfs"
  insmod /lib/modules/ublkvol/null_blk.ko nr_devices=0 || fail "cannot load null_blk"
fi
[ -d /sys/kernel/config/nullb ] || mount -t configfs none /sys/kernel/config ||
  fail "cannot mount configfs"
NB=/sys/kernel/config/nullb/storec
mkdir "$NB" || fail "cannot create a null_blk device in configfs"
echo 1 >"$NB/memory_backed"
echo 4096 >"$NB/blocksize"
echo 160 >"$NB/size"
echo 1 >"$NB/power" || fail "cannot power on the null_blk device"
# Since Linux 6.2 a configfs-made null_blk disk is named after its directory.
nb_present() { [ -b /dev/storec ] || [ -b "/dev/nullb$(cat "$NB/index")" ]; }
wait_until 60 nb_present || fail "no block device for $NB: $(ls /dev | tr '\n' ' ')"
NBDEV=/dev/storec
[ -b "$NBDEV" ] || NBDEV=/dev/nullb$(cat "$NB/index")
ok "store c on $NBDEV"

step "start ublk-volumed, stores a, b (files) and c (null_blk), a 3-replica volume"
start_daemon
make_stores 160 a b
rpc store.add "{\"name\":\"c\",\"path\":\"$NBDEV\",\"format\":true}" >/dev/null ||
  fail "store.add c on $NBDEV"
rpc volume.create '{"name":"v0","size":67108864,"stores":["a","b","c"]}' >/dev/null ||
  fail "volume.create"
out=$(rpc volume.expose '{"name":"v0","queues":2,"queue_depth":64}') || fail "volume.expose"
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "no block device: $out"
[ "$(replica_states v0)" = "in_sync in_sync in_sync" ] || fail "replicas: $(replica_states v0)"

step "fio verify writes; store c's device fails mid-run"
start_backlog_fio 32M 3
writes_flowing() { [ "$(volume_stat v0 writes)" -gt 1500 ]; }
wait_until 180 writes_flowing || fail "no writes reached the daemon"
echo "+0-1000000" >"$NB/badblocks" || fail "cannot set badblocks"
start=$(now)
c_failed() { [ "$(replica_states v0)" = "in_sync in_sync failed" ]; }
wait_until 120 c_failed || fail "replica on c not reported failed: $(replica_states v0)"
ok "replica on c failed after $(elapsed "$start") s"
out=$(rpc volume.show '{"name":"v0"}')
echo "$out" | grep -q '"online":true' || fail "volume went offline: $out"
echo "$out" | grep -q '"in_sync":2' || fail "volume does not have 2 in-sync replicas: $out"
echo "$out" | grep -o '{[^{}]*"store":"c"[^{}]*}' | head -1
kill -0 "$FIO" 2>/dev/null || fail "fio ended early: $(cat "$STATE/fio")"
finish_backlog_fio 0
out=$(rpc store.show '{"name":"c"}')
echo "store c: $(echo "$out" | json_first state), write errors: $(echo "$out" | json_first write_errors)"
[ "$(echo "$out" | json_first write_errors)" -gt 0 ] || fail "store c counted no write errors: $out"

step "the volume still serves; SIGTERM stops the daemon"
dd if="$DEV" of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || fail "reads fail after the store failure"
[ "$(volume_stat v0 errors)" = "0" ] || fail "the device answered $(volume_stat v0 errors) errors"
stop_daemon
echo "-0-1000000" >"$NB/badblocks"
echo "PASS"
