#!/usr/bin/env bash
# tests/fuzz/make_corpus.sh BUILD_DIR : (re)write the seed corpora in
# tests/fuzz/corpus/ (named seeds are overwritten; the inputs merged in from
# fuzzing runs, named by their SHA-1, are kept). BUILD_DIR is any build of this tree
# (for tools/featstore and tests/fuzz/seed_records). Deterministic except
# for HDF5's timestamps-free layout choices of the installed h5py.
#
#   corpus/record/     seed_records: valid records of every shape + broken ones
#   corpus/h5import/   make_seeds.py (h5py, hloc layouts, good and bad) +
#                      `featstore synth` with tiny sizes
#   corpus/matchfile/  make_seeds.py + a matches.h5 from `featstore match`
#   corpus/pairs/      make_seeds.py
#   corpus/proto/      make_seeds.py (coordinator <-> worker message streams)
#   corpus/weights/    the weight files of tests/weights/data/ (torch zip and
#                      legacy, zip64, safetensors, refused pickles), written
#                      by tests/weights/make_weights.py
#
# To fold in what a long fuzzing run found (FST_FUZZ_WORK=DIR run_fuzz.sh),
# minimise with libFuzzer and keep the corpus small (a few dozen files):
#   build-fuzz/tests/fuzz/fuzz_T -merge=1 -use_counters=0 corpus/T DIR/fuzz_T
set -euo pipefail
B=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
C=$HERE/corpus
PY=${PYTHON:-/usr/bin/python3}
mkdir -p "$C/record"
"$B/tests/fuzz/seed_records" "$C/record"
"$PY" "$HERE/make_seeds.py" "$C"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
F=$B/tools/featstore
rm -f "$C/h5import/synth16.h5" "$C/h5import/synth32.h5" "$C/matchfile/featstore.h5"
"$F" synth "$C/h5import/synth16.h5" --images 3 --keypoints 4 --dim 8 --quiet
"$F" synth "$C/h5import/synth32.h5" --images 2 --keypoints 3 --dim 4 \
    --dtype float32 --prefix db/s/i --quiet
"$F" synth "$T/f.h5" --pairs "$T/p.txt" --images 4 --keypoints 6 --dim 8 \
    --npairs 4 --quiet
cp "$T/p.txt" "$C/pairs/synth.txt"
"$F" import "$T/f.h5" "$T/db.fst" --quiet
"$F" match "$T/db.fst" "$T/p.txt" -o "$C/matchfile/featstore.h5" \
    --workers 1 --device cpu --quiet
mkdir -p "$C/weights"
cp "$HERE"/../weights/data/*.pth "$HERE"/../weights/data/*.safetensors "$C/weights/"
for d in "$C"/*; do echo "$(basename "$d"): $(ls "$d" | wc -l) files, $(du -sk "$d" | cut -f1) kB"; done
