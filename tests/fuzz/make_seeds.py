#!/usr/bin/env python3
"""make_seeds.py CORPUS_DIR : write the seed corpora of the HDF5 and pairs
fuzz targets (tests/fuzz/corpus/{h5import,matchfile,pairs}/), small files in
every layout hloc and featstore write. Deterministic. The record seeds come
from seed_records (C). Needs python3-h5py and python3-numpy."""
import os
import sys

import h5py
import numpy as np

root = sys.argv[1]
rng = np.random.default_rng(6)


def path(target, name):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, name)


# ---- hloc features.h5 (fuzz_h5import) ----
def image(n, d=8, dt=np.float32, scores="scores", size=True, unc=None):
    g = {"keypoints": (rng.random((n, 2)) * 64).astype(dt),
         "descriptors": rng.standard_normal((d, n)).astype(dt)}
    if scores:
        g[scores] = rng.random(n).astype(dt)
    if size:
        g["image_size"] = np.array([64, 48])
    return g, unc


def features(name, images, libver="latest"):
    with h5py.File(path("h5import", name), "w", libver=libver) as f:
        for iname, (g, unc) in images.items():
            grp = f.create_group(iname)
            for k, v in g.items():
                grp.create_dataset(k, data=v)
            if unc is not None:
                grp["keypoints"].attrs["uncertainty"] = unc


features("f32.h5", {"a.jpg": image(3), "b.jpg": image(2)})
features("f16.h5", {"a.jpg": image(3, dt=np.float16),
                    "db/seq/b.jpg": image(4, dt=np.float16)})
features("nested.h5", {"db/seq1/0001.jpg": image(2, unc=np.float32(1.5)),
                       "db/seq2/frame 1.png": image(1, scores="keypoint_scores"),
                       "q/n/x.jpg": image(0)})
features("noscores.h5", {"x": image(2, scores=None, size=False)})
features("unc64.h5", {"x": image(2, unc=1.25)})
features("zero.h5", {"empty.jpg": image(0), "one.jpg": image(1, d=4)})
features("v110.h5", {"a.jpg": image(2), "b/c.jpg": image(1)}, libver="earliest")
features("dim1.h5", {"a": image(2, d=1), "b": image(1, d=1)})
# bad on purpose: D differs, N differs, wrong rank, float64, NaN, lonely
with h5py.File(path("h5import", "bad_d.h5"), "w", libver="latest") as f:
    for n, (g, _) in {"a": image(2, d=8), "b": image(2, d=4)}.items():
        for k, v in g.items():
            f.create_dataset(n + "/" + k, data=v)
with h5py.File(path("h5import", "bad_shapes.h5"), "w", libver="latest") as f:
    f["n/keypoints"] = np.zeros((3, 2), np.float32)
    f["n/descriptors"] = np.zeros((8, 2), np.float32)
    f["r/keypoints"] = np.zeros((3,), np.float32)
    f["r/descriptors"] = np.zeros((8, 3), np.float32)
    f["f64/keypoints"] = np.zeros((1, 2), np.float64)
    f["f64/descriptors"] = np.zeros((8, 1), np.float64)
    f["nan/keypoints"] = np.full((1, 2), np.nan, np.float32)
    f["nan/descriptors"] = np.zeros((8, 1), np.float32)
    f["lonely/keypoints"] = np.zeros((1, 2), np.float32)
with h5py.File(path("h5import", "linked.h5"), "w", libver="latest") as f:
    g, _ = image(2)
    for k, v in g.items():
        f.create_dataset("a/" + k, data=v)
    f["b"] = f["a"]                                  # hard link: same group
    f["s"] = h5py.SoftLink("/a")
    f["ext"] = h5py.ExternalLink("nowhere.h5", "/x")
with h5py.File(path("h5import", "chunked.h5"), "w", libver="latest") as f:
    g, _ = image(5)
    for k, v in g.items():
        f.create_dataset("c/" + k, data=v, chunks=True, compression="gzip")
with open(path("h5import", "not_hdf5.h5"), "wb") as f:
    f.write(b"\x89HDF\r\n\x1a\n" + bytes(64))


# ---- hloc matches.h5 (fuzz_matchfile) ----
def pair(n0, n1, idx=np.int16):
    m = rng.integers(-1, n1, n0).astype(idx)
    s = np.where(m >= 0, rng.random(n0), 0).astype(np.float16)
    return m, s


