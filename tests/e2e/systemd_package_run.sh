#!/usr/bin/env bash
# Host side of the systemd bed's package steps (tests/e2e/systemd_package.sh): builds
# what they install, then runs the bed.
#   systemd_package_run.sh BUILD_DIR -- scripts/vm/systemd/run.sh [--kernel K] ARGS...
# Into BUILD_DIR/e2e-package/:
#   debs/  ublk-volumed_<V>_amd64.deb (this build, cpack) and ublk-volumed_<V>+up1_amd64.deb
#          (the same package repacked with a higher version: the upgrade);
#   repo/  a flat apt repository (Packages + .debs) with what the .deb depends on that the
#          bed's image lacks, fetched with `apt-get download` from the host's apt sources
#          (the image is built from the same Debian release and sources) and kept for the
#          next run,
# and passes both to the guest (--file ...:/opt/test/files/pkg, .../pkg-repo), so that
# `apt install ./ublk-volumed_*.deb` in the offline guest resolves the dependencies as a
# user's apt does from the archive. Exit status: run.sh's, or 125 if this set-up fails.
set -euo pipefail
die() { echo "systemd_package_run.sh: $*" >&2; exit 125; }
[[ $# -ge 3 && "$2" == -- ]] || die "usage: systemd_package_run.sh BUILD_DIR -- RUN_SH ARGS..."
build=$(cd "$1" && pwd) || die "no build directory $1"
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kernel=${UBLKVOL_VM_KERNEL:-6.12}
args=("$@")
for ((i = 1; i < ${#args[@]} - 1; i++)); do
  [[ "${args[i]}" == --kernel ]] && kernel=${args[i + 1]}
done

out=$build/e2e-package
rm -rf "$out/debs" "$out/cpack"
mkdir -p "$out/debs" "$out/repo"
version=$(sed -n 's/^set(CPACK_PACKAGE_VERSION "\(.*\)")$/\1/p' "$build/CPackConfig.cmake")
[[ -n "$version" ]] || die "no CPACK_PACKAGE_VERSION in $build/CPackConfig.cmake"
(cd "$out" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$out/cpack" >"$out/cpack.log" 2>&1) ||
  { cat "$out/cpack.log" >&2; die "cpack -G DEB failed"; }
debs=("$out/cpack/ublk-volumed_${version}_"*.deb)
[[ -e "${debs[0]}" ]] || die "cpack made no ublk-volumed_${version}_*.deb"
deb=$out/debs/${debs[0]##*/}
mv "${debs[0]}" "$deb"
# The upgrade: the same package with a higher version (repacked: cpack strips and runs
# dpkg-shlibdeps again for the same binaries otherwise).
rm -rf "$out/repack"
dpkg-deb -R "$deb" "$out/repack" || die "dpkg-deb -R $deb failed"
sed -i "s/^Version: .*/Version: $version+up1/" "$out/repack/DEBIAN/control"
dpkg-deb --root-owner-group -b "$out/repack" "$out/debs/ublk-volumed_${version}+up1_amd64.deb" \
  >/dev/null || die "dpkg-deb -b (version $version+up1) failed"
rm -rf "$out/repack"

# What the image has (its dpkg database, from the image's file list).
image=$(UBLKVOL_VM_KERNEL=$kernel "$here/scripts/vm/systemd/build-image.sh" | tail -n 1)
[[ -r "$image/rootfs.list" ]] || die "no rootfs.list in the systemd image directory '$image'"
have=$(grep -o '^/var/lib/dpkg/info/[^/]*\.list$' "$image/rootfs.list" |
  sed 's|.*/||; s/\.list$//; s/:amd64$//' | sort -u)
# The dependency closure of the .deb's Depends (first alternative of each), minus that.
# A virtual name (libspdlog1.10-fmt9) stands for the package that provides it.
real_package() {
  if [[ -n "$(apt-cache show "$1" 2>/dev/null)" ]]; then
    echo "$1"
  else
    apt-cache showpkg "$1" | sed -n '/^Reverse Provides:/,$p' | sed -n '2s/ .*//p'
  fi
}
direct=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/[(|].*//; s/ //g' | grep -v '^$' |
  while read -r name; do real_package "$name"; done)
# shellcheck disable=SC2086  # one package name per word
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances $direct | grep -v '^ ' | grep -v '^<' | sort -u)
missing=$(comm -23 <(echo "$closure") <(echo "$have"))
for pkg in $missing; do
  compgen -G "$out/repo/${pkg}_*.deb" >/dev/null && continue  # fetched by an earlier run
  (cd "$out/repo" && apt-get download "$pkg" >/dev/null 2>"$out/download.log") ||
    { cat "$out/download.log" >&2; die "apt-get download $pkg failed"; }
done
# apt-get download writes an epoch's ':' as %3a, which apt would decode in the index's
# Filename and not find: name the files without it.
for f in "$out"/repo/*%3a*.deb; do
  [[ -e "$f" ]] && mv "$f" "${f//%3a/-}"
done
(cd "$out/repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null) ||
  die "dpkg-scanpackages failed in $out/repo"
echo "systemd_package_run.sh: $(cd "$out/debs" && echo *.deb); dependencies the image lacks: ${missing//$'\n'/ }"
exec "${args[@]}" --file "$out/debs:/opt/test/files/pkg" --file "$out/repo:/opt/test/files/pkg-repo"
