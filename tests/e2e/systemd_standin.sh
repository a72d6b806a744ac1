#!/bin/bash
# ExecStart of systemd_standin.service (installed as /usr/local/sbin/ublkvol-standin):
# serves one 256 MiB memory volume (data in a /dev/shm file, so it outlives the process)
# with ublkvol-serve, recoverable. When a recovery record from a previous process exists,
# the new process re-attaches to the live device (--recover) instead of creating one.
# Tells systemd READY=1 once the device is served, forwards SIGTERM (stop: the server
# deletes the device and its record).
set -u
record="$STATE_DIRECTORY/volume.json"
ready=/run/ublkvol-standin.ready
backing=/dev/shm/ublkvol-standin.img
if [[ -e "$record" ]]; then
  args=(--recover --state-file "$record")
else
  args=(--backend memory --size 256M --backing-file "$backing" --state-file "$record"
        --queues 2 --depth 64)
fi
rm -f "$ready"
ublkvol-serve --ready-file "$ready" "${args[@]}" &
srv=$!
trap 'kill -TERM "$srv"' TERM INT
# ublkvol-serve writes the ready file once the device is live; if it dies first, so do we
# (systemd sees the failure and applies Restart=).
while [[ ! -s "$ready" ]]; do
  if ! kill -0 "$srv" 2>/dev/null; then
    wait "$srv"
    exit $?
  fi
  sleep 0.05
done
systemd-notify --ready --status="serving $(cat "$ready")"
echo "ublkvol-standin: ready: $(cat "$ready")"
rc=0
while kill -0 "$srv" 2>/dev/null; do
  wait "$srv"
  rc=$?
done
exit "$rc"
