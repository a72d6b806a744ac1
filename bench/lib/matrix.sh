#!/bin/bash
# The fio matrix of bench/run.sh: one target (/dev/ublkbN served by
# ublkvol-serve) and one baseline (the device or file under it), every workload
# run on both, interleaved (target, baseline, target, baseline, ...) and
# repeated. Runs inside the VM test bed (bench/run.sh --vm) or on the host
# (--native); needs root, fio, mkfs.ext4, mount, and ublkvol-serve on PATH.
#
# Settings (environment; bench/run.sh sets them all):
#   BENCH_OUT        run directory (raw/, meta.env, workloads.list are written)
#   BENCH_FIO_DIR    the job files (bench/fio: raw/*.fio, ext4/*.fio)
#   BENCH_WORKLOADS  workload names, in run order ("raw/NAME" or "ext4/NAME")
#   BENCH_BACKEND    null | memory | replicated
#   BENCH_REPLICAS   replicated: number of replicas (1..3)
#   BENCH_VIA        replicated: daemon (ublk-volumed + ublk-volume, as users do;
#                    default) or serve (ublkvol-serve --replica-file)
#   BENCH_STORE_DIR  where the memory backend's file / the replica store files go
#   BENCH_BASELINE   baseline device or file; "auto": null_blk (null backend) or
#                    a brd RAM disk (memory, replicated) - VM only
#   BENCH_SIZE       bytes of the target and baseline used (MiB multiple)
#   BENCH_RUNTIME    seconds per timed run; BENCH_RAMP ramp seconds (default 0)
#   BENCH_REPEAT     repeats per workload and side
#   BENCH_NJOBS      jobs of the "-jN" and metadata workloads
#   BENCH_NRFILES    files per job of the metadata workloads
#   BENCH_FILE_MIB   MiB per file of the ext4 data workloads (4 files; default SIZE / 8)
#   BENCH_QUEUES, BENCH_DEPTH   ublk queues and tags per queue of the target
#   BENCH_REACTORS   daemon target: the config key reactors (unset: the daemon's default)
#   BENCH_WRITE_THROUGH         replicated: 0 write-back (default), 1 write-through (every write FUA)
set -uo pipefail

die() {
  echo "matrix: error: $*" >&2
  exit 1
}
log() { echo "matrix: $*" >&2; }

OUT=${BENCH_OUT:?}
FIO_DIR=${BENCH_FIO_DIR:?}
BACKEND=${BENCH_BACKEND:-replicated}
REPLICAS=${BENCH_REPLICAS:-1}
STORE_DIR=${BENCH_STORE_DIR:-/dev/shm}
BASELINE=${BENCH_BASELINE:-auto}
SIZE=${BENCH_SIZE:-268435456}
RUNTIME=${BENCH_RUNTIME:-5}
RAMP=${BENCH_RAMP:-0}
REPEAT=${BENCH_REPEAT:-2}
NJOBS=${BENCH_NJOBS:-$(nproc)}
NRFILES=${BENCH_NRFILES:-500}
FILE_MIB=${BENCH_FILE_MIB:-0}
QUEUES=${BENCH_QUEUES:-$(nproc)}
DEPTH=${BENCH_DEPTH:-128}
WRITE_THROUGH=${BENCH_WRITE_THROUGH:-0}
VIA=${BENCH_VIA:-daemon}
read -ra WORKLOADS <<<"${BENCH_WORKLOADS:?}"
SIZE_MIB=$((SIZE / 1048576))
[ "$SIZE_MIB" -ge 16 ] || die "BENCH_SIZE $SIZE is below 16 MiB"
[ "$FILE_MIB" -gt 0 ] || FILE_MIB=$((SIZE_MIB / 8))

mkdir -p "$OUT/raw" "$OUT/work" || die "cannot create $OUT"
WORK=$OUT/work
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)

