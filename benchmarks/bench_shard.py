#!/usr/bin/python3
"""bench_shard.py : issue 14's figures. The cost of sharding a match run.

On one machine, the same pairs are matched (1) in one unsharded run and
(2) as N shards (`--shard K/N`) run one after another, then joined with
`featstore merge`. Reported, as ratios to the unsharded run measured in the
same repeat (repeats alternate the two, medians over repeats; the machine
is shared, so ratios within a repeat are what compare):

  match     sum over the shards of match_s (first worker spawned to last
            result) / the single run's match_s            target <= 1.05x
  total     sum of the shards' wall_s + the merge's wall / the single
            run's wall_s (pairs, names, workers' start, writing)
  cpu       CPU seconds (user + system of featstore and its workers,
            getrusage) of the shards and the merge / the single run's: the
            work sharding adds, far less sensitive than wall time to other
            jobs on a shared machine
  merge     pairs/s of `featstore merge` (all parts -> matches.h5) against
            pairs/s of the single run's own writing of matches.h5
            (pairs_written / write_s)

Every merged file is checked byte for byte against the single run's.

  bench_shard.py [--featstore PATH] [--images 240] [--keypoints 1024]
                 [--npairs 3000] [--shards 4,8] [--repeats 3] [--workers 2]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


last_cpu = 0.0   # CPU seconds of the last run (featstore and the children it reaped)


def run(fst, args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    t0 = time.perf_counter()
    u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([fst, *args], capture_output=True, text=True, env=e)
    wall = time.perf_counter() - t0
    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    global last_cpu
    last_cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    if r.returncode != 0:
        sys.exit(f"featstore {' '.join(args)}: exit {r.returncode}: {r.stderr}")
    js = json.loads(r.stdout.strip().splitlines()[-1]) if "--json" in args else {}
    return js, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--featstore", default=os.environ.get("FEATSTORE", "build/tools/featstore"))
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--keypoints", type=int, default=1024)
    ap.add_argument("--npairs", type=int, default=3000)
    ap.add_argument("--shards", default="4,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    fst = os.path.abspath(a.featstore)
    d = tempfile.mkdtemp(prefix="fst-bench-shard-")
    try:
        h5, pairs, store = (os.path.join(d, x) for x in ("f.h5", "pairs.txt", "db.fst"))
        run(fst, ["synth", h5, "--pairs", pairs, "--images", str(a.images), "--keypoints",
                  str(a.keypoints), "--npairs", str(a.npairs), "--quiet"])
        run(fst, ["import", h5, store, "--quiet"])
        w = ["--workers", str(a.workers), "--json", "--quiet"]
        res = {n: [] for n in map(int, a.shards.split(","))}
        for rep in range(a.repeats):
            for n in res:
                single = os.path.join(d, "single.h5")
                for p in (single,):
                    if os.path.exists(p):
                        os.unlink(p)
                js1, wall1 = run(fst, ["match", store, pairs, "-o", single, *w])
                cpu1 = last_cpu
                parts, m_sum, wall_sum, cpu_sum = [], 0.0, 0.0, 0.0
                for k in range(n):
                    part = os.path.join(d, f"part-{k}-of-{n}.h5")
                    if os.path.exists(part):
                        os.unlink(part)
                    js, wall = run(fst, ["match", store, pairs, "-o", part, "--shard",
                                         f"{k}/{n}", *w])
                    m_sum += js["match_s"]
                    wall_sum += wall
                    cpu_sum += last_cpu
                    parts.append(part)
                merged = os.path.join(d, "merged.h5")
                jm, wall_m = run(fst, ["merge", merged, *parts, "--json", "--quiet"])
                cpu_sum += last_cpu
                with open(single, "rb") as f1, open(merged, "rb") as f2:
                    assert f1.read() == f2.read(), "merged file differs from the single run's"
                r = {"match": m_sum / js1["match_s"],
                     "total": (wall_sum + wall_m) / wall1,
                     "cpu": cpu_sum / cpu1,
                     "merge_pps": jm["pairs"] / wall_m,
                     "write_pps": js1["pairs_written"] / js1["write_s"],
                     "single_match_s": js1["match_s"], "shards_match_s": m_sum,
                     "single_wall_s": wall1, "shards_wall_s": wall_sum, "merge_s": wall_m,
                     "pairs": js1["pairs"]}
                res[n].append(r)
                print(f"repeat {rep} N={n}: match {r['match']:.3f}x total {r['total']:.3f}x "
                      f"cpu {r['cpu']:.3f}x "
                      f"(single {wall1:.2f} s, shards {wall_sum:.2f} s + merge {wall_m:.2f} s); "
                      f"merge {r['merge_pps']:.0f} pairs/s, single run's write "
                      f"{r['write_pps']:.0f} pairs/s", flush=True)
        print(f"# {a.images} images x {a.keypoints} keypoints, {res[next(iter(res))][0]['pairs']} "
              f"pairs, {a.workers} workers, medians of {a.repeats} alternated repeats")
        for n, rs in res.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"shard N={n}: match {med['match']:.3f}x  total {med['total']:.3f}x  "
                  f"cpu {med['cpu']:.3f}x  "
                  f"merge {med['merge_pps']:.0f} pairs/s vs write {med['write_pps']:.0f} pairs/s "
                  f"({med['merge_pps'] / med['write_pps']:.2f}x)  "
                  f"[match_s single {med['single_match_s']:.2f} / shards "
                  f"{med['shards_match_s']:.2f}; wall single {med['single_wall_s']:.2f} / shards "
                  f"{med['shards_wall_s']:.2f} + merge {med['merge_s']:.2f}]")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
