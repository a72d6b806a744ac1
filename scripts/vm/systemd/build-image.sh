#!/usr/bin/env bash
# Build (once) and cache the systemd VM test bed's disk image: a small Debian root
# filesystem with a real systemd userspace, the VM kernel's full module tree, and a tiny
# initramfs that mounts it. scripts/vm/systemd/run.sh calls this before every run; with a
# complete cache it only prints the image directory.
#
# Usage: scripts/vm/systemd/build-image.sh [--force] [--print-dir]
#   --force      rebuild the image (and its base) even when cached
#   --print-dir  print the image directory (built or not) and exit
#
# One image per VM kernel (UBLKVOL_VM_KERNEL: 6.12 or 7, see scripts/vm/lib.sh), each in
# that kernel's cache directory. Two cached stages in <kernel cache>/systemd/, so that changing the bed's configuration
# (image/*) does not download and install packages again:
#   base-<key>.tar  the package part: mmdebstrap minbase + packages + the kernel's module
#                   tree (depmod'ed). Key: suite, apt sources, package list, kernel
#                   package, base_recipe below (bump it when changing steps 1-2).
#   <key>/          the image. Key: the base's key + this script + image/*.
#     rootfs.img    ext4 image (3 GiB sparse) of the base + the bed's configuration;
#                   read-only: every run boots a qcow2 overlay on top of it
#     initrd.cpio   busybox (static) + the modules that mount the root (virtio_blk, ext4
#                   and their dependencies) + /init (image/initrd-init.sh), which
#                   switch_roots into systemd
#     rootfs.list   every path in the image (run.sh skips libraries the image has)
#     info          suite, kernel, build times, sizes
#     complete      written last
# Change an input and the next run rebuilds what depends on it (~3 min for the base,
# ~20 s for the image); older bases and images are removed.
#
# The root filesystem uses the host's Debian release (VERSION_CODENAME in /etc/os-release,
# bookworm here) so that binaries built on the host run in the guest, and the host's own apt
# sources (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list): the mirror the
# machine installs from. The kernel modules come from the same pinned kernel package as
# scripts/vm/fetch-kernel.sh's vmlinuz (the last entry of UBLKVOL_VM_KERNEL_DEBS in lib.sh,
# fetched again with a private apt state and checked against the pinned sha256;
# fetch-kernel.sh keeps only a few modules).
#
# Needs root (as on the project's machines and CI): mmdebstrap --mode=root (a chroot in
# which mmdebstrap mounts proc/sys/dev), and a root-owned tree for mke2fs -d. Nothing is
# loop-attached or mounted on the host for the image: mke2fs -d writes the ext4 image
# straight from the directory.
#
# Environment: UBLKVOL_VM_CACHE, UBLKVOL_VM_KERNEL, UBLKVOL_VM_MIRROR (one mirror URL instead of the host's
# sources), UBLKVOL_VM_SD_SUITE (Debian suite instead of the host's).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vm_dir="$(dirname "$script_dir")"
# shellcheck source-path=SCRIPTDIR/..
source "$vm_dir/lib.sh"

force=0 print_dir=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-dir) print_dir=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) ublkvol_vm_die "unknown argument '$arg' (try --help)" ;;
  esac
done

# Packages on top of minbase: what a ublk-volumed host runs (systemd, udev, kmod for
# modprobe) and what the tests use (fio, e2fsprogs, util-linux, procps for ps/pgrep).
packages=(systemd systemd-sysv udev kmod fio e2fsprogs util-linux procps)
# No manuals, docs or translations in the image (~70 MB less).
dpkg_excludes=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
)
# Version of the base recipe (steps 1 and 2 below): part of the base's key.
base_recipe=1
# Image size (sparse; a run's overlay only stores what the guest writes) and the
# bytes-per-inode ratio (few, large files: smaller inode tables).
image_size=3G
inode_ratio=32768

ublkvol_vm_select_kernel "$UBLKVOL_VM_KERNEL"
cache="$UBLKVOL_VM_KERNEL_CACHE"
sd_cache="$cache/systemd"

# --- Inputs -------------------------------------------------------------------------------
suite="${UBLKVOL_VM_SD_SUITE:-}"
if [[ -z "$suite" ]]; then
  suite="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
  [[ -n "$suite" ]] ||
    ublkvol_vm_die "cannot tell this host's Debian release from /etc/os-release; set UBLKVOL_VM_SD_SUITE"
