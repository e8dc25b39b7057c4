#!/usr/bin/python3
"""bench_python.py : the practitioners' scenario in Python (issue 13).

N Python worker processes (multiprocessing, spawn context), each running a
PyTorch model (hloc's NN-mutual written in torch) over its slice of the
pairs, getting the features:
  a         by loading the whole features file per process (h5py);
  b         through a multiprocessing.Manager() dict filled by the parent
            (pickled through the manager's server on every access);
  c         through featstore.open(): numpy views of the one shared map;
  baseline  c's workers with an empty store, matching the same number of
            pairs of random 2048x256 float16 tensors made in the worker:
            each process's interpreter + torch + model + the model's
            working buffers, and nothing of the features; the per-worker
            constant of c.
Measured per run: summed PSS of the whole process tree (benchmarks/pss.py,
parent and manager included), time from the launch to the first matched
pair, and from a worker's start (torch imported, model built: the moment it
asks for features) to its first pair; pairs/s over the matching phase.

Usage (prints one JSON line per run, and a table at the end):
  bench_python.py --features F.h5 --store F.fst --empty-store E.fst
                  --pairs P.txt [--workers 1,2,4,8] [--methods a,b,c,baseline]
                  [--max-a-workers 4] [--pss-duty 0.1] [--hold-s 0]
                  [--json-out R.jsonl] [--plot P.png]
Needs PYTHONPATH to hold the featstore module (<build>/tools/python).
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import time

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
# torch's BLAS here is Debian's OpenBLAS (libblas.so.3 -> openblas-pthread).
# On the AMD EPYC VMs (AVX2, no AVX-512) OPENBLAS_CORETYPE=Haswell or Zen
# gives the same sgemm speed as its default, and SkylakeX is SIGILL.

# baseline's random descriptors: the shape of the benchmark's images
# (synth --keypoints 2048 --dim 256, float16)
BASELINE_SHAPE = (2048, 256)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


# ---- the worker side ----

def _model():
    import torch
    torch.set_num_threads(1)

    class NNMutual(torch.nn.Module):
        """hloc's NN-mutual: similarities, argmax both ways, mutual check."""

        def forward(self, d0, d1):                  # (N0, D), (N1, D) float32
            sim = d0 @ d1.T
            s0, m0 = sim.max(1)
            m1 = sim.argmax(0)
            ok = m1[m0] == torch.arange(sim.shape[0])
            return torch.where(ok, m0, -1), torch.where(ok, (s0 + 1) / 2, 0)
    return torch, NNMutual().eval()


def _loop(rank, pairs, get, events, t_ready, hold_s=0.0):
    torch, model = _model()
    first = None
    nm = 0
    if not pairs:
        time.sleep(2.0)                             # nothing to match: let the sampler see it
    with torch.no_grad():
        for i, (a, b) in enumerate(pairs):
            d0, d1 = get(a), get(b)
            if i == 0:
                t_data = time.monotonic()
            m0, _ = model(d0, d1)
            nm += int((m0 > -1).sum())
            if i == 0:
                first = time.monotonic()
                events.put(("first", rank, first, first - t_ready, t_data - t_ready))
    events.put(("done", rank, time.monotonic(), len(pairs), nm))
    # --hold-s: stay alive with every page touched, so that a slow sampler
    # (8 processes over a 2 GiB map: one sample per seconds) sees the end
    time.sleep(hold_s)


def worker(rank, method, src, pairs, events, hold_s=0.0):
    import warnings
    import numpy as np
    import torch
    import featstore
    from folk_baselines import load_all
    warnings.filterwarnings("ignore", "The given NumPy array is not writable")
    torch.set_num_threads(1)
    _model()
    t_ready = time.monotonic()       # modules imported, model built: the start
    events.put(("ready", rank, t_ready))
    if method == "a":
        feats = load_all(src)                       # the whole file, per process
        get = lambda n: torch.from_numpy(                       # noqa: E731
            np.ascontiguousarray(feats[n]["descriptors"].T)).float()
    elif method == "b":
        get = lambda n: torch.from_numpy(                       # noqa: E731
            np.ascontiguousarray(src[n]["descriptors"].T)).float()
    elif method == "baseline":
        # the model's working memory without the features: the same pairs
        # matched on two random tensors of the store's shape, made here
        # (src is the empty store, opened as c opens its store). _loop asks
        # for a pair's two images in turn: hand out r0, r1, r0, ...
        store = featstore.open(src)                 # held open, as c holds its store
        g = torch.Generator().manual_seed(rank)
        r = [torch.randn(BASELINE_SHAPE, generator=g).to(torch.float16) for _ in range(2)]
        turn = itertools.count()
        get = lambda n: r[next(turn) % 2].float()                # noqa: E731
    else:
        store = featstore.open(src)
        # zero-copy view; .float() converts (and so copies) the pair's two
        # descriptor blocks, as every method does
        get = lambda n: torch.from_numpy(store[n].descriptors).float()  # noqa: E731
    _loop(rank, pairs, get, events, t_ready, hold_s)


