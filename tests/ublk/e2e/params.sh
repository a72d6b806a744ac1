# Bad parameters are refused with clear messages, with the driver present:
# nothing is created. A device id in use is refused by name.
. /opt/test/files/lib.sh

expect_refusal() {
  message=$1
  shift
  out=$(ublkvol-serve "$@" 2>&1)
  rc=$?
  echo "ublkvol-serve $* -> exit $rc: $out"
  [ "$rc" -ne 0 ] || fail "accepted: $*"
  echo "$out" | grep -qF "$message" || fail "message should say: $message"
}

step "refused before anything is created"
expect_refusal "block size 3000 is not a power of two between 512 and 4096" --block-size 3000
expect_refusal "queue depth 0 is out of range 1..4096" --depth 0
expect_refusal "queue depth 100000 is out of range 1..4096" --depth 100000
expect_refusal "volume size is 0" --size 0
expect_refusal "queue count 0 is out of range" --queues 0
[ -z "$(ublkvol-ublkctl list)" ] || fail "a device was created"
ok "bad parameters refused, no device created"

step "a device id in use is refused"
start_server --backend null --size 64M --id 5
[ "$DEV" = /dev/ublkb5 ] || fail "asked for id 5, got $DEV"
expect_refusal "device id 5 is in use" --backend null --size 64M --id 5
stop_server
ok "second server on id 5 refused"

step "recovery of a device that does not exist"
expect_refusal "no such ublk device" --recover --state-file /opt/test/files/missing-device.json
echo "PASS"
