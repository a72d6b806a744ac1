#!/usr/bin/env bash
# The one set-up command. On a fresh Debian 12 machine it installs every
# package the build, tests, VM test bed and benchmarks need, fetches and
# caches the VM test kernel, and builds the project (Release preset).
#
# Idempotent: when everything is already in place it installs nothing,
# downloads nothing and the build is a no-op.
#
# Usage: scripts/setup.sh [--no-build] [--preset NAME]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET=release
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --preset) PRESET="${2:?--preset needs a name}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# Every Debian package the project needs, by purpose.
PACKAGES=(
  # toolchain
  build-essential g++ cmake ninja-build pkg-config clang clang-format clang-tidy
  libclang-rt-14-dev git
  # libraries
  liburing-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  # backups (src/backup): chunk compression, chunk hashes
  libzstd-dev libssl-dev
  # NBD export (src/nbd/server): TLS; libnbd, nbdinfo/nbdcopy and nbdkit for its tests
  libgnutls28-dev libnbd-dev libnbd-bin nbdkit
  # benchmarks and e2e workloads
  fio gnuplot-nox
  # VM test bed (scripts/vm): emulator, initramfs contents, kernel fetch
  qemu-system-x86 busybox-static cpio xz-utils e2fsprogs util-linux kmod
  # systemd VM test bed (scripts/vm/systemd): root image builder, qcow2 overlays
  mmdebstrap qemu-utils
  apt-utils dpkg-dev ca-certificates debian-archive-keyring gpgv
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: not root and no sudo: cannot install packages" >&2; exit 1; }
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
  echo "setup: all ${#PACKAGES[@]} packages present"
fi

# VM test-bed kernel + ublk_drv module (cached; a no-op when present).
"$ROOT/scripts/vm/fetch-kernel.sh" --kernel all

if [[ $BUILD -eq 1 ]]; then
  cd "$ROOT"
  if [[ ! -f "build/$PRESET/build.ninja" ]]; then
    cmake --preset "$PRESET"
  fi
  cmake --build --preset "$PRESET"
fi
echo "setup: done"
