# Shared helpers of the ublk frontend's VM tests (busybox sh).
# Sourced from /opt/test/files/lib.sh; the binaries are on PATH.
set -u

STATE=/tmp/ublk-e2e
mkdir -p "$STATE"
SRV=""

step() { echo "=== $*"; }
ok() { echo "ok: $*"; }
fail() {
  echo "FAIL: $*"
  [ -n "$SRV" ] && kill -9 "$SRV" 2>/dev/null
  exit 1
}

# Seconds since boot, with hundredths: timing without sleeps.
now() { cut -d' ' -f1 /proc/uptime; }
# elapsed START -> seconds since START, as a decimal
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# less_than A B -> success if A < B (decimals)
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

# wait_until TIMEOUT_S CMD... : polls CMD every 20 ms until it succeeds.
wait_until() {
  limit=$1
  shift
  start=$(now)
  while ! "$@"; do
    less_than "$(elapsed "$start")" "$limit" || return 1
    sleep 0.02
  done
}

# start_server ARGS... : starts ublkvol-serve in the background and waits for
# its ready file. Sets SRV (pid) and DEV (/dev/ublkbN).
start_server() {
  rm -f "$STATE/ready"
  ublkvol-serve --ready-file "$STATE/ready" --stats-file "$STATE/stats" "$@" &
  SRV=$!
  wait_until 60 test -s "$STATE/ready" || fail "server did not become ready: ublkvol-serve $*"
  DEV=$(sed -n 's/.*"block_device":"\([^"]*\)".*/\1/p' "$STATE/ready")
  DEV_ID=$(sed -n 's/.*"dev_id":\([0-9]*\).*/\1/p' "$STATE/ready")
  [ -b "$DEV" ] || fail "$DEV is not a block device"
}

# stop_server: SIGTERM, wait; the server stops and deletes the device.
stop_server() {
  kill -TERM "$SRV"
  wait "$SRV"
  rc=$?
  [ "$rc" -eq 0 ] || fail "server exited with $rc on SIGTERM"
  SRV=""
}

# refresh_stats: asks the server (SIGUSR1) for its counters.
refresh_stats() {
  rm -f "$STATE/stats"
  kill -USR1 "$SRV"
  wait_until 10 test -s "$STATE/stats" || fail "no stats from the server"
}

# stat SECTION KEY: SECTION is total, q0, q1, ... (from the last refresh).
stat() {
  awk -v sec="$1" -v key="$2" '
    {
      s = $0
      if (sec == "total") {
        s = substr(s, index(s, "\"total\":{") + 9)
      } else {
        n = substr(sec, 2) + 0
        s = substr(s, index(s, "\"queues\":[") + 10)
        for (k = 0; k < n; k++) s = substr(s, index(s, "}") + 2)
        s = substr(s, 2)
      }
      s = substr(s, 1, index(s, "}") - 1)
      m = split(s, a, ",")
      for (j = 1; j <= m; j++) {
        split(a[j], kv, ":")
        gsub(/"/, "", kv[1])
        if (kv[1] == key) print kv[2]
      }
    }' "$STATE/stats"
}

# count_nonzero_bytes DEV OFFSET_MIB LENGTH_MIB
count_nonzero_bytes() {
  dd if="$1" bs=1M skip="$2" count="$3" iflag=direct 2>/dev/null | tr -d '\000' | wc -c
}

no_ublk_devices() {
  [ -z "$(ublkvol-ublkctl list)" ] && ! ls /dev/ublkb* >/dev/null 2>&1
}

# replica_stat R KEY: a counter of replica R (0, 1, ...) of the replicated
# backend, from the last refresh ({"replicas":[{...},...]}, flat objects).
replica_stat() {
  awk -v n="$1" -v key="$2" '
    {
      s = substr($0, index($0, "\"replicas\":[") + 12)
      for (k = 0; k < n; k++) s = substr(s, index(s, "}") + 2)
      s = substr(s, 2, index(s, "}") - 2)
      m = split(s, a, ",")
      for (j = 1; j <= m; j++) {
        split(a[j], kv, ":")
        gsub(/"/, "", kv[1])
        gsub(/"/, "", kv[2])
        if (kv[1] == key) print kv[2]
      }
    }' "$STATE/stats"
}

# device_sha256 DEV: checksum of the whole device (O_DIRECT reads).
device_sha256() {
  dd if="$1" bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
}
