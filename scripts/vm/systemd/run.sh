#!/usr/bin/env bash
# Run a test inside the systemd VM test bed: the same kernel and QEMU (TCG) as
# scripts/vm/run.sh, but booting a real Debian root filesystem with systemd as PID 1, so
# that a test can install units, `systemctl start/kill/stop` them and read the journal.
#
# Usage:
#   scripts/vm/systemd/run.sh [--binary PATH]... [--file SRC[:DEST]]... [--env NAME=VALUE]...
#                             (--cmd 'guest shell command' | --script FILE)
#                             [--timeout SECONDS] [--log FILE] [--smp N] [--mem SIZE]
#                             [--disk SIZE]... [--append 'kernel args'] [--kernel-verbose]
#                             [--kernel 6.12|7]
#
#   --binary PATH     program for the guest: /opt/test/bin (first on the test's PATH); the
#                     libraries ldd lists that the image lacks are installed too. Repeatable.
#   --file SRC[:DEST] extra file or directory; DEST is an absolute guest path (anywhere:
#                     e.g. /etc/ublk-volumed/config.json), default /opt/test/files/<name>.
#   --env NAME=VALUE  exported to the test. Repeatable.
#   --cmd CMD         the test, run by bash in /tmp.
#   --script FILE     the test as a bash script.
#   --timeout S       wall-clock limit for boot + test + power-off (default 300); the image
#                     build (first run only, ~2 min) comes before and is not counted.
#   --log FILE        where the guest console goes (also streamed to stdout). Without it a
#                     temporary log is used, removed on success, kept on failure.
#   --smp N, --mem SIZE   guest CPUs (default 2) and memory (default 2G).
#   --disk SIZE       add an empty sparse NVMe disk of SIZE: /dev/nvme0n1, ...
#   --append ARGS     extra kernel command line.
#   --kernel K        the guest kernel: 6.12 (Debian trixie, the default) or 7 (trixie-
#                     backports 7.3); default $UBLKVOL_VM_KERNEL, else 6.12. Pins: lib.sh.
#   --kernel-verbose  full kernel and systemd boot log.
#
# The guest: Debian (the host's release) minbase + systemd, udev, kmod, fio, e2fsprogs,
# util-linux, procps, the VM kernel's whole module tree (modprobe works), booted from a
# throw-away qcow2 overlay of the cached image (scripts/vm/systemd/build-image.sh). The
# test runs as root inside ublkvol-bed.service (ordered after multi-user.target) with
# UBLKVOL_IN_VM=1 and UBLKVOL_VM_SYSTEMD=1, in /tmp (tmpfs); ublk_drv is loaded;
# /opt/test is the read-only payload disk (bin/, files/, test.sh). Its output goes to the
# console and the journal.
#
# Exit status: as scripts/vm/run.sh: the guest test's status, or 124 (timed out), 125
# (runner or guest set-up failed, including "the image cannot be built"), 126 (kernel
# panic, no exit marker, or a kernel BUG/Oops/WARNING in an otherwise passing test).
# A guest kernel that crashes while booting, before the initramfs' /init runs (an emulator
# fault under multi-threaded TCG, nothing the test did), is booted once more, as by
# scripts/vm/run.sh; the first console log is kept as LOG.boot1.
# Each failure prints one line starting with "run.sh: FAIL:" naming the cause and the log.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vm_dir="$(dirname "$script_dir")"
# shellcheck source-path=SCRIPTDIR/..
source "$vm_dir/lib.sh"
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
qemu="$(command -v qemu-system-x86_64 || true)"
[[ -n "$qemu" ]] || ublkvol_vm_die "qemu-system-x86_64 not found: run scripts/setup.sh (package qemu-system-x86)"
for tool in qemu-img mke2fs timeout ldd sha256sum; do
  command -v "$tool" >/dev/null || [[ -x /sbin/$tool || -x /usr/sbin/$tool ]] ||
    ublkvol_vm_die "'$tool' not found: run scripts/setup.sh"
done
PATH="$PATH:/usr/sbin:/sbin"

# ---------------------------------------------------------------------------------------
# The cached image (built on first use; fetches the kernel too if needed).
# ---------------------------------------------------------------------------------------
started_at=$SECONDS
if ! image_dir="$("$script_dir/build-image.sh" | tail -n1)" || [[ ! -f "$image_dir/complete" ]]; then
  echo "run.sh: FAIL: cannot build the systemd test image (see the build-image.sh error above;" \
    "it needs mmdebstrap and this machine's Debian mirror: run scripts/setup.sh) (exit 125)" >&2
  exit 125
fi
cache="$UBLKVOL_VM_KERNEL_CACHE"
kver="$(cat "$cache/kernel-version")"

work="$(mktemp -d "${TMPDIR:-/tmp}/ublkvol-sdvm.XXXXXX")"
qemu_pid=""
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
  if [[ -n "$qemu_pid" ]]; then kill -TERM "$qemu_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted; console log: ${log:-none}" >&2; exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# Payload disk: an ext4 image (mke2fs -d, no mount needed on the host) that the guest
# mounts read-only on /opt/test:
#   bin/ files/ test.sh env   as in the initramfs bed
#   bed/guest-run.sh           the runner (installs overlay/, runs the test, powers off)
#   overlay/                   copied onto / before the test: libraries the image lacks,
#                              --file entries whose DEST is outside /opt/test
# ---------------------------------------------------------------------------------------
declare -A image_has=()
while read -r p; do image_has["$p"]=1; done <"$image_dir/rootfs.list"

