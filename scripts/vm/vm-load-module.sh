#!/bin/bash
# vm-load-module NAME... - load a kernel module in the VM test bed's guest, its
# dependencies first. Installed in the guest as /usr/local/sbin/vm-load-module.
# Modules and their dependency list come from scripts/vm/fetch-kernel.sh (modinfo
# "depends"), packed under /lib/modules/ublkvol/ (busybox's modprobe would need a
# depmod-generated tree we do not have).
dir=/lib/modules/ublkvol

load() {
  # local: load() recurses into dependencies.
  local name deps dep
  name=$1
  [ -d "/sys/module/$name" ] && return 0
  if [ ! -f "$dir/$name.ko" ]; then
    echo "vm-load-module: module '$name' is not in the test bed (see UBLKVOL_VM_MODULES in scripts/vm/lib.sh)" >&2
    return 1
  fi
  deps=$(sed -n "s/^$name: *//p" "$dir/deps")
  for dep in $deps; do
    load "$dep" || return 1
  done
  insmod "$dir/$name.ko" || {
    echo "vm-load-module: insmod $name failed" >&2
    return 1
  }
}

rc=0
for m in "$@"; do
  load "$m" || rc=1
done
exit $rc
