#!/usr/bin/env python3
"""hloc's nearest_neighbor matcher, done the hloc way on the CPU in numpy.

The baseline for benchmarks/bench_kernels.c: per pair, widen the descriptors
to float32 (hloc's dataset does `.float()`), one matmul for the similarity,
top-1 (argmax) or top-2 (argpartition) per row, the same on the transposed
similarity for the mutual check: hloc's find_nn / mutual_check, with numpy
in place of torch (Debian has no python3-torch here; numpy's matmul is the
same BLAS sgemm torch's CPU path calls).

    baseline_nn.py --n 2048 --d 256 --dtype float16 --reps 7 [--ratio 0.8]
                   [--variant gemm2 transpose]

prints `blas=<library> core=<kernel> threads=<n>` once, then per case and
variant `case n=.. d=.. dtype=.. variant=.. median_ms=.. p90_ms=..
wall_median_ms=.. nmatches=..`: median_ms and p90_ms are this thread's CPU
time (the machines are shared; with one BLAS thread all work is on it),
wall_median_ms the wall clock.
Run with OPENBLAS_NUM_THREADS=1 for one thread (the default here).
"""
import argparse
import ctypes
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402  (after the thread setting)


def find_nn(sim, ratio_thresh, distance_thresh):
    """hloc.matchers.nearest_neighbor.find_nn, numpy edition. torch.topk(2)
    becomes argmax plus a second max with the best masked out (two passes
    over the row, far cheaper in numpy than argpartition; same values, and
    an exact tie keeps the lowest index as argmax does)."""
    rows = np.arange(sim.shape[0])
    i1 = sim.argmax(axis=-1)
    s1 = sim[rows, i1]
    dist1 = 2 * (1 - s1)
    mask = np.ones(sim.shape[0], dtype=bool)
    if ratio_thresh:
        sim[rows, i1] = -np.inf
        s2 = sim.max(axis=-1)
        sim[rows, i1] = s1
        mask &= dist1 <= np.float32(ratio_thresh ** 2) * (2 * (1 - s2))
    if distance_thresh:
        mask &= dist1 <= np.float32(distance_thresh ** 2)
    matches = np.where(mask, i1, -1)
    scores = np.where(mask, (s1 + 1) / 2, np.float32(0))
    return matches, scores


def mutual_check(m0, m1):
    inds0 = np.arange(m0.shape[-1])
    loop = m1[np.where(m0 > -1, m0, 0)]
    ok = (m0 > -1) & (inds0 == loop)
    return np.where(ok, m0, -1)


def match(d0, d1, ratio, distance, variant, mutual=True):
    """variant "transpose": hloc's own order, find_nn on sim.T (numpy's
    argmax over a transposed array is slow); "gemm2": the backward
    similarity from a second matmul d1 @ d0.T, contiguous (faster here)."""
    d0 = d0.astype(np.float32)
    d1 = d1.astype(np.float32)
    ratio_t = ratio if (d0.shape[0] > 1 and d1.shape[0] > 1) else None
    sim = d0 @ d1.T
    m0, s0 = find_nn(sim, ratio_t, distance)
    if mutual:
        simt = sim.T if variant == "transpose" else d1 @ d0.T
        m1, _ = find_nn(simt, ratio_t, distance)
        m0 = mutual_check(m0, m1)
    return m0, s0


def blas_in_use():
    """The BLAS library numpy mapped, and OpenBLAS's kernel if it is one."""
    libs = []
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in p.lower() and p.endswith(tuple(".so" + s for s in ("", ".0", ".3"))) \
                    and p not in libs:
                libs.append(p)
    core = "unknown"
    for p in libs:
        try:
            lib = ctypes.CDLL(p)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            core = lib.openblas_get_corename().decode()
            break
        except (OSError, AttributeError):
            continue
    return ",".join(libs) or "none", core


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[2048])
    ap.add_argument("--d", type=int, nargs="+", default=[256])
    ap.add_argument("--dtype", nargs="+", default=["float32"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--ratio", type=float, default=0.0)
    ap.add_argument("--distance", type=float, default=0.0)
    ap.add_argument("--variant", nargs="+", default=["gemm2", "transpose"],
                    choices=["gemm2", "transpose"])
    a = ap.parse_args()
    lib, core = blas_in_use()
    print(f"blas={lib} core={core} threads={os.environ.get('OPENBLAS_NUM_THREADS')}"
          f" numpy={np.__version__}", flush=True)
    rng = np.random.default_rng(1)
    for n in a.n:
        for d in a.d:
            for dt in a.dtype:
                x = unit(rng, n, d)
                y = unit(rng, n, d)
                half = n // 2   # half the rows of B are noisy copies of A's
                y[:half] = x[:half] + 0.05 * rng.standard_normal((half, d)).astype(np.float32)
                y /= np.linalg.norm(y, axis=1, keepdims=True)
                x, y = x.astype(dt), y.astype(dt)
                for variant in a.variant:
                    times, walls = [], []
                    m0 = None
                    for _ in range(a.reps):
                        c0, t0 = time.thread_time(), time.perf_counter()
                        m0, _ = match(x, y, a.ratio, a.distance, variant)
                        walls.append((time.perf_counter() - t0) * 1e3)
                        times.append((time.thread_time() - c0) * 1e3)
                    times.sort()
                    walls.sort()
                    med = times[len(times) // 2]
                    p90 = times[min(len(times) - 1, int(0.9 * (len(times) - 1) + 0.5))]
                    print(f"case n={n} d={d} dtype={dt} variant={variant} "
                          f"median_ms={med:.3f} p90_ms={p90:.3f} "
                          f"wall_median_ms={walls[len(walls) // 2]:.3f} "
                          f"nmatches={int((m0 >= 0).sum())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