fi

# The apt sources the image is built from (mmdebstrap also leaves them in the image).
host_sources() {
  if [[ -n "${UBLKVOL_VM_MIRROR:-}" ]]; then
    echo "deb $UBLKVOL_VM_MIRROR $suite main"
    return
  fi
  local f found=0
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] || continue
    cat "$f"
    echo
    found=1
  done
  if [[ -r /etc/apt/sources.list ]] && grep -qE '^deb ' /etc/apt/sources.list; then
    grep -E '^deb ' /etc/apt/sources.list
    found=1
  fi
  [[ $found == 1 ]] || echo "deb http://deb.debian.org/debian $suite main"
}
sources_text="$(host_sources)"

# The VM kernel (vmlinuz + a few modules) must be there: its package names the modules.
"$vm_dir/fetch-kernel.sh" --kernel "$UBLKVOL_VM_KERNEL" >/dev/null ||
  ublkvol_vm_die "cannot fetch the VM kernel (scripts/vm/fetch-kernel.sh failed)"
kver="$(cat "$cache/kernel-version")"
kernel_package_line="$(cat "$cache/kernel-package")"
[[ -n "$kver" && -n "$kernel_package_line" ]] ||
  ublkvol_vm_die "the VM kernel cache in $cache is incomplete: run scripts/vm/fetch-kernel.sh --force"

base_key() {
  {
    echo "recipe $base_recipe suite $suite"
    echo "packages ${packages[*]} ${dpkg_excludes[*]}"
    echo "kernel $kernel_package_line"
    echo "$sources_text"
  } | sha256sum | cut -c1-16
}
image_key() {
  {
    echo "base $1 size $image_size $inode_ratio"
    cat "$script_dir/build-image.sh"
    (cd "$script_dir/image" && find . -type f | LC_ALL=C sort | xargs cat)
  } | sha256sum | cut -c1-16
}
bkey="$(base_key)"
key="$(image_key "$bkey")"
base_tar="$sd_cache/base-$bkey.tar"
out="$sd_cache/$key"
if [[ $print_dir == 1 ]]; then
  echo "$out"
  exit 0
fi

image_complete() {
  [[ -f "$out/complete" && -f "$out/rootfs.img" && -f "$out/initrd.cpio" && -f "$out/rootfs.list" ]]
}
if [[ $force == 0 ]] && image_complete; then
  echo "$out"
  exit 0
fi

[[ $(id -u) == 0 ]] ||
  ublkvol_vm_die "building the systemd test image needs root (mmdebstrap --mode=root; root-owned files for mke2fs -d)"
PATH="$PATH:/usr/sbin:/sbin"
for tool in mmdebstrap mke2fs depmod modprobe dpkg-deb apt-get cpio xz tar flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 ||
    ublkvol_vm_die "'$tool' not found: run scripts/setup.sh (packages mmdebstrap, e2fsprogs, kmod, ...)"
done
if [[ ! -x "$UBLKVOL_VM_BUSYBOX" ]] || ldd "$UBLKVOL_VM_BUSYBOX" >/dev/null 2>&1; then
  ublkvol_vm_die "$UBLKVOL_VM_BUSYBOX missing or not static: install busybox-static"
fi

mkdir -p "$sd_cache"
exec 9>"$sd_cache/.lock"
flock 9 # concurrent runs (ctest -j) wait for the first build, then reuse it
if [[ $force == 0 ]] && image_complete; then
  echo "$out"
  exit 0
fi
[[ $force == 0 ]] || rm -f "$base_tar"

started=$SECONDS
work="$sd_cache/.build.$$"
rm -rf "$work"
mkdir -p "$work"
# shellcheck disable=SC2317  # invoked by trap
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root="$work/root"
log="$work/build.log"

