#!/usr/bin/python3
"""folk_baselines.py : the "folk method" of ../shared/CONTEXT.md, re-implemented
in Python as practitioners write it, to measure featstore against (issue 4).

Python multiprocessing with the spawn context; N worker processes, each given
a static slice of the pairs list (pairs[i::N], the write-up's way), each
matching with numpy (hloc's NN-mutual: sim = d0.T @ d1 in float32, argmax both
ways, mutual check, score (sim+1)/2) and writing its own matches file.

Methods (how a worker gets the descriptors of a pair):
  a        every worker loads all features from the h5 file into a dict of
           numpy arrays, then matches;
  b        the parent loads all features into a dict, copies them into a
           multiprocessing.Manager().dict() (one image per call) and keeps its
           own dict, as folk code does; workers fetch each pair's two arrays
           through the manager (pickled through its server process);
  b-image  like b, but the parent fills the Manager dict image by image
           straight from the h5 file, holding no copy of its own;
  c        every worker opens the h5 file and reads its pairs' features pair
           by pair (hloc's match_features.py way).

Usage (one run; prints one JSON line on stdout):
  folk_baselines.py --method a --features F.h5 --pairs P.txt --workers N
                    [--out-dir DIR] [--blas-threads 1]
Timestamps in the JSON are time.monotonic() values (CLOCK_MONOTONIC, the same
clock in every process on the machine), so a driver that notes the clock
before launching this script gets the time to the first match.

Also importable: nn_mutual(), load_all(), image_names(), read_pairs().
"""

import argparse
import json
import os
import sys
import time

# BLAS threads per process must be fixed before numpy loads (in the parent
# and, through the environment, in every spawned worker).
if __name__ == "__main__":
    _threads = "1"
    for _i, _a in enumerate(sys.argv):
        if _a == "--blas-threads" and _i + 1 < len(sys.argv):
            _threads = sys.argv[_i + 1]
        elif _a.startswith("--blas-threads="):
            _threads = _a.split("=", 1)[1]
    for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_v] = _threads

import multiprocessing as mp  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

METHODS = ("a", "b", "b-image", "c")


# --------------------------------------------------------------------------
# hloc's data layout and NN-mutual matching

def image_names(h5):
    """Names of the image groups (those holding 'descriptors'), nested '/' kept."""
    names = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "descriptors" in obj:
            names.append(name)
    h5.visititems(visit)
    return names


def read_features(h5, name):
    """What matching needs from one image: keypoints (N,2), descriptors (D,N)."""
    g = h5[name]
    return {"keypoints": g["keypoints"][()], "descriptors": g["descriptors"][()]}


def load_all(path):
    """Every image's features, as a dict name -> {keypoints, descriptors}."""
    with h5py.File(path, "r") as h5:
        return {n: read_features(h5, n) for n in image_names(h5)}


def read_pairs(path):
    """hloc pairs file: 'name0 name1' per line; blanks and '#' comments skipped."""
    pairs = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                a, b = line.split()
                pairs.append((a, b))
    return pairs


def pair_key(n0, n1):
    """hloc's names_to_pair: '/' in names becomes '-', joined by '/'."""
    return "/".join((n0.replace("/", "-"), n1.replace("/", "-")))


def nn_mutual(d0, d1):
    """hloc NN-mutual on descriptors (D,N0), (D,N1): matches0 (N0,) int, -1 for
    none, and scores0 (N0,) float32 = (sim+1)/2 of kept matches, else 0."""
    a = np.asarray(d0, dtype=np.float32)
    b = np.asarray(d1, dtype=np.float32)
    sim = a.T @ b                                   # (N0, N1)
    m0 = sim.argmax(axis=1)
    m1 = sim.argmax(axis=0)
    i0 = np.arange(sim.shape[0])
    ok = m1[m0] == i0
    matches0 = np.where(ok, m0, -1)
    scores0 = np.where(ok, (sim[i0, m0] + 1.0) / 2.0, 0.0).astype(np.float32)
    return matches0, scores0


# --------------------------------------------------------------------------
# workers (top-level functions: the spawn context imports them by name)

class _Writer:
    """One matches file per worker (the write-up's way), hloc's layout."""

    def __init__(self, path):
        self.h5 = h5py.File(path, "w") if path else None

    def put(self, n0, n1, matches0, scores0):
        if self.h5 is None:
            return
        g = self.h5.require_group(pair_key(n0, n1))
        dtype = np.int16 if matches0.size == 0 or matches0.max() <= 32767 else np.int32
        g.create_dataset("matches0", data=matches0.astype(dtype))
        g.create_dataset("matching_scores0", data=scores0.astype(np.float16))

    def close(self):
        if self.h5 is not None:
            self.h5.close()


