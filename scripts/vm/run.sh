#!/usr/bin/env bash
# Run a test inside the real-ublk VM test bed (QEMU TCG, a Debian 6.12 or 7.3 kernel, ublk_drv).
#
# Usage:
#   scripts/vm/run.sh [--binary PATH]... [--file SRC[:DEST]]... [--env NAME=VALUE]...
#                     (--cmd 'guest shell command' | --script FILE)
#                     [--timeout SECONDS] [--log FILE] [--smp N] [--mem SIZE]
#                     [--disk SIZE]... [--append 'kernel args'] [--kernel-verbose]
#                     [--kernel 6.12|7]
#
#   --binary PATH     program to run in the guest; lands in /opt/test/bin (on PATH), with
#                     every library ldd lists. Repeatable.
#   --file SRC[:DEST] extra file or directory; DEST is an absolute guest path, default
#                     /opt/test/files/<name of SRC>. Repeatable.
#   --env NAME=VALUE  exported to the test. Repeatable.
#   --cmd CMD         the test, run by bash in /tmp.
#   --script FILE     the test as a bash script.
#   --timeout S       wall-clock limit for boot + test + power-off (default 300). QEMU is
#                     killed when it expires.
#   --log FILE        where the guest console goes (it is also streamed to stdout). Without
#                     it a temporary log is used, removed on success, kept on failure.
#   --smp N, --mem SIZE   guest CPUs (default 2) and memory (default 2G).
#   --disk SIZE       add an empty sparse NVMe disk of SIZE (e.g. 1G): /dev/nvme0n1, ...
#   --append ARGS     extra kernel command line.
#   --kernel K        the guest kernel: 6.12 (Debian trixie, the default) or 7 (trixie-
#                     backports 7.3); default $UBLKVOL_VM_KERNEL, else 6.12. Pins: lib.sh.
#   --kernel-verbose  full kernel boot log (default: quiet + loglevel=5: warnings and oopses still show).
#
# The guest: bash (also /bin/sh) runs the test; busybox (static) applets + fio,
# mkfs.ext4, e2fsck, blkdiscard, ... (lists in scripts/vm/lib.sh); ublk_drv loaded,
# UBLKVOL_IN_VM=1, everything as root. /tmp and
# /dev/shm are tmpfs. Other modules: `vm-load-module loop|null_blk|brd|virtio_blk`.
# `vm-gtest BINARY ARGS` runs a gtest binary and fails if any test skipped.
#
# Exit status: the guest test's own status, or
#   124  timed out (QEMU killed)
#   125  the runner could not start the test (bad arguments, missing binary, no kernel
#        cache, guest set-up failed)
#   126  the guest crashed: kernel panic, no exit marker, or the kernel logged a
#        BUG/Oops/WARNING during a test that otherwise passed
# A guest kernel that crashes while booting, before /init runs (an emulator fault under
# multi-threaded TCG, nothing the test did), is booted once more; the first console log is
# kept as LOG.boot1.
# Each failure prints one line starting with "run.sh: FAIL:" naming the cause and the log.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$script_dir/lib.sh"
UBLKVOL_VM_DIE_STATUS=125

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

binaries=() files=() envs=() disks=()
cmd="" script="" timeout_s=300 log="" smp=2 mem=2G append="" kernel_verbose=0
need_arg() { [[ $# -ge 2 ]] || ublkvol_vm_die "$1 needs an argument (try --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) need_arg "$@"; binaries+=("$2"); shift 2 ;;
    --file) need_arg "$@"; files+=("$2"); shift 2 ;;
    --env) need_arg "$@"; envs+=("$2"); shift 2 ;;
    --cmd) need_arg "$@"; cmd="$2"; shift 2 ;;
    --script) need_arg "$@"; script="$2"; shift 2 ;;
    --timeout) need_arg "$@"; timeout_s="$2"; shift 2 ;;
    --log) need_arg "$@"; log="$2"; shift 2 ;;
    --smp) need_arg "$@"; smp="$2"; shift 2 ;;
    --mem) need_arg "$@"; mem="$2"; shift 2 ;;
    --disk) need_arg "$@"; disks+=("$2"); shift 2 ;;
    --append) need_arg "$@"; append="$2"; shift 2 ;;
    --kernel-verbose) kernel_verbose=1; shift ;;
    --kernel) need_arg "$@"; UBLKVOL_VM_KERNEL="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) ublkvol_vm_die "unknown argument '$1' (try --help)" ;;
  esac