# --- 1.+2. the base: packages, then the kernel's module tree ---------------------------------
build_base() {
  ublkvol_vm_log "building the systemd test image's base ($suite, mmdebstrap --mode=root, ~3 min)"
  printf '%s\n' "$sources_text" >"$work/apt.sources"
  if ! mmdebstrap --mode=root --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
      "${dpkg_excludes[@]}" --aptopt='Acquire::Retries "3"' \
      "$suite" "$root" "$work/apt.sources" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    ublkvol_vm_die "mmdebstrap could not build the $suite root filesystem (sources:" \
      "$(grep -m3 -oE 'https?://[^ ]+' "$work/apt.sources" | tr '\n' ' '))"
  fi
  local mmdebstrap_s=$((SECONDS - started))

  # The pinned package with the modules (lib.sh), from the mirror fetch-kernel.sh used,
  # with a private apt state: the system's apt state is never touched.
  local kmirror deb kmods d
  kmirror="${kernel_package_line##*mirror=}"
  mkdir -p "$work/kx"
  ublkvol_vm_kernel_apt_update "$work/kapt" "$kmirror" "$work/kapt.log"
  deb="$(ublkvol_vm_kernel_download "${UBLKVOL_VM_KERNEL_DEBS[-1]}" "$work/kdeb" "$work/kdeb.log")"
  dpkg-deb -x "$deb" "$work/kx"
  kmods=""
  for d in "$work/kx/usr/lib/modules/$kver" "$work/kx/lib/modules/$kver"; do
    [[ -d "$d" ]] && { kmods="$d"; break; }
  done
  [[ -n "$kmods" ]] || ublkvol_vm_die "${UBLKVOL_VM_KERNEL_DEBS[-1]%% *} has no modules for $kver"
  mkdir -p "$root/usr/lib/modules"
  mv "$kmods" "$root/usr/lib/modules/$kver"
  rm -rf "$work/kx" "$work/kdeb" "$work/kapt"
  depmod -b "$root" "$kver"
  [[ -n "$(modprobe -d "$root" -S "$kver" --show-depends ublk_drv 2>/dev/null)" ]] ||
    ublkvol_vm_die "ublk_drv is not in ${UBLKVOL_VM_KERNEL_DEBS[-1]%% *}'s module tree"
  echo "mmdebstrap_s=$mmdebstrap_s base_s=$((SECONDS - started))" >"$root/.ublkvol-base-info"
  # Uncompressed: unpacking it for a new image takes seconds.
  tar -C "$root" --numeric-owner -cf "$base_tar.tmp.$$" .
  mv -f "$base_tar.tmp.$$" "$base_tar"
}
if [[ -f "$base_tar" ]]; then
  ublkvol_vm_log "building the systemd test image from the cached base ${base_tar##*/}"
  mkdir -p "$root"
  tar -C "$root" --numeric-owner -xf "$base_tar"
else
  build_base
fi
base_info="$(cat "$root/.ublkvol-base-info")"
rm -f "$root/.ublkvol-base-info"

# --- 3. initramfs: busybox + root-mounting modules + /init ----------------------------------
ird="$work/initrd"
mkdir -p "$ird"/bin "$ird"/dev "$ird"/proc "$ird"/sys "$ird"/newroot "$ird"/lib/modules
cp "$UBLKVOL_VM_BUSYBOX" "$ird/bin/busybox"
for applet in sh mount umount switch_root insmod sleep cat echo mkdir ls; do
  ln -s busybox "$ird/bin/$applet"
done
# Load order from modprobe (dependencies first); builtins are skipped. A module the tree
# does not have is built in: the 7.x packages ship no modules.builtin, so modprobe cannot
# say "builtin" for ext4 there (the kernel mounts the root all the same).
: >"$ird/lib/modules/load-order"
for m in virtio_pci virtio_blk ext4; do
  if ! modprobe -d "$root" -S "$kver" --show-depends "$m" >/dev/null 2>&1; then
    ublkvol_vm_log "$m: not a module of $kver (built in)"
    continue
  fi
  while read -r kind path _; do
    [[ "$kind" == insmod ]] || continue
    name="$(basename "$path")"
    name="${name%.xz}"
    [[ -f "$ird/lib/modules/$name" ]] && continue
    case "$path" in
      *.xz) xz -dc "$path" >"$ird/lib/modules/$name" ;;
      *) cp "$path" "$ird/lib/modules/$name" ;;
    esac
    echo "$name" >>"$ird/lib/modules/load-order"
  done < <(modprobe -d "$root" -S "$kver" --show-depends "$m")
done
install -m 0755 "$script_dir/image/initrd-init.sh" "$ird/init"
(cd "$ird" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --owner=0:0 --quiet) >"$work/initrd.cpio"