# ---- one run (a child process of the driver, so that each starts clean) ----

def one_run(method, n, features, store, empty, pairs, hold_s=0.0):
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    t_launch = time.monotonic()
    events = ctx.Queue()
    slices = [pairs[i::n] for i in range(n)]
    manager = None
    if method == "a":
        srcs = [features] * n
    elif method == "b":
        from folk_baselines import load_all
        manager = ctx.Manager()
        shared = manager.dict()
        for name, f in load_all(features).items():  # folk code: one put per image
            shared[name] = f
        srcs = [shared] * n
    elif method == "c":
        srcs = [store] * n                          # opened in the worker, timed
    else:                                           # baseline: empty store, random tensors
        srcs = [empty] * n
    t_fill = time.monotonic()
    procs = [ctx.Process(target=worker, args=(i, method, srcs[i], slices[i], events, hold_s))
             for i in range(n)]
    for p in procs:
        p.start()
    ready, firsts, from_ready, data_ready, done = [], [], [], [], 0
    npairs = nm = 0
    t_end = None
    while done < n:
        ev = events.get(timeout=600)
        if ev[0] == "ready":
            ready.append(ev[2])
        elif ev[0] == "first":
            firsts.append(ev[2])
            from_ready.append(ev[3])
            data_ready.append(ev[4])
        else:
            done += 1
            npairs += ev[3]
            nm += ev[4]
            t_end = ev[2] if t_end is None else max(t_end, ev[2])
    for p in procs:
        p.join()
    if manager is not None:
        manager.shutdown()
    t_first = min(firsts) if firsts else None
    t0 = max(ready) if ready else None
    return {
        "method": method, "workers": n, "pairs": npairs, "matches": nm,
        "fill_s": t_fill - t_launch,
        "first_pair_s": (t_first - t_launch) if t_first else None,
        "first_from_worker_start_ms": 1000 * min(from_ready) if from_ready else None,
        "first_data_from_worker_start_ms": 1000 * min(data_ready) if data_ready else None,
        "pairs_per_s": npairs / (t_end - t0) if npairs and t_end and t0 else None,
        "wall_s": time.monotonic() - t_launch,
    }


# ---- the driver ----

