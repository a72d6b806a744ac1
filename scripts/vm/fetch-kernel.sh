#!/usr/bin/env bash
# Fetch a VM test bed kernel: vmlinuz and ublk_drv.ko (plus a few block modules) of one
# of the pinned Debian cloud kernels in scripts/vm/lib.sh (6.12 from trixie, 7.3 from
# trixie-backports).
#
# Usage: scripts/vm/fetch-kernel.sh [--kernel 6.12|7|all] [--force] [--print-dir]
#   --kernel K   which kernel (default: $UBLKVOL_VM_KERNEL, else 6.12); "all" fetches each
#   --force      fetch again even when cached
#   --print-dir  print the kernel's cache directory and exit
#
# Downloads the pinned packages (package=version and sha256 in scripts/vm/lib.sh) with
# apt-get download from this machine's own Debian mirror, using a PRIVATE apt state (lists,
# cache, status, sources) in a temporary directory: the system's apt state is never read
# for packages nor written. Signatures are verified the normal apt way: the suite's
# InRelease must carry a good signature from a key in
# /usr/share/keyrings/debian-archive-keyring.gpg (trixie and trixie-backports are signed
# by the "Debian Archive Automatic Signing Key" 13/trixie and 12/bookworm keys, both in
# Debian 12's debian-archive-keyring), each .deb must match the hash in the signed
# Packages index, and also the sha256 pinned in lib.sh.
#
# Result in the kernel's cache directory ($UBLKVOL_VM_CACHE for 6.12,
# $UBLKVOL_VM_CACHE/kernel-7 for 7; default UBLKVOL_VM_CACHE ~/.cache/ublk-volumed/vm):
#   vmlinuz            the kernel image
#   modules/*.ko       ublk_drv and a few block modules (uncompressed), modules/deps
#   kernel-version     uname -r of the guest, e.g. 6.12.117+deb13-cloud-amd64
#   kernel-package     per fetched package: package=version sha256=... mirror=...
#   complete           written last; its presence (with the same pins) makes a re-run a no-op
#
# Environment: UBLKVOL_VM_CACHE, UBLKVOL_VM_KERNEL, UBLKVOL_VM_MIRROR (override the
#              mirror URL), UBLKVOL_VM_KEYRING.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$script_dir/lib.sh"

