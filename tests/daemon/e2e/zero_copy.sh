# ublk-volumed e2e: zero copy per request (issue 15 item 5; docs/zero-copy.md
# "The daemon"). The daemon runs stores and queues on reactors (DAEMON_REACTORS,
# store a on reactor 0, store b on reactor 1); a 1-replica volume on store a
# is exposed with two queues, both on reactor 0 (a volume's queues run only on
# its replicas' reactors; daemon.status lists them). Under fio crc32c verify_backlog:
#   - on a kernel with AUTO_BUF_REG (7.x) the requests are served on their own
#     pages (zero_copy_ios grows, copied_ios stays 0);
#   - `replica.add` on store b (reactor 1) while fio runs: from then on the
#     requests are copied (copied_ios > 0), fio sees 0 verify errors, and the
#     two replicas compare equal (replica.verify);
#   - `replica.remove` of b: zero copy again.
# On a kernel without it (6.12) the same script checks copy mode: the device
# is not a zero-copy one and both counters stay 0.
. /opt/test/files/daemon_lib.sh

[ -n "${DAEMON_REACTORS:-}" ] || fail "needs DAEMON_REACTORS (stores and queues on reactors)"
counter() { volume_stat v0 "$1"; }

step "ublk-volumed on $DAEMON_REACTORS reactors; a 1-replica volume on store a, exposed with 2 queues"
start_daemon
make_stores 160 a b
rpc volume.create '{"name":"v0","size":67108864,"stores":["a"]}' >/dev/null || fail "volume.create"
out=$(rpc volume.expose '{"name":"v0","queues":2,"queue_depth":64}') || fail "volume.expose"
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "no block device: $out"
# Both queues run on store a's reactor (reactor0), none on reactor1: a queue
# there would send every request across (and, on 7.x, copy it).
rpc daemon.status | grep -q '"queues":\["v0:0","v0:1"\]' ||
  fail "the volume's queues are not both on its replica's reactor: $(rpc daemon.status)"
ok "both queues on reactor0, next to store a"
if rpc daemon.status | grep -q AUTO_BUF_REG; then ZC=1; else ZC=0; fi
ok "kernel $(uname -r): AUTO_BUF_REG $([ $ZC = 1 ] && echo yes || echo no)"
if [ $ZC = 1 ]; then
  [ "$(counter zero_copy)" = true ] || fail "device not created for zero copy: $(rpc stats)"
else
  [ "$(counter zero_copy)" = false ] || fail "zero copy on a kernel without it: $(rpc stats)"
fi

step "fio verify on the 1-replica volume"
start_backlog_fio 24M 2
writes_flowing() { [ "$(counter writes)" -gt 1500 ]; }
wait_until 180 writes_flowing || fail "no writes reached the daemon"
if [ $ZC = 1 ]; then
  [ "$(counter zero_copy_ios)" -gt 0 ] || fail "no zero-copy I/O: $(rpc stats)"
  [ "$(counter copied_ios)" = 0 ] || fail "copied I/O with every replica local: $(rpc stats)"
fi
ok "zero_copy_ios $(counter zero_copy_ios), copied_ios $(counter copied_ios)"

step "replica.add on store b (reactor 1) while fio runs"
kill -0 "$FIO" 2>/dev/null || fail "fio ended before replica.add: $(cat "$STATE/fio")"
rpc replica.add '{"volume":"v0","store":"b"}' >/dev/null || fail "replica.add"
both_in_sync() { [ "$(replica_states v0)" = "in_sync in_sync" ]; }
wait_until 300 both_in_sync || fail "replica b not in sync: $(replica_states v0)"
copied_before_end=$(counter copied_ios)
kill -0 "$FIO" 2>/dev/null || echo "(fio ended before the rebuild finished)"
finish_backlog_fio 0
if [ $ZC = 1 ]; then
  [ "$copied_before_end" -gt 0 ] || fail "no copied I/O with a replica on reactor 1: $(rpc stats)"
else
  [ "$(counter zero_copy_ios)" = 0 ] && [ "$(counter copied_ios)" = 0 ] ||
    fail "zero-copy counters on a copy-mode device: $(rpc stats)"
fi
ok "zero_copy_ios $(counter zero_copy_ios), copied_ios $(counter copied_ios)"

step "the replicas compare equal (replica.verify)"
runs_before=$(rpc volume.show '{"name":"v0"}' | grep -o '"runs":[0-9]*' | head -1 | cut -d: -f2)
rpc replica.verify '{"volume":"v0"}' >/dev/null || fail "replica.verify"
verified() {
  out=$(rpc volume.show '{"name":"v0"}')
  runs=$(echo "$out" | grep -o '"runs":[0-9]*' | head -1 | cut -d: -f2)
  [ "${runs:-0}" -gt "${runs_before:-0}" ] && echo "$out" | grep -q '"verify":{"active":false'
}
wait_until 120 verified || fail "verify did not finish: $(rpc volume.show '{"name":"v0"}')"
out=$(rpc volume.show '{"name":"v0"}')
[ "$(echo "$out" | json_first mismatched_bytes)" = 0 ] || fail "replicas differ: $out"
ok "0 mismatched bytes"

step "replica.remove b: zero copy again"
rpc replica.remove '{"volume":"v0","index":1}' >/dev/null || fail "replica.remove"
zc_before=$(counter zero_copy_ios)
copied_before=$(counter copied_ios)
dd if="$DEV" of=/dev/null bs=64k count=256 iflag=direct 2>/dev/null || fail "reads fail"
if [ $ZC = 1 ]; then
  [ "$(counter zero_copy_ios)" -gt "$zc_before" ] || fail "no zero copy after the remove"
  [ "$(counter copied_ios)" = "$copied_before" ] || fail "copied I/O after the remove"
fi
[ "$(counter errors)" = 0 ] || fail "the device answered $(counter errors) errors"
stop_daemon
echo "PASS"
