#!/usr/bin/env bash
# tests/fuzz/run_fuzz.sh : run libFuzzer targets for a set time (CI, soak).
#
#   run_fuzz.sh FUZZ_EXE CORPUS_DIR [SECONDS]    fuzz one target
#   run_fuzz.sh --replay FUZZ_EXE CORPUS_DIR     run the corpus once
#   run_fuzz.sh --all BUILD_DIR [SECONDS]        every fuzz_* of a -Dfuzz=true
#                                                build, one after the other
#
# SECONDS defaults to $FST_FUZZ_SECONDS, else 60. The seed corpus is only
# read: new inputs go to a scratch corpus (kept in $FST_FUZZ_WORK if set,
# e.g. to merge them into the seeds with make_corpus.sh, else removed).
# Crashes, leaks and timeouts (> 10 s for one input) are saved as
# $FST_FUZZ_ARTIFACTS/<crash|leak|timeout>-<sha1> (default: the current
# directory) and fail the run. Prints one summary line per target:
#   fuzz_record: 123456 execs in 60 s (2057/s), corpus 40 -> 211, no crash
# Set FST_FUZZ_NICE=19 to run at low priority. Extra libFuzzer flags can
# be given in $FST_FUZZ_FLAGS.
set -u
SRC=$(cd "$(dirname "$0")" && pwd)
# HDF5 leaks some of its own memory on damaged files: lsan-hdf5.supp
# ignores exactly that (it needs full stack unwinding to name HDF5's
# allocators). HDF5 also believes sizes in the file and asks malloc for,
# say, 97 TB, then reports the failure cleanly: allocator_may_return_null
# makes ASan fail such a malloc as glibc does instead of aborting (a request
# above libFuzzer's 2 GB malloc limit is still reported). halt_on_error:
# UBSan findings are crashes too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$SRC/lsan-hdf5.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

one() {   # one EXE CORPUS SECONDS
    local exe=$1 corpus=$2 secs=$3 name work log rc
    name=$(basename "$exe")
    [ -d "$corpus" ] || { echo "$name: no corpus at $corpus" >&2; return 1; }
    if [ -n "${FST_FUZZ_WORK:-}" ]; then
        work=$FST_FUZZ_WORK/$name; mkdir -p "$work"
    else
        work=$(mktemp -d "${TMPDIR:-/tmp}/fst-fuzz-$name.XXXXXX")
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/fst-fuzz-$name.log.XXXXXX")
    local art=${FST_FUZZ_ARTIFACTS:-$PWD}
    mkdir -p "$art"
    # full unwinding (for lsan-hdf5.supp) costs on every malloc: only the
    # targets that call HDF5 need it
    # (6 frames reach HDF5's allocators and keep it ~10x cheaper than 30)
    local unwind=1
    case $name in *h5*|*matchfile*) unwind=0 ;; esac
    # -timeout: an input running > 10 s is a hang; -rss_limit_mb: an input
    # needing > 2 GB is a finding; -max_len: the largest seed is ~10 kB.
    # shellcheck disable=SC2086
    ASAN_OPTIONS="$ASAN_OPTIONS:allocator_may_return_null=1:fast_unwind_on_malloc=$unwind:malloc_context_size=$((unwind ? 30 : 6))" \
    nice -n "${FST_FUZZ_NICE:-0}" "$exe" -max_total_time="$secs" \
        -timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="$art/" ${FST_FUZZ_FLAGS:-} "$work" "$corpus" \
        >"$log" 2>&1
    rc=$?
    local execs seed_n work_n
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    seed_n=$(find "$corpus" -type f | wc -l)
    work_n=$(find "$work" -type f | wc -l)
    if [ $rc -ne 0 ]; then
        tail -60 "$log" >&2
        echo "$name: FAILED (exit $rc) after ${execs:-?} execs; log $log" >&2
        [ -n "${FST_FUZZ_WORK:-}" ] || rm -rf "$work"
        return 1
    fi
    echo "$name: ${execs:-0} execs in $secs s ($(( ${execs:-0} / (secs > 0 ? secs : 1) ))/s), corpus $seed_n seeds + $work_n new, no crash, leak or hang"
    [ -n "${FST_FUZZ_WORK:-}" ] || rm -rf "$work"
    rm -f "$log"
}

case "${1:-}" in
--replay)
    exe=$2 corpus=$3
    # libFuzzer runs each file given once and exits (no mutation)
    files=("$corpus"/*)
    [ -e "${files[0]}" ] || { echo "no corpus at $corpus: skipped"; exit 77; }
    "$exe" -runs=1 -timeout=30 "${files[@]}" >/dev/null 2>"${TMPDIR:-/tmp}/replay.$$" \
        || { tail -60 "${TMPDIR:-/tmp}/replay.$$" >&2; rm -f "${TMPDIR:-/tmp}/replay.$$"; exit 1; }
    rm -f "${TMPDIR:-/tmp}/replay.$$"
    echo "$(basename "$exe"): ${#files[@]} inputs replayed, no crash"
    ;;
--all)
    build=$2 secs=${3:-${FST_FUZZ_SECONDS:-60}} rc=0 n=0
    for exe in "$build"/tests/fuzz/fuzz_*; do
        [ -x "$exe" ] && [ -f "$exe" ] || continue
        t=$(basename "$exe"); t=${t#fuzz_}
        n=$((n + 1))
        one "$exe" "$SRC/corpus/$t" "$secs" || rc=1
    done
    [ $n -gt 0 ] || { echo "no fuzz_* in $build/tests/fuzz (configure with -Dfuzz=true)" >&2; exit 1; }
    exit $rc
    ;;
''|-h|--help)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
*)
    one "$1" "$2" "${3:-${FST_FUZZ_SECONDS:-60}}"
    ;;
esac
