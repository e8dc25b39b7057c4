#!/bin/bash
# Files written by h5py exactly as hloc writes them (float32, and as_half):
# import, export, and compare every dataset, dtype, shape and attribute bit
# for bit with h5py; then import the export again.
source "$(dirname "$0")/lib.sh"

for mode in float32 half; do
    flag=""; [ "$mode" = half ] && flag=--half
    run 0 "$PYTHON" "$HERE/make_hloc.py" "$T/$mode.h5" $flag
    n=$(cat "$T/out")
    run 0 "$FEATSTORE" import "$T/$mode.h5" "$T/$mode.fst"
    has "$T/out" "$n images added"
    run 0 "$FEATSTORE" verify "$T/$mode.fst"
    run 0 "$FEATSTORE" export "$T/$mode.fst" "$T/$mode.out.h5"
    run 0 "$PYTHON" "$HERE/h5compare.py" "$T/$mode.h5" "$T/$mode.out.h5"
    has "$T/out" "0 differences"
    run 0 "$FEATSTORE" import "$T/$mode.out.h5" "$T/$mode.again.fst"
    run 0 "$FEATSTORE" export "$T/$mode.again.fst" "$T/$mode.again.h5"
    run 0 "$PYTHON" "$HERE/h5compare.py" "$T/$mode.h5" "$T/$mode.again.h5"
done
# The float16 store read back in Python matches the file: names, N x D
# descriptors (the transpose of hloc's D x N).
"$PYTHON" - "$T/half.h5" "$T/half.out.h5" <<'PY' || fail "python check"
import h5py, sys
import numpy as np
with h5py.File(sys.argv[1]) as a, h5py.File(sys.argv[2]) as b:
    g = a["db/seq2/frame 10.png"]
    assert g["keypoint_scores"].dtype == np.float16
    assert b["db/seq2/frame 10.png/descriptors"].shape == (64, 120)
    assert b["db/seq1/0002.jpg/descriptors"].shape == (64, 0)
    assert "uncertainty" not in b["query/q2.jpg/keypoints"].attrs
    assert "image_size" not in b["query/q2.jpg"]
PY
ok
done_ok