stage="$work/payload"
mkdir -p "$stage"/{bin,files,bed,overlay}
# copy_libs BINARY: libraries ldd lists that the image does not have go to overlay/.
copy_libs() {
  local bin="$1" line lib out guest_path
  if ! out="$(ldd "$bin" 2>&1)"; then
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] && return 0
    ublkvol_vm_die "ldd $bin failed: $out"
  fi
  while read -r line; do
    case "$line" in
      *"=> not found"*) ublkvol_vm_die "$bin needs a library that is not found: $line" ;;
      *"=> /"*) lib="${line#*=> }"; lib="${lib%% (*}" ;;
      /*) lib="${line%% (*}" ;;
      *) continue ;;
    esac
    # The image is usr-merged like the host: /lib/x -> /usr/lib/x. Keep the soname.
    guest_path="$(realpath -m "$(dirname "$lib")")/${lib##*/}"
    [[ -n "${image_has[$guest_path]:-}" || -e "$stage/overlay$guest_path" ]] && continue
    mkdir -p "$stage/overlay$(dirname "$guest_path")"
    cp -L "$lib" "$stage/overlay$guest_path"
  done <<<"$out"
}
for b in "${binaries[@]}"; do
  cp -L "$b" "$stage/bin/"
  copy_libs "$b"
done
for f in "${files[@]}"; do
  src="${f%%:*}"
  if [[ "$f" == *:* ]]; then dest="${f#*:}"; else dest="/opt/test/files/${src##*/}"; fi
  if [[ "$dest" == /opt/test/* ]]; then
    target="$stage/${dest#/opt/test/}"
  else
    target="$stage/overlay$dest"
  fi
  mkdir -p "$(dirname "$target")"
  cp -a "$src" "$target"
done
if [[ -n "$script" ]]; then
  cp "$script" "$stage/test.sh"
else
  printf '%s\n' "$cmd" >"$stage/test.sh"
fi
install -m 0755 "$script_dir/guest-run.sh" "$stage/bed/guest-run.sh"
token="$(tr -d '-' </proc/sys/kernel/random/uuid)"
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
  echo "export UBLKVOL_VM_TOKEN=$token UBLKVOL_VM_KERNEL=$UBLKVOL_VM_KERNEL"
  for e in "${envs[@]}"; do echo "export ${e%%=*}=$(quote "${e#*=}")"; done
} >"$stage/env"
payload_mib=$(($(du -sm "$stage" | cut -f1) * 5 / 4 + 16))
mke2fs -q -t ext4 -L ublkvol-payload -d "$stage" -m 0 "$work/payload.img" "${payload_mib}M" ||
  ublkvol_vm_die "mke2fs -d could not write the payload disk"
rm -rf "$stage"
# The run's root disk: a qcow2 overlay; the cached base is only read.
qemu-img create -q -f qcow2 -F raw -b "$image_dir/rootfs.img" "$work/root.qcow2" ||
  ublkvol_vm_die "qemu-img could not create the overlay on $image_dir/rootfs.img"
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

kernel_args="console=ttyS0 panic=-1 root=/dev/vda rw mitigations=off ublkvol.token=$token"
# quiet + loglevel=5: as scripts/vm/run.sh (warnings and oopses still reach the console);
# systemd prints its status only for failures and slow jobs.
if [[ $kernel_verbose == 1 ]]; then
  kernel_args+=" systemd.show_status=1"
else
  kernel_args+=" quiet loglevel=5 systemd.show_status=auto"
fi
[[ -n "$append" ]] && kernel_args+=" $append"

# -cpu max,-cx16: see scripts/vm/run.sh (TCG + SMP double-faults in SLUB's cmpxchg16b path).
# cache=unsafe: the overlay is thrown away, so host flushes buy nothing.
# shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
qemu_args=(
  -accel tcg,thread=multi -cpu max,-cx16 -smp "$smp" -m "$mem"
  -nographic -no-reboot -nic none
  -kernel "$cache/vmlinuz" -initrd "$image_dir/initrd.cpio" -append "$kernel_args"
  -drive "file=$work/root.qcow2,if=virtio,format=qcow2,cache=unsafe"
  -drive "file=$work/payload.img,if=virtio,format=raw,readonly=on"
)
i=0
for d in "${disks[@]}"; do
  truncate -s "$d" "$work/disk$i.img"
  qemu_args+=(-drive "file=$work/disk$i.img,if=none,id=disk$i,format=raw"
              -device "nvme,drive=disk$i,serial=ublkvol-disk$i")
  i=$((i + 1))
done

{
  echo "run.sh: systemd bed: kernel $kver, image $image_dir ($(tr '\n' ' ' <"$image_dir/info"))"
  echo "run.sh: payload ${payload_mib} MiB (prepared in ${build_s}s), timeout ${timeout_s}s"
  echo "run.sh: $qemu ${qemu_args[*]}"
} | tee "$log"

# One boot, retried once if the guest kernel crashed before the initramfs' /init ran
# (lib.sh); the retry gets a fresh overlay of the image.
# shellcheck disable=SC2317  # called through ublkvol_vm_boot
fresh_overlay() {
  rm -f "$work/root.qcow2"
  qemu-img create -q -f qcow2 -F raw -b "$image_dir/rootfs.img" "$work/root.qcow2" ||
    ublkvol_vm_die "qemu-img could not create the overlay on $image_dir/rootfs.img"
}
ublkvol_vm_boot "$log" "$token" 3 fresh_overlay

# ---------------------------------------------------------------------------------------
# Verdict (the same rules as scripts/vm/run.sh).
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
  verdict 125 "guest set-up failed before the test ran (see the bed:/initrd: lines)"
fi
if [[ "$status" != 0 ]]; then
  verdict "$status" "guest test failed with exit status $status"
fi
if [[ -n "$kernel_trouble" ]]; then
  verdict 126 "guest test passed but the kernel logged: $(head -n1 <<<"$kernel_trouble")"
fi
verdict 0 "guest test passed"
