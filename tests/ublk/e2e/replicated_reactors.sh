# --reactors 2 (issue 14): the replicated backend's 3 replica stores and the
# device's 2 ublk queues all run on 2 reactors (queue q and replica i on
# reactor q / i mod 2), no other thread. fio crc32c verify on both queues;
# then fio with verify_backlog through a SIGHUP detach/re-attach and 2
# SIGKILL/re-attach cycles, each new server on 2 reactors again (recovery
# re-attaches each queue on its reactor); 0 errors, the replicas get back in
# sync and the replica files agree with the device.
. /opt/test/files/lib.sh

SERVE_ARGS="--reactors 2"
RECORD=/run/ublk-reactors.json
CYCLES=2
REPLICAS="--replica-file /dev/shm/r0 --replica-file /dev/shm/r1 --replica-file /dev/shm/r2"

# The server's threads other than io_uring's workers (iou-*) and the
# engine's background tasks (vol-*: monitor, dirty clearing; not on the data
# path), by name.
server_threads() {
  for c in /proc/"$SRV"/task/*/comm; do
    case "$(cat "$c")" in iou-* | vol-*) ;; *) cat "$c" ;; esac
  done | sort | tr '\n' ' '
}

# Main thread + reactor0 + reactor1, no store or queue thread.
only_reactors() {
  t=$(server_threads)
  echo "server threads: $t"
  [ "$(echo "$t" | wc -w)" -eq 3 ] || fail "$1: expected the main thread and 2 reactors, got: $t"
  case "$t" in *reactor0*reactor1*) ;; *) fail "$1: reactor threads missing: $t" ;; esac
}

ublkvol-ublkctl features | grep -q "USER_RECOVERY|USER_RECOVERY_REISSUE" ||
  fail "kernel lacks USER_RECOVERY_REISSUE"

step "3 replicas, 2 queues on 2 reactors: crc32c verify"
start_server --backend replicated --size 96M $REPLICAS --state-file "$RECORD" --queues 2 --depth 64
queues=$(sed -n 's/.*"queues":\([0-9]*\).*/\1/p' "$STATE/ready")
[ "$queues" -eq 2 ] || fail "the driver gave $queues queues, this test needs 2"
only_reactors "first server"
fio --name=rand8k --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=8k \
    --iodepth=32 --size=24M --numjobs=2 --offset_increment=32M --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --group_reporting --output-format=terse >"$STATE/fio1" || fail "fio verify (8k) failed"
refresh_stats
[ "$(stat q0 writes)" -gt 0 ] && [ "$(stat q1 writes)" -gt 0 ] ||
  fail "both queues should have served writes"
[ "$(stat total errors)" -eq 0 ] || fail "errors counted"
ok "8 KiB random write + verify on 2 queues, 3 replicas, 2 reactors"

replicas_after_reattach() {
  only_reactors "cycle $1"
  refresh_stats
  states=""
  for r in 0 1 2; do
    st=$(replica_stat $r state)
    [ "$st" != "failed" ] || fail "cycle $1: replica $r failed"
    states="$states $st"
  done
  echo "cycle $1: replicas:$states"
}

start_backlog_fio 48M 3
detach_and_reattach "$RECORD"
only_reactors "after detach/re-attach"
kill_and_reattach "$CYCLES" "$RECORD" replicas_after_reattach
finish_backlog_fio "$CYCLES"

step "all replicas back in sync; stop; the replica files agree"
all_in_sync() {
  refresh_stats
  [ "$(replica_stat 0 state) $(replica_stat 1 state) $(replica_stat 2 state)" = \
    "in-sync in-sync in-sync" ]
}
wait_until 300 all_in_sync || fail "replicas did not all get back in sync"
sum=$(device_sha256 "$DEV")
stop_server
[ ! -e "$RECORD" ] || fail "recovery record left behind after stop"
wait_until 60 no_ublk_devices || fail "device still present"
ublkvol-replica-check $REPLICAS >"$STATE/check" 2>&1
rc=$?
cat "$STATE/check"
[ "$rc" -eq 0 ] || fail "replica files differ or are inconsistent (exit $rc)"
fsum=$(ublkvol-replica-check --replica-file /dev/shm/r1 --dump | sha256sum | cut -d' ' -f1)
[ "$fsum" = "$sum" ] || fail "replica 1 holds other data than the device showed"
ok "3 replicas on 2 reactors agree and equal the device content after $CYCLES crashes"
echo "PASS"
