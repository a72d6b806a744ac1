#!/usr/bin/env bash
# Checks the project's C++ against .clang-format and .clang-tidy.
#
# Usage: scripts/lint.sh [--format-only] [--fix] [--build-dir DIR] [--jobs N]
#   --format-only  skip clang-tidy (fast; this is what ctest's lint test runs)
#   --fix          rewrite files with clang-format instead of checking
#   --build-dir    where compile_commands.json lives (default build/release)
#   --jobs         clang-tidy processes at once (default: the CPU count); a whole run
#                  is ~20 s of CPU per file
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FORMAT_ONLY=0
FIX=0
BUILD_DIR="$ROOT/build/release"
JOBS="$(nproc)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --format-only) FORMAT_ONLY=1 ;;
    --fix) FIX=1 ;;
    --build-dir) BUILD_DIR="${2:?}"; shift ;;
    --jobs) JOBS="${2:?}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "lint.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

cd "$ROOT"
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.h' '*.cpp' | grep -v '^build/' || true)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "lint: no C++ files"; exit 0
fi

if [[ $FIX -eq 1 ]]; then
  clang-format -i "${files[@]}"
  echo "lint: formatted ${#files[@]} files"
  exit 0
fi

status=0
if ! clang-format --dry-run --Werror "${files[@]}"; then
  echo "lint: clang-format found unformatted files (fix: scripts/lint.sh --fix)" >&2
  status=1
fi

if [[ $FORMAT_ONLY -eq 0 ]]; then
  if [[ ! -f "$BUILD_DIR/compile_commands.json" ]]; then
    echo "lint: $BUILD_DIR/compile_commands.json missing: build first (cmake --preset release)" >&2
    exit 1
  fi
  mapfile -t sources < <(printf '%s\n' "${files[@]}" | grep '\.cpp$' | grep -v '^tests/fuzz/')
  # One clang-tidy per file, JOBS at a time; xargs exits non-zero if any reported.
  if ! printf '%s\0' "${sources[@]}" |
    xargs -0 -n 1 -P "$JOBS" clang-tidy -p "$BUILD_DIR" --quiet 2>/dev/null; then
    echo "lint: clang-tidy reported problems" >&2
    status=1
  fi
fi
[[ $status -eq 0 ]] && echo "lint: ${#files[@]} files clean"
exit $status
