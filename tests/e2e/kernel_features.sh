# shellcheck shell=bash
# Kernel feature detection (issue 15 item 2), on the kernel the bed booted
# (UBLKVOL_VM_KERNEL: 6.12 or 7). ublk-volumed reads the kernel release and
# GET_FEATURES once at start and logs them; `ublk-volume status` and
# `status --json` show the release, the features and the optional ones enabled
# (none on 6.12; UPDATE_SIZE|QUIESCE on 7.x); the config key
# ublk_features_off turns one off; growing an exposed volume is refused with
# a message naming the missing kernel feature on 6.12, and on 7.x with
# QUIESCE turned off naming the config key (online resize quiesces the
# device; resize_online_e2e_k7 grows one).
# shellcheck disable=SC1091  # installed in the guest by the ctest registration
. /opt/test/files/daemon_lib.sh

CLI="ublk-volume --socket $SOCK"
release=$(uname -r)
offered=$(ublkvol-ublkctl features) || fail "ublkvol-ublkctl features"
case "$UBLKVOL_VM_KERNEL" in
  6.12) expect_enabled="none" ;;
  7) expect_enabled="UPDATE_SIZE|QUIESCE" ;;
  *) fail "UBLKVOL_VM_KERNEL '$UBLKVOL_VM_KERNEL' is not 6.12 or 7" ;;
esac
echo "kernel $release ($UBLKVOL_VM_KERNEL): $offered"

step "the start-up log names the kernel and the ublk features enabled"
start_daemon
line=$(grep "kernel $release: ublk_drv features 0x" "$DAEMON_LOG") ||
  fail "no 'kernel $release: ublk_drv features' line in the daemon log"
echo "$line"
echo "$line" | grep -q "optional features enabled: $expect_enabled\$" ||
  fail "the log does not say 'optional features enabled: $expect_enabled'"
if grep -q "known ublk_drv regressions" "$DAEMON_LOG"; then
  fail "a known-bad-kernel warning on $release"
fi
ok "logged: kernel $release, enabled: $expect_enabled"

step "ublk-volume status and status --json show the kernel and its features"
human=$($CLI status) || fail "ublk-volume status: $human"
echo "$human"
echo "$human" | grep -qF "Kernel:       $release, ublk features 0x" ||
  fail "status has no 'Kernel: $release, ublk features 0x...' line"
echo "$human" | grep -qF "enabled: $expect_enabled; turned off: none" ||
  fail "status does not say 'enabled: $expect_enabled; turned off: none'"
json=$($CLI --json status) || fail "ublk-volume --json status: $json"
compact=$(echo "$json" | tr -d ' \n')
for want in "\"release\":\"$release\"" "\"features_enabled\":\"$expect_enabled\"" \
    "\"features_off\":\"none\"" "\"ublk_features\":\"0x"; do
  echo "$compact" | grep -qF "$want" || fail "status --json lacks $want: $json"
done
ok "status and --json: $release, enabled $expect_enabled"

step "ublk_features_off turns an optional feature off"
stop_daemon
printf '{"ublk_features_off":["QUIESCE"]}\n' >"$STATE/config-off.json"
ublk-volumed --config "$STATE/config-off.json" --state-dir "$SD" --socket "$SOCK" \
  >>"$DAEMON_LOG" 2>&1 &
DAEMON=$!
# shellcheck disable=SC2034  # read by daemon_lib.sh's fail (kills the daemon)
SRV=$DAEMON
wait_until 120 daemon_up || fail "ublk-volumed with ublk_features_off did not come up"
[ "$expect_enabled" = none ] && expect_off_enabled=none || expect_off_enabled=UPDATE_SIZE
human=$($CLI status) || fail "ublk-volume status: $human"
echo "$human" | grep -qF "enabled: $expect_off_enabled; turned off: QUIESCE" ||
  fail "status with QUIESCE off: $human"
ok "enabled: $expect_off_enabled; turned off: QUIESCE"

step "growing an exposed volume is refused, naming what is missing"
make_stores 96 a b
rpc volume.create '{"name":"v0","size":33554432,"stores":["a","b"]}' >/dev/null ||
  fail "volume.create"
out=$(rpc volume.expose '{"name":"v0","queues":1,"queue_depth":32}') || fail "volume.expose: $out"
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "volume.expose gave no block device: $out"
if msg=$($CLI volume resize v0 64M 2>&1); then
  fail "resize of exposed $DEV succeeded: $msg"
fi
echo "$msg"
case "$UBLKVOL_VM_KERNEL" in
  6.12)
    echo "$msg" | grep -qF "volume 'v0' is exposed as $DEV: the kernel's ublk_drv lacks UBLK_F_UPDATE_SIZE (Linux >= 6.16), needed for online resize of an exposed volume (this kernel: $release)" ||
      fail "the 6.12 refusal does not name UBLK_F_UPDATE_SIZE and the kernel"
    ;;
  7)
    echo "$msg" | grep -qF "volume 'v0' is exposed as $DEV: online resize needs UBLK_F_QUIESCE, which the configuration turns off (ublk_features_off); unexpose it, resize, expose it again" ||
      fail "the 7.x refusal with QUIESCE off does not name UBLK_F_QUIESCE and ublk_features_off"
    ;;
esac
[ "$(blockdev --getsize64 "$DEV")" = 33554432 ] || fail "$DEV changed size"
ok "refused; $DEV keeps 32 MiB"

stop_daemon
ok "kernel feature detection checked on $release"
