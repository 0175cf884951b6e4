#!/usr/bin/env bash
# The two-process gloo tests, N times in a row (default 20): every run must pass, and no rank
# may abort at exit ("terminate called without an active exception", SIGABRT). The spawned
# tests fail on a rank's nonzero exit code and the torchrun tests on torchrun's, so a pass is a
# clean exit of every process; the captured output is also searched for the abort's message.
#
#   bash benchmarks/clean_exits.sh [N] [LOG]      (a failed run's output: LOG.runI)
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
log="${2:-/tmp/clean_exits.log}"
: >"$log"
passed=0
aborts=0
for i in $(seq 1 "$n"); do
    start=$(date +%s)
    out="$(OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider -s \
        tests/test_distributed.py tests/test_distributed_runs.py 2>&1)"
    rc=$?
    found=$(grep -c "terminate called\|SIGABRT\|Aborted" <<<"$out")
    [ "$rc" -eq 0 ] && passed=$((passed + 1))
    [ "$rc" -ne 0 ] && printf '%s\n' "$out" >"$log.run$i"
    [ "$found" -gt 0 ] && aborts=$((aborts + 1))
    echo "run $i: exit $rc, abort messages $found, $(( $(date +%s) - start )) s, $(tail -1 <<<"$out")" | tee -a "$log"
done
echo "passed $passed of $n; runs with an abort message: $aborts" | tee -a "$log"
