#!/bin/sh
# PID 1 of the VM test bed's guest (/bin/sh is bash). scripts/vm/run.sh packs it as /init.
#
# Sets up the minimum a ublk test needs (proc, sys, devtmpfs, tmpfs /tmp and /dev/shm,
# ublk_drv loaded), runs /opt/test/test.sh with bash and UBLKVOL_IN_VM=1, then prints the exit
# marker run.sh looks for and powers the VM off. The marker carries a per-run token so
# that nothing the test prints can be mistaken for it:
#   @@ublkvol-vm-exit token=<token> stage=<setup|test> status=<N>@@
export PATH=/opt/test/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp

# The initramfs has no /dev/console node (building one needs mknod, i.e. root on the
# host), so the kernel starts us without stdio: mount devtmpfs first, then attach.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

# shellcheck disable=SC1091  # written by run.sh into the initramfs
. /opt/test/env
# Tells run.sh the kernel booted and our init runs (a crash before this line is a boot
# failure, which run.sh retries once).
echo "@@ublkvol-vm-init token=$UBLKVOL_VM_TOKEN@@"

finish() {
  echo
  echo "@@ublkvol-vm-exit token=$UBLKVOL_VM_TOKEN stage=$1 status=$2@@"
  sync
  poweroff -f
  # Not reached; if poweroff failed, falling off the end panics the kernel (panic=-1 and
  # -no-reboot make QEMU exit), which run.sh reports.
  exit "$2"
}

setup_failed() {
  echo "vm-init: error: $*"
  finish setup 125
}

mount -t proc proc /proc || setup_failed "mount /proc"
mount -t sysfs sysfs /sys || setup_failed "mount /sys"
mkdir -p /dev/shm /dev/pts /tmp /run
mount -t tmpfs -o mode=1777 tmpfs /tmp || setup_failed "mount /tmp"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm || setup_failed "mount /dev/shm"
mount -t tmpfs -o mode=0755 tmpfs /run || setup_failed "mount /run"
mount -t devpts devpts /dev/pts || setup_failed "mount /dev/pts"
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
ip link set lo up 2>/dev/null
hostname ublkvol-vm

vm-load-module ublk_drv || setup_failed "cannot load ublk_drv"
[ -c /dev/ublk-control ] || setup_failed "ublk_drv loaded but /dev/ublk-control is missing"

export UBLKVOL_IN_VM=1
cd /tmp || setup_failed "cd /tmp"
read -r uptime_s _ </proc/uptime
echo "vm-init: kernel $(uname -r), $(nproc) CPUs, booted in ${uptime_s}s; running the test"
bash /opt/test/test.sh
status=$?
read -r end_s _ </proc/uptime
echo "vm-init: test exited with status $status (guest time ${uptime_s}s -> ${end_s}s)"
finish test "$status"
