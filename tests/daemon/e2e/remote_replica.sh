# shellcheck shell=bash
# ublk-volumed e2e (VM), issue 16: a 3-replica volume with one replica on
# another "host" - a second ublk-volumed in its own network namespace, reached
# over a veth pair, exporting a DBS volume over NBD with TLS-PSK. The main
# daemon (default config: reactors) has 2 local DBS replicas (/dev/shm files)
# + the remote one (nbds://...), exposed as /dev/ublkbN with ext4 mounted.
# fio (crc32c verify_backlog) writes a file in it; mid-run the peer daemon is
# SIGKILLed: the remote replica must leave the write set, the volume stay
# online (degraded, writes still completing). The peer restarts at once (its
# export comes back from its state file; fio may still be writing) and the
# main daemon's keeper reconnects and resyncs the dirty regions only
# (rebuild.full_from == size, less than the volume copied; never shown in
# sync before). fio ends with 0 errors,
# `replica verify` finds the three replicas identical, e2fsck is clean.
# shellcheck disable=SC1091  # installed in the guest by the ctest registration
. /opt/test/files/daemon_lib.sh

CLI="ublk-volume --socket $SOCK"
SIZE=$((32 << 20))
NS=rvm-peer
HOST_ADDR=10.201.0.1
PEER_ADDR=10.201.0.2
PORT=10809
P=$STATE/peer
PEER_SOCK=$P/control.sock
PEER_LOG=$P/daemon.log
PCLI="ublk-volume --socket $PEER_SOCK"
PSK=$STATE/nbd.psk
URI="nbds://rvm@$PEER_ADDR:$PORT/vr"
PEER=""
T0=$(now)

# fail also shows the peer's log. Both daemons are left running: ext4 is
# mounted on the volume, and the bed's final sync would wait forever for a
# killed server (user recovery holds the requests), until run.sh's timeout.
fail() {
  echo "FAIL: $*"
  echo "--- daemon log (last 40 lines):"
  tail -40 "$DAEMON_LOG" 2>/dev/null
  echo "--- peer daemon log (last 25 lines):"
  tail -25 "$PEER_LOG" 2>/dev/null
  exit 1
}

# show : `volume show v0 --json` of the main daemon, on one line without
# blanks (its keys are sorted: a replica's "remote" object comes right
# before its "state").
show() { $CLI --json volume show v0 | tr -d ' \n'; }
# remote_state JSON : the remote replica object's state (in_sync, out, ...).
remote_state() { echo "$1" | grep -o '"remote":{[^{}]*}' | json_first state; }
# remote_engine_state JSON : the engine's state of that replica.
remote_engine_state() { echo "$1" | grep -o '"remote":{[^{}]*},"state":"[a-z_]*"' | json_get state; }
# field OBJECT KEY JSON : KEY of the first flat object named OBJECT.
field() { echo "$3" | grep -o "\"$1\":{[^{}]*" | head -1 | json_first "$2"; }

# poll LIMIT_S CMD... : wait_until with a 0.2 s pause between probes: each
# probe runs the CLI, which under TCG takes CPU the daemons need.
poll() {
  p_limit=$1
  shift
  p_start=$(now)
  while ! "$@"; do
    less_than "$(elapsed "$p_start")" "$p_limit" || return 1
    sleep 0.2
  done
}

peer_up() { $PCLI status >/dev/null 2>&1; }
# start_peer : ublk-volumed in the namespace's network stack. nsenter execs
# it (PEER is the daemon's pid) and, unlike `ip netns exec`, keeps our mount
# namespace: a mount namespace of its own would keep a copy of /mnt/v0 and
# so the device busy after our umount.
start_peer() {
  nsenter --net="/run/netns/$NS" ublk-volumed --config "$P/config.json" --state-dir "$P/state" \
    --socket "$PEER_SOCK" >>"$PEER_LOG" 2>&1 &
  PEER=$!
  poll 60 peer_up || fail "the peer ublk-volumed did not come up"
  [ "$(cat /proc/"$PEER"/comm)" = ublk-volumed ] || fail "pid $PEER is not the peer daemon"
  [ "$(stat -L -c %i /proc/"$PEER"/ns/net)" = "$(stat -L -c %i /run/netns/$NS)" ] ||
    fail "the peer daemon (pid $PEER) is not in network namespace $NS"
}

