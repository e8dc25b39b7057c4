#!/bin/bash
# Messages that say what happened (issue 10, item 11): a features file
# locked by a writer is named as locked, not damaged; soft links that import
# does not follow are counted and one is named; synth refuses image names a
# pairs file cannot hold.
source "$(dirname "$0")/lib.sh"

run 0 "$FEATSTORE" synth "$T/f.h5" --images 4 --keypoints 100 --dim 32 -q

# 11a: another program holds the file open for writing (h5py mode 'a'):
# HDF5's file lock refuses us; the message says so and names the rule.
cat >"$T/hold.py" <<'PY'
import subprocess, sys, h5py
f = h5py.File(sys.argv[1], "a")       # held open for writing: HDF5 locks it
r = subprocess.run(sys.argv[2:], capture_output=True, text=True)
f.close()
sys.stderr.write(r.stderr)
sys.exit(r.returncode)
PY
run 1 "$PYTHON" "$T/hold.py" "$T/f.h5" "$FEATSTORE" import "$T/f.h5" "$T/l.fst"
has "$T/err" "$T/f.h5: locked: another program has it open for writing"
has "$T/err" "HDF5_USE_FILE_LOCKING=FALSE"
hasnt "$T/err" "damaged"
absent "$T/l.fst"
run 0 "$FEATSTORE" import "$T/f.h5" "$T/l.fst" -q      # closed: fine again

# 11f: a soft link to an image group is not followed: said, with an example
"$PYTHON" - "$T/f.h5" <<'PY' || fail "adding a soft link"
import sys, h5py
with h5py.File(sys.argv[1], "a") as f:
    first = sorted(f["synth"].keys())[0]
    f["alias.jpg"] = h5py.SoftLink("/synth/" + first)
PY
run 0 "$FEATSTORE" import "$T/f.h5" "$T/s.fst" -q
has "$T/err" "warning: 1 soft or external link not followed (e.g. /alias.jpg -> /synth/img"
has "$T/err" "images reached only through them are not imported"

# 11e: synth --prefix with a blank would write a pairs file match refuses
for p in "a b/img" "tab	img"; do
    run 2 "$FEATSTORE" synth "$T/y.h5" --pairs "$T/y.txt" --prefix "$p" -q
    has "$T/err" "image name prefix '$p' has a"
    has "$T/err" "pairs files separate names by blanks"
    absent "$T/y.h5"
    absent "$T/y.txt"
done
run 0 "$FEATSTORE" synth "$T/y.h5" --pairs "$T/y.txt" --prefix "#odd/img" --images 3 -q
run 0 "$FEATSTORE" import "$T/y.h5" "$T/y.fst" -q
run 0 "$FEATSTORE" match "$T/y.fst" "$T/y.txt" -o "$T/ym.h5" --workers 1 --device cpu --json
[ "$(json_get "$T/out" 'd["pairs"]')" = 2 ] || fail "#odd/img pairs not all matched: $(cat "$T/out")"; ok

done_ok
