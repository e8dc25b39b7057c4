#!/usr/bin/env python3
"""h5compare.py A.h5 B.h5 : exit 0 if both files hold the same groups and
datasets (same dtype, shape and bytes) with the same attributes (dtype,
shape, bytes), both ways; else print every difference and exit 1."""
import sys

import h5py
import numpy as np


def items(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj))
    return out


def same_array(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def compare(pa, pb):
    diffs = []
    with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
        ia, ib = items(fa), items(fb)
        for name in sorted(set(ia) | set(ib)):
            if name not in ib:
                diffs.append(f"only in {pa}: /{name}")
                continue
            if name not in ia:
                diffs.append(f"only in {pb}: /{name}")
                continue
            a, b = ia[name], ib[name]
            if type(a) is not type(b):
                diffs.append(f"/{name}: {type(a).__name__} vs {type(b).__name__}")
                continue
            if isinstance(a, h5py.Dataset):
                if a.dtype != b.dtype:
                    diffs.append(f"/{name}: dtype {a.dtype} vs {b.dtype}")
                elif a.shape != b.shape:
                    diffs.append(f"/{name}: shape {a.shape} vs {b.shape}")
                elif not same_array(a[()], b[()]):
                    diffs.append(f"/{name}: bytes differ")
            if set(a.attrs) != set(b.attrs):
                diffs.append(f"/{name}: attributes {sorted(a.attrs)} vs {sorted(b.attrs)}")
            for k in set(a.attrs) & set(b.attrs):
                if not same_array(a.attrs[k], b.attrs[k]):
                    diffs.append(f"/{name}: attribute {k}: {a.attrs[k]!r} vs {b.attrs[k]!r}")
    return diffs


if __name__ == "__main__":
    d = compare(sys.argv[1], sys.argv[2])
    for line in d:
        print(line)
    print(f"{len(d)} differences")
    sys.exit(1 if d else 0)