SERVER_PID=0
TARGET_DEV=""
TARGET_DESC=""
CLEANUP=()  # commands, run in order before the server stops (umount, losetup -d)
# teardown: undo CLEANUP, then stop the server; returns its exit status.
teardown() {
  local c rc=0
  for c in "${CLEANUP[@]}"; do eval "$c" >/dev/null 2>&1; done
  CLEANUP=()
  if [ "$SERVER_PID" != 0 ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=0
  fi
  return $rc
}
trap teardown EXIT

# start_target_daemon: the replicated target as users make it - ublk-volumed
# with a private config (state dir, socket, store dir in $WORK / $STORE_DIR),
# one file store per replica, a volume, exposed; TARGET_DEV from its
# `volume show --json`. The daemon deletes the device when it stops (the
# device is no longer in use then: teardown unmounts first).
start_target_daemon() {
  local cfg=$WORK/ublk-volumed.json i stores=()
  export UBLK_VOLUME_SOCKET=$WORK/control.sock
  cat >"$cfg" <<EOF_CFG
{ "state_dir": "$WORK/state", "control_socket": "$WORK/control.sock",
  "store_dirs": ["$STORE_DIR"], "write_through": $([ "$WRITE_THROUGH" = 1 ] && echo true || echo false),
  "log_level": "warn"${BENCH_REACTORS:+, \"reactors\": $BENCH_REACTORS} }
EOF_CFG
  ublk-volumed --config "$cfg" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  i=0
  until ublk-volume status >/dev/null 2>&1; do
    kill -0 "$SERVER_PID" 2>/dev/null || {
      cat "$WORK/server.log" >&2
      die "ublk-volumed exited before it was ready"
    }
    i=$((i + 1))
    [ $i -lt 3000 ] || die "ublk-volumed not answering on $UBLK_VOLUME_SOCKET after 60 s"
    sleep 0.02
  done
  # A store holds the volume once fully written, plus its metadata.
  local store_mib=$((SIZE_MIB + SIZE_MIB / 4 + 64))
  for ((i = 0; i < REPLICAS; i++)); do
    rm -f "$STORE_DIR/bench-store$i.dbs"
    ublk-volume store add "s$i" "$STORE_DIR/bench-store$i.dbs" --format --size "${store_mib}M" \
      >/dev/null || die "ublk-volume store add s$i failed"
    CLEANUP+=("rm -f '$STORE_DIR/bench-store$i.dbs'")
    stores+=("s$i")
  done
  ublk-volume volume create bench --size "${SIZE_MIB}M" --store "${stores[@]}" >/dev/null ||
    die "ublk-volume volume create failed"
  ublk-volume volume expose bench --queues "$QUEUES" --queue-depth "$DEPTH" >/dev/null ||
    die "ublk-volume volume expose failed"
  TARGET_DEV=$(ublk-volume --json volume show bench |
    sed -n 's/.*"path" *: *"\(\/dev\/ublkb[0-9]*\)".*/\1/p' | head -n1)
  [ -b "$TARGET_DEV" ] || die "volume show names no block device: $(ublk-volume --json volume show bench)"
  TARGET_DESC="ublk-volumed volume, $REPLICAS replica(s) on DBS file stores in $STORE_DIR, $([ "$WRITE_THROUGH" = 1 ] && echo write-through || echo write-back), $QUEUES queue(s) x $DEPTH tags"
}

# start_target: serve the target volume and set TARGET_DEV, SERVER_PID (the
# process whose CPU time is charged to the target) and TARGET_DESC. The one
# place that knows how a target is made.
start_target() {
  if [ "$BACKEND" = replicated ] && [ "$VIA" = daemon ]; then
    start_target_daemon
    return
  fi
  local args=(--backend "$BACKEND" --size "$SIZE" --queues "$QUEUES" --depth "$DEPTH"
    --ready-file "$WORK/ready")
  case "$BACKEND" in
    null) TARGET_DESC="ublkvol-serve --backend null" ;;
    memory)
      args+=(--backing-file "$STORE_DIR/bench-memory.img")
      CLEANUP+=("rm -f '$STORE_DIR/bench-memory.img'")
      TARGET_DESC="ublkvol-serve --backend memory (data in a file in $STORE_DIR)"
      ;;
    replicated)
      local i
      for ((i = 0; i < REPLICAS; i++)); do
        rm -f "$STORE_DIR/bench-replica$i.dbs"
        args+=(--replica-file "$STORE_DIR/bench-replica$i.dbs")
        CLEANUP+=("rm -f '$STORE_DIR/bench-replica$i.dbs'")
      done
      # Say the mode explicitly where the server has both flags (its default
      # moved from write-through to write-back); older servers only know
      # --no-write-through and default to write-through.
      if ublkvol-serve --help 2>&1 | grep -qE '(^|[ ,])--write-through'; then
        if [ "$WRITE_THROUGH" = 1 ]; then args+=(--write-through); else args+=(--no-write-through); fi
      else
        [ "$WRITE_THROUGH" = 1 ] || args+=(--no-write-through)
      fi
      TARGET_DESC="ublkvol-serve --backend replicated, $REPLICAS replica(s): DBS store files in $STORE_DIR, $([ "$WRITE_THROUGH" = 1 ] && echo write-through || echo write-back)"
      ;;
    *) die "unknown backend '$BACKEND'" ;;
  esac
  TARGET_DESC+=", $QUEUES queue(s) x $DEPTH tags"
  rm -f "$WORK/ready"
  ublkvol-serve "${args[@]}" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  local i=0
  # Poll for the ready file the server writes once /dev/ublkbN is live.
  while [ ! -s "$WORK/ready" ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || {
      cat "$WORK/server.log" >&2
      die "ublkvol-serve exited before it was ready"
    }
    i=$((i + 1))
    [ $i -lt 3000 ] || die "ublkvol-serve not ready after 60 s"
    sleep 0.02
  done
  TARGET_DEV=$(sed -n 's/.*"block_device" *: *"\([^"]*\)".*/\1/p' "$WORK/ready")
  [ -b "$TARGET_DEV" ] || die "ready file names no block device: $(cat "$WORK/ready")"
}

