#!/bin/bash
# Guest script (bash): the VM test bed's tools work on a real block device.
# Run by the e2e test vm_bed_tools with one scratch NVMe disk (--disk 256M).
set -e
disk=/dev/nvme0n1
[ -b "$disk" ] || { echo "bed_tools: $disk missing"; exit 1; }

echo "== fio: O_DIRECT io_uring write + verify on $disk"
fio --name=verify --filename="$disk" --ioengine=io_uring --direct=1 --rw=randwrite \
    --bs=4k --size=32M --iodepth=8 --verify=crc32c --do_verify=1 --output-format=terse >/tmp/fio.out
grep -q '^3;' /tmp/fio.out || { cat /tmp/fio.out; echo "bed_tools: fio produced no result"; exit 1; }

echo "== blkdiscard + blockdev"
blkdiscard "$disk"
[ "$(blockdev --getsize64 "$disk")" = 268435456 ] || { echo "bed_tools: wrong disk size"; exit 1; }

echo "== mkfs.ext4, mount, write, e2fsck"
mkfs.ext4 -q -F "$disk"
mkdir -p /mnt/scratch
mount -t ext4 "$disk" /mnt/scratch
dd if=/dev/urandom of=/mnt/scratch/blob bs=1M count=4 2>/dev/null
sum_before=$(sha256sum /mnt/scratch/blob | cut -d' ' -f1)
umount /mnt/scratch
e2fsck -f -n "$disk"
mount -t ext4 -o ro "$disk" /mnt/scratch
[ "$(sha256sum /mnt/scratch/blob | cut -d' ' -f1)" = "$sum_before" ] ||
  { echo "bed_tools: file changed across umount/mount"; exit 1; }
umount /mnt/scratch

echo "== the real tools, not busybox applets"
for tool in losetup blkdiscard blockdev; do
  if "$tool" --version 2>&1 | grep -q BusyBox || ! "$tool" --version 2>&1 | grep -q util-linux; then
    echo "bed_tools: $tool is not util-linux's: $(command -v "$tool")"; exit 1
  fi
done

echo "== extra modules: loop, null_blk"
vm-load-module loop null_blk
truncate -s 64M /tmp/loop.img
dev=$(losetup --find --show /tmp/loop.img)
[ -b "$dev" ] || { echo "bed_tools: losetup gave '$dev'"; exit 1; }
losetup -d "$dev"
[ -b /dev/nullb0 ] || { echo "bed_tools: null_blk created no /dev/nullb0"; exit 1; }
echo "bed_tools: all tools work"
