# shellcheck shell=bash disable=SC2034  # settings read by the scripts that source this
# Shared settings of the VM test bed (sourced by fetch-kernel.sh and run.sh).
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