# --- 4. the bed's configuration ---------------------------------------------------------------
sysd="$root/etc/systemd/system"
echo ublkvol-sd-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tublkvol-sd-vm\n' >"$root/etc/hosts"
# A fixed machine id: with none, every boot of the (throw-away) overlay would be a first
# boot (presets applied again, ConditionFirstBoot units run).
echo "$key$key" >"$root/etc/machine-id"
printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t0\n' >"$root/etc/fstab"
# /tmp on tmpfs, as in the initramfs bed.
mkdir -p "$sysd/local-fs.target.wants" "$sysd/multi-user.target.wants"
ln -sf /usr/share/systemd/tmp.mount "$sysd/tmp.mount"
ln -sf ../tmp.mount "$sysd/local-fs.target.wants/tmp.mount"
# Boot to multi-user.target. Nothing logs in (no gettys on the console the test writes
# to), no periodic jobs, and no module loads the tests do not need: under TCG each costs
# boot time (modprobe decompresses the module in emulated code).
ln -sf /lib/systemd/system/multi-user.target "$sysd/default.target"
for unit in getty.target getty@tty1.service serial-getty@ttyS0.service getty-static.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer systemd-pstore.service modprobe@dm_mod.service \
    modprobe@fuse.service modprobe@drm.service modprobe@efi_pstore.service \
    sys-fs-fuse-connections.mount systemd-binfmt.service proc-sys-fs-binfmt_misc.automount; do
  rm -f "$sysd"/*.wants/"$unit"
  ln -sf /dev/null "$sysd/$unit"
done
# udev would load kvm for the emulated CPU's VMX/SVM flag: useless in the guest.
printf 'blacklist kvm\nblacklist kvm_intel\nblacklist kvm_amd\n' >"$root/etc/modprobe.d/ublkvol-bed.conf"
mkdir -p "$root/etc/systemd/journald.conf.d" "$root/etc/systemd/system.conf.d" \
  "$root/usr/local/sbin" "$root/opt/test"
install -m 0644 "$script_dir/image/journald.conf" "$root/etc/systemd/journald.conf.d/ublkvol-bed.conf"
install -m 0644 "$script_dir/image/system.conf" "$root/etc/systemd/system.conf.d/ublkvol-bed.conf"
install -m 0755 "$script_dir/image/ublkvol-bed-boot" "$root/usr/local/sbin/ublkvol-bed-boot"
install -m 0755 "$script_dir/image/ublkvol-bed-emergency" "$root/usr/local/sbin/ublkvol-bed-emergency"
install -m 0644 "$script_dir/image/ublkvol-bed.service" "$sysd/ublkvol-bed.service"
ln -sf ../ublkvol-bed.service "$sysd/multi-user.target.wants/ublkvol-bed.service"
for unit in emergency.service rescue.service; do
  mkdir -p "$sysd/$unit.d"
  install -m 0644 "$script_dir/image/emergency.conf" "$sysd/$unit.d/ublkvol-bed.conf"
done

# --- 5. the ext4 image ------------------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | sed 's/^\.//' | LC_ALL=C sort) >"$work/rootfs.list"
root_mib="$(du -sm "$root" | cut -f1)"
# Inode tables and the journal are written now, not lazily by the guest kernel (that would
# cost every TCG boot CPU time and grow each run's overlay).
if ! mke2fs -q -t ext4 -L ublkvol-root -d "$root" -i "$inode_ratio" -m 0 \
    -E lazy_itable_init=0,lazy_journal_init=0 "$work/rootfs.img" "$image_size" >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  ublkvol_vm_die "mke2fs -d could not write the root image"
fi
chmod 0444 "$work/rootfs.img"
{
  echo "suite=$suite packages=${packages[*]}"
  echo "kernel=$kver"
  echo "base: $base_info; image_s=$((SECONDS - started))"
  echo "rootfs_mib=$root_mib image_allocated_mib=$(du -m "$work/rootfs.img" | cut -f1) initrd_kib=$(du -k "$work/initrd.cpio" | cut -f1)"
} >"$work/info"

rm -rf "$out"
mkdir -p "$out"
mv "$work/rootfs.img" "$work/initrd.cpio" "$work/rootfs.list" "$work/info" "$out/"
echo "$key" >"$out/complete"
# Keep the cache small: drop bases and images built from other inputs.
for d in "$sd_cache"/*/; do
  [[ "${d%/}" == "$out" ]] || rm -rf "${d%/}"
done
find "$sd_cache" -maxdepth 1 -name 'base-*.tar' ! -name "${base_tar##*/}" -delete
ublkvol_vm_log "systemd test image ready in $((SECONDS - started)) s: $(tr '\n' ' ' <"$out/info")"
echo "$out"