step "network namespace $NS, veth pair $HOST_ADDR <-> $PEER_ADDR"
ip -V 2>&1 | grep -q iproute2 || fail "ip is not iproute2's: $(ip -V 2>&1) (scripts/vm/lib.sh tools)"
vm-load-module veth || fail "no veth module in the bed (scripts/vm/lib.sh UBLKVOL_VM_MODULES; run scripts/vm/fetch-kernel.sh)"
ip netns add "$NS" || fail "ip netns add $NS"
ip link add rvm0 type veth peer name rvm1 || fail "ip link add rvm0 type veth"
ip link set rvm1 netns "$NS" || fail "moving rvm1 into $NS"
ip addr add "$HOST_ADDR/30" dev rvm0 || fail "ip addr add $HOST_ADDR dev rvm0"
ip link set rvm0 up || fail "ip link set rvm0 up"
ip -n "$NS" link set lo up || fail "ip link set lo up in $NS"
ip -n "$NS" addr add "$PEER_ADDR/30" dev rvm1 || fail "ip addr add $PEER_ADDR dev rvm1 in $NS"
ip -n "$NS" link set rvm1 up || fail "ip link set rvm1 up in $NS"
! ip addr show | grep -q "$PEER_ADDR" || fail "$PEER_ADDR is an address of this namespace"
ping -c 1 -W 10 "$PEER_ADDR" >/dev/null || fail "cannot reach $PEER_ADDR over the veth pair"
ok "veth up"

step "peer ublk-volumed in $NS: a DBS volume exported over NBD with TLS-PSK on $PEER_ADDR:$PORT"
mkdir -p "$P"
printf '{}\n' >"$P/config.json"
printf 'rvm:5f2a9c0e7b1d3a4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901\n' >"$PSK"
chmod 600 "$PSK"
start_peer
$PCLI store add p /dev/shm/peer-store --format --size 64M >/dev/null || fail "peer: store add"
# The replica layout needs 1 MiB of headers and dirty bitmap before the data.
$PCLI volume create vr --size 33M --store p >/dev/null || fail "peer: volume create"
$PCLI volume export vr --listen "$PEER_ADDR:$PORT" --tls-psk "$PSK" >/dev/null ||
  fail "peer: volume export"
ok "peer up (pid $PEER) at $(elapsed "$T0") s"

step "main ublk-volumed: v0 = 2 local replicas + $URI, exposed, ext4 mounted"
start_daemon
make_stores 64 a b
out=$($CLI volume create v0 --size 32M --store a b --remote "$URI" --tls-psk "$PSK" 2>&1) ||
  fail "volume create v0: $out"
echo "$out"
$CLI volume expose v0 --queues 2 --queue-depth 64 >/dev/null || fail "volume expose v0"
j=$(show)
DEV=$(echo "$j" | grep -o '"device":{[^{}]*' | json_first path)
[ -b "$DEV" ] || fail "no block device: $j"
[ "$(echo "$j" | json_first in_sync)" = 3 ] || fail "not 3 replicas in sync: $j"
[ "$(remote_state "$j")" = in_sync ] || fail "remote replica not in sync: $j"
# nodiscard: a discard of the whole device marks every dirty region, and
# until the engine's next periodic checkpoint (every 10 s) clears them a
# resync rightly copies the whole volume. What is dirty then is what mkfs
# and fio write (~15 of 32 MiB), whenever that checkpoint runs.
mkfs.ext4 -q -F -b 4096 -E nodiscard "$DEV" || fail "mkfs.ext4 $DEV"
mkdir -p /mnt/v0
mount "$DEV" /mnt/v0 || fail "mount $DEV"
ok "$DEV mounted at $(elapsed "$T0") s"

step "fio verify in the filesystem; the peer daemon is SIGKILLed mid-run"
fio --name=rvm --filename=/mnt/v0/f --size=8M --ioengine=io_uring --direct=1 --rw=randwrite \
  --bs=4k --iodepth=16 --loops=1 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
  --do_verify=1 --output-format=terse >"$STATE/fio" 2>&1 &
FIO=$!
writes_base=$(volume_stat v0 writes)
writes_above() { [ "$(volume_stat v0 writes)" -gt "$1" ]; }
poll 120 writes_above $((writes_base + 100)) || fail "no fio writes reached the daemon"
running "$FIO" || fail "fio ended before the peer was killed: $(cat "$STATE/fio")"
rebuilds_before=$(field rebuild completed "$(show)")
kill -9 "$PEER"
wait_exit 30 "$PEER" "the peer daemon after SIGKILL"
start=$(now)
remote_out() {
  j=$(show)
  st=$(remote_state "$j")
  { [ "$st" = out ] || [ "$st" = connecting ]; } && [ "$(remote_engine_state "$j")" != in_sync ]
}
poll 30 remote_out || fail "the remote replica is not out of the write set: $(show)"
ok "remote replica $(remote_state "$j") ($(remote_engine_state "$j")) $(elapsed "$start") s after the kill"
echo "$j" | grep -q '"online":true' || fail "the volume went offline: $j"
[ "$(echo "$j" | json_first in_sync)" = 2 ] || fail "not 2 replicas in sync: $j"
$CLI volume show v0 | grep -q 'degraded (2/3 replicas in sync' ||
  fail "volume show does not say degraded: $($CLI volume show v0)"