done
[[ "${UBLKVOL_VM_KERNEL_VERBOSE:-0}" == 1 ]] && kernel_verbose=1
ublkvol_vm_select_kernel "$UBLKVOL_VM_KERNEL"
export UBLKVOL_VM_KERNEL

# ---------------------------------------------------------------------------------------
# Validate everything before doing any work.
# ---------------------------------------------------------------------------------------
[[ -n "$cmd" || -n "$script" ]] || ublkvol_vm_die "give the guest test with --cmd or --script"
[[ -z "$cmd" || -z "$script" ]] || ublkvol_vm_die "--cmd and --script are exclusive"
[[ -z "$script" || -f "$script" ]] || ublkvol_vm_die "--script $script: no such file"
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || ublkvol_vm_die "--timeout '$timeout_s' is not a positive number of seconds"
[[ "$smp" =~ ^[1-9][0-9]*$ ]] || ublkvol_vm_die "--smp '$smp' is not a positive number"
[[ "$mem" =~ ^[1-9][0-9]*[MG]?$ ]] || ublkvol_vm_die "--mem '$mem' is not a size like 2G or 1536M"
for d in "${disks[@]}"; do
  [[ "$d" =~ ^[1-9][0-9]*[KMGT]?$ ]] || ublkvol_vm_die "--disk '$d' is not a size like 1G"
done
for b in "${binaries[@]}"; do
  [[ -e "$b" ]] || ublkvol_vm_die "--binary $b: no such file (is the target built?)"
  [[ -f "$b" && -x "$b" ]] || ublkvol_vm_die "--binary $b: not an executable file"
