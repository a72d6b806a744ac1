#!/usr/bin/env bash
# The one test command: builds if needed, runs every unit test and every VM
# end-to-end test through ctest, prints ctest's summary, then (full release
# run only) fuzzes each libFuzzer target briefly, and exits non-zero on any
# failure.
#
# Usage: scripts/test.sh [--preset release|debug|asan|tsan] [extra ctest args]
#   --preset asan   ASan+UBSan build, unit and crash tests only
#   --preset tsan   TSan build, unit and threaded (tsan) tests only
#   e.g. scripts/test.sh -L unit        only unit tests
#        scripts/test.sh -R vm_smoke    one test by name
# The full run (release preset, no ctest arguments) also builds the
# thread-safety-annotated libraries with Clang's analysis (`thread-safety`
# preset) and ends with
# scripts/fuzz.sh --seconds ${UBLKVOL_FUZZ_SECONDS:-30}; UBLKVOL_FUZZ_SECONDS=0
# skips it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET=release
if [[ "${1:-}" == "--preset" ]]; then
  PRESET="${2:?--preset needs a name}"
  shift 2
fi
case "$PRESET" in
  release|debug|asan|tsan) ;;
  *) echo "test.sh: unknown preset '$PRESET' (release, debug, asan, tsan)" >&2; exit 2 ;;
esac

cd "$ROOT"
if [[ ! -f "build/$PRESET/build.ninja" ]]; then
  cmake --preset "$PRESET"
fi
cmake --build --preset "$PRESET"

# Unit tests run two at a time; each VM test declares PROCESSORS 2 in CMake
# (a VM uses both cores), so ctest runs VMs one at a time.
ctest --preset "$PRESET" -j2 "$@"

# The full run also builds the libraries carrying Clang thread-safety
# annotations (include/ublkvol/common/thread_annotations.h) with the analysis
# as errors (`thread-safety` preset): a compile of those targets only, no tests.
if [[ "$PRESET" == release && $# -eq 0 ]]; then
  if [[ ! -f build/thread-safety/build.ninja ]]; then
    cmake --preset thread-safety
  fi
  cmake --build --preset thread-safety --target ublkvol_replicated
fi

# ctest replays the committed fuzz corpora in every build; the full run also
# fuzzes each target for a short while (clang `fuzz` preset, ASan+UBSan).
FUZZ_SECONDS="${UBLKVOL_FUZZ_SECONDS:-30}"
if [[ "$PRESET" == release && $# -eq 0 && "$FUZZ_SECONDS" != 0 ]]; then
  "$ROOT/scripts/fuzz.sh" --seconds "$FUZZ_SECONDS"
fi
