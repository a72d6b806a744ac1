# shellcheck shell=bash
# The Debian package the way users take it (issue 15 item 5), in the systemd bed after
# systemd_daemon.sh (same boot; tests/e2e/systemd_package_run.sh built the packages):
#   apt install ./ublk-volumed_<V>_amd64.deb  -> installed, group created, not started
#   systemctl enable --now ublk-volumed        -> enabled, active
#   a volume exposed, ext4 on it mounted, fio verify writing into a file in it
#   apt install ./ublk-volumed_<V>+up1_amd64.deb while fio runs
#                                              -> postinst try-restarts the daemon: the
#                                                 device (in use) is handed over - quiesced
#                                                 where the kernel has QUIESCE - and
#                                                 re-attached; fio ends with 0 errors
#   apt purge ublk-volumed                     -> unit, group, snippets, config gone; the
#                                                 stores untouched (same bytes), state kept
# Files: pkg/ (the two .debs), pkg-repo/ (a flat apt repository of the dependencies the
# image lacks, standing in for the Debian archive the offline guest cannot reach).
# shellcheck disable=SC1091  # tests/e2e/systemd_lib.sh, installed by run.sh --file
. /opt/test/files/systemd_lib.sh

UNIT=ublk-volumed.service
PKG=/opt/test/files/pkg
STORES=/dev/shm/ublk-pkg-stores
FIO=""
json_first() { grep -o "\"$1\": *\"\\{0,1\\}[^\",}]*" | head -n1 | sed "s/\"$1\": *\"\\{0,1\\}//"; }
fail() {
  echo "FAIL: $*"
  [[ -n "$FIO" ]] && kill -9 "$FIO" 2>/dev/null
  systemctl status --no-pager "$UNIT" 2>&1 | head -n 15
  echo "--- journal of $UNIT (last 40 lines):"
  journalctl -q --no-pager -o short-monotonic -u "$UNIT" -n 40
  exit 1
}

step "a clean system: systemd_daemon.sh's hand-installed files removed"
systemctl stop "$UNIT" 2>/dev/null
rm -f /usr/lib/systemd/system/$UNIT /usr/lib/modules-load.d/ublk-volumed.conf \
  /usr/lib/sysusers.d/ublk-volumed.conf /usr/bin/ublk-volumed /usr/bin/ublk-volume \
  /usr/local/bin/ublk-volumed /usr/local/bin/ublk-volume