# start_baseline: set BASE_DEV (what fio's raw workloads use), BASE_BLOCK (a
# block device for ext4: the device itself, or a loop device over a file)
# and BASE_DESC.
start_baseline() {
  if [ "$BASELINE" = auto ]; then
    [ "${UBLKVOL_IN_VM:-0}" = 1 ] || die "baseline 'auto' is for the VM; name a device or file"
    local mods=/lib/modules/ublkvol
    if [ "$BACKEND" = null ]; then
      vm-load-module configfs >/dev/null 2>&1
      insmod "$mods/null_blk.ko" nr_devices=1 gb=$(((SIZE_MIB + 1023) / 1024)) bs=4096 \
        submit_queues="$QUEUES" hw_queue_depth="$DEPTH" || die "cannot load null_blk"
      BASELINE=/dev/nullb0
      BASE_DESC="null_blk /dev/nullb0 (kernel null device, $QUEUES queues)"
    else
      insmod "$mods/brd.ko" rd_nr=1 rd_size=$((SIZE_MIB * 1024)) || die "cannot load brd"
      BASELINE=/dev/ram0
      BASE_DESC="brd RAM disk /dev/ram0 ($SIZE_MIB MiB)"
    fi
    local i=0
    while [ ! -b "$BASELINE" ]; do
      i=$((i + 1))
      [ $i -lt 500 ] || die "$BASELINE did not appear"
      sleep 0.02
    done
  elif [ -b "$BASELINE" ]; then
    BASE_DESC="block device $BASELINE"
  else
    # A file (created at SIZE if missing); ext4 goes on a loop device over it.
    [ -e "$BASELINE" ] || { truncate -s "$SIZE" "$BASELINE" || die "cannot create $BASELINE"; }
    [ -f "$BASELINE" ] || die "baseline $BASELINE is neither a block device nor a file"
    BASE_DESC="file $BASELINE"
  fi
  BASE_DEV=$BASELINE
  BASE_BLOCK=$BASELINE
}

