#!/bin/sh
# /init of the systemd test bed's initramfs (busybox sh). Loads the modules that the root
# filesystem needs (virtio_blk, ext4 and their dependencies, in modprobe's order: the list
# is written by build-image.sh), mounts /dev/vda and hands over to systemd. On any failure
# it prints the bed's exit marker (stage=setup) so that run.sh reports a set-up failure at
# once instead of waiting for its timeout.
export PATH=/bin

# No /dev/console node in the archive (making one needs mknod): mount devtmpfs first.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

token=""
# shellcheck disable=SC2013  # the command line is one line of words
for arg in $(cat /proc/cmdline); do
  case "$arg" in ublkvol.token=*) token="${arg#ublkvol.token=}" ;; esac
done

# Tells run.sh the kernel booted and userspace runs: a crash before this line is a boot
# failure (an emulator fault under multi-threaded TCG), which run.sh retries once.
echo "@@ublkvol-vm-init token=$token@@"

die() {
  echo "initrd: error: $*"
  echo "@@ublkvol-vm-exit token=$token stage=setup status=125@@"
  echo o >/proc/sysrq-trigger
  # The power-off is asynchronous; PID 1 must not exit meanwhile (that panics the kernel).
  while :; do sleep 1; done
}

while read -r module; do
  insmod "/lib/modules/$module" || die "insmod $module failed"
done </lib/modules/load-order

# The disk shows up asynchronously after virtio_blk probes it (~ms; allow 30 s under load).
tries=0
while [ ! -b /dev/vda ]; do
  tries=$((tries + 1))
  [ $tries -le 300 ] || die "no /dev/vda: the root disk is missing"
  sleep 0.1
done
mount -t ext4 -o rw /dev/vda /newroot || die "cannot mount /dev/vda (ext4)"
# /sbin/init is an absolute symlink (-> /lib/systemd/systemd): test it inside the new root.
[ -L /newroot/sbin/init ] || [ -x /newroot/sbin/init ] || die "/sbin/init missing in the root image"
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
