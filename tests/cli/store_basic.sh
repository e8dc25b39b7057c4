#!/bin/bash
# synth -> import -> info (text and JSON) -> verify -> export -> compare with
# h5py -> import again; --append, --dtype, --quiet, --help.
source "$(dirname "$0")/lib.sh"

run 0 "$FEATSTORE" synth "$T/f.h5" --pairs "$T/p.txt" --truth "$T/t.txt" \
    --images 6 --keypoints 200 --dim 64 --planted 0.25 --seed 3
has "$T/out" "wrote $T/f.h5: 6 images x 200 keypoints x 64-D float16"
[ "$(wc -l <"$T/p.txt")" = 5 ] || fail "pairs: $(wc -l <"$T/p.txt") lines"; ok
[ "$(wc -l <"$T/t.txt")" = 250 ] || fail "truth: $(wc -l <"$T/t.txt") lines"; ok
has "$T/p.txt" "synth/img0000.jpg synth/img0001.jpg"
run 0 "$FEATSTORE" synth "$T/big.h5" --pairs "$T/p2.txt" --images 6 --keypoints 10 \
    --npairs 9 --quiet
[ "$(wc -l <"$T/p2.txt")" = 9 ] || fail "pairs: $(wc -l <"$T/p2.txt") lines"; ok
[ ! -s "$T/out" ] || fail "--quiet printed: $(cat "$T/out")"; ok

run 0 "$FEATSTORE" import "$T/f.h5" "$T/s.fst"
has "$T/out" "imported $T/f.h5 -> $T/s.fst: 6 images added, 0 skipped (identical), 1200 keypoints"
[ ! -s "$T/err" ] || fail "stderr not empty (no TTY: no progress bar): $(cat "$T/err")"; ok

run 0 "$FEATSTORE" info "$T/s.fst"
has "$T/out" "images       6"
has "$T/out" "keypoints    1200 (per image: min 200, median 200, max 200)"
has "$T/out" "descriptors  64-D float16"
has "$T/out" "source       $T/f.h5"

run 0 "$FEATSTORE" info "$T/s.fst" --json
cp "$T/out" "$T/info.json"
[ "$(json_get "$T/info.json" 'd["images"]')" = 6 ] || fail "json images"; ok
[ "$(json_get "$T/info.json" 'd["d"], d["dtype"]')" = "(64, 'float16')" ] || fail "json d/dtype"; ok
[ "$(json_get "$T/info.json" 'd["keypoints_per_image"]["median"]')" = 200 ] || fail "json median"; ok
[ "$(json_get "$T/info.json" 'd["source"]["name"]')" = "$T/f.h5" ] || fail "json source"; ok
[ "$(json_get "$T/info.json" 'd["source"]["size"]')" = "$(stat -c %s "$T/f.h5")" ] || fail "json size"; ok
# payload: the arrays (N x (2 + 1) floats + N x D halves), plus a name and
# block padding per record
[ "$(json_get "$T/info.json" '6*200*(8+4+64*2) <= d["payload_bytes"] <= 6*200*(8+4+64*2) + 6*512')" = True ] \
    || fail "json payload"; ok

run 0 "$FEATSTORE" verify "$T/s.fst"
has "$T/out" "6 records checked, all good"

run 0 "$FEATSTORE" export "$T/s.fst" "$T/out.h5"
has "$T/out" "exported $T/s.fst -> $T/out.h5: 6 images"
run 0 "$PYTHON" "$HERE/h5compare.py" "$T/f.h5" "$T/out.h5"
run 0 "$FEATSTORE" import --quiet "$T/out.h5" "$T/s2.fst"
[ ! -s "$T/out" ] || fail "--quiet printed: $(cat "$T/out")"; ok
run 0 "$FEATSTORE" export "$T/s2.fst" "$T/out2.h5" -q
run 0 "$PYTHON" "$HERE/h5compare.py" "$T/f.h5" "$T/out2.h5"

# --append: identical images skipped; new ones added
run 0 "$FEATSTORE" synth "$T/g.h5" --images 3 --keypoints 50 --dim 64 --prefix other/ -q
run 0 "$FEATSTORE" import "$T/f.h5" "$T/s.fst" --append
has "$T/out" "appended $T/f.h5 -> $T/s.fst: 0 images added, 6 skipped (identical)"
run 0 "$FEATSTORE" import "$T/g.h5" "$T/s.fst" --append
has "$T/out" "3 images added, 0 skipped"
run 0 "$FEATSTORE" info "$T/s.fst"
has "$T/out" "images       9"
has "$T/out" "(per image: min 50, median 200, max 200)"
run 0 "$FEATSTORE" verify "$T/s.fst"
has "$T/out" "9 records checked, all good"

# --dtype float32 converts
run 0 "$FEATSTORE" import "$T/f.h5" "$T/s32.fst" --dtype float32
run 0 "$FEATSTORE" info --json "$T/s32.fst"
cp "$T/out" "$T/info32.json"
[ "$(json_get "$T/info32.json" 'd["dtype"]')" = float32 ] || fail "--dtype float32"; ok

# every command has --help on stdout, exit 0
for c in import export info verify synth; do
    run 0 "$FEATSTORE" "$c" --help
    has "$T/out" "usage: featstore $c"
done
# CPU processes never map CUDA: the backend is a module that only a GPU
# worker loads (kernels/backend.c), not a library featstore links.
if ldd "$FEATSTORE" | grep -qE 'libcublas|libcudart'; then
    fail "$FEATSTORE links CUDA libraries: every process would map them"
fi
ok

done_ok
