#!/usr/bin/env bash
# expect_failure.sh --status N --message TEXT [--max-seconds S] -- COMMAND [ARGS...]
#
# Runs COMMAND (a scripts/vm/run.sh invocation) that is supposed to fail, and passes only
# if it exits with status N, its output contains TEXT, and (with --max-seconds) it
# returned within S seconds. Used by the runner's self-tests: a runner that reported
# success, the wrong status, no explanation, or hung would let broken e2e tests pass.
set -uo pipefail

want_status="" want_message="" max_seconds=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --status) want_status="$2"; shift 2 ;;
    --message) want_message="$2"; shift 2 ;;
    --max-seconds) max_seconds="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "expect_failure.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if [[ -z "$want_status" || -z "$want_message" || $# -eq 0 ]]; then
  echo "usage: expect_failure.sh --status N --message TEXT [--max-seconds S] -- COMMAND..." >&2
  exit 2
fi

out="$(mktemp "${TMPDIR:-/tmp}/expect_failure.XXXXXX")"
trap 'rm -f "$out"' EXIT
started=$SECONDS
"$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
elapsed=$((SECONDS - started))

ok=1
if [[ "$status" != "$want_status" ]]; then
  echo "expect_failure.sh: FAIL: exit status $status, expected $want_status" >&2
  ok=0
fi
if ! grep -qF -- "$want_message" "$out"; then
  echo "expect_failure.sh: FAIL: output lacks the expected message '$want_message'" >&2
  ok=0
fi
if [[ -n "$max_seconds" && $elapsed -gt $max_seconds ]]; then
  echo "expect_failure.sh: FAIL: took ${elapsed}s, more than ${max_seconds}s" >&2
  ok=0
fi
if [[ $ok == 1 ]]; then
  echo "expect_failure.sh: ok: exit status $status, message '$want_message' seen, ${elapsed}s"
  exit 0
fi
exit 1
