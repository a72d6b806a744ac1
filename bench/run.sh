#!/usr/bin/env bash
# The fio benchmark suite: a ublk volume (target) against the device or file
# under it (baseline), side by side, interleaved and repeated; writes a results
# JSON, a markdown table (ratio to the baseline per workload) and PNG plots.
#
# Usage:
#   bench/run.sh [--vm | --native] [OPTIONS]   the fio matrix
#   bench/run.sh inproc [OPTIONS]              only the in-process benchmarks
#                                              (dbs_bench, engine_bench, device_bench)
#   bench/run.sh report DIR [--build-dir D]    redo results + plots of a run directory
#
# Modes:
#   --vm            run the whole matrix inside one VM of the test bed
#                   (scripts/vm/run.sh: QEMU TCG, real ublk_drv); the default when
#                   /dev/ublk-control is missing. Ratios only: TCG is 10-20x slow.
#   --native        run on this host (needs root and the ublk_drv module); the
#                   default when /dev/ublk-control exists. Needs --baseline.
# Options:
#   --quick              short runs: --runtime 2 --repeat 2 --size 256M, 8 MiB ext4 files,
#                        100 files per metadata job, only the job files marked '#@quick'
#                        (17 of 43; <= 10 min in the VM)
#   --runtime S          seconds per timed fio run (default 10)
#   --repeat N           runs per workload and side, interleaved (default 3)
#   --size SIZE          volume and baseline size, e.g. 256M, 2G (default 1G)
#   --backend B          null | memory | replicated (default replicated)
#   --via daemon|serve   replicated: how the target is made. daemon (default): as users
#                        do - ublk-volumed started with a private state dir and socket,
#                        then ublk-volume store add / volume create / volume expose.
#                        serve: ublkvol-serve with --replica-file (no daemon). The null
#                        and memory backends always use ublkvol-serve.
#   --replicas N         replicated: replicas, 1..3 (default 1)
#   --write-through      replicated: every write with FUA (ublkvol-serve --write-through);
#                        default write-back (durable at FLUSH), the block-device contract
#   --queues N           ublk queues of the target (default: CPUs of the machine under test)
#   --reactors N         --via daemon: the daemon's config key reactors (N reactor threads
#                        serve queues and stores; default: the daemon's default)
#   --workloads LIST     comma-separated names or globs (e.g. 'randread-*,ext4-filecreate');
#                        default: every job file under bench/fio/raw and bench/fio/ext4
#   --no-ext4            raw block workloads only
#   --baseline PATH      baseline device or file (native: required; VM default: null_blk
#                        for the null backend, a brd RAM disk otherwise)
#   --store-dir DIR      native: where replica store files / the memory file go
#                        (default /dev/shm); in the VM always tmpfs
#   --with-inproc        also run the in-process benchmarks and fold them in
#   --out DIR            run directory (default <build-dir>/bench-results/<UTC time>-<backend>)
#   --build-dir DIR      build with ublkvol-serve, bench_report, the in-process
#                        benchmarks (default build/release)
#   --mem SIZE           VM memory (default: 3G, more when the volume, its replicas and
#                        the RAM-disk baseline need it: everything lives in guest RAM)
#   --timeout S          VM wall-clock limit (default: estimated from the matrix)
#   -h, --help           this text
#
# Output in the run directory: results.json, results.md, ratio.png, latency.png,
# meta.env, workloads.list, raw/<workload>/{target,baseline}-<rep>.{json,cpu}.
# Exit status: 0 done, 1 a run failed, 2 bad arguments or missing prerequisites.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die_usage() {
  echo "run.sh: error: $*" >&2
  echo "run.sh: try 'bench/run.sh --help'" >&2
  exit 2
}
die() {
  echo "run.sh: error: $*" >&2
  exit 1
}
log() { echo "run.sh: $*" >&2; }

# SIZE like 256M / 2G / 1048576 -> bytes (MiB multiple), or empty if malformed.
size_bytes() {
  local s=$1 n unit
  [[ "$s" =~ ^([1-9][0-9]*)([KMGT]?)$ ]] || return 0
  n=${BASH_REMATCH[1]}
  unit=${BASH_REMATCH[2]}
  case "$unit" in
    K) n=$((n * 1024)) ;;
    M) n=$((n * 1048576)) ;;
    G) n=$((n * 1073741824)) ;;
    T) n=$((n * 1099511627776)) ;;
  esac
  ((n % 1048576 == 0)) && echo "$n"
  return 0
}

mode="" command=matrix report_dir=""
runtime="" repeat="" size="" quick=0
backend=replicated via=daemon replicas=1 write_through=0 queues="" reactors="" workloads_arg="" no_ext4=0
baseline="" store_dir="" with_inproc=0 out="" build="$ROOT/build/release" mem="" timeout_s=""

