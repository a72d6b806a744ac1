# shellcheck shell=bash
# ublk-volumed under systemd (guest side of the systemd_daemon e2e test; runs in the
# systemd bed, scripts/vm/systemd/run.sh). Installs the daemon and the CLI where the real
# unit file's ExecStart expects them, the unit (packaging/systemd, configured by CMake),
# the config, the modules-load and sysusers snippets, then:
#   systemctl start ublk-volumed          -> active (READY=1 received), socket answers
#   ublk-volume: 3 file stores on tmpfs (/dev/shm), a 3-replica volume, expose it
#   fio random writes, crc32c verify_backlog + verify_fatal, in the background
#   systemctl kill -s KILL ublk-volumed   -> systemd restarts it (Restart=on-failure), the
#                                            new daemon re-attaches to the live device
#   fio finishes with 0 errors; replicas back in sync
#   ext4 on v0, mounted, fio verify into a file in it; systemctl restart -> the device
#                                            (in use) is handed over: quiesced first where
#                                            the kernel has QUIESCE (7.x), detached on 6.12;
#                                            the new daemon re-attaches; 0 fio errors
#   systemctl stop ublk-volumed           -> inactive (not failed), result success, the
#                                            device deleted, no errors in the journal
# Binaries: ublk-volumed, ublk-volume. Files: systemd_lib.sh, ublk-volumed.service,
# config.json, ublk-volumed.modules.conf, ublk-volumed.sysusers.conf.
# shellcheck disable=SC1091  # tests/e2e/systemd_lib.sh, installed by run.sh --file
. /opt/test/files/systemd_lib.sh

UNIT=ublk-volumed.service
F=/opt/test/files
# tmpfs: under TCG, write-through (FUA) writes to files on the emulated disk run at a few
# dozen per second, too slow for the fio run below. /dev/shm is writable under the unit's
# ProtectSystem=strict (an API file system) and not private (PrivateTmp covers /tmp only).
STORES=/dev/shm/ublk-stores

# A field of the CLI's --json output (pretty-printed; first occurrence, without quotes).
json_first() { grep -o "\"$1\": *\"\\{0,1\\}[^\",}]*" | head -n1 | sed "s/\"$1\": *\"\\{0,1\\}//"; }
# replica_states VOLUME: "in_sync in_sync failed" (replica index order).
replica_states() {
  ublk-volume --json volume show "$1" | grep -o '"state": *"[a-z_]*"' |
    sed 's/"state": *"//;s/"//' | tr '\n' ' ' | sed 's/ $//'
}
all_in_sync() { [[ "$(replica_states v0)" == "in_sync in_sync in_sync" ]]; }
# fail also shows the unit's state and journal.
fail() {
  echo "FAIL: $*"
  [[ -n "$FIO" ]] && kill -9 "$FIO" 2>/dev/null
  systemctl status --no-pager "$UNIT" 2>&1 | head -n 15
  echo "--- journal of $UNIT (last 40 lines):"
  journalctl -q --no-pager -o short-monotonic -u "$UNIT" -n 40
  exit 1
}

