#!/usr/bin/python3
"""bench_verify.py : what checking each image's checksum costs `featstore match`.

A worker hashes (XXH3-64) each record the first time it reads it in a run
(issue 10, item 2); `--no-verify` skips that. This times the same match with
and without it, alternated (the machine is shared: ratios within one run,
not absolute figures, are what compare), and prints the medians and their
ratio for two cases chosen to make the hash weigh as much as it can: every
image in at most two pairs (consecutive pairs only), so the hash of a record
is shared by the fewest pairs, and 2 workers, so most records are hashed
twice.

  sp2k   100 images x 2048 keypoints x 256-D float16 (SuperPoint-like), 99 pairs
  small  1000 images x 256 keypoints x 128-D float16, 999 pairs

  bench_verify.py [--featstore build-rel/tools/featstore] [--repeats 7]
                  [--cases sp2k,small] [--workers 2]

Figures, medians of each variant: CPU seconds of the whole process tree
(user + system, coordinator and workers: getrusage of the waited-for
children; the steadiest figure on a loaded machine), match_s from `--json`
(first worker spawned to last result) and, for scale, the CPU seconds of
`featstore verify` (one XXH3 pass over every record).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CASES = {
    "sp2k": dict(images=100, keypoints=2048, dim=256),
    "small": dict(images=1000, keypoints=256, dim=128),
}


def cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def sh(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--featstore", default=os.path.join(ROOT, "build-rel/tools/featstore"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", default="sp2k,small")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    fst = a.featstore
    tmp = tempfile.mkdtemp(prefix="fst-bench-verify-")
    try:
        print(f"# {fst}, {a.workers} workers, {a.repeats} alternated repeats; "
              f"load average {open('/proc/loadavg').read().split()[0]}")
        print(f"{'case':6} {'store MB':>8} {'cpu verify':>10} {'cpu no-verify':>13} "
              f"{'ratio':>6} {'match_s ratio':>13} {'cpu of verify cmd':>17}")
        for name in a.cases.split(","):
            c = CASES[name]
            h5, store, pairs = (os.path.join(tmp, f"{name}.{x}") for x in ("h5", "fst", "txt"))
            sh([fst, "synth", h5, "--pairs", pairs, "--images", str(c["images"]),
                "--keypoints", str(c["keypoints"]), "--dim", str(c["dim"]),
                "--npairs", str(c["images"] - 1), "--quiet"])
            sh([fst, "import", h5, store, "--quiet"])
            os.unlink(h5)
            t = {True: [], False: []}
            c0 = cpu()
            sh([fst, "verify", store])
            vcpu = cpu() - c0
            u = {True: [], False: []}
            out = os.path.join(tmp, "m.h5")
            for rep in range(a.repeats):
                for verify in ((True, False) if rep % 2 == 0 else (False, True)):
                    if os.path.exists(out):
                        os.unlink(out)
                    args = [fst, "match", store, pairs, "-o", out, "--workers", str(a.workers),
                            "--device", "cpu", "--json", "--quiet"]
                    if not verify:
                        args.append("--no-verify")
                    c0 = cpu()
                    js = json.loads(sh(args).stdout.strip().splitlines()[-1])
                    u[verify].append(cpu() - c0)
                    assert js["verify"] is verify and js["pairs_failed"] == 0, js
                    t[verify].append(js["match_s"])
            mv, mn = statistics.median(t[True]), statistics.median(t[False])
            uv, un = statistics.median(u[True]), statistics.median(u[False])
            mb = os.path.getsize(store) / 1e6
            print(f"{name:6} {mb:8.1f} {uv:10.3f} {un:13.3f} {uv / un:6.3f} {mv / mn:13.3f} "
                  f"{vcpu:17.3f}")
            sys.stdout.flush()
            os.unlink(store)
            os.unlink(store + "-lock")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