need_arg() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die_usage "$1 needs a value"; }
case "${1:-}" in
  inproc) command=inproc; shift ;;
  report)
    command=report
    shift
    [[ $# -ge 1 && "$1" != -* ]] || die_usage "report needs the run directory"
    report_dir=$1
    shift
    ;;
esac
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vm) mode=vm; shift ;;
    --native) mode=native; shift ;;
    --inproc) command=inproc; shift ;;
    --quick) quick=1; shift ;;
    --runtime) need_arg "$@"; runtime=$2; shift 2 ;;
    --repeat) need_arg "$@"; repeat=$2; shift 2 ;;
    --size) need_arg "$@"; size=$2; shift 2 ;;
    --backend) need_arg "$@"; backend=$2; shift 2 ;;
    --replicas) need_arg "$@"; replicas=$2; shift 2 ;;
    --via) need_arg "$@"; via=$2; shift 2 ;;
    --write-through) write_through=1; shift ;;
    --no-write-through) write_through=0; shift ;;
    --queues) need_arg "$@"; queues=$2; shift 2 ;;
    --reactors) need_arg "$@"; reactors=$2; shift 2 ;;
    --workloads) need_arg "$@"; workloads_arg=$2; shift 2 ;;
    --no-ext4) no_ext4=1; shift ;;
    --baseline) need_arg "$@"; baseline=$2; shift 2 ;;
    --store-dir) need_arg "$@"; store_dir=$2; shift 2 ;;
    --with-inproc) with_inproc=1; shift ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --build-dir) need_arg "$@"; build=$2; shift 2 ;;
    --mem) need_arg "$@"; mem=$2; shift 2 ;;
    --timeout) need_arg "$@"; timeout_s=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

# ---------------------------------------------------------------------------
# Validate everything before any work.
# ---------------------------------------------------------------------------
if ((quick)); then
  : "${runtime:=2}" "${repeat:=2}" "${size:=256M}"
fi
: "${runtime:=10}" "${repeat:=3}" "${size:=1G}"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die_usage "--runtime '$runtime' is not a whole number of seconds >= 1"
[[ "$repeat" =~ ^[1-9][0-9]*$ ]] || die_usage "--repeat '$repeat' is not a positive number"
size_b=$(size_bytes "$size")
[[ -n "$size_b" ]] || die_usage "--size '$size' is not a size in whole MiB like 256M or 2G"
((size_b >= 64 * 1048576)) || die_usage "--size '$size' is too small (at least 64M)"
case "$backend" in null | memory | replicated) ;; *)
  die_usage "--backend '$backend' is not one of null, memory, replicated" ;;
esac
case "$via" in daemon | serve) ;; *) die_usage "--via '$via' is not one of daemon, serve" ;; esac
[[ "$replicas" =~ ^[1-3]$ ]] || die_usage "--replicas '$replicas' must be 1, 2 or 3"
[[ -z "$queues" || "$queues" =~ ^[1-9][0-9]*$ ]] || die_usage "--queues '$queues' is not a positive number"
[[ -z "$reactors" || "$reactors" =~ ^[0-9]+$ ]] || die_usage "--reactors '$reactors' is not a number"
[[ -z "$timeout_s" || "$timeout_s" =~ ^[1-9][0-9]*$ ]] || die_usage "--timeout '$timeout_s' is not a positive number of seconds"
[[ -z "$mem" || "$mem" =~ ^[1-9][0-9]*[MG]$ ]] || die_usage "--mem '$mem' is not a size like 3G"
[[ -d "$build" ]] || die_usage "--build-dir $build: no such directory (build first: cmake --preset release && cmake --build build/release)"
build=$(cd "$build" && pwd)
report_bin=$build/bench/ublk/bench_report
[[ -x "$report_bin" ]] || die_usage "$report_bin missing: build the target bench_report"
command -v gnuplot >/dev/null || die_usage "gnuplot not found: install gnuplot-nox (scripts/setup.sh)"

