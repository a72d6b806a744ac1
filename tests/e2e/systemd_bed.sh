# The systemd bed's self-test (guest side; scripts/vm/systemd/run.sh): a Type=notify,
# Restart=on-failure service that serves a ublk device - ublkvol-serve under a small
# wrapper (systemd_standin.sh / .service) - survives `systemctl kill -s KILL` while fio
# verifies every write: systemd restarts it, the new process re-attaches to the live
# device (ublk user recovery), fio ends with 0 errors, `systemctl stop` is clean.
# Binaries: ublkvol-serve. Files: systemd_lib.sh, systemd_standin.{sh,service}.
. /opt/test/files/systemd_lib.sh

UNIT=ublkvol-standin.service
READY=/run/ublkvol-standin.ready

step "install the stand-in service"
install -m 0755 /opt/test/bin/ublkvol-serve /usr/local/bin/ublkvol-serve
install -m 0755 /opt/test/files/systemd_standin.sh /usr/local/sbin/ublkvol-standin
install -m 0644 /opt/test/files/systemd_standin.service "/etc/systemd/system/$UNIT"
systemctl daemon-reload || fail "daemon-reload"
systemd-analyze verify "/etc/systemd/system/$UNIT" || fail "systemd-analyze verify $UNIT"

cursor=$(journal_cursor)
step "systemctl start $UNIT (returns once the service sent READY=1)"
start=$(now)
systemctl start "$UNIT" || fail "systemctl start $UNIT: $(systemctl status --no-pager "$UNIT" 2>&1)"
[[ "$(systemctl is-active "$UNIT")" == active ]] || fail "$UNIT not active after start"
[[ -s "$READY" ]] || fail "active, but the device is not ready (no $READY)"
DEV=$(sed -n 's/.*"block_device":"\([^"]*\)".*/\1/p' "$READY")
[[ -b "$DEV" ]] || fail "$DEV is not a block device"
ok "$UNIT active in $(elapsed "$start") s, serving $DEV; status: $(unit_prop "$UNIT" StatusText)"

base=$(writes_completed "$DEV")
start_verify_fio "$DEV" 64M 3
wait_until 120 writes_flowing "$DEV" "$base" 2000 || fail "fio's writes do not reach $DEV"
kill -0 "$FIO" 2>/dev/null || fail "fio ended before the kill: $(cat "$STATE/fio")"
errors=$(journal_errors_since "$cursor" "$UNIT")
[[ -z "$errors" ]] || fail "errors in the journal before the kill: $errors"

killed_at=$(journal_cursor)
kill_unit_and_wait_restart "$UNIT"
grep -q '"recovered":true' "$READY" || fail "the restarted service did not re-attach: $(cat "$READY")"
[[ "$(sed -n 's/.*"block_device":"\([^"]*\)".*/\1/p' "$READY")" == "$DEV" ]] ||
  fail "the restarted service serves another device: $(cat "$READY")"
ok "the new process re-attached to $DEV (ublk user recovery)"
echo "journal around the kill (warnings and worse):"
journalctl -q --no-pager -o short-monotonic -p warning -u "$UNIT" --after-cursor="$killed_at"
restarted_at=$(journal_cursor)
kill -0 "$FIO" 2>/dev/null || fail "fio ended during the restart: $(cat "$STATE/fio")"
finish_verify_fio

stop_unit_cleanly "$UNIT"
wait_until 10 no_ublk_devices || fail "ublk devices left after stop: $(ls /dev/ublk*)"
ok "the device was deleted on stop"
errors=$(journal_errors_since "$restarted_at" "$UNIT")
[[ -z "$errors" ]] || fail "errors in the journal after the restart: $errors"
ok "no errors in $UNIT's journal after the restart"
echo "PASS"
