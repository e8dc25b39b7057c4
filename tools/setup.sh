#!/usr/bin/env bash
# tools/setup.sh : the one entry point of the README's quick start.
#
#   tools/setup.sh example   install what is missing, build, run the example
#   tools/setup.sh test      install what is missing, build with ASan+UBSan,
#                            run every test, end with "N passed, N failed"
#   tools/setup.sh test --fuzz   the same, then fuzz every libFuzzer target
#                            for FST_FUZZ_SECONDS (60) in a clang build
#   tools/setup.sh build     install what is missing and build (release)
#   tools/setup.sh bench     build and run the CPU benchmarks
#
# Debian packages it lacks are installed with apt-get (as root, or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PKGS=(meson ninja-build pkg-config gcc libc6-dev libhdf5-dev liblmdb-dev
      libxxhash-dev libopenblas-dev libopenblas0-pthread python3 python3-numpy
      python3-h5py python3-dev python3-pytest util-linux valgrind)

install_missing() {
    local missing=() p
    for p in "${PKGS[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "setup: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2
}

# nvcc is on PATH on CUDA machines only sometimes; the toolkit lives here.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi

configure() {   # configure DIR [meson options...]
    local dir=$1; shift
    if [ -f "$dir/build.ninja" ]; then
        meson setup --reconfigure "$dir" "$@" >/dev/null
    else
        meson setup "$dir" "$@" >/dev/null
    fi
}

build_release() {
    configure build
    ninja -C build >&2
}

case "${1:-}" in
build)
    install_missing
    build_release
    ;;
example)
    install_missing
    build_release
    FST=$ROOT/build/tools/featstore
    EX=$ROOT/build/example
    rm -rf "$EX"; mkdir -p "$EX"
    echo "== featstore synth: a small hloc-layout features.h5 with planted correspondences"
    "$FST" synth "$EX/features.h5" --pairs "$EX/pairs.txt" --truth "$EX/truth.txt" \
        --images 24 --keypoints 1024 --dim 128
    echo "== featstore import"
    "$FST" import "$EX/features.h5" "$EX/db.fst"
    echo "== featstore info"
    "$FST" info "$EX/db.fst"
    echo "== featstore verify"
    "$FST" verify "$EX/db.fst"
    echo "== featstore match: 2 worker processes over the one mapped store"
    "$FST" match "$EX/db.fst" "$EX/pairs.txt" -o "$EX/matches.h5" --workers 2 \
        --preset NN-mutual
    echo "== planted correspondences recovered"
    /usr/bin/python3 tools/example_recall.py "$EX/matches.h5" "$EX/truth.txt"
    echo "== Python: import featstore (PYTHONPATH=build/tools/python)"
    PYTHONPATH=$ROOT/build/tools/python FEATSTORE=$FST /usr/bin/python3 - "$EX" <<'PY'
import sys, featstore
ex = sys.argv[1]
store = featstore.open(f"{ex}/db.fst")
rec = store[store.names()[0]]
print(f"{len(store)} images; {rec.name}: keypoints {rec.keypoints.shape} "
      f"{rec.keypoints.dtype}, descriptors {rec.descriptors.shape} "
      f"{rec.descriptors.dtype}, read-only views of the map")
s = featstore.match(store, f"{ex}/pairs.txt", f"{ex}/matches-py.h5", workers=2)
print(f"featstore.match: {s['pairs']} pairs, {s['matches']} matches")
PY
    ;;
test)
    shift
    fuzz=0
    if [ "${1:-}" = "--fuzz" ]; then fuzz=1; shift; fi
    # Slurm and munge for tests/slurm (a real cluster of one node, started
    # by the test as root): 34 packages, 8 MB, 33 s to install here.
    install_missing slurmctld slurmd slurm-client munge
    # Sanitized build: every test runs under ASan + UBSan (+ LeakSanitizer).
    configure build-test -Dbuildtype=debugoptimized -Dtest_hooks=enabled \
        -Db_sanitize=address,undefined -Db_lundef=false
    ninja -C build-test >&2
    rc=0
    logs=(build-test/meson-logs/testlog.json)
    meson test -C build-test --no-suite slow --print-errorlogs \
        --num-processes "$(nproc)" "$@" || rc=$?
    if [ $fuzz -eq 1 ]; then
        # libFuzzer targets (clang), each fuzzed for FST_FUZZ_SECONDS (60).
        install_missing clang libclang-rt-14-dev
        CC=clang configure build-fuzz -Dfuzz=true -Dcuda=disabled \
            -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false
        ninja -C build-fuzz >&2
        meson test -C build-fuzz --suite fuzz --print-errorlogs || rc=$?
        logs+=(build-fuzz/meson-logs/testlog.json)
    fi
    /usr/bin/python3 tools/test_summary.py "${logs[@]}"
    exit $rc
    ;;
bench)
    install_missing python3-matplotlib
    build_release
    meson test -C build --benchmark --verbose "${@:2}"
    ;;
*)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
