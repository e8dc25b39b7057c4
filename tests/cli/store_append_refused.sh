#!/bin/bash
# A refused `import --append` (an image already in the store with other
# content) leaves the store file byte-identical, wherever the conflict
# comes in the source file (issue 10 item 8): as the first image, in a
# store never appended to (no `pending` table yet); and in the middle of a
# file whose new images before it make more than one batch (1000 records,
# which the writer commits before it reaches the conflict).
source "$(dirname "$0")/lib.sh"

run 0 "$FEATSTORE" synth "$T/m.h5" --images 3 --keypoints 16 --dim 8 --prefix m/img -q
run 0 "$FEATSTORE" synth "$T/m2.h5" --images 3 --keypoints 16 --dim 8 --prefix m/img --seed 2 -q
run 0 "$FEATSTORE" import "$T/m.h5" "$T/s.fst" -q
cp "$T/s.fst" "$T/s0.fst"
run 1 "$FEATSTORE" import "$T/m2.h5" "$T/s.fst" --append
has "$T/err" "$T/m2.h5: image 'm/img0000.jpg' is already in $T/s.fst with different content"
cmp "$T/s0.fst" "$T/s.fst" || fail "a refused first append changed the store"; ok

# an append that works, then: the store has its `pending` table
run 0 "$FEATSTORE" synth "$T/b.h5" --images 2 --keypoints 16 --dim 8 --prefix b/img -q
run 0 "$FEATSTORE" import "$T/b.h5" "$T/s.fst" --append -q
cp "$T/s.fst" "$T/s1.fst"

# 1100 new images (a/...), m/img0000.jpg as stored, m/img0001.jpg with
# other content, 5 more new ones (z/...): in key order
run 0 "$FEATSTORE" synth "$T/a.h5" --images 1100 --keypoints 4 --dim 8 --prefix a/img -q
run 0 "$FEATSTORE" synth "$T/z.h5" --images 5 --keypoints 4 --dim 8 --prefix z/img -q
"$PYTHON" - "$T" <<'EOF' || fail "writing mix.h5"
import sys
import h5py
t = sys.argv[1]
with h5py.File(f"{t}/mix.h5", "w") as o:
    with h5py.File(f"{t}/a.h5", "r") as f:
        f.copy(f["a"], o, name="a")
    with h5py.File(f"{t}/z.h5", "r") as f:
        f.copy(f["z"], o, name="z")
    m = o.create_group("m")
    with h5py.File(f"{t}/m.h5", "r") as f:
        f.copy(f["m/img0000.jpg"], m, name="img0000.jpg")
    with h5py.File(f"{t}/m2.h5", "r") as f:
        f.copy(f["m/img0001.jpg"], m, name="img0001.jpg")
EOF
ok
run 1 "$FEATSTORE" import "$T/mix.h5" "$T/s.fst" --append
has "$T/err" "$T/mix.h5: image 'm/img0001.jpg' is already in $T/s.fst with different content"
cmp "$T/s1.fst" "$T/s.fst" || fail "a refused append changed the store (size $(stat -c %s "$T/s1.fst") -> $(stat -c %s "$T/s.fst"))"; ok
run 0 "$FEATSTORE" info "$T/s.fst" --json
[ "$(json_get "$T/out" 'd["images"]')" = 5 ] || fail "images: $(cat "$T/out")"; ok
run 0 "$FEATSTORE" verify "$T/s.fst" -q

# without the conflict the same file goes in: the identical image skipped
"$PYTHON" -c 'import sys, h5py; f = h5py.File(sys.argv[1], "a"); del f["m/img0001.jpg"]' \
    "$T/mix.h5" || fail "editing mix.h5"
run 0 "$FEATSTORE" import "$T/mix.h5" "$T/s.fst" --append
has "$T/out" "1105 images added, 1 skipped (identical)"
run 0 "$FEATSTORE" verify "$T/s.fst" -q
done_ok
