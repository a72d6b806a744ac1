#!/usr/bin/env bash
# Fetch the VM test bed's kernel: Debian trixie's 6.12 cloud kernel and ublk_drv.ko.
#
# Usage: scripts/vm/fetch-kernel.sh [--force] [--print-dir]
#
# Downloads linux-image-6.12.*-cloud-amd64-unsigned with apt-get download from this
# machine's own Debian mirror, using a PRIVATE apt state (lists, cache, status, sources)
# in a temporary directory: the system's apt state is never read for packages nor
# written. Signatures are verified the normal apt way: trixie's InRelease must carry a
# good signature from a key in /usr/share/keyrings/debian-archive-keyring.gpg (it is
# signed by the "Debian Archive Automatic Signing Key" 13/trixie and 12/bookworm keys,
# both in Debian 12's debian-archive-keyring), and the .deb must match the hash in the
# signed Packages index.
#
# Result in $UBLKVOL_VM_CACHE (default ~/.cache/ublk-volumed/vm):
#   vmlinuz            the kernel image
#   modules/*.ko       ublk_drv and a few block modules (uncompressed), modules/deps
#   kernel-version     uname -r of the guest, e.g. 6.12.107+deb13-cloud-amd64
#   kernel-package     package=version that was fetched, and its sha256
#   complete           written last; its presence makes a re-run a no-op
#
# Environment: UBLKVOL_VM_CACHE, UBLKVOL_VM_MIRROR (override the mirror URL),
#              UBLKVOL_VM_KERNEL_PACKAGE (exact package name instead of the newest).
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "$script_dir/lib.sh"

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-dir) echo "$UBLKVOL_VM_CACHE"; exit 0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) ublkvol_vm_die "unknown argument '$arg' (try --help)" ;;
  esac
done

cache="$UBLKVOL_VM_CACHE"

cache_complete() {
  [[ -f "$cache/complete" && -f "$cache/vmlinuz" && -f "$cache/modules/ublk_drv.ko" &&
     -f "$cache/kernel-version" ]]
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

keyring="${UBLKVOL_VM_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}"
[[ -r "$keyring" ]] ||
  ublkvol_vm_die "$keyring missing: install debian-archive-keyring (it holds the key signing $UBLKVOL_VM_SUITE)"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # concurrent callers (ctest -j, setup.sh) wait for the first fetch to finish
if [[ $force == 0 ]] && cache_complete; then
  echo "VM kernel cached: $(cat "$cache/kernel-version") in $cache"
  exit 0
fi

# This machine's Debian mirror: the first non-security URIs line of the deb822 sources,
# else the first such 'deb' line of sources.list, else deb.debian.org.
find_mirror() {
  local line uri
  if [[ -n "${UBLKVOL_VM_MIRROR:-}" ]]; then
    echo "$UBLKVOL_VM_MIRROR"; return
  fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] || continue
    while read -r line; do
      uri="${line#URIs:}"
      for u in $uri; do
        [[ "$u" == *security* ]] && continue
        [[ "$u" == http*://* ]] && { echo "$u"; return; }
      done
    done < <(grep -E '^URIs:' "$f")
  done
  if [[ -r /etc/apt/sources.list ]]; then
    uri="$(awk '$1 == "deb" && $2 !~ /security/ && $2 ~ /^http/ { print $2; exit }' \
      /etc/apt/sources.list)"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  fi
  echo "http://deb.debian.org/debian"
}
mirror="$(find_mirror)"

work="$(mktemp -d "${TMPDIR:-/tmp}/ublkvol-fetch-kernel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/apt/{lists/partial,cache/archives/partial} "$work/download" "$work/extract"
: >"$work/apt/status"
cat >"$work/apt/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $UBLKVOL_VM_SUITE
Components: main
Signed-By: $keyring
EOF
# apt drops root privileges to _apt for downloads; let it write our private dirs.
if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then
  chmod 755 "$work"
  chown -R _apt "$work/apt/lists" "$work/download"
fi

apt_opts=(
  -o "Dir::State=$work/apt"
  -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::State::status=$work/apt/status"
  -o "Dir::Cache=$work/apt/cache"
  -o "Dir::Etc::SourceList=$work/apt/trixie.sources"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "APT::Architectures::=amd64"
  -o "Acquire::Languages=none"
  -o "Acquire::Retries=2"
)

echo "Fetching the $UBLKVOL_VM_SUITE package index from $mirror (private apt state in $work)"
if ! apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 ||
   grep -qE '^(W|E|Err):' "$work/update.log"; then
  cat "$work/update.log" >&2
  if grep -qiE 'NO_PUBKEY|not signed|signature|EXPKEYSIG|BADSIG' "$work/update.log"; then
    ublkvol_vm_die "the $UBLKVOL_VM_SUITE index from $mirror failed signature verification" \
      "against $keyring (update debian-archive-keyring?). Refusing to continue unverified."
  fi
  ublkvol_vm_die "cannot fetch the $UBLKVOL_VM_SUITE index from mirror $mirror" \
    "(unreachable? set UBLKVOL_VM_MIRROR=http://.../debian to use another one)"
fi
ls "$work"/apt/lists/*_dists_"${UBLKVOL_VM_SUITE}"_InRelease >/dev/null 2>&1 ||
  ublkvol_vm_die "no signed InRelease for $UBLKVOL_VM_SUITE from $mirror"

package="${UBLKVOL_VM_KERNEL_PACKAGE:-}"
if [[ -z "$package" ]]; then
  # Newest 6.12 cloud kernel in the suite (usually there is exactly one; during a point
  # release there can be two).
  package="$(apt-cache "${apt_opts[@]}" pkgnames linux-image-6.12 |
    grep -E "$UBLKVOL_VM_KERNEL_PATTERN" | sort -V | tail -n1 || true)"
  [[ -n "$package" ]] ||
    ublkvol_vm_die "no package matching $UBLKVOL_VM_KERNEL_PATTERN in $UBLKVOL_VM_SUITE at $mirror"
fi
version="$(apt-cache "${apt_opts[@]}" show --no-all-versions "$package" |
  awk '/^Version:/ { print $2; exit }')"
[[ -n "$version" ]] || ublkvol_vm_die "package $package not found in $UBLKVOL_VM_SUITE"

echo "Downloading $package ($version)"
if ! (cd "$work/download" && apt-get "${apt_opts[@]}" download "$package=$version") \
    >"$work/download.log" 2>&1; then
  cat "$work/download.log" >&2
  ublkvol_vm_die "apt-get download $package=$version failed (mirror $mirror)"
fi
deb="$(ls "$work"/download/*.deb)"
dpkg-deb -x "$deb" "$work/extract"

vmlinuz="$(find "$work/extract/boot" -name 'vmlinuz-*' -print -quit 2>/dev/null || true)"
[[ -n "$vmlinuz" ]] || ublkvol_vm_die "$package has no boot/vmlinuz-*"
kver="${vmlinuz##*/vmlinuz-}"
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
echo "$package=$version sha256=$(sha256sum "$deb" | cut -d' ' -f1) mirror=$mirror" \
  >"$stage/kernel-package"

rm -rf "$cache/vmlinuz" "$cache/modules" "$cache/kernel-version" "$cache/kernel-package" \
  "$cache/complete"
mv "$stage/vmlinuz" "$stage/modules" "$stage/kernel-version" "$stage/kernel-package" "$cache/"
rmdir "$stage"
echo "$kver" >"$cache/complete"
echo "VM kernel ready: $kver ($package $version) in $cache"