force=0 print_dir=0 kernel="$UBLKVOL_VM_KERNEL"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) force=1; shift ;;
    --print-dir) print_dir=1; shift ;;
    --kernel)
      [[ $# -ge 2 ]] || ublkvol_vm_die "--kernel needs an argument (${UBLKVOL_VM_KERNELS[*]} or all)"
      kernel="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) ublkvol_vm_die "unknown argument '$1' (try --help)" ;;
  esac
done
if [[ "$kernel" == all ]]; then
  for k in "${UBLKVOL_VM_KERNELS[@]}"; do
    args=(--kernel "$k")
    [[ $force == 0 ]] || args+=(--force)
    [[ $print_dir == 0 ]] || args+=(--print-dir)
    "$0" "${args[@]}"
  done
  exit 0
fi
ublkvol_vm_select_kernel "$kernel"
cache="$UBLKVOL_VM_KERNEL_CACHE"
if [[ $print_dir == 1 ]]; then
  echo "$cache"
  exit 0
fi

# The cache is complete when it holds what the pins in lib.sh name (a changed pin fetches
# the new kernel).
pins="$(for e in "${UBLKVOL_VM_KERNEL_DEBS[@]}"; do echo "${e%% *} sha256=${e##* }"; done)"
cache_complete() {
  local m
  [[ -f "$cache/complete" && -f "$cache/vmlinuz" && -f "$cache/modules/ublk_drv.ko" &&
     -f "$cache/kernel-version" && -f "$cache/kernel-package" ]] &&
    [[ "$(sed 's/ mirror=.*//' "$cache/kernel-package")" == "$pins" ]] || return 1
  # A module added to UBLKVOL_VM_MODULES (lib.sh) after this cache was made fetches again.
  for m in "${UBLKVOL_VM_MODULES[@]}"; do
    [[ -f "$cache/modules/${m##*/}.ko" ]] || return 1
  done
}

if [[ $force == 0 ]] && cache_complete; then
  echo "VM kernel cached: $(cat "$cache/kernel-version") in $cache"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb xz modinfo flock; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /sbin/$tool || -x /usr/sbin/$tool ]] ||
    ublkvol_vm_die "'$tool' not found (run scripts/setup.sh)"
done
modinfo_bin="$(command -v modinfo || echo /sbin/modinfo)"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # concurrent callers (ctest -j, setup.sh) wait for the first fetch to finish
if [[ $force == 0 ]] && cache_complete; then
  echo "VM kernel cached: $(cat "$cache/kernel-version") in $cache"
  exit 0
fi

mirror="$(ublkvol_vm_find_mirror)"

work="$(mktemp -d "${TMPDIR:-/tmp}/ublkvol-fetch-kernel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/extract"

echo "Fetching the $UBLKVOL_VM_KERNEL_SUITE package index from $mirror (private apt state in $work)"
ublkvol_vm_kernel_apt_update "$work/apt" "$mirror" "$work/update.log"
for entry in "${UBLKVOL_VM_KERNEL_DEBS[@]}"; do
  echo "Downloading ${entry%% *}"
  deb="$(ublkvol_vm_kernel_download "$entry" "$work/download" "$work/download.log")"
  dpkg-deb -x "$deb" "$work/extract"
done
package="${UBLKVOL_VM_KERNEL_DEBS[*]%% *}"

# The image is boot/vmlinuz-<kver> (linux-image-*, 6.12) or usr/lib/modules/<kver>/vmlinuz
# (linux-binary-*, Debian's kernels since 6.19).
vmlinuz="$(find "$work/extract/boot" -name 'vmlinuz-*' -print -quit 2>/dev/null || true)"
if [[ -n "$vmlinuz" ]]; then
  kver="${vmlinuz##*/vmlinuz-}"
else
  vmlinuz="$(find "$work/extract/usr/lib/modules" "$work/extract/lib/modules" -mindepth 2 \
    -maxdepth 2 -name vmlinuz -print -quit 2>/dev/null || true)"
  [[ -n "$vmlinuz" ]] || ublkvol_vm_die "$package has no boot/vmlinuz-* nor lib/modules/*/vmlinuz"
  kver="$(basename "$(dirname "$vmlinuz")")"
fi
moddir=""
for d in "$work/extract/usr/lib/modules/$kver" "$work/extract/lib/modules/$kver"; do
  [[ -d "$d" ]] && { moddir="$d"; break; }
done
[[ -n "$moddir" ]] || ublkvol_vm_die "$package has no modules directory for $kver"

# Stage the result next to the cache and swap it in at the end, so an interrupted fetch
# never leaves a cache that looks complete.
stage="$cache/.stage.$$"
rm -rf "$stage"
mkdir -p "$stage/modules"
cp "$vmlinuz" "$stage/vmlinuz"
: >"$stage/modules/deps"

# Copy one module (by path under kernel/ or by name) and, recursively, its dependencies.
copy_module() {
  local rel="$1" src name deps dep
  if [[ "$rel" == */* ]]; then
    src="$moddir/kernel/$rel.ko.xz"
  else
    src="$(find "$moddir/kernel" -name "$rel.ko.xz" -print -quit)"
  fi
  [[ -f "$src" ]] || ublkvol_vm_die "module ${rel} not found in $package"
  name="$(basename "$src" .ko.xz)"
  [[ -f "$stage/modules/$name.ko" ]] && return 0
  xz -dc "$src" >"$stage/modules/$name.ko"
  deps="$("$modinfo_bin" -F depends "$stage/modules/$name.ko" | tr ',' ' ')"
  echo "$name: $deps" >>"$stage/modules/deps"
  for dep in $deps; do
    copy_module "${dep//-/_}"
  done
}
for m in "${UBLKVOL_VM_MODULES[@]}"; do
  copy_module "$m"
done
[[ "$("$modinfo_bin" -F vermagic "$stage/modules/ublk_drv.ko")" == "$kver "* ]] ||
  ublkvol_vm_die "ublk_drv.ko vermagic does not match kernel $kver"

echo "$kver" >"$stage/kernel-version"
for e in "${UBLKVOL_VM_KERNEL_DEBS[@]}"; do
  echo "${e%% *} sha256=${e##* } mirror=$mirror"
done >"$stage/kernel-package"

rm -rf "$cache/vmlinuz" "$cache/modules" "$cache/kernel-version" "$cache/kernel-package" \
  "$cache/complete"
mv "$stage/vmlinuz" "$stage/modules" "$stage/kernel-version" "$stage/kernel-package" "$cache/"
rmdir "$stage"
echo "$kver" >"$cache/complete"
echo "VM kernel ready: $kver ($package) in $cache"
