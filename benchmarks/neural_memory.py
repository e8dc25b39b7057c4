#!/usr/bin/python3
"""neural_memory.py FEATSTORE PRESET [KEYPOINTS] [PAIRS] : memory and speed of
`featstore match --preset PRESET` (benchmarks/RESULTS.md, "Neural matchers").

Builds a store of 256-D float16 images of KEYPOINTS keypoints (default
4096) and full-size random weights (tests/match/neural_weights.py: LightGlue
9 layers, SuperGlue 18), then runs PAIRS pairs (default 4) with 1 and 2
workers, sampling every worker's /proc/PID/smaps_rollup every 50 ms. A
worker's private memory is its anonymous memory (Anonymous: the model's
copy of the weights, its workspace, malloc); the store map is file-backed
and shared by every worker, so it is left out. Prints one line per run.
"""
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "match"))
import neural_weights  # noqa: E402


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def anon_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    fst, preset = sys.argv[1], sys.argv[2]
    kp = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    npairs = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    d = tempfile.mkdtemp(prefix="fst-neural-mem-")
    rng = np.random.default_rng(1)
    names = [f"img{i}.jpg" for i in range(npairs + 1)]
    with h5py.File(f"{d}/f.h5", "w") as f:
        for nm in names:
            g = f.create_group(nm)
            g.create_dataset("keypoints", data=(rng.random((kp, 2)) * 1600).astype(np.float32))
            x = rng.standard_normal((256, kp)).astype(np.float32)
            g.create_dataset("descriptors", data=(x / np.linalg.norm(x, axis=0)).astype(np.float16))
            g.create_dataset("scores", data=rng.random(kp).astype(np.float32))
            g.create_dataset("image_size", data=np.array([1600, 1200]))
    subprocess.run([fst, "import", f"{d}/f.h5", f"{d}/db.fst", "--quiet"], check=True)
    with open(f"{d}/pairs.txt", "w") as f:
        for i in range(npairs):
            f.write(f"{names[i]} {names[i + 1]}\n")
    sg = "superglue" in preset
    wt = neural_weights.write(f"{d}/w.safetensors", "superglue" if sg else "lightglue",
                              layers=18 if sg else 9)
    for nw in (1, 2):
        out = f"{d}/m{nw}.h5"
        t0 = time.time()
        p = subprocess.Popen([fst, "match", f"{d}/db.fst", f"{d}/pairs.txt", "-o", out,
                              "--preset", preset, "--weights", wt, "--workers", str(nw),
                              "--quiet"])
        peak = {}
        while p.poll() is None:
            for c in children(p.pid):
                peak[c] = max(peak.get(c, 0), anon_kb(c))
            time.sleep(0.05)
        wall = time.time() - t0
        assert p.returncode == 0, p.returncode
        w = [v for v in peak.values() if v > 0]
        print(f"{preset} kp={kp} pairs={npairs} workers={nw}: wall {wall:.2f} s, "
              f"{npairs / wall:.3f} pairs/s, private (anonymous) per worker peak "
              f"{max(w) / 1024 if w else 0:.1f} MiB (workers seen {len(w)})", flush=True)
    subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