step "install ublk-volumed as the package does"
start=$(now)
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$F/ublk-volumed.service")
[[ "$exec_start" == /*/ublk-volumed ]] || fail "unexpected ExecStart in the unit: '$exec_start'"
bindir=${exec_start%/*}
install -D -m 0755 /opt/test/bin/ublk-volumed "$exec_start"
install -D -m 0755 /opt/test/bin/ublk-volume "$bindir/ublk-volume"
install -D -m 0644 "$F/ublk-volumed.service" "/usr/lib/systemd/system/$UNIT"
install -D -m 0644 "$F/config.json" /etc/ublk-volumed/config.json
install -D -m 0644 "$F/ublk-volumed.modules.conf" /usr/lib/modules-load.d/ublk-volumed.conf
install -D -m 0644 "$F/ublk-volumed.sysusers.conf" /usr/lib/sysusers.d/ublk-volumed.conf
systemd-sysusers || fail "systemd-sysusers"
getent group ublk-volume >/dev/null || fail "sysusers did not create the ublk-volume group"
systemctl daemon-reload || fail "daemon-reload"
systemd-analyze verify "$UNIT" || fail "systemd-analyze verify $UNIT"
PATH="$bindir:$PATH"
ok "ublk-volumed and ublk-volume in $bindir, unit in /usr/lib/systemd/system ($(elapsed "$start") s)"

cursor=$(journal_cursor)
step "systemctl start $UNIT (returns once the daemon sent READY=1)"
start=$(now)
systemctl start "$UNIT" || fail "systemctl start $UNIT"
[[ "$(systemctl is-active "$UNIT")" == active ]] || fail "$UNIT not active after start"
[[ -S /run/ublk-volumed/control.sock ]] || fail "no control socket /run/ublk-volumed/control.sock"
[[ "$(stat -c %a /run/ublk-volumed/control.sock)" == 660 ]] ||
  fail "control socket mode $(stat -c %a /run/ublk-volumed/control.sock), expected 660"
ublk-volume status || fail "ublk-volume status"
ok "$UNIT active in $(elapsed "$start") s; status: $(unit_prop "$UNIT" StatusText)"

step "ublk-volume: 3 file stores in $STORES, a 3-replica volume, expose it"
mkdir -p "$STORES"
for s in a b c; do
  ublk-volume store add "$s" "$STORES/$s" --format --size 160M || fail "store add $s"
done
ublk-volume volume create v0 --size 96M --store a --store b --store c || fail "volume create"
ublk-volume volume expose v0 --queues 2 --queue-depth 64 || fail "volume expose"
DEV=$(ublk-volume --json volume show v0 | json_first path)
[[ -b "$DEV" ]] || fail "volume show gives no block device: $(ublk-volume --json volume show v0)"
all_in_sync || fail "replicas not in sync after create: $(replica_states v0)"
ublk-volume volume show v0
ok "v0 exposed as $DEV"

base=$(writes_completed "$DEV")
start=$(now)
start_verify_fio "$DEV" 16M 3
wait_until 180 writes_flowing "$DEV" "$base" 1000 || fail "fio's writes do not reach $DEV"
ok "$(($(writes_completed "$DEV") - base)) writes completed on $DEV in $(elapsed "$start") s"
kill -0 "$FIO" 2>/dev/null || fail "fio ended before the kill: $(cat "$STATE/fio")"
errors=$(journal_errors_since "$cursor" "$UNIT")
[[ -z "$errors" ]] || fail "errors in the journal before the kill: $errors"

killed_at=$(journal_cursor)
writes_at_kill=$(writes_completed "$DEV")
kill_unit_and_wait_restart "$UNIT"
[[ "$(ublk-volume --json volume show v0 | json_first path)" == "$DEV" ]] ||
  fail "after the restart v0 is not on $DEV: $(ublk-volume --json volume show v0)"
wait_until 30 journal_has "$killed_at" "$UNIT" "re-attached to $DEV" ||
  fail "the restarted daemon did not log re-attaching to $DEV"
ok "the restarted daemon re-attached to $DEV (ublk user recovery)"
echo "journal around the kill (warnings and worse):"
journalctl -q --no-pager -o short-monotonic -p warning -u "$UNIT" --after-cursor="$killed_at"
restarted_at=$(journal_cursor)
# fio must have written through the restart: either it still runs, or (it may finish its
# fixed amount once the device is back, which is fine) the device completed more writes
# after the kill than fio can have had in flight at it (iodepth 32).
if ! kill -0 "$FIO" 2>/dev/null; then
  after=$(($(writes_completed "$DEV") - writes_at_kill))
  ((after > 64)) ||
    fail "fio ended around the kill: only $after writes completed after it: $(cat "$STATE/fio")"
  echo "fio finished its writes after the restart ($after writes completed after the kill)"
fi
finish_verify_fio

step "replicas back in sync"
start=$(now)
wait_until 240 all_in_sync || fail "replicas did not get back in sync: $(replica_states v0)"
ok "replicas in sync $(elapsed "$start") s after fio ended"

step "systemctl restart with v0 mounted and fio verify writing into it"
quiesce=""
ublk-volume status | grep -q "enabled: [A-Z_|]*QUIESCE" && quiesce=" (quiesced)"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 $DEV"
mkdir -p /mnt/v0
mount "$DEV" /mnt/v0 || fail "mount $DEV"
base=$(writes_completed "$DEV")
start_verify_fio /mnt/v0/f 16M 3
wait_until 180 writes_flowing "$DEV" "$base" 1000 || fail "fio's writes do not reach $DEV"
kill -0 "$FIO" 2>/dev/null || fail "fio ended before the restart: $(cat "$STATE/fio")"
restart_at=$(journal_cursor)
start=$(now)
systemctl restart "$UNIT" || fail "systemctl restart $UNIT"
[[ "$(systemctl is-active "$UNIT")" == active ]] || fail "$UNIT not active after the restart"
ok "systemctl restart returned in $(elapsed "$start") s"
wait_until 30 journal_has "$restart_at" "$UNIT" "left for recovery: v0 ($DEV): mounted on /mnt/v0$quiesce" ||
  fail "the stopping daemon did not log handing $DEV over${quiesce:+ quiesced}"
if [[ -z "$quiesce" ]] && journal_has "$restart_at" "$UNIT" "(quiesced)"; then
  fail "a device was quiesced although the kernel has no QUIESCE"
fi
wait_until 30 journal_has "$restart_at" "$UNIT" "re-attached to $DEV" ||
  fail "the restarted daemon did not log re-attaching to $DEV"
finish_verify_fio
umount /mnt/v0 || fail "umount /mnt/v0"
errors=$(journal_errors_since "$restart_at" "$UNIT")
[[ -z "$errors" ]] || fail "errors in the journal across the restart: $errors"
ok "$DEV handed over${quiesce:+ quiesced} and re-attached; fio: 0 errors"

stop_unit_cleanly "$UNIT"
wait_until 60 no_ublk_devices || fail "ublk devices left after stop: $(ls /dev/ublk*)"
wait_until 30 journal_has "$restarted_at" "$UNIT" "v0.*stopped and deleted" ||
  fail "the daemon did not log stopping and deleting v0's device"
ok "the device (not in use) was stopped and deleted"
# The daemon's last line: once it is in the journal, everything it logged is (one stream,
# in order), so the error check below sees the whole run.
wait_until 30 journal_has "$restarted_at" "$UNIT" "stopped: [0-9]* device(s) deleted" ||
  fail "the daemon's final 'stopped: ...' line is not in the journal"
errors=$(journal_errors_since "$restarted_at" "$UNIT")
[[ -z "$errors" ]] || fail "errors in the journal after the restart: $errors"
ok "no errors in $UNIT's journal after the restart"
echo "PASS"
