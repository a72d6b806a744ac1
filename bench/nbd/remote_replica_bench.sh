#!/usr/bin/env bash
# A replicated volume with one remote replica (NBD over 127.0.0.1) vs both
# replicas local, 4K randwrite at QD 32: IOPS, the ratio, where the time
# goes (volume and NBD latency p50/p99, CPU per I/O of the engine and of
# the server), and the full rebuild rate of a remote replica (MB/s).
# Figures, not a test; docs/nbd.md.
#
#   bench/nbd/remote_replica_bench.sh [--dir DIR] [--size 256M] [--runtime 10] [--qd 32]
#                                     [--server nbdkit|qemu-nbd] [--build build/release] [--json]
# DIR must be on a filesystem with O_DIRECT (ext4, xfs; not tmpfs).
set -euo pipefail

build=build/release args=() server=nbdkit
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --server) server=$2; args+=("$1" "$2"); shift 2 ;;
    --dir|--size|--runtime|--qd) args+=("$1" "$2"); shift 2 ;;
    --json) args+=("$1"); shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "remote_replica_bench: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
command -v "$server" >/dev/null ||
  { echo "remote_replica_bench: $server is not installed" >&2; exit 1; }
bin=$build/bench/nbd/remote_replica_bench
[[ -x $bin ]] || { echo "remote_replica_bench: build $bin first" >&2; exit 1; }
exec "$bin" "${args[@]}"