rm -rf /etc/ublk-volumed /var/lib/ublk-volumed
getent group ublk-volume >/dev/null && groupdel ublk-volume
systemctl daemon-reload || fail "daemon-reload"
hash -r
mapfile -t debs < <(ls "$PKG"/ublk-volumed_*.deb)
[[ ${#debs[@]} -eq 2 ]] || fail "expected two packages in $PKG: ${debs[*]}"
old=${debs[0]} new=${debs[1]}
v_old=$(dpkg-deb -f "$old" Version) v_new=$(dpkg-deb -f "$new" Version)
if dpkg --compare-versions "$v_old" gt "$v_new"; then
  t=$old old=$new new=$t t=$v_old v_old=$v_new v_new=$t
fi
dpkg --compare-versions "$v_new" gt "$v_old" || fail "$v_new is not higher than $v_old"
ok "packages $v_old and $v_new"

step "apt install ./$(basename "$old")"
# The dependencies come from a local repository instead of the archive: only its index
# is fetched (the image's own sources are unreachable offline).
echo "deb [trusted=yes] file:/opt/test/files/pkg-repo ./" >/etc/apt/sources.list.d/ublkvol-test.list
apt-get update -q -o Dir::Etc::SourceList=/etc/apt/sources.list.d/ublkvol-test.list \
  -o Dir::Etc::SourceParts=/dev/null -o APT::Get::List-Cleanup=0 >"$STATE/apt-update" 2>&1 ||
  fail "apt-get update (local repository): $(cat "$STATE/apt-update")"
cd "$PKG" || fail "cd $PKG"
DEBIAN_FRONTEND=noninteractive apt-get install -y "./$(basename "$old")" >"$STATE/apt-install" 2>&1 ||
  fail "apt-get install ./$(basename "$old"): $(cat "$STATE/apt-install")"
cd /tmp || fail "cd /tmp"
[[ "$(dpkg-query -W -f '${Version}' ublk-volumed)" == "$v_old" ]] || fail "ublk-volumed $v_old not installed"
for f in /usr/lib/systemd/system/$UNIT /usr/lib/modules-load.d/ublk-volumed.conf \
    /usr/lib/sysusers.d/ublk-volumed.conf /etc/ublk-volumed/config.json /usr/bin/ublk-volumed \
    /usr/bin/ublk-volume; do
  [[ -e "$f" ]] || fail "the package did not install $f"
done
getent group ublk-volume >/dev/null || fail "postinst did not create the group ublk-volume"
[[ "$(systemctl is-active "$UNIT")" != active ]] || fail "a fresh install started $UNIT"
ok "installed $v_old; group ublk-volume; $UNIT not started"

step "systemctl enable --now $UNIT"
systemctl enable --now "$UNIT" || fail "systemctl enable --now $UNIT"
[[ "$(systemctl is-enabled "$UNIT")" == enabled ]] || fail "$UNIT is not enabled"
[[ "$(systemctl is-active "$UNIT")" == active ]] || fail "$UNIT is not active"
ok "$UNIT enabled and active"

step "a volume exposed, ext4 mounted, fio verify writing into it"
mkdir -p "$STORES"
for s in a b; do
  ublk-volume store add "$s" "$STORES/$s" --format --size 128M || fail "store add $s"
done
ublk-volume volume create p0 --size 64M --store a --store b || fail "volume create"
ublk-volume volume expose p0 --queues 2 --queue-depth 32 || fail "volume expose"
DEV=$(ublk-volume --json volume show p0 | json_first path)
[[ -b "$DEV" ]] || fail "no block device for p0: $(ublk-volume --json volume show p0)"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 $DEV"
mkdir -p /mnt/p0
mount "$DEV" /mnt/p0 || fail "mount $DEV"
quiesce=""
ublk-volume status | grep -q "enabled: [A-Z_|]*QUIESCE" && quiesce=" (quiesced)"
# Time-based (stopped below, after the upgrade): fio must write across the whole upgrade,
# however long apt takes.
base=$(writes_completed "$DEV")
fio --name=package-e2e --filename=/mnt/p0/f --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=4k --iodepth=16 --size=16M --time_based --runtime=1800 --verify=crc32c \
    --verify_backlog=256 --verify_fatal=1 --do_verify=1 --output-format=terse >"$STATE/fio" 2>&1 &
FIO=$!
wait_until 180 writes_flowing "$DEV" "$base" 1000 || fail "fio's writes do not reach $DEV"

step "upgrade to $v_new while fio runs"
kill -0 "$FIO" 2>/dev/null || fail "fio ended before the upgrade: $(cat "$STATE/fio")"
pid=$(unit_prop "$UNIT" MainPID)
cursor=$(journal_cursor)
start=$(now)
cd "$PKG" || fail "cd $PKG"
DEBIAN_FRONTEND=noninteractive apt-get install -y "./$(basename "$new")" >"$STATE/apt-upgrade" 2>&1 ||
  fail "apt-get install ./$(basename "$new"): $(cat "$STATE/apt-upgrade")"
cd /tmp || fail "cd /tmp"
[[ "$(dpkg-query -W -f '${Version}' ublk-volumed)" == "$v_new" ]] || fail "not upgraded to $v_new"
[[ "$(systemctl is-active "$UNIT")" == active ]] || fail "$UNIT not active after the upgrade"
[[ "$(unit_prop "$UNIT" MainPID)" != "$pid" ]] || fail "the upgrade did not restart the daemon"
ok "upgraded in $(elapsed "$start") s; the daemon restarted (pid $pid -> $(unit_prop "$UNIT" MainPID))"
wait_until 30 journal_has "$cursor" "$UNIT" "left for recovery: p0 ($DEV): mounted on /mnt/p0$quiesce" ||
  fail "the old daemon did not log handing $DEV over${quiesce:+ quiesced}"
wait_until 30 journal_has "$cursor" "$UNIT" "re-attached to $DEV" ||
  fail "the new daemon did not log re-attaching to $DEV"
[[ -b "$DEV" ]] || fail "$DEV is gone after the upgrade"
kill -0 "$FIO" 2>/dev/null || fail "fio ended during the upgrade: $(cat "$STATE/fio")"
base=$(writes_completed "$DEV")
wait_until 120 writes_flowing "$DEV" "$base" 500 || fail "fio's writes stopped after the upgrade"
step "stop fio (SIGINT): 0 errors"
kill -INT "$FIO"
wait "$FIO"
rc=$?
FIO=""
cat "$STATE/fio"
# SIGINT ends fio with 128 after a clean stop; a verify failure would have ended it before
# (verify_fatal), with the error in field 5 of the terse line.
[[ $rc -eq 0 || $rc -eq 128 ]] || fail "fio exit status $rc"
err=$(grep '^3;' "$STATE/fio" | head -n1 | cut -d';' -f5)
[[ "$err" == 0 ]] || fail "fio reported error '$err' (no terse result line?)"
errors=$(journal_errors_since "$cursor" "$UNIT")
[[ -z "$errors" ]] || fail "errors in the journal across the upgrade: $errors"
ok "$DEV stayed${quiesce:+ (quiesced at the hand-over)}; fio: 0 errors"

step "apt purge ublk-volumed (the stores are never touched)"
umount /mnt/p0 || fail "umount /mnt/p0"
systemctl stop "$UNIT" || fail "systemctl stop $UNIT"
sums=$(sha256sum "$STORES"/*)
DEBIAN_FRONTEND=noninteractive apt-get purge -y ublk-volumed >"$STATE/apt-purge" 2>&1 ||
  fail "apt-get purge: $(cat "$STATE/apt-purge")"
[[ "$(dpkg-query -W -f '${db:Status-Status}' ublk-volumed 2>/dev/null)" != installed ]] ||
  fail "ublk-volumed still installed after purge"
for f in /usr/lib/systemd/system/$UNIT /usr/lib/modules-load.d/ublk-volumed.conf \
    /usr/lib/sysusers.d/ublk-volumed.conf /etc/ublk-volumed/config.json /usr/bin/ublk-volumed \
    /usr/bin/ublk-volume; do
  [[ ! -e "$f" ]] || fail "$f is still there after purge"
done
! getent group ublk-volume >/dev/null || fail "the group ublk-volume is still there after purge"
[[ "$(systemctl is-enabled "$UNIT" 2>/dev/null)" != enabled ]] || fail "$UNIT still enabled"
[[ "$(sha256sum "$STORES"/*)" == "$sums" ]] || fail "the stores changed during purge"
[[ -e /var/lib/ublk-volumed/state.json ]] || fail "purge removed the daemon's state"
no_ublk_devices || fail "ublk devices left after purge: $(ls /dev/ublk*)"
ok "purged: unit, group, snippets, config gone; stores unchanged; state kept"
echo "PASS"
