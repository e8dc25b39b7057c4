#!/usr/bin/env bash
# benchmarks/gpu-suite.sh : everything issue 5 asks of a GPU machine, in one
# command. Builds featstore with the CUDA backend (release, build-gpu/), runs
# every GPU test (meson test --suite cuda), the GPU benchmark
# (build-gpu/benchmarks/bench_cuda) and, when the featstore command has
# `match --device`, the end-to-end run; writes build-gpu/gpu-results.txt.
#
#   benchmarks/gpu-suite.sh [--asan] [--no-e2e] [--e2e-images N]
#
#   --asan          also build build-gpu-asan/ with ASan+UBSan and run the
#                   cuda suite there (the CI configuration, now with a GPU)
#   --no-e2e        skip `featstore match` on a synthetic exhaustive pair list
#   --e2e-images N  images of that list (default 2000: ~2 million pairs)
#
# Environment: JOBS (parallel compile jobs, default: number of CPUs),
# MESON_ARGS (extra `meson setup` options for both builds),
# FST_BENCH_CUDA_PARAMS (extra backend parameters for the benchmark),
# FST_REQUIRE_GPU=1 (no device is a failure, exit 3).
#
# Exit status: 0 every test and benchmark passed, or there is no CUDA device
# (then every GPU test is SKIPped, and the results file and the last line
# say "no CUDA device"); 1 a test, the benchmark or the end-to-end run
# failed; 2 the build failed; 3 no CUDA device and FST_REQUIRE_GPU=1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
BUILD=build-gpu
OUT=$ROOT/$BUILD/gpu-results.txt
ASAN=0 E2E=1 E2E_IMAGES=2000
while [ $# -gt 0 ]; do
    case "$1" in
    --asan) ASAN=1 ;;
    --no-e2e) E2E=0 ;;
    --e2e-images) E2E_IMAGES=$2; shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-suite: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
JOBS=${JOBS:-$(nproc)}

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi

say() { echo "$*" | tee -a "$OUT"; }
section() { printf '\n## %s\n' "$*" | tee -a "$OUT"; }

configure() {   # configure DIR [meson options...]
    local dir=$1; shift
    if [ -f "$dir/build.ninja" ]; then
        meson setup --reconfigure "$dir" "$@"
    else
        meson setup "$dir" "$@"
    fi
}

mkdir -p "$BUILD"
: > "$OUT"
say "# featstore GPU suite (issue 5)"
say "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
say "host:   $(uname -n), $(nproc) CPUs"
say "nvcc:   $(nvcc --version 2>/dev/null | tail -1 || echo 'not found')"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
        --format=csv,noheader 2>&1 | sed 's/^/gpu:    /' | tee -a "$OUT"
    nvidia-smi -q 2>/dev/null | grep -i -m1 "MPS\|Compute Mode" | sed 's/^ */gpu:    /' | tee -a "$OUT"
else
    say "gpu:    nvidia-smi not found"
fi

section "build (release, CUDA on)"
# shellcheck disable=SC2086
if ! configure "$BUILD" -Dbuildtype=release -Dcuda=enabled ${MESON_ARGS:-} >"$BUILD/configure.log" 2>&1 \
   || ! ninja -C "$BUILD" -j "$JOBS" >"$BUILD/build.log" 2>&1; then
    tail -30 "$BUILD/configure.log" "$BUILD/build.log" 2>/dev/null | tee -a "$OUT"
    say "RESULT: build failed (see $BUILD/build.log)"
    exit 2
fi
say "ok"

# Is there a device? test_parity's device-index test SKIPs (77) without one.
"$BUILD/tests/test_parity" invalid_device_index_is_clear >"$BUILD/probe.log" 2>&1
probe=$?
HAVE_GPU=1
if [ $probe -eq 77 ]; then
    HAVE_GPU=0
    say "no CUDA device: $(grep -o 'SKIP.*' "$BUILD/probe.log" | head -1)"
fi

fail=0
section "tests: meson test --suite cuda"
meson test -C "$BUILD" --suite cuda --print-errorlogs --num-processes 1 \
    >"$BUILD/test-cuda.log" 2>&1 || fail=1