def matches(name, keys, idx=np.int16, libver="latest", old=False):
    with h5py.File(path("matchfile", name), "w", libver=libver) as f:
        for k in keys:
            m, s = pair(4, 3, idx)
            g = f.create_group(k)
            g.create_dataset("matches0", data=m)
            g.create_dataset("matching_scores0", data=s)


matches("new.h5", ["a.jpg/b.jpg", "a.jpg/c.jpg", "db-s-1.jpg/db-s-2.jpg"])
matches("old.h5", ["a.jpg_b.jpg", "x_y"])
matches("int32.h5", ["a/b"], idx=np.int32)
matches("v110.h5", ["a/b", "c/d"], libver="earliest")
matches("empty.h5", [])
with h5py.File(path("matchfile", "partial.h5"), "w", libver="latest") as f:
    m, s = pair(3, 3)
    f["a/b/matches0"] = m
    f["a/b/matching_scores0"] = s
    f.create_group("c/d")                            # crashed hloc run
    f["e/f/matching_scores0"] = s
    f["g"] = np.zeros(3)                             # a dataset, not a group
    f["h/matches0"] = m                              # depth 1 (old key)
    f["deep/er/still/matches0"] = m                  # too deep: not a pair

# ---- pairs files (fuzz_pairs) ----
pairs = {
    "basic.txt": b"a.jpg b.jpg\na.jpg c.jpg\nb.jpg c.jpg\n",
    "hloc.txt": b"db/seq1/0001.jpg db/seq1/0002.jpg\n"
                b"query/q1.jpg db/seq1/0001.jpg\n",
    "messy.txt": b"# comment\n\n  a  b  \r\nb\ta\n a a\n a b\n#x y\nc d",
    "dups.txt": b"a b\nb a\na b\nc a\na c\nb b\n",
    "crlf.txt": b"x y\r\ny z\r\n\r\n",
    "bad1.txt": b"a b\nonly\n",
    "bad3.txt": b"a b c\n",
    "nul.txt": b"a b\n\x00 c\n",
    "empty.txt": b"",
    "blank.txt": b"\n\n  \n\t\n# nothing\n",
    "long.txt": b"n" * 600 + b" m\n",
    "utf8.txt": "café.jpg naïve.jpg\n日本.png 中国.png\n".encode(),
}
for n, t in pairs.items():
    with open(path("pairs", n), "wb") as f:
        f.write(t)

# ---- worker protocol streams (fuzz_proto) ----
import struct


def msg(t, payload):
    return struct.pack("<II", t, len(payload)) + payload


def s(x):
    x = x.encode()
    return struct.pack("<I", len(x)) + x


config = msg(1, s("/data/db.fst") + s("") + s("cpu") + s("threads=1") +
             struct.pack("<IddIII", 1, 0.8, 0.7, 2, 0, 3))
batch = msg(2, struct.pack("<II", 7, 2) + struct.pack("<I", 0) + s("a.jpg") + s("b.jpg") +
            struct.pack("<I", 1) + s("db/x.jpg") + s("db/y.jpg"))
ready = msg(3, struct.pack("<i", 0) + s("") + s("cpu"))
n0 = 5
result = msg(4, struct.pack("<IIiII", 7, 0, 0, n0, 3) + s("") +
             struct.pack(f"<{n0}h", 1, -1, 0, 4, -1) + bytes(2 * n0))
failed = msg(4, struct.pack("<IIiII", 7, 1, -5, 0, 0) + s("db/x.jpg: record fails checksum"))
done = msg(5, struct.pack("<I", 7))
fatal = msg(6, struct.pack("<i", -6) + s("no CUDA device"))
streams = {
    "config.bin": bytes([63]) + config,
    "worker.bin": bytes([7]) + ready + result + failed + done,
    "coord.bin": bytes([0]) + config + batch,
    "fatal.bin": bytes([3]) + ready + fatal,
    "cut.bin": bytes([1]) + ready + result[: len(result) // 2],
    "badtype.bin": bytes([9]) + msg(99, b"x"),
    "huge.bin": bytes([9]) + struct.pack("<II", 4, 0xFFFFFFF0),
}
for n, t in streams.items():
    with open(path("proto", n), "wb") as f:
        f.write(t)
