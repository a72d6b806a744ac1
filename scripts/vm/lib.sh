# shellcheck shell=bash disable=SC2034  # settings read by the scripts that source this
# Shared settings and the boot step of the VM test beds (sourced by fetch-kernel.sh,
# run.sh and systemd/run.sh).
# Keep every list the bed depends on here, in one place.

# Where the fetched kernel, its modules and the cached initramfs base live.
UBLKVOL_VM_CACHE="${UBLKVOL_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ublk-volumed/vm}"

# Debian suite and package pattern of the test kernel: trixie's 6.12 cloud kernel ships
# ublk_drv as a module and supports UBLK_F_USER_RECOVERY(_REISSUE).
UBLKVOL_VM_SUITE="${UBLKVOL_VM_SUITE:-trixie}"
UBLKVOL_VM_KERNEL_PATTERN='^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64-unsigned$'

# Kernel modules copied out of the kernel package (paths under kernel/, without .ko.xz).
# ublk_drv is loaded by /init; the others are there for tests that want a loop device,
# null_blk, brd or a virtio disk (load them with `vm-load-module NAME` in the guest).
# Their dependencies (modinfo "depends") are copied too.
UBLKVOL_VM_MODULES=(
  drivers/block/ublk_drv
  drivers/block/loop
  drivers/block/null_blk/null_blk
  drivers/block/brd
  drivers/block/virtio_blk
)

# Host programs every guest gets (with the libraries ldd lists). A test that needs more
# passes them with --binary. Required ones must exist on the host (scripts/setup.sh
# installs them); optional ones are included when present.
# bash is the guest's /bin/sh: Debian's busybox-static shell runs its own applets in
# preference to PATH (FEATURE_SH_STANDALONE), so under it `losetup` or `blkdiscard` would
# silently be busybox's cut-down versions instead of the real tools listed here.
UBLKVOL_VM_REQUIRED_TOOLS=(bash fio mkfs.ext4 e2fsck blkdiscard blockdev losetup)
UBLKVOL_VM_OPTIONAL_TOOLS=(mke2fs dumpe2fs debugfs lsblk strace)

# Busybox must be the static build (busybox-static): it provides the guest's coreutils,
# mount, insmod, poweroff, ... (as symlinks; a tool listed above replaces its applet).
UBLKVOL_VM_BUSYBOX="${UBLKVOL_VM_BUSYBOX:-/bin/busybox}"

ublkvol_vm_die() {
  echo "${0##*/}: error: $*" >&2
  exit "${UBLKVOL_VM_DIE_STATUS:-1}"
}

ublkvol_vm_log() {
  echo "${0##*/}: $*" >&2
}

# ublkvol_vm_boot LOG TOKEN HEADER_LINES [BEFORE_RETRY]
# Boots the VM once: "$qemu" "${qemu_args[@]}" under timeout(1) with "$timeout_s",
# console appended to LOG (whose first HEADER_LINES lines are the runner's own header)
# and streamed to stdout while QEMU runs. Sets qemu_status and elapsed (seconds);
# qemu_pid holds QEMU's pid while it runs, for the caller's exit trap.
# QEMU's multi-threaded TCG occasionally crashes the guest kernel while it boots (seen:
# an int3 Oops in sched_clock_cpu during early initcalls, i.e. code patching racing the
# emulator's translation cache) - before the initramfs' /init printed its marker
# "@@ublkvol-vm-init token=TOKEN@@", so before anything of the bed or the test ran. Such a
# boot is retried once (after running BEFORE_RETRY, e.g. to recreate a disk overlay); the
# failed attempt's console stays in LOG.boot1. A crash after /init started, a timeout
# (status 124/137) or a clean failure is never retried.
ublkvol_vm_boot() {
  local log="$1" token="$2" header_lines="$3" before_retry="${4:-}"
  _ublkvol_vm_boot_once "$log" "$header_lines"
  if ! tr -d '\r' <"$log" | grep -q "@@ublkvol-vm-init token=$token@@" &&
    [[ $qemu_status != 124 && $qemu_status != 137 ]] && grep -qE 'Kernel panic|Oops:' "$log"; then
    echo "run.sh: the guest kernel crashed while booting, before /init ran (emulator fault: $(tr -d '\r' <"$log" | grep -m1 -E 'Kernel panic|Oops:')); booting again, first attempt's console in $log.boot1" >&2
    mv -f "$log" "$log.boot1"
    head -n "$header_lines" "$log.boot1" >"$log"
    if [[ -n "$before_retry" ]]; then "$before_retry"; fi
    _ublkvol_vm_boot_once "$log" "$header_lines"
  fi
}

_ublkvol_vm_boot_once() {
  local log="$1" header_lines="$2" boot_started=$SECONDS tail_pid
  # timeout(1) runs QEMU in its own process group and SIGKILLs it 5 s after SIGTERM if it
  # does not exit; the caller's trap also stops it if the runner is interrupted.
  # shellcheck disable=SC2154  # timeout_s, qemu, qemu_args: set by the runner
  timeout -k 5 "$timeout_s" "$qemu" "${qemu_args[@]}" </dev/null >>"$log" 2>&1 &
  qemu_pid=$!
  # Stream the console while QEMU runs (tail stops when QEMU's timeout wrapper exits).
  tail -n "+$((header_lines + 1))" -s 0.2 --pid="$qemu_pid" -f "$log" &
  tail_pid=$!
  set +e
  wait "$qemu_pid"
  qemu_status=$?
  set -e
  qemu_pid=""
  wait "$tail_pid" 2>/dev/null || true
  elapsed=$((SECONDS - boot_started))
}