base_block_for_ext4() {
  if [ ! -b "$BASE_BLOCK" ]; then
    BASE_BLOCK=$(losetup --find --show --direct-io=on "$BASE_DEV") ||
      die "cannot attach a loop device to $BASE_DEV"
    CLEANUP=("losetup -d '$BASE_BLOCK'" "${CLEANUP[@]}")
    BASE_DESC+=" (ext4 on loop device $BASE_BLOCK, direct I/O)"
  fi
}

# CPU time of the whole machine: /proc/schedstat's per-CPU run time (ns;
# needs kernel.sched_schedstats=1, set below) where the kernel has it;
# tick-sampled /proc/stat jiffies are the fallback (under TCG on a loaded host
# the guest loses ticks, so they undercount).
CPU_SOURCE=jiffies
if [ -w /proc/sys/kernel/sched_schedstats ] && echo 1 >/proc/sys/kernel/sched_schedstats &&
  [ -r /proc/schedstat ]; then
  CPU_SOURCE=schedstat
fi
busy_cpu() {
  if [ "$CPU_SOURCE" = schedstat ]; then
    awk '/^cpu[0-9]/ { s += $8 } END { printf "%.0f\n", s }' /proc/schedstat
  else
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
  fi
}
# The server's utime + stime (clock ticks) include its exited threads (io_uring
# io-wq workers come and go; summing /proc/<pid>/task/*/schedstat loses them)
# and add up to its precise run time; in ns when the machine figure is.
server_cpu() {
  if [ "$CPU_SOURCE" = schedstat ]; then
    awk -v hz="$HZ" '{ printf "%.0f\n", ($14 + $15) * 1e9 / hz }' "/proc/$1/stat"
  else
    awk '{ print $14 + $15 }' "/proc/$1/stat"
  fi
}

# run_fio SIDE REP JOBFILE OUTDIR ENV...: one fio run, its JSON and CPU use.
run_fio() {
  local side=$1 rep=$2 job=$3 dir=$4
  shift 4
  local b0 b1 s0=0 s1=0
  [ "$side" = target ] && s0=$(server_cpu "$SERVER_PID")
  b0=$(busy_cpu)
  env "$@" RUNTIME="$RUNTIME" RAMP="$RAMP" NJOBS="$NJOBS" NRFILES="$NRFILES" \
    fio --output-format=json --output="$dir/$side-$rep.json" "$job" >"$dir/$side-$rep.log" 2>&1 ||
    { cat "$dir/$side-$rep.log" >&2; die "fio $job on the $side failed"; }
  b1=$(busy_cpu)
  [ "$side" = target ] && s1=$(server_cpu "$SERVER_PID")
  if [ "$CPU_SOURCE" = schedstat ]; then
    echo "busy_ns=$((b1 - b0)) server_ns=$((s1 - s0))" >"$dir/$side-$rep.cpu"
  else
    echo "busy_jiffies=$((b1 - b0)) server_jiffies=$((s1 - s0)) hz=$HZ" >"$dir/$side-$rep.cpu"
  fi
  rm -f "$dir/$side-$rep.log"
}

# Fill both sides once, so that reads hit written data everywhere (and a DBS
# target has allocated its extents: the matrix measures steady-state I/O).
fill() {
  fio --name=fill --filename="$1" --ioengine=io_uring --direct=1 --rw=write --bs=1M \
    --iodepth=8 --size="$SIZE" >/dev/null || die "fill of $1 failed"
}