running "$FIO" || fail "fio ended before the remote replica was out (too short a run): $(cat "$STATE/fio")"
# Serving while degraded: fio's writes keep completing on the local replicas.
poll 60 writes_above $(($(volume_stat v0 writes) + 50)) ||
  fail "no writes completed while degraded"
ok "degraded and serving at $(elapsed "$T0") s"

step "the peer restarts at once (fio may still be writing); the main daemon reconnects"
start_peer
start=$(now)
stale_in_sync=0
# poll_remote : sets j, in_sync (the remote replica is in sync, for the
# engine too) and resync_done (a rebuild completed since the kill); notes a
# replica shown in sync before its resync completed.
poll_remote() {
  j=$(show)
  in_sync=0
  [ "$(remote_state "$j")" = in_sync ] && [ "$(remote_engine_state "$j")" = in_sync ] && in_sync=1
  resync_done=0
  [ "$(field rebuild completed "$j")" -gt "$rebuilds_before" ] && resync_done=1
  if [ $in_sync = 1 ] && [ $resync_done = 0 ]; then stale_in_sync=1; fi
}
reconnected() {
  poll_remote
  [ "$(field remote reconnects "$j")" -ge 1 ] && [ "$(field remote live_connections "$j")" -gt 0 ]
}
poll 60 reconnected || fail "the main daemon did not reconnect to the peer: $(show)"
ok "reconnected $(elapsed "$start") s after the restart: remote $(remote_state "$j"), fio running: $(running "$FIO" && echo yes || echo no)"

step "fio ends with 0 errors"
wait_exit 300 "$FIO" "fio (verify_backlog)"
fio_rc=$?
[ "$fio_rc" -eq 0 ] || fail "fio exit $fio_rc: $(cat "$STATE/fio")"
err=$(terse_line "$STATE/fio" | cut -d';' -f5)
[ "$err" = "0" ] || fail "fio reported error '$err': $(cat "$STATE/fio")"
[ "$(volume_stat v0 errors)" = "0" ] || fail "the device answered $(volume_stat v0 errors) errors"
ok "fio: 0 errors at $(elapsed "$T0") s"

step "the remote replica resyncs its dirty regions only"
resynced() {
  poll_remote
  [ $in_sync = 1 ] && [ $resync_done = 1 ] && [ "$(field rebuild active "$j")" = false ]
}
poll 90 resynced || fail "the remote replica did not resync: $(show)"
[ $stale_in_sync = 0 ] || fail "the remote replica was shown in sync before its resync completed"
rebuild=$(echo "$j" | grep -o '"rebuild":{[^{}]*}')
echo "$rebuild"
[ "$(echo "$j" | json_first in_sync)" = 3 ] || fail "not 3 replicas in sync after the resync: $j"
# Dirty regions only: no whole-range part, and less than the volume copied.
[ "$(field rebuild full_from "$j")" = "$SIZE" ] || fail "not a dirty-region resync: $rebuild"
copied=$(field rebuild total_bytes "$j")
if [ "$copied" -le 0 ] || [ "$copied" -ge "$SIZE" ]; then
  fail "resync copied $copied of $SIZE bytes (dirty regions only: more than 0, less than the volume)"
fi
echo "$j" | grep -q 'started(dirtyregionsonly)' || fail "no 'started (dirty regions only)' event: $j"
ok "resynced $(elapsed "$start") s after the restart: $copied of $SIZE bytes copied"

step "replica verify: the 3 replicas are identical; umount, e2fsck clean"
sync
out=$($CLI replica verify v0 --rate 0 --wait --timeout 120 2>&1) || fail "replica verify: $out"
j=$(show)
last=$(echo "$j" | grep -o '"last":{[^{}]*')
echo "$last"
[ "$(echo "$last" | json_first mismatched_bytes)" = 0 ] || fail "replicas differ: $last"
[ "$(echo "$last" | json_first bytes)" = "$SIZE" ] || fail "verify did not compare the volume: $last"
echo "$last" | grep -q '"error":""' || fail "verify did not complete: $last"
[ "$(echo "$j" | json_first in_sync)" = 3 ] || fail "not 3 in sync during the verify: $j"
umount /mnt/v0 || fail "umount /mnt/v0"
e2fsck -fn "$DEV" >"$STATE/fsck" 2>&1 || fail "e2fsck: $(cat "$STATE/fsck")"
$CLI volume unexpose v0 >/dev/null || fail "volume unexpose v0"
stop_daemon
kill -TERM "$PEER"
wait_exit 60 "$PEER" "the peer daemon (SIGTERM)" || fail "the peer daemon exited $? on SIGTERM"
PEER=""
ip netns del "$NS"
ok "done at $(elapsed "$T0") s"
echo "PASS"