grep -E '^ *[0-9]+/[0-9]+ ' "$BUILD/test-cuda.log" | tee -a "$OUT"
/usr/bin/python3 tools/test_summary.py "$BUILD/meson-logs/testlog.json" | tee -a "$OUT"
# every TAP line of the GPU programs, SKIPs and their reasons included
grep -hE '^(ok|not ok) |^# ' "$BUILD/meson-logs/testlog.txt" 2>/dev/null | sed 's/^/    /' >>"$OUT"

if [ $ASAN -eq 1 ]; then
    section "tests under ASan+UBSan (build-gpu-asan)"
    A=build-gpu-asan
    mkdir -p "$A"
    # shellcheck disable=SC2086
    if configure "$A" -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
            -Db_lundef=false -Dcuda=enabled ${MESON_ARGS:-} >"$A/configure.log" 2>&1 \
       && ninja -C "$A" -j "$JOBS" >"$A/build.log" 2>&1; then
        meson test -C "$A" --suite cuda --print-errorlogs --num-processes 1 \
            >"$A/test-cuda.log" 2>&1 || fail=1
        grep -E '^ *[0-9]+/[0-9]+ ' "$A/test-cuda.log" | tee -a "$OUT"
        /usr/bin/python3 tools/test_summary.py "$A/meson-logs/testlog.json" | tee -a "$OUT"
    else
        say "ASan build failed ($A/build.log)"
        fail=1
    fi
fi

section "benchmark: bench_cuda (2048 x 2048 x 256 float16, NN-mutual)"
"$BUILD/benchmarks/bench_cuda" 2>&1 | tee "$BUILD/bench_cuda.log" | tee -a "$OUT"
brc=${PIPESTATUS[0]}
if [ "$brc" -ne 0 ] && [ "$brc" -ne 77 ]; then
    say "bench_cuda failed (exit $brc)"
    fail=1
fi

if [ $E2E -eq 1 ] && [ $HAVE_GPU -eq 1 ]; then
    section "end to end: featstore match, exhaustive pairs of $E2E_IMAGES images"
    FST=$BUILD/tools/featstore
    if [ -x "$FST" ] && "$FST" match --help 2>&1 | grep -q -- '--workers-per-device'; then
        E=$BUILD/e2e
        mkdir -p "$E"
        npairs=$(( E2E_IMAGES * (E2E_IMAGES - 1) / 2 ))
        if [ ! -f "$E/db.fst" ]; then
            if ! "$FST" synth "$E/features.h5" --pairs "$E/pairs.txt" \
                    --images "$E2E_IMAGES" --keypoints 2048 --dim 256 \
                    --npairs "$npairs" --quiet >"$E/synth.log" 2>&1 ||
               ! "$FST" import "$E/features.h5" "$E/db.fst" >"$E/import.log" 2>&1; then
                say "synth/import failed (see $E/)"
                rm -f "$E/db.fst"
                fail=1
            fi
        fi
        if [ -f "$E/db.fst" ]; then
            for k in 1 2; do
                rm -f "$E/matches_$k.h5" "$E/matches_$k.h5.journal"
                t0=$(date +%s.%N)
                if "$FST" match "$E/db.fst" "$E/pairs.txt" -o "$E/matches_$k.h5" \
                        --device cuda --workers-per-device "$k" --json \
                        >"$E/match_$k.json" 2>"$E/match_$k.log"; then
                    t1=$(date +%s.%N)
                    say "workers_per_device=$k pairs=$npairs seconds=$(echo "$t1 - $t0" | bc) pairs_per_s=$(echo "$npairs / ($t1 - $t0)" | bc)"
                    say "    $(head -c 600 "$E/match_$k.json")"
                else
                    say "workers_per_device=$k: featstore match failed (see $E/match_$k.log)"
                    tail -5 "$E/match_$k.log" | tee -a "$OUT"
                    fail=1
                fi
            done
        fi
    else
        say "skipped: this featstore has no 'match --workers-per-device' yet"
    fi
fi

section "result"
if [ $HAVE_GPU -eq 0 ]; then
    say "RESULT: no CUDA device: GPU tests SKIPped, nothing measured (host-side tests above ran)"
    [ $fail -ne 0 ] && { say "RESULT: and some host-side test failed"; exit 1; }
    [ "${FST_REQUIRE_GPU:-0}" = 1 ] && exit 3
    exit 0
fi
if [ $fail -ne 0 ]; then
    say "RESULT: FAILED (logs in $BUILD/)"
    exit 1
fi
say "RESULT: all GPU tests passed; figures above; results in $OUT"
exit 0