MNT_T=$WORK/mnt-target
MNT_B=$WORK/mnt-baseline
EXT4_READY=0
setup_ext4() {
  [ "$EXT4_READY" = 1 ] && return
  base_block_for_ext4
  local dev mnt
  for dev in "$TARGET_DEV:$MNT_T" "$BASE_BLOCK:$MNT_B"; do
    mnt=${dev#*:}
    dev=${dev%%:*}
    # No lazy init: ext4lazyinit writing in the background would skew the runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dev" ||
      die "mkfs.ext4 $dev failed"
    mkdir -p "$mnt"
    mount -t ext4 "$dev" "$mnt" || die "mount $dev failed"
    CLEANUP=("umount '$mnt'" "${CLEANUP[@]}")
  done
  EXT4_READY=1
}

write_meta() {
  local cpu
  cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)
  {
    echo "mode=${BENCH_MODE:-native}"
    echo "kernel=$(uname -r)"
    echo "cpu_model=$cpu"
    echo "cpus=$(nproc)"
    echo "mem_mib=$(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo)"
    echo "fio_version=$(fio --version)"
    echo "backend=$BACKEND"
    echo "replicas=$([ "$BACKEND" = replicated ] && echo "$REPLICAS" || echo 0)"
    echo "via=$([ "$BACKEND" = replicated ] && echo "$VIA" || echo serve)"
    echo "write_through=$WRITE_THROUGH"
    echo "queues=$QUEUES"
    echo "depth=$DEPTH"
    echo "target_desc=$TARGET_DESC"
    echo "baseline_desc=$BASE_DESC"
    echo "size_bytes=$SIZE"
    echo "runtime_s=$RUNTIME"
    echo "ramp_s=$RAMP"
    echo "repeat=$REPEAT"
    echo "njobs=$NJOBS"
    echo "nrfiles=$NRFILES"
    echo "ext4_file_mib=$FILE_MIB"
    echo "cpu_source=$CPU_SOURCE"
    echo "order=interleaved: per workload target,baseline repeated $REPEAT times"
    [ -n "${BENCH_EXTRA_META:-}" ] && printf '%s\n' "$BENCH_EXTRA_META"
  } >"$OUT/meta.env"
}

start_target
start_baseline
log "target $TARGET_DEV ($TARGET_DESC); baseline $BASE_DEV ($BASE_DESC)"
if [ "$BACKEND" != null ]; then
  fill "$TARGET_DEV"
  fill "$BASE_DEV"
fi
: >"$OUT/workloads.list"

for w in "${WORKLOADS[@]}"; do
  group=${w%%/*}
  name=${w#*/}
  job=$FIO_DIR/$w.fio
  [ -f "$job" ] || die "no job file $job"
  if [ "$group" = ext4 ] && [ "$BACKEND" = null ]; then
    log "skipping $name: the null backend holds no file system"
    continue
  fi
  desc=$(sed -n '1s/^# *//p' "$job")
  dir=$OUT/raw/$name
  mkdir -p "$dir"
  for ((rep = 1; rep <= REPEAT; rep++)); do
    for side in target baseline; do
      log "$name: $side, repeat $rep of $REPEAT"
      if [ "$group" = raw ]; then
        dev=$TARGET_DEV
        [ "$side" = baseline ] && dev=$BASE_DEV
        run_fio "$side" "$rep" "$job" "$dir" FILENAME="$dev" SIZE="$SIZE" \
          JOBSPAN=$(((SIZE_MIB / NJOBS) * 1048576))
      else
        setup_ext4
        mnt=$MNT_T
        [ "$side" = baseline ] && mnt=$MNT_B
        # Data workloads keep their files across repeats (fio lays them out
        # once per side; the layout is the slow part under TCG); creating,
        # deleting and sequential writing start from an empty directory.
        case "$name" in
          *seqwrite* | *file*) sub=$mnt/$name-$rep ;;
          *) sub=$mnt/$name ;;
        esac
        grep -q '^#@fresh-dir' "$job" && sub=$mnt/$name-$rep
        mkdir -p "$sub"
        # Start every file workload from a cold page cache.
        sync
        echo 3 >/proc/sys/vm/drop_caches
        run_fio "$side" "$rep" "$job" "$dir" DIRECTORY="$sub" FILESIZE=$((FILE_MIB * 1048576))
        if [ "$sub" != "$mnt/$name" ] || [ "$rep" -ge "$REPEAT" ]; then rm -rf "$sub"; fi
      fi
    done
  done
  echo "$name $group $desc" >>"$OUT/workloads.list"
done

write_meta
teardown || die "the target's server exited with an error: $(tail -5 "$WORK/server.log")"
rm -rf "$WORK"
log "done"
