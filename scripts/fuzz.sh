#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan; the `fuzz` preset) and runs
# each one briefly, seeded from its committed corpus. New inputs go to a
# scratch directory, not into the repo; a crash leaves its reproducer in
# build/fuzz/artifacts/ and fails the script.
#
# Usage: scripts/fuzz.sh [--seconds N]   (default 60 per target)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_PER_TARGET="${2:?--seconds needs a number}"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$ROOT"
[[ -f build/fuzz/build.ninja ]] || cmake --preset fuzz
cmake --build --preset fuzz --target dbs_open_fuzz control_request_fuzz

# target binary : committed corpus directory
targets=("dbs_open_fuzz:tests/fuzz/corpus/dbs_open"
         "control_request_fuzz:tests/fuzz/corpus/control_request")
artifacts="$ROOT/build/fuzz/artifacts"
mkdir -p "$artifacts"
for entry in "${targets[@]}"; do
  name="${entry%%:*}"
  corpus="${entry#*:}"
  scratch="$(mktemp -d "${TMPDIR:-/tmp}/ublkvol-fuzz-$name.XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  echo "fuzz: $name for ${SECONDS_PER_TARGET}s (seed corpus $corpus)"
  "build/fuzz/tests/fuzz/$name" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts/$name-" -print_final_stats=1 \
    "$scratch" "$corpus"
  rm -rf "$scratch"
  trap - EXIT
done
echo "fuzz: all targets ran ${SECONDS_PER_TARGET}s without a finding"
