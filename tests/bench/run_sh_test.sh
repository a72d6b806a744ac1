#!/usr/bin/env bash
# bench/run.sh's front end: --help, clear errors for bad arguments (exit 2,
# naming the argument), and `run.sh report` on the fixture run directory:
# results.json, results.md (one row per workload, ratios as bench_report
# computed them) and the two PNG plots drawn by gnuplot.
#   run_sh_test.sh SOURCE_DIR BUILD_DIR FIXTURE_RUN_DIR
set -uo pipefail
src=$1 build=$2 fixture=$3
run=$src/bench/run.sh
failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# expect_error "message part" ARGS...: run.sh ARGS exits 2 with the message on stderr.
expect_error() {
  local want=$1 out status
  shift
  out=$("$run" "$@" 2>&1 >/dev/null)
  status=$?
  if [[ $status -ne 2 ]]; then
    fail "run.sh $* exited $status, want 2 ($out)"
  elif [[ "$out" != *"$want"* ]]; then
    fail "run.sh $*: error '$out' does not say '$want'"
  else
    echo "ok: run.sh $* -> exit 2: ${out%%$'\n'*}"
  fi
}

help=$("$run" --help) || fail "--help exited $?"
[[ "$help" == *"Usage:"* && "$help" == *"--quick"* && "$help" == *"--native"* ]] ||
  fail "--help does not describe the usage: $help"
echo "ok: run.sh --help"

expect_error "unknown argument '--bogus'" --bogus --build-dir "$build"
expect_error "--backend 'nbd' is not one of null, memory, replicated" --backend nbd --build-dir "$build"
expect_error "--replicas '4' must be 1, 2 or 3" --replicas 4 --build-dir "$build"
expect_error "--size '3X' is not a size" --size 3X --build-dir "$build"
expect_error "--size '1M' is too small" --size 1M --build-dir "$build"
expect_error "--repeat '0' is not a positive number" --repeat 0 --build-dir "$build"
expect_error "--runtime needs a value" --runtime --build-dir "$build"
expect_error "matches no job file" --workloads 'no-such-workload' --build-dir "$build"
expect_error "--store-dir is for --native" --vm --store-dir /tmp --build-dir "$build"
expect_error "no such directory" --build-dir /nonexistent/build
expect_error "has no meta.env" report / --build-dir "$build"
expect_error "report needs the run directory" report

# report on a scratch copy of the fixture.
work=$(mktemp -d "${TMPDIR:-/tmp}/run_sh_test.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$fixture" "$work/run"
if ! "$run" report "$work/run" --build-dir "$build" >"$work/out" 2>&1; then
  cat "$work/out"
  fail "run.sh report on the fixture failed"
fi
for f in results.json results.md ratio.png latency.png; do
  [[ -s "$work/run/$f" ]] || fail "report did not write $f"
done
for png in ratio.png latency.png; do
  magic=$(head -c 8 "$work/run/$png" | od -An -tx1 | tr -d ' \n')
  [[ "$magic" == 89504e470d0a1a0a ]] || fail "$png is not a PNG (magic $magic)"
done
while read -r name _; do
  grep -q "^| $name | " "$work/run/results.md" || fail "results.md has no row for $name"
done <"$fixture/workloads.list"
grep -q '"schema": "ublkvol-bench-results/1"' "$work/run/results.json" ||
  fail "results.json lacks the schema tag"
echo "ok: run.sh report -> results.json, results.md, ratio.png, latency.png"

if ((failures)); then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