done
for f in "${files[@]}"; do
  src="${f%%:*}"
  [[ -e "$src" ]] || ublkvol_vm_die "--file $src: no such file or directory"
  if [[ "$f" == *:* ]]; then
    [[ "${f#*:}" == /* ]] || ublkvol_vm_die "--file $f: DEST must be an absolute guest path"
  fi
done
for e in "${envs[@]}"; do
  [[ "$e" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || ublkvol_vm_die "--env '$e' is not NAME=VALUE"
done

cache="$UBLKVOL_VM_KERNEL_CACHE"
if [[ ! -f "$cache/complete" || ! -f "$cache/vmlinuz" || ! -f "$cache/modules/ublk_drv.ko" ]]; then
  ublkvol_vm_die "no VM kernel $UBLKVOL_VM_KERNEL in $cache: run scripts/setup.sh (or scripts/vm/fetch-kernel.sh --kernel $UBLKVOL_VM_KERNEL)"
fi
kver="$(cat "$cache/kernel-version")"
qemu="$(command -v qemu-system-x86_64 || true)"
[[ -n "$qemu" ]] || ublkvol_vm_die "qemu-system-x86_64 not found: run scripts/setup.sh (package qemu-system-x86)"
for tool in cpio timeout sha256sum ldd; do
  command -v "$tool" >/dev/null || ublkvol_vm_die "'$tool' not found: run scripts/setup.sh"
done
[[ -x "$UBLKVOL_VM_BUSYBOX" ]] ||
  ublkvol_vm_die "$UBLKVOL_VM_BUSYBOX not found: run scripts/setup.sh (package busybox-static)"
if ldd "$UBLKVOL_VM_BUSYBOX" >/dev/null 2>&1; then
  ublkvol_vm_die "$UBLKVOL_VM_BUSYBOX is dynamically linked: install busybox-static"
fi

find_tool() {
  local t="$1" p
  p="$(command -v "$t" 2>/dev/null || true)"
  [[ -z "$p" ]] && for d in /usr/sbin /sbin /usr/bin /bin; do
    [[ -x "$d/$t" ]] && { p="$d/$t"; break; }
  done
  echo "$p"
}
tools=()
for t in "${UBLKVOL_VM_REQUIRED_TOOLS[@]}"; do
  p="$(find_tool "$t")"
  [[ -n "$p" ]] || ublkvol_vm_die "'$t' not found on the host; the guest needs it: run scripts/setup.sh"
  tools+=("$p")
done
for t in "${UBLKVOL_VM_OPTIONAL_TOOLS[@]}"; do
  p="$(find_tool "$t")"
  [[ -n "$p" ]] && tools+=("$p")
done

work="$(mktemp -d "${TMPDIR:-/tmp}/ublkvol-vm.XXXXXX")"
qemu_pid=""
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
  if [[ -n "$qemu_pid" ]]; then kill -TERM "$qemu_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted; console log: ${log:-none}" >&2; exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# initramfs = cached base (busybox, tools, libraries, modules, /init) + per-run part
# (test binaries, files, test script). The kernel unpacks concatenated cpio archives in
# order, so the two are simply appended. Both uncompressed: unpacking is faster than
# decompressing under TCG.
# ---------------------------------------------------------------------------------------

# copy_libs BINARY STAGE: copy every library ldd lists for BINARY to the same absolute
# path under STAGE, skipping those the cached base already has.
declare -A base_has=()
copy_libs() {
  local bin="$1" stage="$2" line lib out canonical
  if ! out="$(ldd "$bin" 2>&1)"; then
    # Static executables: nothing to copy.
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return 0
    ublkvol_vm_die "ldd $bin failed: $out"
  fi
  while read -r line; do
    case "$line" in
      *"=> not found"*) ublkvol_vm_die "$bin needs a library that is not found: $line" ;;
      *"=> /"*) lib="${line#*=> }"; lib="${lib%% (*}" ;;
      /*) lib="${line%% (*}" ;;
      *) continue ;; # linux-vdso and friends
    esac
    # The stage mirrors the host's /lib -> usr/lib links; the base's manifest lists the
    # resolved paths.
    canonical="$(realpath -m "$stage$lib")"
    [[ -n "${base_has[.${canonical#"$stage"}]:-}" || -e "$canonical" ]] && continue
    mkdir -p "$(dirname "$canonical")"
    cp -L "$lib" "$canonical"
  done <<<"$out"
}

# Mirror the host's top-level usr-merge symlinks (/lib -> usr/lib, ...) so that libraries
# land where ldd says they are and the guest's loader finds them.
make_skeleton() {
  local stage="$1" d
  mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib,usr/local/bin,usr/local/sbin,etc,proc,sys,dev,tmp,run,root}
  for d in bin sbin lib lib64 lib32 libx32; do
    if [[ -L "/$d" ]]; then
      ln -sfn "$(readlink "/$d")" "$stage/$d"
    elif [[ -d "/$d" ]]; then
      mkdir -p "$stage/$d"
    fi
  done
  mkdir -p "$stage/lib/modules/ublkvol" "$stage/opt/test/bin"
}

write_cpio() {
  local stage="$1" out="$2"
  (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) >"$out"
}

base_key() {
  {
    echo "kernel $kver"
    cat "$script_dir/lib.sh" "$script_dir/run.sh" "$script_dir/guest-init.sh" \
      "$script_dir/vm-load-module.sh" "$script_dir/vm-gtest.sh" "$cache/modules/deps"
    stat -L -c '%n %s %Y' "$UBLKVOL_VM_BUSYBOX" "${tools[@]}" "$cache"/modules/*.ko
    # Library versions matter too: a host upgrade must rebuild the base.
    for t in "${tools[@]}"; do ldd "$t" 2>/dev/null || true; done |
      awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
      xargs -r stat -L -c '%n %s %Y'
  } | sha256sum | cut -c1-16
}

build_base() {
  local out="$1" stage="$work/base" applet t
  make_skeleton "$stage"
  cp "$UBLKVOL_VM_BUSYBOX" "$stage/bin/busybox"
  while read -r applet; do
    [[ -e "$stage/$applet" || -L "$stage/$applet" ]] || ln -s /bin/busybox "$stage/$applet"
  done < <("$UBLKVOL_VM_BUSYBOX" --list-full)
  for t in "${tools[@]}"; do
    # The real tool replaces busybox's applet of the same name wherever it was linked, so
    # `command -v losetup` in the guest is util-linux's losetup.
    find "$stage" -name "${t##*/}" -type l -lname /bin/busybox -delete
    mkdir -p "$stage$(dirname "$t")"
    rm -f "$stage$t"
    cp -L "$t" "$stage$t"
    copy_libs "$t" "$stage"
  done
  # /bin/sh is bash (see UBLKVOL_VM_REQUIRED_TOOLS in lib.sh for why not busybox sh).
  find "$stage" -name sh -type l -lname /bin/busybox -delete
  ln -sfn bash "$stage/usr/bin/sh"
  cp "$cache"/modules/*.ko "$cache/modules/deps" "$stage/lib/modules/ublkvol/"
  install -m 0755 "$script_dir/guest-init.sh" "$stage/init"
  install -m 0755 "$script_dir/vm-load-module.sh" "$stage/usr/local/sbin/vm-load-module"
  install -m 0755 "$script_dir/vm-gtest.sh" "$stage/usr/local/bin/vm-gtest"
  echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
  echo "root:x:0:" >"$stage/etc/group"
  ln -s /proc/mounts "$stage/etc/mtab"
  write_cpio "$stage" "$out.tmp.$$"
  (cd "$stage" && find . -mindepth 1) >"$out.list.tmp.$$"
  # Rename last: concurrent runs may race to build the same base; each rename is atomic.
  mv -f "$out.list.tmp.$$" "$out.list"
  mv -f "$out.tmp.$$" "$out"
  rm -rf "$stage"
}

started_at=$SECONDS
mkdir -p "$cache/initramfs"
base="$cache/initramfs/base-$(base_key).cpio"
if [[ ! -f "$base" || ! -f "$base.list" ]]; then
  ublkvol_vm_log "building the initramfs base $base"
  build_base "$base"
  # Keep the cache small: drop bases of older tool/kernel versions.
  find "$cache/initramfs" -name 'base-*.cpio*' ! -name "${base##*/}*" -mmin +60 -delete 2>/dev/null || true
