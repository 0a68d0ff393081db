#!/usr/bin/env bash
# Every test suite: unit tests (gtest, via ctest), integration tests against real
# PostgreSQL/Redis/psql/pgbench (pytest), the unit + core integration tests again on an
# address+undefined and on a thread sanitizer build, and the libFuzzer targets for a fixed
# budget (scripts/fuzz.sh). Ends with one "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash scripts/setup.sh || { echo "setup failed"; exit 1; }

passed=0
failed=0
failed_suites=()
logdir=$(mktemp -d /tmp/sluice-test-logs.XXXXXX)

count_ctest() {  # from "NN% tests passed, F tests failed out of T"
    local line; line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -1)
    if [ -z "$line" ]; then return 1; fi
    local f t; f=$(sed -E 's/.* ([0-9]+) tests? failed.*/\1/' <<<"$line"); t=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
    passed=$((passed + t - f)); failed=$((failed + f))
}
count_pytest() {  # from pytest's summary line
    local line; line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$1" | tail -1)
    if [ -z "$line" ]; then return 1; fi
    local p f e
    p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    e=$(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    passed=$((passed + p)); failed=$((failed + f + e))
}
count_fuzz() {  # from scripts/fuzz.sh: one "fuzz NAME: ok|FAILED" line per target
    local p f
    p=$(grep -cE '^fuzz [a-z0-9_]+: ok' "$1")
    f=$(grep -cE '^fuzz [a-z0-9_]+: FAILED' "$1")
    if [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then return 1; fi
    passed=$((passed + p)); failed=$((failed + f))
}
count_tsan() {  # from scripts/tsan_reports.py: "tsan: N reports, D distinct"
    local n; n=$(grep -oE '^tsan: [0-9]+ reports' "$1" | grep -oE '[0-9]+')
    if [ -z "$n" ]; then return 1; fi
    if [ "$n" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
suite() {  # suite NAME COUNTER COMMAND...
    local name=$1 counter=$2; shift 2
    echo "=== $name"
    local log="$logdir/$name.log"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    if ! $counter "$log"; then
        echo "($name produced no test summary)"; failed=$((failed + 1)); failed_suites+=("$name"); return
    fi
    [ "$rc" -eq 0 ] || failed_suites+=("$name")
}

echo "=== build (RelWithDebInfo)"
if ! bash scripts/build.sh; then echo "build failed"; echo "0 passed, 1 failed"; exit 1; fi
suite unit count_ctest ctest --test-dir build --output-on-failure -j2 --timeout 120
suite integration count_pytest /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider

if [ "${SLUICE_SKIP_SANITIZERS:-0}" != 1 ]; then
    echo "=== build (address,undefined sanitizers)"
    if BUILD_DIR=build-asan bash scripts/build.sh -DSLUICE_SANITIZE=address,undefined -DSLUICE_BENCH=OFF; then
        export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
        suite unit-asan count_ctest ctest --test-dir build-asan --output-on-failure -j2 --timeout 300
        SLUICE_BIN="$root/build-asan/sluice" suite integration-asan count_pytest \
            /usr/bin/python3 -m pytest tests/integration/test_core.py tests/integration/test_tls.py \
            tests/integration/test_hba.py tests/integration/test_auth_query.py -q -p no:cacheprovider
    else
        echo "sanitizer build failed"; failed=$((failed + 1)); failed_suites+=("build-asan")
    fi
fi

if [ "${SLUICE_SKIP_SANITIZERS:-0}" != 1 ] && [ "${SLUICE_SKIP_TSAN:-0}" != 1 ]; then
    # Thread sanitizer: the unit tests and the core integration suites. Reports do not stop
    # the process (halt_on_error=0) so that one run shows them all; the harness fails a test
    # whose Sluice log holds one, and every log is kept so that the tsan-reports check below
    # fails the run on any report and lists the distinct ones in /tmp/tsan-reports.txt.
    echo "=== build (thread sanitizer)"
    if BUILD_DIR=build-tsan bash scripts/build.sh -DSLUICE_SANITIZE=thread -DSLUICE_BENCH=OFF; then
        export TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1:exitcode=66
        tsan_logs="$logdir/tsan-sluice-logs"
        mkdir -p "$tsan_logs"
        suite unit-tsan count_ctest ctest --test-dir build-tsan --output-on-failure -j2 --timeout 600
        SLUICE_BIN="$root/build-tsan/sluice" SLUICE_LOG_DIR="$tsan_logs" SLUICE_TEST_TIMEOUT=300 \
            suite integration-tsan count_pytest /usr/bin/python3 -m pytest \
            tests/integration/test_core.py tests/integration/test_txn.py tests/integration/test_tls.py \
            tests/integration/test_replicas.py tests/integration/test_sentinel.py \
            -q -p no:cacheprovider
        suite tsan-reports count_tsan /usr/bin/python3 scripts/tsan_reports.py \
            "${TSAN_REPORTS:-/tmp/tsan-reports.txt}" "$tsan_logs" "$logdir/unit-tsan.log"
        unset TSAN_OPTIONS
    else
        echo "thread-sanitizer build failed"; failed=$((failed + 1)); failed_suites+=("build-tsan")
    fi
fi

if [ "${SLUICE_SKIP_FUZZ:-0}" != 1 ]; then
    # libFuzzer targets (clang, address+undefined), FUZZ_SECONDS each on a scratch corpus.
    suite fuzz count_fuzz bash scripts/fuzz.sh
fi

echo
echo "=== summary"
if [ ${#failed_suites[@]} -gt 0 ]; then echo "failing suites: ${failed_suites[*]} (logs in $logdir)"; fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#failed_suites[@]} -eq 0 ]
