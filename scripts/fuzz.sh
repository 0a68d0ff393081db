#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cpp, clang, ASan+UBSan) into build-fuzz/ and runs
# each for a fixed budget on a scratch copy of its seed corpus (fuzz/corpus/<name>/), so the
# committed corpus never grows. Prints one line per target:
#   fuzz NAME: ok (E executions, corpus S -> C files) | fuzz NAME: FAILED (...)
# and ends with "N passed, N failed" (one per target). Exits non-zero when any target found a
# crash, a sanitizer report, a timeout or an out-of-memory; the input that did it is kept in
# the artifacts directory it prints.
#
#   scripts/fuzz.sh [TARGET...]     run every target (or the named ones)
#   scripts/fuzz.sh --seed          regenerate fuzz/corpus/ from fuzz/seed_corpus.cpp
# Environment: FUZZ_SECONDS (per target, default 30), JOBS (build parallelism, default
# nproc), BUILD_DIR (default build-fuzz), FUZZ_ARTIFACTS (where crash inputs go).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-30}
jobs=${JOBS:-$(nproc)}

if ! command -v clang++ >/dev/null; then
    echo "fuzz: clang++ not found (scripts/setup.sh installs clang and libclang-rt-14-dev)"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "=== build ($dir: clang, libFuzzer, address+undefined)"
if ! cmake -S . -B "$dir" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSLUICE_FUZZ=ON -DSLUICE_TESTS=OFF -DSLUICE_BENCH=OFF >/dev/null ||
    ! cmake --build "$dir" -j"$jobs"; then
    echo "fuzz: build failed"
    echo "0 passed, 1 failed"
    exit 1
fi

if [ "${1:-}" = "--seed" ]; then
    "$dir/fuzz/seed_corpus" fuzz/corpus && echo "fuzz: seed corpus written to fuzz/corpus/"
    exit
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for exe in "$dir"/fuzz/*_fuzz; do targets+=("$(basename "$exe" _fuzz)"); done
fi

scratch=$(mktemp -d /tmp/sluice-fuzz.XXXXXX)
artifacts=${FUZZ_ARTIFACTS:-$(mktemp -d /tmp/sluice-fuzz-artifacts.XXXXXX)}
mkdir -p "$artifacts"
trap 'rm -rf "$scratch"' EXIT
# Leaks count as findings; UBSan is built non-recoverable, so any report ends the run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

passed=0
failed=0
for t in "${targets[@]}"; do
    exe="$root/$dir/fuzz/${t}_fuzz"
    seeds="$root/fuzz/corpus/$t"
    if [ ! -x "$exe" ]; then
        echo "fuzz $t: FAILED (no such target: $exe)"; failed=$((failed + 1)); continue
    fi
    work="$scratch/$t"
    mkdir -p "$work/corpus" "$work/artifacts"
    [ -d "$seeds" ] && cp -r "$seeds"/. "$work/corpus/"
    seeded=$(find "$work/corpus" -type f | wc -l)
    log="$work/fuzz.log"
    echo "=== fuzz $t (${seconds}s, $seeded seeds)"
    # The outer timeout only guards against a hung fuzzer; -max_total_time is the budget.
    (cd "$work" && timeout --signal=KILL $((seconds + 120)) "$exe" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1)
    rc=$?
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
    size=$(find "$work/corpus" -type f | wc -l)
    bytes=$(du -sb "$work/corpus" | cut -f1)
    report=$(grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|invariant failed|ALARM: working on the last Unit|out-of-memory' "$log" || true)
    if [ "$rc" -eq 0 ] && [ -z "$report" ] && [ -n "$execs" ]; then
        echo "fuzz $t: ok ($execs executions, corpus $seeded -> $size files, $bytes bytes)"
        passed=$((passed + 1))
    else
        cp -r "$work/artifacts"/. "$artifacts/" 2>/dev/null
        cp "$log" "$artifacts/$t.log"
        echo "fuzz $t: FAILED (exit $rc${execs:+, $execs executions}): ${report:-no final stats}"
        # The report itself: the sanitizer's stack or the failed invariant, enough to act on.
        grep -A30 -m1 -E 'ERROR: |runtime error:|invariant failed|ALARM:' "$log" | head -40 | sed 's/^/    /'
        echo "    input and full log in $artifacts/ (replay: $exe $artifacts/crash-...)"
        failed=$((failed + 1))
    fi
done
[ "$failed" -eq 0 ] && [ -z "${FUZZ_ARTIFACTS:-}" ] && rmdir "$artifacts" 2>/dev/null
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