def read_pairs(path):
    from folk_baselines import read_pairs as rp
    return rp(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--empty-store", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--methods", default="baseline,c,b,a")
    ap.add_argument("--max-a-workers", type=int, default=4,
                    help="a's memory grows N-fold: skip larger N (shared machine)")
    ap.add_argument("--pss-duty", type=float, default=0.1,
                    help="share of a core the PSS sampler may take (pss.py)")
    ap.add_argument("--hold-s", type=float, default=0.0,
                    help="each worker stays this long after its last pair")
    ap.add_argument("--json-out")
    ap.add_argument("--plot")
    ap.add_argument("--replot", metavar="JSONL",
                    help="only draw --plot from the --json-out of an earlier run")
    ap.add_argument("--one", help=argparse.SUPPRESS)    # METHOD,N: run one, in this process
    args = ap.parse_args(argv)
    if args.one:
        method, n = args.one.split(",")
        res = one_run(method, int(n), args.features, args.store, args.empty_store,
                      read_pairs(args.pairs), args.hold_s)
        print(json.dumps(res), flush=True)
        return 0

    if args.replot:
        results = [json.loads(line) for line in open(args.replot) if line.strip()]
        plot(results, results[0]["store_bytes"], args.plot)
        return 0

    from pss import TreeSampler
    store_bytes = os.stat(args.store).st_size
    feat_bytes = os.stat(args.features).st_size
    results = []
    out = open(args.json_out, "a") if args.json_out else None
    for method in args.methods.split(","):
        for n in map(int, args.workers.split(",")):
            if method == "a" and n > args.max_a_workers:
                continue
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                  "--one", f"{method},{n}", "--features", args.features,
                                  "--store", args.store, "--empty-store", args.empty_store,
                                  "--pairs", args.pairs, "--hold-s", str(args.hold_s)],
                                 stdout=subprocess.PIPE, text=True)
            s = TreeSampler(p.pid, interval=0.1, max_duty=args.pss_duty).start()
            text, _ = p.communicate()
            stats = s.stop()
            if p.returncode != 0:
                raise SystemExit(f"{method} x{n}: exit {p.returncode}")
            res = json.loads(text.strip().splitlines()[-1])
            res["peak_pss_bytes"] = stats["peak_kb"] * 1024
            res["store_bytes"] = store_bytes
            res["features_bytes"] = feat_bytes
            res["samples"] = stats["samples"]
            results.append(res)
            print(json.dumps(res), flush=True)
            if out:
                out.write(json.dumps(res) + "\n")
                out.flush()
    base = {r["workers"]: r["peak_pss_bytes"] for r in results if r["method"] == "baseline"}
    print(f"\nstore {store_bytes / 2**30:.2f} GiB, features.h5 {feat_bytes / 2**30:.2f} GiB")
    print(f"{'method':9} {'N':>2} {'peak PSS GiB':>12} {'x store':>8} {'c target':>9} "
          f"{'first pair s':>12} {'from start ms':>13} {'data ms':>8} {'pairs/s':>8}")
    for r in results:
        tgt = (f"{(store_bytes + base[r['workers']]) / 2**30:9.2f}"
               if r["method"] == "c" and r["workers"] in base else f"{'':9}")
        fp = f"{r['first_pair_s']:12.2f}" if r["first_pair_s"] else f"{'-':>12}"
        fr = (f"{r['first_from_worker_start_ms']:13.0f}"
              if r["first_from_worker_start_ms"] is not None else f"{'-':>13}")
        fd = (f"{r['first_data_from_worker_start_ms']:8.1f}"
              if r["first_data_from_worker_start_ms"] is not None else f"{'-':>8}")
        ps = f"{r['pairs_per_s']:8.1f}" if r["pairs_per_s"] else f"{'-':>8}"
        print(f"{r['method']:9} {r['workers']:2d} {r['peak_pss_bytes'] / 2**30:12.2f} "
              f"{r['peak_pss_bytes'] / store_bytes:8.2f} {tgt} {fp} {fr} {fd} {ps}")
    if args.plot:
        plot(results, store_bytes, args.plot)
    return 0


def plot(results, store_bytes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"a": "(a) whole file per process", "b": "(b) Manager dict",
              "c": "(c) featstore.open, zero-copy", "baseline": "interpreter+torch+model only"}
    for m in ("a", "b", "c", "baseline"):
        rs = [r for r in results if r["method"] == m]
        if not rs:
            continue
        ax[0].plot([r["workers"] for r in rs], [r["peak_pss_bytes"] / 2**30 for r in rs],
                   "o-", label=labels[m])
        if m != "baseline":
            line, = ax[1].plot([r["workers"] for r in rs],
                               [r["first_data_from_worker_start_ms"] / 1000 for r in rs],
                               "o-", label=labels[m] + ": worker start to features")
            ax[1].plot([r["workers"] for r in rs], [r["first_pair_s"] for r in rs], "s--",
                       color=line.get_color(), alpha=0.6,
                       label=labels[m][:3] + " launch to first matched pair")
    ax[0].axhline(store_bytes / 2**30, color="gray", ls=":", label="store size")
    ax[0].set_xlabel("Python worker processes")
    ax[0].set_ylabel("peak summed PSS (GiB)")
    ax[0].set_xticks([1, 2, 4, 8])
    ax[0].legend(fontsize=7)
    ax[1].set_xlabel("Python worker processes")
    ax[1].set_ylabel("seconds (log)")
    ax[1].set_yscale("log")
    ax[1].set_xticks([1, 2, 4, 8])
    ax[1].legend(fontsize=7)
    fig.suptitle("PyTorch NN matcher in N processes: how they get the features")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
