# Runs in the VM (scripts/vm/run.sh): fio side by side on
#   null    /dev/ublkbN served by the null backend
#   memory  /dev/ublkbN served by the memory backend, kept in a tmpfs file
#   dbs1    /dev/ublkbN served by the replicated engine with 1 replica: a DBS
#           volume in a store file on the same tmpfs (write-through, the
#           default: every write FUA, so it survives a killed server)
#   dbs1-wb the same with --no-write-through (writes durable at FLUSH only)
#   tmpfs   the memory backend's tmpfs file, directly (no ublk). fio cannot run
#           on the DBS store file itself while the store is served (it would
#           overwrite the store), so the baseline is a file of the same size on
#           the same tmpfs.
# and prints one "@@bench ...@@" line per (job, target) for ublk_bench_report.
# Absolute numbers under TCG mean nothing; ratios within this run do.
set -u
RUNTIME=${UBLKVOL_BENCH_RUNTIME:-5}
SIZE=256M
FILE=/dev/shm/ublk-bench.img
DBS_FILE=/dev/shm/ublk-bench-dbs.img
S=/tmp/bench
mkdir -p $S

die() { echo "bench: error: $*"; exit 1; }
wait_file() {
  i=0
  while [ ! -s "$1" ]; do
    i=$((i + 1))
    [ $i -lt 1500 ] || die "timed out waiting for $1"
    sleep 0.02
  done
}

ublkvol-serve --backend null --size 1G --queues 2 --depth 128 --id 0 --ready-file $S/r0 &
NULL_PID=$!
ublkvol-serve --backend memory --size $SIZE --backing-file $FILE --queues 2 --depth 128 \
    --id 1 --ready-file $S/r1 &
MEM_PID=$!
# dbs1 is write-through: say so where the server has the flag (its default
# became write-back); older servers are write-through by default.
WT=""
ublkvol-serve --help 2>&1 | grep -qE '(^|[ ,])--write-through' && WT=--write-through
ublkvol-serve --backend replicated --size $SIZE --replica-file $DBS_FILE --queues 2 --depth 128 \
    --id 2 $WT --ready-file $S/r2 &
DBS_PID=$!
ublkvol-serve --backend replicated --size $SIZE --replica-file $DBS_FILE.wb --queues 2 \
    --depth 128 --id 3 --no-write-through --ready-file $S/r3 &
DBS_WB_PID=$!
wait_file $S/r0
wait_file $S/r1
wait_file $S/r2
wait_file $S/r3

# Fill the volumes once, so that reads hit data everywhere (and DBS has
# allocated every extent: the runs measure in-place I/O, not allocation).
for dev in /dev/ublkb1 /dev/ublkb2 /dev/ublkb3; do
  fio --name=fill --filename=$dev --ioengine=io_uring --direct=1 --rw=write --bs=1M \
      --iodepth=8 --size=$SIZE >/dev/null || die "fill of $dev failed"
done

# tmpfs accepts O_DIRECT since Linux 6.6; fall back to buffered I/O if not.
TMPFS_DIRECT=1
fio --name=probe --filename=$FILE --ioengine=psync --direct=1 --rw=read --bs=4k --size=4k \
    >/dev/null 2>&1 || TMPFS_DIRECT=0

busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
proc_jiffies() { [ "$1" = 0 ] && echo 0 || awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# fio JSON -> "iops=.. bw_kib=.. ios=.. usr=.. sys=.." (read + write summed).
summarize() {
  awk '
    /"read" : \{/ { sec = "r" } /"write" : \{/ { sec = "w" } /"trim" : \{/ { sec = "t" }
    /^ *"iops" : / && sec != "" { v = $3; gsub(/,/, "", v); iops[sec] = v }
    /^ *"bw" : / && sec != "" { v = $3; gsub(/,/, "", v); bw[sec] = v }
    /^ *"total_ios" : / && sec != "" { v = $3; gsub(/,/, "", v); ios[sec] = v; sec = "" }
    /"usr_cpu" : / { v = $3; gsub(/,/, "", v); usr = v }
    /"sys_cpu" : / { v = $3; gsub(/,/, "", v); sys = v }
    END { printf "iops=%.1f bw_kib=%d ios=%d fio_usr=%s fio_sys=%s", iops["r"] + iops["w"],
          bw["r"] + bw["w"], ios["r"] + ios["w"], usr, sys }' "$1"
}

run() {
  job=$1 target=$2 file=$3 direct=$4 server=$5
  shift 5
  b0=$(busy_jiffies)
  s0=$(proc_jiffies "$server")
  fio --name="$job" --filename="$file" --ioengine=io_uring --direct="$direct" --size=$SIZE \
      --time_based=1 --runtime="$RUNTIME" --ramp_time=1 --numjobs=1 --output-format=json \
      "$@" >$S/out.json || die "fio $job on $target failed"
  b1=$(busy_jiffies)
  s1=$(proc_jiffies "$server")
  echo "@@bench job=$job target=$target direct=$direct $(summarize $S/out.json)" \
       "busy_jiffies=$((b1 - b0)) server_jiffies=$((s1 - s0)) runtime_s=$((RUNTIME + 1))" \
       "hz=$(getconf CLK_TCK 2>/dev/null || echo 100)@@"
}

for spec in "randread-4k --rw=randread --bs=4k --iodepth=32" \
            "randwrite-4k --rw=randwrite --bs=4k --iodepth=32" \
            "seqread-128k --rw=read --bs=128k --iodepth=8" \
            "seqwrite-128k --rw=write --bs=128k --iodepth=8"; do
  set -- $spec
  job=$1
  shift
  run "$job" null /dev/ublkb0 1 $NULL_PID "$@"
  run "$job" memory /dev/ublkb1 1 $MEM_PID "$@"
  run "$job" dbs1 /dev/ublkb2 1 $DBS_PID "$@"
  run "$job" dbs1-wb /dev/ublkb3 1 $DBS_WB_PID "$@"
  run "$job" tmpfs $FILE $TMPFS_DIRECT 0 "$@"
done

kill -TERM $NULL_PID $MEM_PID $DBS_PID $DBS_WB_PID
wait $NULL_PID || die "null server exit status"
wait $MEM_PID || die "memory server exit status"
wait $DBS_PID || die "replicated (dbs1) server exit status"
wait $DBS_WB_PID || die "replicated (dbs1-wb) server exit status"
echo "@@bench done@@"
