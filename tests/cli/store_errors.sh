#!/bin/bash
# Usage errors exit 2; bad files exit 1 with a message naming the file; no
# partial output is ever left.
source "$(dirname "$0")/lib.sh"

run 0 "$FEATSTORE" synth "$T/f.h5" --images 4 --keypoints 300 --dim 32 -q
run 0 "$FEATSTORE" import "$T/f.h5" "$T/s.fst" -q

# usage errors: exit 2, a message, the usage line
run 2 "$FEATSTORE" import
has "$T/err" "featstore import: needs SRC.h5 and STORE"
has "$T/err" "usage: featstore import"
run 2 "$FEATSTORE" import "$T/f.h5"
run 2 "$FEATSTORE" import "$T/f.h5" "$T/x.fst" extra
has "$T/err" "too many arguments"
run 2 "$FEATSTORE" import --bogus "$T/f.h5" "$T/x.fst"
has "$T/err" "unknown option '--bogus'"
run 2 "$FEATSTORE" import "$T/f.h5" "$T/x.fst" --dtype int8
has "$T/err" "--dtype: 'int8' is not a dtype"
run 2 "$FEATSTORE" import "$T/f.h5" "$T/x.fst" --dtype
has "$T/err" "needs a value"
run 2 "$FEATSTORE" export "$T/s.fst"
run 2 "$FEATSTORE" info
run 2 "$FEATSTORE" info "$T/s.fst" --jsn
run 2 "$FEATSTORE" verify
run 2 "$FEATSTORE" synth
run 2 "$FEATSTORE" synth "$T/y.h5" --images abc
has "$T/err" "--images: 'abc' is not a non-negative integer"
run 2 "$FEATSTORE" synth "$T/y.h5" --images -3
run 2 "$FEATSTORE" synth "$T/y.h5" --planted 0.7
has "$T/err" "out of range"
run 2 "$FEATSTORE" synth "$T/y.h5" --images 3 --npairs 10
has "$T/err" "3 distinct pairs"
absent "$T/x.fst"
absent "$T/y.h5"

# bad input files: exit 1, the file named
head -c 100000 /dev/urandom >"$T/random.h5"
run 1 "$FEATSTORE" import "$T/random.h5" "$T/x.fst"
has "$T/err" "featstore import: unsupported or malformed input: $T/random.h5: not an HDF5 file"

# A damaged file on which HDF5 1.10 itself crashes (found by fuzzing): an
# error naming the file, never a crash of featstore, and no store.
KNOWN="$FST_SRCDIR/tests/fuzz/known/h5import-hdf5-local-heap-segv.h5"
run 1 "$FEATSTORE" import "$KNOWN" "$T/known.fst"
has "$T/err" "featstore import: unsupported or malformed input: $KNOWN: damaged HDF5 file: reading its groups crashed the HDF5 library"
absent "$T/known.fst"
absent "$T/x.fst"
run 1 "$FEATSTORE" import "$T/nosuch.h5" "$T/x.fst"
has "$T/err" "$T/nosuch.h5: No such file or directory"
head -c $(( $(stat -c %s "$T/f.h5") / 2 )) "$T/f.h5" >"$T/half.h5"
run 1 "$FEATSTORE" import "$T/half.h5" "$T/x.fst"
has "$T/err" "$T/half.h5"
has "$T/err" "truncated"
hasnt "$T/err" "HDF5-DIAG"          # HDF5's own error stack stays quiet
[ "$(wc -l <"$T/err")" = 1 ] || fail "more than one line of error: $(cat "$T/err")"; ok
absent "$T/x.fst"
printf 'not hdf5\n' >"$T/text.h5"
run 1 "$FEATSTORE" import "$T/text.h5" "$T/x.fst"
has "$T/err" "$T/text.h5: not an HDF5 file"
# a file h5py writes that is not hloc's (no image groups)
"$PYTHON" -c 'import h5py,sys; h5py.File(sys.argv[1],"w").create_dataset("x", data=[1,2])' "$T/other.h5"
run 1 "$FEATSTORE" import "$T/other.h5" "$T/x.fst"
has "$T/err" "no group holds both keypoints and descriptors"
# descriptors with another D than the first image
"$PYTHON" - "$T/badd.h5" <<'PY'
import h5py, numpy as np, sys
with h5py.File(sys.argv[1], "w", libver="latest") as f:
    for name, d in [("a.jpg", 128), ("b.jpg", 64)]:
        g = f.create_group(name)
        g["keypoints"] = np.zeros((5, 2), np.float32)
        g["descriptors"] = np.zeros((d, 5), np.float16)
PY
run 1 "$FEATSTORE" import "$T/badd.h5" "$T/x.fst"
has "$T/err" "$T/badd.h5: /b.jpg/descriptors: expected 128 rows, found 64"
absent "$T/x.fst"
ls "$T" | grep -q 'x.fst.tmp' && fail "temporary store left behind"; ok

# existing outputs are never replaced
run 1 "$FEATSTORE" import "$T/f.h5" "$T/s.fst"
has "$T/err" "$T/s.fst"
run 0 "$FEATSTORE" export "$T/s.fst" "$T/e.h5" -q
run 1 "$FEATSTORE" export "$T/s.fst" "$T/e.h5"
has "$T/err" "$T/e.h5: already exists"
run 1 "$FEATSTORE" synth "$T/f.h5"
has "$T/err" "$T/f.h5: already exists"

# not a store
run 1 "$FEATSTORE" info "$T/random.h5"
has "$T/err" "$T/random.h5"
run 1 "$FEATSTORE" verify "$T/nosuch.fst"
has "$T/err" "$T/nosuch.fst"
run 1 "$FEATSTORE" export "$T/nosuch.fst" "$T/z.h5"
absent "$T/z.h5"

# a damaged record: verify names it and exits 1
cp "$T/s.fst" "$T/bad.fst"
name=$("$PYTHON" - "$T/bad.fst" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
at = b.find(b"FSTR")                    # a record header (store/FORMAT.md)
name_at = b.find(b"synth/img", at)      # its name block
name = b[name_at:b.index(b"\0", name_at)].decode()
b[at + 1500] ^= 0xff                    # a byte of its payload
open(p, "wb").write(b)
print(name)
PY
)
[ -n "$name" ] || fail "no record found to damage"; ok
run 1 "$FEATSTORE" verify "$T/bad.fst"
has "$T/out" "bad record \"$name\""
has "$T/err" "1 of 4 records bad"
done_ok
