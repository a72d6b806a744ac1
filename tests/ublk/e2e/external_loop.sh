# --queue-loop external: every hardware queue is polled by ONE thread
# (SingleThreadQueueHost), the model of the reactors. Null backend: fio from a
# job per CPU reaches both queues, no errors, and the server has no queue
# threads. Memory backend (tmpfs file, recoverable): fio crc32c verify on 2
# queues, then with verify_backlog through a SIGHUP detach/re-attach and 2
# SIGKILL/re-attach cycles, every server in external mode; 0 errors.
. /opt/test/files/lib.sh

SERVE_ARGS="--queue-loop external"

# server_threads: the server's threads, io_uring's workers (iou-*) left out.
server_threads() {
  n=0
  for c in /proc/"$SRV"/task/*/comm; do
    case "$(cat "$c")" in iou-*) ;; *) n=$((n + 1)) ;; esac
  done
  echo "$n"
}

step "null backend, 2 queues on one thread"
start_server --backend null --size 256M --queues 2 --depth 64
queues=$(sed -n 's/.*"queues":\([0-9]*\).*/\1/p' "$STATE/ready")
[ "$queues" -eq 2 ] || fail "the driver gave $queues queues, this test needs 2"
threads=$(server_threads)
echo "server threads (without iou-*): $threads"
[ "$threads" -eq 2 ] || fail "expected the main thread and the queue host only, got $threads"
fio --name=null --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randrw --bs=4k \
    --iodepth=32 --size=64M --numjobs=2 --offset_increment=64M --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --group_reporting --output-format=terse >"$STATE/fio0" ||
  fail "fio on the null backend failed"
refresh_stats
echo "reads+writes: queue 0 $(($(stat q0 reads) + $(stat q0 writes))), queue 1 $(($(stat q1 reads) + $(stat q1 writes)))"
[ "$(stat q0 writes)" -gt 0 ] && [ "$(stat q1 writes)" -gt 0 ] ||
  fail "both queues should have served writes"
[ "$(stat total errors)" -eq 0 ] || fail "errors counted"
stop_server
wait_until 60 no_ublk_devices || fail "null device still present after stop"
ok "null: 2 queues served by one thread, stopped and deleted"

step "memory backend, 2 queues on one thread: crc32c verify"
BACKING=/dev/shm/ublk-ext.img
RECORD=/run/ublk-ext.json
start_server --backend memory --size 128M --backing-file "$BACKING" --state-file "$RECORD" \
    --queues 2 --depth 64
[ "$(server_threads)" -eq 2 ] || fail "expected 2 server threads, got $(server_threads)"
fio --name=rand8k --filename="$DEV" --ioengine=io_uring --direct=1 --rw=randwrite --bs=8k \
    --iodepth=32 --size=24M --numjobs=2 --offset_increment=32M --cpus_allowed=0-1 \
    --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --group_reporting --output-format=terse >"$STATE/fio1" || fail "fio verify (8k) failed"
refresh_stats
[ "$(stat q0 writes)" -gt 0 ] && [ "$(stat q1 writes)" -gt 0 ] ||
  fail "both queues should have served writes"
[ "$(stat total errors)" -eq 0 ] || fail "errors counted"
ok "memory: 8 KiB random write + verify on 2 queues sharing one thread"

memory_after_reattach() {
  [ "$(server_threads)" -eq 2 ] || fail "re-attached server has $(server_threads) threads"
}

start_backlog_fio 64M 3
detach_and_reattach "$RECORD"
memory_after_reattach
kill_and_reattach 2 "$RECORD" memory_after_reattach
finish_backlog_fio 2

stop_server
[ ! -e "$RECORD" ] || fail "recovery record left behind after stop"
wait_until 60 no_ublk_devices || fail "device still present"
echo "PASS"