def _match_loop(rank, pairs, get, out_path, events):
    """Match `pairs` using get(name) -> descriptors; report first and last."""
    w = _Writer(out_path)
    nmatches = 0
    t_first = None
    for i, (n0, n1) in enumerate(pairs):
        m0, s0 = nn_mutual(get(n0), get(n1))
        nmatches += int((m0 > -1).sum())
        w.put(n0, n1, m0, s0)
        if i == 0:
            t_first = time.monotonic()
            events.put(("first", rank, t_first))
    w.close()
    events.put(("done", rank, time.monotonic(), len(pairs), nmatches, t_first))


def worker_a(rank, features, pairs, out_path, events):
    t0 = time.monotonic()
    feats = load_all(features)                       # the whole file, per process
    events.put(("loaded", rank, time.monotonic(), time.monotonic() - t0))
    _match_loop(rank, pairs, lambda n: feats[n]["descriptors"], out_path, events)


def worker_b(rank, shared, pairs, out_path, events):
    # Each access pickles the image's arrays through the manager's server.
    _match_loop(rank, pairs, lambda n: shared[n]["descriptors"], out_path, events)


def worker_c(rank, features, pairs, out_path, events):
    with h5py.File(features, "r") as h5:             # pair by pair, as hloc
        _match_loop(rank, pairs, lambda n: h5[n]["descriptors"][()], out_path, events)


# --------------------------------------------------------------------------
# one run

def run(method, features, pairs, workers, out_dir=None):
    """Run one folk method; return a dict of timestamps and counts."""
    ctx = mp.get_context("spawn")
    t_start = time.monotonic()
    events = ctx.Queue()
    slices = [pairs[i::workers] for i in range(workers)]
    outs = [os.path.join(out_dir, f"matches-{method}-w{i}.h5") if out_dir else None
            for i in range(workers)]
    manager = None
    t_fill = None
    parent_feats = None

    if method == "a":
        procs = [ctx.Process(target=worker_a, args=(i, features, slices[i], outs[i], events))
                 for i in range(workers)]
    elif method in ("b", "b-image"):
        manager = ctx.Manager()
        shared = manager.dict()
        if method == "b":
            parent_feats = load_all(features)        # folk code keeps this dict
            for name, f in parent_feats.items():
                shared[name] = f
        else:
            with h5py.File(features, "r") as h5:
                for name in image_names(h5):
                    shared[name] = read_features(h5, name)
        t_fill = time.monotonic()
        procs = [ctx.Process(target=worker_b, args=(i, shared, slices[i], outs[i], events))
                 for i in range(workers)]
    elif method == "c":
        procs = [ctx.Process(target=worker_c, args=(i, features, slices[i], outs[i], events))
                 for i in range(workers)]
    else:
        raise ValueError(f"unknown method {method!r}")

    for p in procs:
        p.start()
    first = None
    loads = []
    done = 0
    npairs = nmatches = 0
    t_end = None
    while done < workers:
        try:
            ev = events.get(timeout=1.0)
        except Exception:                             # queue.Empty
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"folk {method}: worker exited with {dead[0].exitcode}")
            continue
        if ev[0] == "first":
            first = ev[2] if first is None else min(first, ev[2])
        elif ev[0] == "loaded":
            loads.append(ev[3])
        elif ev[0] == "done":
            done += 1
            npairs += ev[3]
            nmatches += ev[4]
            t_end = ev[2] if t_end is None else max(t_end, ev[2])
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"folk {method}: worker exited with {p.exitcode}")
    if manager is not None:
        manager.shutdown()
    del parent_feats
    t_exit = time.monotonic()
    return {
        "method": method, "workers": workers, "pairs": npairs, "matches": nmatches,
        "t_start": t_start, "t_fill": t_fill, "t_first": first, "t_end": t_end,
        "t_exit": t_exit, "load_s": max(loads) if loads else None,
        "wall_s": t_exit - t_start,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--features", required=True, help="hloc features.h5")
    ap.add_argument("--pairs", required=True, help="hloc pairs file")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out-dir", help="write matches-<method>-w<i>.h5 here")
    ap.add_argument("--blas-threads", default="1",
                    help="BLAS threads per process (default 1: one core per worker)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    res = run(args.method, args.features, read_pairs(args.pairs), args.workers, args.out_dir)
    res["blas_threads"] = int(args.blas_threads)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