fi
while read -r p; do base_has["$p"]=1; done <"$base.list"

# Per-run part.
stage="$work/test"
make_skeleton "$stage"
mkdir -p "$stage/opt/test/files"
token="$(tr -d '-' </proc/sys/kernel/random/uuid)"
# Debug info is most of a Release binary (ublk-volumed: 122 MB, 4 MB without): stripped
# here it halves the initramfs and saves seconds of every boot under TCG. Symbols stay
# (backtraces name functions); UBLKVOL_VM_KEEP_DEBUG=1 keeps the debug info too.
for b in "${binaries[@]}"; do
  cp -L "$b" "$stage/opt/test/bin/"
  if [[ "${UBLKVOL_VM_KEEP_DEBUG:-0}" != 1 ]]; then
    objcopy --strip-debug "$stage/opt/test/bin/${b##*/}" 2>/dev/null || true
  fi
  copy_libs "$b" "$stage"
done
for f in "${files[@]}"; do
  src="${f%%:*}"
  if [[ "$f" == *:* ]]; then dest="${f#*:}"; else dest="/opt/test/files/${src##*/}"; fi
  mkdir -p "$stage$(dirname "$dest")"
  cp -a "$src" "$stage$dest"
done
if [[ -n "$script" ]]; then
  cp "$script" "$stage/opt/test/test.sh"
else
  printf '%s\n' "$cmd" >"$stage/opt/test/test.sh"
fi
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
  echo "export UBLKVOL_VM_TOKEN=$token UBLKVOL_VM_KERNEL=$UBLKVOL_VM_KERNEL"
  for e in "${envs[@]}"; do echo "export ${e%%=*}=$(quote "${e#*=}")"; done
} >"$stage/opt/test/env"
write_cpio "$stage" "$work/test.cpio"
cat "$base" "$work/test.cpio" >"$work/initrd.cpio"
rm -rf "$stage" "$work/test.cpio"
build_s=$((SECONDS - started_at))

