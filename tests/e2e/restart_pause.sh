# shellcheck shell=bash
# The I/O pause fio sees across daemon restarts (issue 15 item 4; guest side of
# scripts/restart-pause.sh, not a ctest test: it measures, the e2e checks are
# systemd_daemon(_k7)'s). ext4 on a 2-replica volume, mounted (so SIGTERM
# leaves the device to the next daemon instead of deleting it), fio random
# 4 KiB writes with crc32c verify_backlog into a file in it, logging the
# largest completion latency of every 100 ms; RESTART_CYCLES (10) restarts:
#   RESTART_MODE=term  SIGTERM: the device is quiesced (UBLK_F_QUIESCE, 6.16+)
#                      or detached (6.12: the requests held are re-issued);
#   RESTART_MODE=kill  SIGKILL: the kernel re-issues what the daemon held.
# The pause of restart i is the largest completion latency logged from its
# signal to the next restart's (or fio's end). Prints one line
# "RESTART_PAUSE_JSON {...}" with every pause, p50, max, the steady-state
# maximum before the first restart, and fio's error count (must be 0).
# Under TCG (10-20x slower than native): compare kernels and modes side by
# side, never read the figures as absolute.
# shellcheck disable=SC1091  # installed in the guest by scripts/restart-pause.sh
. /opt/test/files/daemon_lib.sh

MODE=${RESTART_MODE:-term}
CYCLES=${RESTART_CYCLES:-10}
case "$MODE" in term | kill) ;; *) fail "RESTART_MODE '$MODE' is not term or kill" ;; esac

step "ublk-volumed, 2 stores, a 96 MiB volume exposed, ext4 mounted"
start_daemon
make_stores 160 a b
rpc volume.create '{"name":"v0","size":100663296,"stores":["a","b"]}' >/dev/null ||
  fail "volume.create"
out=$(rpc volume.expose '{"name":"v0","queues":2,"queue_depth":32}') || fail "volume.expose: $out"
DEV=$(echo "$out" | json_get path)
[ -b "$DEV" ] || fail "volume.expose gave no block device: $out"
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 $DEV"
mkdir -p /mnt/v0
mount "$DEV" /mnt/v0 || fail "mount $DEV"
quiescable=no
grep -q "optional features enabled: .*QUIESCE" "$DAEMON_LOG" && quiescable=yes

step "fio verify on /mnt/v0/f, $CYCLES restarts by SIG${MODE^^}"
fio --name=pause --filename=/mnt/v0/f --size=32M --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=4k --iodepth=16 --loops=100000 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --do_verify=1 --write_lat_log="$STATE/lat" --log_avg_msec=100 --log_max_value=1 \
    --log_unix_epoch=1 --output-format=terse >"$STATE/fio" 2>&1 &
FIO=$!
writes_base=$(volume_stat v0 writes)
writes_flowing() { [ "$(volume_stat v0 writes)" -gt $((writes_base + 1000)) ]; }
wait_until 180 writes_flowing || fail "no fio writes reached the daemon"
: >"$STATE/restarts"
cycle=1
while [ "$cycle" -le "$CYCLES" ]; do
  writes_base=$(volume_stat v0 writes)
  wait_until 180 writes_flowing || fail "cycle $cycle: no writes reached the daemon"
  kill -0 "$FIO" 2>/dev/null || fail "fio ended before cycle $cycle: $(cat "$STATE/fio")"
  echo "${EPOCHREALTIME/./}" >>"$STATE/restarts"  # microseconds since the epoch
  start=$(now)
  if [ "$MODE" = term ]; then
    stop_daemon
  else
    kill -9 "$DAEMON"
    wait "$DAEMON" 2>/dev/null
  fi
  start_daemon
  [ "$(grep -c "re-attached to $DEV" "$DAEMON_LOG")" -eq "$cycle" ] ||
    fail "cycle $cycle: no re-attach in the log"
  echo "cycle $cycle: daemon back in $(elapsed "$start") s"
  cycle=$((cycle + 1))
done
writes_base=$(volume_stat v0 writes)
wait_until 180 writes_flowing || fail "no writes after the last restart"
echo "${EPOCHREALTIME/./}" >>"$STATE/restarts"
kill -INT "$FIO"
wait "$FIO"
fio_rc=$?
cat "$STATE/fio"
# SIGINT ends fio with 128 after a clean stop; a verify failure ends it early
# (verify_fatal) with the error in field 5 of the terse line.
[ "$fio_rc" -eq 0 ] || [ "$fio_rc" -eq 128 ] || fail "fio exit $fio_rc"
err=$(terse_line "$STATE/fio" | cut -d';' -f5)
[ "$err" = "0" ] || fail "fio reported error '$err'"
quiesced=$(grep -c "left for recovery: v0 .*(quiesced)" "$DAEMON_LOG")
umount /mnt/v0 || fail "umount"

step "pauses"
# clat log lines: "epoch ms, max latency ns in the window, direction, bs, offset".
cat "$STATE"/lat_clat.*.log | awk -F', *' -v restarts="$STATE/restarts" \
    -v kernel="$(uname -r)" -v mode="$MODE" -v quiescable="$quiescable" \
    -v quiesced="$quiesced" -v err="$err" '
  BEGIN {
    n = 0
    while ((getline t < restarts) > 0) { n++; at[n] = t / 1000 }  # ms
    cycles = n - 1
  }
  {
    ms = $1; lat = $2 / 1e6
    if (ms < at[1]) { if (lat > base) base = lat; next }
    for (i = 1; i <= cycles; i++)
      if (ms >= at[i] && ms < at[i + 1] && lat > pause[i]) pause[i] = lat
  }
  END {
    for (i = 1; i <= cycles; i++) sorted[i] = pause[i]
    for (i = 1; i <= cycles; i++)
      for (j = i + 1; j <= cycles; j++)
        if (sorted[j] < sorted[i]) { t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t }
    p50 = cycles % 2 ? sorted[(cycles + 1) / 2] : (sorted[cycles / 2] + sorted[cycles / 2 + 1]) / 2
    list = ""
    for (i = 1; i <= cycles; i++) list = list (i > 1 ? "," : "") sprintf("%.0f", pause[i])
    printf "RESTART_PAUSE_JSON {\"kernel\":\"%s\",\"mode\":\"%s\",\"quiesce_enabled\":%s,", kernel, mode, (quiescable == "yes" ? "true" : "false")
    printf "\"devices_quiesced\":%d,\"restarts\":%d,\"pauses_ms\":[%s],", quiesced, cycles, list
    printf "\"p50_ms\":%.0f,\"max_ms\":%.0f,\"steady_max_ms\":%.0f,\"fio_errors\":%d,\"tcg\":true}\n", p50, sorted[cycles], base, err
  }'
stop_daemon
echo "PASS"