# The workload list: job files, filtered by --workloads globs.
select_workloads() {
  local f name group pat keep
  local -a pats
  IFS=, read -ra pats <<<"$workloads_arg"
  for group in raw ext4; do
    ((no_ext4)) && [[ $group == ext4 ]] && continue
    for f in "$ROOT/bench/fio/$group"/*.fio; do
      name=$(basename "$f" .fio)
      keep=$((${#pats[@]} == 0))
      # --quick runs the job files marked '#@quick' unless workloads are named.
      ((quick && ${#pats[@]} == 0)) && ! grep -q '^#@quick' "$f" && keep=0
      for pat in "${pats[@]}"; do
        # shellcheck disable=SC2053  # glob match on purpose
        [[ $name == $pat ]] && keep=1
      done
      ((keep)) && echo "$group/$name"
    done
  done
  return 0
}

# ---------------------------------------------------------------------------
# Results: bench_report (JSON, markdown, plot data) + gnuplot (PNGs).
# ---------------------------------------------------------------------------
make_report() {
  local dir=$1 title
  "$report_bin" "$dir" >/dev/null || die "bench_report failed on $dir"
  if [[ -s "$dir/plot-ratio.dat" ]] && grep -q '^[0-9]' "$dir/plot-ratio.dat"; then
    title=$(awk -F= '$1 == "backend" { b = $2 } $1 == "replicas" { r = $2 } $1 == "mode" { m = $2 }
      $1 == "baseline_desc" { d = $2 }
      END { printf "%s backend%s vs %s (%s)", b, (r > 0 ? ", " r " replica(s)" : ""), d, m }' \
      "$dir/meta.env" | tr -d "'")
    gnuplot -e "data='$dir/plot-ratio.dat'; out='$dir/ratio.png'; title='IOPS target / baseline: $title'" \
      "$ROOT/bench/plot/ratio.gp" || die "gnuplot ratio.gp failed"
    gnuplot -e "data='$dir/plot-latency.dat'; out='$dir/latency.png'; title='completion latency (µs): $title'" \
      "$ROOT/bench/plot/latency.gp" || die "gnuplot latency.gp failed"
  fi
  log "results: $dir/results.md, results.json${title:+, ratio.png, latency.png}"
}

host_meta() {
  local dir=$1
  {
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "git_dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo yes || echo no)"
    echo "host_kernel=$(uname -r)"
    echo "host_cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)"
    echo "host_cpus=$(nproc)"
    echo "host_load=$(cut -d' ' -f1-3 /proc/loadavg)"
  } >>"$dir/meta.env"
}

# In-process benchmarks, on the host: each --json output lands in DIR/inproc/.
run_inproc() {
  local dir=$1 scratch rt=2 rounds=3
  ((quick)) && rt=1 && rounds=1
  mkdir -p "$dir/inproc"
  scratch=$(mktemp -d /dev/shm/ublkvol-inproc.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$scratch'" RETURN
  local -a benches=(
    "device:$build/bench/device/device_bench --file $scratch/device.img --size-mib 256 --runtime $rt --rounds $rounds --json"
    "dbs:$build/bench/dbs/dbs_bench --dirs $scratch --volume-mib 256 --runtime $rt --rounds $rounds --skip-meta --json"
    "engine:$build/bench/engine/engine_bench --dir $scratch --size 256M --runtime $rt --json")
  local b name cmd bin
  for b in "${benches[@]}"; do
    name=${b%%:*}
    cmd=${b#*:}
    bin=${cmd%% *}
    if [[ ! -x "$bin" ]]; then
      log "skipping $name: $bin not built"
      continue
    fi
    log "in-process: $name ($cmd)"
    # shellcheck disable=SC2086  # cmd is a word list built above
    $cmd >"$dir/inproc/$name.json" 2>"$dir/inproc/$name.log" ||
      die "$name failed (log: $dir/inproc/$name.log)"
    rm -f "$scratch"/*
  done
}

default_out() {
  echo "$build/bench-results/$(date -u +%Y%m%dT%H%M%SZ)-$1"
}

case "$command" in
  report)
    [[ -f "$report_dir/meta.env" ]] || die_usage "report: $report_dir has no meta.env (not a run directory)"
    make_report "$(cd "$report_dir" && pwd)"
    exit 0
    ;;
  inproc)
    out=${out:-$(default_out inproc)}
    mkdir -p "$out"
    echo "mode=inproc" >"$out/meta.env"
    echo "target_desc=in-process benchmarks only" >>"$out/meta.env"
    host_meta "$out"
    : >"$out/workloads.list"
    run_inproc "$out"
    make_report "$out"
    cat "$out/results.md"
    exit 0
    ;;
esac

# ---------------------------------------------------------------------------
# The fio matrix.
# ---------------------------------------------------------------------------
mapfile -t workloads < <(select_workloads)
((${#workloads[@]} > 0)) || die_usage "--workloads '$workloads_arg' matches no job file under bench/fio"
if [[ -z "$mode" ]]; then
  if [[ -c /dev/ublk-control ]]; then mode=native; else mode=vm; fi
fi

env_settings=(
  "BENCH_WORKLOADS=${workloads[*]}" "BENCH_BACKEND=$backend" "BENCH_REPLICAS=$replicas"
  "BENCH_SIZE=$size_b" "BENCH_RUNTIME=$runtime" "BENCH_REPEAT=$repeat"
  "BENCH_WRITE_THROUGH=$write_through" "BENCH_VIA=$via")
[[ -n "$queues" ]] && env_settings+=("BENCH_QUEUES=$queues")
[[ -n "$reactors" ]] && env_settings+=("BENCH_REACTORS=$reactors")
# --quick: smaller ext4 files and fewer metadata files (fio's untimed layout
# dominates the wall time under TCG).
((quick)) && env_settings+=("BENCH_FILE_MIB=8" "BENCH_NRFILES=100")

if [[ "$mode" == native ]]; then
  [[ -c /dev/ublk-control ]] || die_usage "--native needs the ublk_drv module (/dev/ublk-control missing); use --vm"
  ((EUID == 0)) || die_usage "--native needs root (ublk devices, mkfs, mount)"
  [[ -n "$baseline" ]] || die_usage "--native needs --baseline DEVICE_OR_FILE (the device under the target)"
else
  [[ -z "$store_dir" ]] || die_usage "--store-dir is for --native (the VM keeps stores on tmpfs)"
fi
serve=$build/tools/ublkvol-serve
[[ -x "$serve" ]] || die_usage "$serve missing: build the target ublkvol-serve"
daemon_bins=()
if [[ "$via" == daemon && "$backend" == replicated ]]; then
  daemon_bins=("$build/src/daemon/ublk-volumed" "$build/src/cli/ublk-volume")
  for b in "${daemon_bins[@]}"; do
    [[ -x "$b" ]] || die_usage "$b missing: build it (or use --via serve)"
  done
fi
out=${out:-$(default_out "$backend")}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/raw"
start_s=$(date +%s)
log "$mode run: ${#workloads[@]} workloads x $repeat repeats x (target, baseline), ${runtime}s each; backend $backend -> $out"

if [[ "$mode" == native ]]; then
  env_settings+=("BENCH_BASELINE=$baseline" "BENCH_STORE_DIR=${store_dir:-/dev/shm}")
  PATH="$build/tools:$build/src/daemon:$build/src/cli:$PATH" env "${env_settings[@]}" BENCH_OUT="$out" \
    BENCH_FIO_DIR="$ROOT/bench/fio" BENCH_MODE=native bash "$ROOT/bench/lib/matrix.sh" ||
    die "the matrix failed"
else
  [[ -n "$baseline" ]] && env_settings+=("BENCH_BASELINE=$baseline")
  env_settings+=("BENCH_STORE_DIR=/dev/shm")
  # Boot + fills + mkfs, then each run costs its runtime plus fio's start-up
  # under TCG (a few seconds); metadata jobs are not time-based.
  # The guest keeps everything in RAM: replica store files (volume + metadata)
  # or the memory backend's file in tmpfs, plus the brd baseline.
  if [[ -z "$mem" ]]; then
    copies=2
    [[ "$backend" == replicated ]] && copies=$((replicas + 1))
    [[ "$backend" == null ]] && copies=0
    mem_mib=$((size_b * copies * 5 / 4 / 1048576 + 1024))
    ((mem_mib >= 3072)) || mem_mib=3072
    mem=${mem_mib}M
  fi
  runs=$((${#workloads[@]} * repeat * 2))
  timeout_s=${timeout_s:-$((300 + runs * (runtime + 15)))}
  vm_args=(--binary "$serve" --file "$ROOT/bench/fio:/opt/test/files/fio"
    --file "$ROOT/bench/lib:/opt/test/files/lib" --script "$ROOT/bench/lib/guest.sh"
    --mem "$mem" --timeout "$timeout_s" --log "$out/console.log")
  for b in "${daemon_bins[@]}"; do vm_args+=(--binary "$b"); done
  for e in "${env_settings[@]}"; do vm_args+=(--env "$e"); done
  status=0
  "$ROOT/scripts/vm/run.sh" "${vm_args[@]}" >/dev/null || status=$?
  # The guest prints the run directory as a base64 tar between markers.
  if grep -q '^@@bench-results-end@@' <(tr -d '\r' <"$out/console.log"); then
    tr -d '\r' <"$out/console.log" |
      sed -n '/^@@bench-results-begin@@$/,/^@@bench-results-end@@$/p' | sed '1d;$d' |
      base64 -d | tar -xzf - -C "$out" || die "cannot unpack the results from $out/console.log"
  fi
  ((status == 0)) || die "the VM run failed (exit $status); console log: $out/console.log"
  echo "vm=qemu-system-x86_64 TCG (scripts/vm/run.sh), 2 vCPUs, $mem" >>"$out/meta.env"
fi
host_meta "$out"
echo "wall_s=$(($(date +%s) - start_s))" >>"$out/meta.env"
((with_inproc)) && run_inproc "$out"
make_report "$out"
cat "$out/results.md"