# ---------------------------------------------------------------------------------------
# Boot.
# ---------------------------------------------------------------------------------------
keep_log=1
if [[ -z "$log" ]]; then
  log="$(mktemp "${TMPDIR:-/tmp}/ublkvol-vm-log.XXXXXX")"
  keep_log=0
else
  mkdir -p "$(dirname "$log")"
fi

kernel_args="console=ttyS0 panic=-1 rdinit=/init mitigations=off"
# quiet hides the boot chatter; loglevel=5 (after it) still prints every message of
# KERN_WARNING or worse, so WARN()/BUG/Oops reach the console and the verdict below.
[[ $kernel_verbose == 1 ]] || kernel_args+=" quiet loglevel=5"
[[ -n "$append" ]] && kernel_args+=" $append"

# -cpu max,-cx16: with SMP, this QEMU's TCG double-faults in the guest's SLUB
# cmpxchg16b fast path; without CX16 the kernel takes the (correct) slow path.
# shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
qemu_args=(
  -accel tcg,thread=multi -cpu max,-cx16 -smp "$smp" -m "$mem"
  -nographic -no-reboot -nic none
  -kernel "$cache/vmlinuz" -initrd "$work/initrd.cpio" -append "$kernel_args"
)
i=0
for d in "${disks[@]}"; do
  truncate -s "$d" "$work/disk$i.img"
  qemu_args+=(-drive "file=$work/disk$i.img,if=none,id=disk$i,format=raw"
              -device "nvme,drive=disk$i,serial=ublkvol-disk$i")
  i=$((i + 1))
done

{
  echo "run.sh: kernel $kver, initramfs $(du -m "$work/initrd.cpio" | cut -f1) MiB (built in ${build_s}s), timeout ${timeout_s}s"
  echo "run.sh: $qemu ${qemu_args[*]}"
} | tee "$log"

# One boot, retried once if the guest kernel crashed before /init ran (lib.sh).
ublkvol_vm_boot "$log" "$token" 2

# ---------------------------------------------------------------------------------------
# Verdict.
# ---------------------------------------------------------------------------------------
verdict() { # STATUS MESSAGE
  local status="$1"
  shift
  if [[ "$status" == 0 ]]; then
    echo "run.sh: PASS: $* (${elapsed}s in the VM)" | tee -a "$log"
    [[ $keep_log == 1 ]] || rm -f "$log" "$log.boot1"
  else
    echo "run.sh: FAIL: $* (exit $status); console log: $log" | tee -a "$log" >&2
  fi
  exit "$status"
}

marker="$(tr -d '\r' <"$log" | grep -oE "@@ublkvol-vm-exit token=$token stage=[a-z]+ status=[0-9]+@@" | tail -n1 || true)"
kernel_trouble="$(tr -d '\r' <"$log" | grep -E '(Kernel panic|BUG:|Oops:|WARNING: CPU:|general protection fault|watchdog: BUG: soft lockup|INFO: task .* blocked for more than)' | head -n3 || true)"

if [[ $qemu_status == 124 || $qemu_status == 137 ]] && [[ -z "$marker" ]]; then
  verdict 124 "guest timed out after ${timeout_s} s; QEMU was killed"
fi
if [[ -z "$marker" ]]; then
  if grep -q 'Kernel panic' "$log"; then
    verdict 126 "guest kernel panicked: $(tr -d '\r' <"$log" | grep -m1 'Kernel panic')"
  fi
  verdict 126 "guest exited without the exit marker (QEMU status $qemu_status); the test did not finish"
fi
stage_name="$(sed -E 's/.*stage=([a-z]+).*/\1/' <<<"$marker")"
status="$(sed -E 's/.*status=([0-9]+).*/\1/' <<<"$marker")"
if [[ "$stage_name" == setup ]]; then
  verdict 125 "guest set-up failed before the test ran (see vm-init lines)"
fi
if [[ "$status" != 0 ]]; then
  verdict "$status" "guest test failed with exit status $status"
fi
if [[ -n "$kernel_trouble" ]]; then
  verdict 126 "guest test passed but the kernel logged: $(head -n1 <<<"$kernel_trouble")"
fi
verdict 0 "guest test passed"
