#!/bin/bash
# vm-gtest BINARY [ARGS...] - run a gtest binary inside the VM test bed and fail if any of
# its tests was skipped. Installed in the guest as /usr/local/bin/vm-gtest.
#
# Why: the same binary runs on the host, where tests needing ublk skip themselves. In the
# VM they must run; a skip there means the bed or the test is broken, and must not let
# the e2e suite pass.
set -o pipefail
out=/tmp/vm-gtest.$$.out
"$@" 2>&1 | tee "$out"
status=$?
if [ "$status" -ne 0 ]; then
  rm -f "$out"
  exit "$status"
fi
skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9][0-9]*\) tests\{0,1\}, listed below:.*/\1/p' "$out")
rm -f "$out"
if [ -n "$skipped" ] && [ "$skipped" -ne 0 ]; then
  echo "vm-gtest: FAIL: $skipped test(s) of $1 skipped inside the VM; in the VM every test must run"
  exit 1
fi
exit 0
