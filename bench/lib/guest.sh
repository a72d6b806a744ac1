# shellcheck shell=bash
# The VM side of bench/run.sh --vm (run by scripts/vm/run.sh as the guest
# test): runs bench/lib/matrix.sh, then prints the run directory as a base64
# gzip tar between two marker lines on the console, the only way out of the
# guest; bench/run.sh cuts it out of the console log.
export BENCH_OUT=/tmp/bench-out BENCH_FIO_DIR=/opt/test/files/fio BENCH_MODE=vm
bash /opt/test/files/lib/matrix.sh
status=$?
[ -f "$BENCH_OUT/work/server.log" ] && cp "$BENCH_OUT/work/server.log" "$BENCH_OUT/"
rm -rf "$BENCH_OUT/work"
echo "@@bench-results-begin@@"
tar -C "$BENCH_OUT" -czf - . | base64
echo "@@bench-results-end@@"
exit $status
