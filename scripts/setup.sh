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
  # backups (src/backup): chunk compression, chunk hashes, the S3 target; the
  # S3 test server (s3rver, from npm: below)
  libzstd-dev libssl-dev libcurl4-openssl-dev nodejs
  # benchmarks and e2e workloads
  fio gnuplot-nox
  # NBD (src/nbd, docs/nbd.md, docs/nbd-export.md): libnbd for remote replicas,
  # GnuTLS for the export; nbdinfo/nbdcopy and nbdkit for the tests
  libnbd-dev libnbd-bin nbdkit libgnutls28-dev
  # the remote replica partition test (ip netns, veth)
  iproute2
  # VM test bed (scripts/vm): emulator, initramfs contents, kernel fetch
  qemu-system-x86 busybox-static cpio xz-utils e2fsprogs util-linux kmod
  # systemd VM test bed (scripts/vm/systemd): root image builder, qcow2 overlays
  mmdebstrap qemu-utils
  apt-utils dpkg-dev ca-certificates debian-archive-keyring gpgv
)

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  SUDO=(sudo)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}"
  if [[ ${#SUDO[@]} -gt 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: not root and no sudo: cannot install packages" >&2; exit 1; }
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
  echo "setup: all ${#PACKAGES[@]} packages present"
fi

# The S3-compatible server the backup tests start (tests/backup/s3_server.h):
# s3rver from npm, pinned in tests/backup/s3rver/package-lock.json, installed
# into tests/backup/s3rver/node_modules (a no-op when present). Debian's nodejs
# has no npm; NodeSource's carries its own.
S3RVER_DIR="$ROOT/tests/backup/s3rver"
if [[ ! -x "$S3RVER_DIR/node_modules/.bin/s3rver" ]]; then
  if ! command -v npm >/dev/null; then
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends npm </dev/null
  fi
  echo "setup: installing s3rver (npm ci in $S3RVER_DIR)"
  npm ci --prefix "$S3RVER_DIR" --no-audit --no-fund </dev/null
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
