# Runs in the VM (bench/ublk/zero_copy_bench.sh): the replicated backend with
# 1 DBS replica in a tmpfs store file, 1 queue on 1 reactor (the case zero
# copy fits, docs/zero-copy.md), once in copy mode (--no-zero-copy) and once
# zero copy, alternating per job so both see the same VM state. Per job and
# mode one "@@zc {json}@@" line: IOPS, MiB/s, I/Os, server CPU (jiffies of the
# ublkvol-serve process) and server CPU per I/O in microseconds, and the
# server's own zero_copy_ios / copied_ios counters (proof of the mode).
# With UBLKVOL_ZC_SYSCALLS=1 also "@@syscalls {json}@@" lines: the copy-mode
# server's syscalls per I/O at QD1 and QD32 (strace -c -f attached during a
# 4 KiB random read run), for the BATCH_IO decision (issue 15 item 6).
# Absolute figures under TCG mean nothing; ratios within one run do.
set -u
RUNTIME=${UBLKVOL_BENCH_RUNTIME:-5}
SIZE=256M
S=/tmp/zcbench
mkdir -p $S
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

die() { echo "zc-bench: error: $*"; exit 1; }
wait_file() {
  i=0
  while [ ! -s "$1" ]; do
    i=$((i + 1))
    [ $i -lt 3000 ] || die "timed out waiting for $1"
    sleep 0.02
  done
}
proc_jiffies() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
stat_total() {
  sed -n "s/.*\"total\":{\([^}]*\)}.*/\1/p" "$1" | tr ',' '\n' | sed -n "s/\"$2\"://p"
}

start() {  # start MODE ID -> PID in $PID, device /dev/ublkbID
  mode=$1 id=$2
  extra=""
  [ "$mode" = copy ] && extra=--no-zero-copy
  rm -f "$S/ready$id" "$S/stats$id"
  # shellcheck disable=SC2086
  ublkvol-serve --backend replicated --size $SIZE --replica-file /dev/shm/zc-$mode.img \
      --queues 1 --depth 64 --reactors 1 --id "$id" $extra --ready-file "$S/ready$id" \
      --stats-file "$S/stats$id" >"$S/log$id" 2>&1 &
  PID=$!
  wait_file "$S/ready$id"
}

start copy 0
COPY_PID=$PID
start zc 1
ZC_PID=$PID
for dev in /dev/ublkb0 /dev/ublkb1; do
  fio --name=fill --filename=$dev --ioengine=io_uring --direct=1 --rw=write --bs=1M \
      --iodepth=8 --size=$SIZE >/dev/null || die "fill of $dev failed"
done

counters() {  # PID ID -> "zc cp"
  rm -f "$S/stats$2"
  kill -USR1 "$1"
  wait_file "$S/stats$2"
  echo "$(stat_total "$S/stats$2" zero_copy_ios) $(stat_total "$S/stats$2" copied_ios)"
}

run() {  # run JOB MODE PID ID fio-args...
  job=$1 mode=$2 pid=$3 id=$4
  shift 4
  # shellcheck disable=SC2046 # two numbers, split on purpose
  set -- $(counters "$pid" "$id") "$@"
  zc0=$1 cp0=$2
  shift 2
  s0=$(proc_jiffies "$pid")
  fio --name="$job" --filename="/dev/ublkb$id" --ioengine=io_uring --direct=1 --size=$SIZE \
      --time_based=1 --runtime="$RUNTIME" --numjobs=1 --output-format=json "$@" >$S/out.json ||
    die "fio $job ($mode) failed"
  s1=$(proc_jiffies "$pid")
  # shellcheck disable=SC2046 # two numbers, split on purpose
  set -- $(counters "$pid" "$id")
  awk -v job="$job" -v mode="$mode" -v sj=$((s1 - s0)) -v hz="$HZ" -v zc=$(($1 - zc0)) \
      -v cp=$(($2 - cp0)) '
    /"read" : \{/ { sec = "r" } /"write" : \{/ { sec = "w" } /"trim" : \{/ { sec = "t" }
    /^ *"iops" : / && sec != "" { v = $3; gsub(/,/, "", v); iops[sec] = v }
    /^ *"bw" : / && sec != "" { v = $3; gsub(/,/, "", v); bw[sec] = v }
    /^ *"total_ios" : / && sec != "" { v = $3; gsub(/,/, "", v); ios[sec] = v; sec = "" }
    END {
      n = ios["r"] + ios["w"]
      printf "@@zc {\"job\":\"%s\",\"mode\":\"%s\",\"iops\":%.1f,\"mib_s\":%.2f,\"ios\":%d,", job, mode,
             iops["r"] + iops["w"], (bw["r"] + bw["w"]) / 1024, n
      per_io = (n > 0) ? sj / hz * 1e6 / n : 0
      printf "\"server_cpu_s\":%.2f,\"server_cpu_us_per_io\":%.1f,\"zero_copy_ios\":%d,\"copied_ios\":%d}@@\n",
             sj / hz, per_io, zc, cp
    }' $S/out.json
}

for spec in "randread-4k --rw=randread --bs=4k --iodepth=32" \
            "randwrite-4k --rw=randwrite --bs=4k --iodepth=32" \
            "read-1m --rw=read --bs=1M --iodepth=4" \
            "write-1m --rw=write --bs=1M --iodepth=4"; do
  # shellcheck disable=SC2086 # job name and fio arguments, split on purpose
  set -- $spec
  job=$1
  shift
  run "$job" copy $COPY_PID 0 "$@"
  run "$job" zero-copy $ZC_PID 1 "$@"
done

if [ "${UBLKVOL_ZC_SYSCALLS:-0}" = 1 ]; then
  command -v strace >/dev/null || die "strace is not in the VM (host package strace)"
  for qd in 1 32; do
    strace -c -f -p $COPY_PID -o $S/strace.$qd >/dev/null 2>&1 &
    TR=$!
    sleep 1
    fio --name=sys$qd --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --size=$SIZE \
        --rw=randread --bs=4k --iodepth=$qd --time_based=1 --runtime="$RUNTIME" \
        --output-format=json >$S/sys.json || die "fio (syscalls, QD$qd) failed"
    kill -INT $TR
    wait $TR
    ios=$(awk '/"read" : \{/ { r = 1 } r && /^ *"total_ios" : / { v = $3; gsub(/,/, "", v); print v; exit }' $S/sys.json)
    awk -v qd=$qd -v ios="$ios" '
      $NF == "total" { total = $4 }
      $NF == "io_uring_enter" { enter = $4 }
      END {
        per_io = (ios > 0) ? total / ios : 0
        enter_per_io = (ios > 0) ? enter / ios : 0
        printf "@@syscalls {\"qd\":%d,\"ios\":%d,\"syscalls\":%d,\"io_uring_enter\":%d,\"syscalls_per_io\":%.2f,\"enter_per_io\":%.2f}@@\n",
               qd, ios, total, enter, per_io, enter_per_io
      }' $S/strace.$qd
    cat $S/strace.$qd
  done
fi

kill -TERM $COPY_PID $ZC_PID
wait $COPY_PID || die "copy server exit status"
wait $ZC_PID || die "zero-copy server exit status"
echo "@@zc done@@"
