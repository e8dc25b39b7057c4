#!/bin/bash
# DoG (SIFT) features as hloc writes them, with each keypoint's `scales` and
# `oris` (float32, and float16 under as_half): import keeps them (format
# 1.2), info counts them, export gives the file back bit for bit, verify
# finds a damaged scale; synth --scales-oris writes them.
source "$(dirname "$0")/lib.sh"

for mode in float32 half; do
    flag=""; [ "$mode" = half ] && flag=--half
    run 0 "$PYTHON" "$HERE/make_hloc.py" "$T/$mode.h5" --dog $flag
    n=$(cat "$T/out")
    run 0 "$FEATSTORE" import "$T/$mode.h5" "$T/$mode.fst"
    has "$T/out" "$n images added"
    hasnt "$T/out" "not kept"
    hasnt "$T/err" "not kept"
    run 0 "$FEATSTORE" info "$T/$mode.fst"
    has "$T/out" "format       1.2"
    has "$T/out" "scales, oris $n, $n of $n images"
    run 0 "$FEATSTORE" info "$T/$mode.fst" --json
    [ "$(json_get "$T/out" 'd["images_with_scales"], d["images_with_oris"], d["format_version"]')" \
      = "($n, $n, '1.2')" ] || fail "info --json: $(cat "$T/out")"
    ok
    run 0 "$FEATSTORE" verify "$T/$mode.fst"
    run 0 "$FEATSTORE" export "$T/$mode.fst" "$T/$mode.out.h5"
    run 0 "$PYTHON" "$HERE/h5compare.py" "$T/$mode.h5" "$T/$mode.out.h5"
    has "$T/out" "0 differences"
    run 0 "$FEATSTORE" import "$T/$mode.out.h5" "$T/$mode.again.fst"
    run 0 "$FEATSTORE" export "$T/$mode.again.fst" "$T/$mode.again.h5"
    run 0 "$PYTHON" "$HERE/h5compare.py" "$T/$mode.h5" "$T/$mode.again.h5"
    has "$T/out" "0 differences"
done
"$PYTHON" - "$T/half.out.h5" <<'PY' || fail "python check"
import h5py, sys
import numpy as np
with h5py.File(sys.argv[1]) as f:
    g = f["db/seq1/0001.jpg"]
    assert g["scales"].dtype == np.float16 and g["scales"].shape == (300,)
    assert g["oris"].dtype == np.float16 and g["oris"].shape == (300,)
    assert f["db/seq1/0002.jpg/scales"].shape == (0,)
PY
ok

# A features.h5 without them: the store stays 1.1 and info counts none.
run 0 "$PYTHON" "$HERE/make_hloc.py" "$T/plain.h5"
run 0 "$FEATSTORE" import "$T/plain.h5" "$T/plain.fst"
run 0 "$FEATSTORE" info "$T/plain.fst"
has "$T/out" "format       1.1"
has "$T/out" "scales, oris 0, 0 of 6 images"

# One flipped bit in a stored scale: verify fails and names the image.
cp "$T/float32.fst" "$T/bad.fst"
"$PYTHON" - "$T/float32.h5" "$T/bad.fst" <<'PY' || fail "corrupting a scale"
import h5py, sys
import numpy as np
with h5py.File(sys.argv[1]) as f:
    sc = np.asarray(f["db/seq2/frame 10.png/scales"], dtype=np.float32).tobytes()
data = bytearray(open(sys.argv[2], "rb").read())
at = data.find(sc)
assert at >= 0 and data.find(sc, at + 1) < 0, "scales not found once in the store"
data[at + 41] ^= 0x04
open(sys.argv[2], "wb").write(bytes(data))
PY
run 1 "$FEATSTORE" verify "$T/bad.fst"
has "$T/out" "frame 10.png"
has "$T/out" "checksum"
has "$T/err" "1 of 6 records bad"

# synth --scales-oris: a DoG-style file that imports with them
run 0 "$FEATSTORE" synth "$T/syn.h5" --images 5 --keypoints 64 --scales-oris --quiet
run 0 "$FEATSTORE" import "$T/syn.h5" "$T/syn.fst"
run 0 "$FEATSTORE" info "$T/syn.fst"
has "$T/out" "scales, oris 5, 5 of 5 images"
run 0 "$FEATSTORE" export "$T/syn.fst" "$T/syn.out.h5"
run 0 "$PYTHON" "$HERE/h5compare.py" "$T/syn.h5" "$T/syn.out.h5"
has "$T/out" "0 differences"
# and without the option, none
run 0 "$FEATSTORE" synth "$T/syn0.h5" --images 5 --keypoints 64 --quiet
"$PYTHON" -c 'import h5py,sys; f=h5py.File(sys.argv[1]); assert "scales" not in f["synth/img0000.jpg"]' \
    "$T/syn0.h5" || fail "synth wrote scales without --scales-oris"
ok
done_ok
