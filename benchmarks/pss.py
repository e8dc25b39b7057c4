#!/usr/bin/python3
"""pss.py : peak total PSS of a process tree, sampled from /proc.

PSS (proportional set size) shares each resident page among the processes
that map it, so summing it over a tree counts a page mapped by N workers once
in all -- the right measure for "host memory of a run". Pages a process only
reads with read()/pread() (an h5 file through HDF5) sit in the page cache,
mapped by no one, and no process's PSS counts them; pages of a file it maps
(an LMDB store) count as soon as they are touched.

    s = TreeSampler(pid, interval=0.05).start()
    ...                      # the tree runs
    stats = s.stop()         # {'peak_kb', 'peak_procs', 'samples', ...}

Command line: pss.py -- CMD ARGS...   runs CMD and prints its peak tree PSS.
"""

import json
import os
import subprocess
import sys
import threading
import time

_FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Rss")


def tree_pids(root):
    """root and all its descendants now alive (via /proc/<pid>/task/*/children)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{pid}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def rollup(pid):
    """{'Pss': kB, 'Pss_Anon': kB, ...} of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in _FIELDS:
            vals[key] = int(rest.split()[0])
    return vals if "Pss" in vals else None


def sample(root):
    """(total {'Pss': kB, ...}, number of processes) of the tree now."""
    tot = dict.fromkeys(_FIELDS, 0)
    n = 0
    for pid in tree_pids(root):
        r = rollup(pid)
        if r is None:
            continue
        n += 1
        for k, v in r.items():
            tot[k] += v
    return tot, n


class TreeSampler:
    """Samples the total PSS of root's tree every `interval` seconds in a thread
    and keeps the peak. Reading smaps_rollup walks the page tables, which costs
    CPU in proportion to what is mapped; so that the sampler does not steal more
    than ~`max_duty` of a core from the run it measures, the pause between
    samples stretches to cost * (1 - max_duty) / max_duty when a sample is slow."""

    def __init__(self, root, interval=0.05, max_duty=0.1):
        self.root = root
        self.interval = interval
        self.max_duty = max_duty
        self.peak = dict.fromkeys(_FIELDS, 0)
        self.peak_procs = 0
        self.max_procs = 0
        self.samples = 0
        self.cost = 0.0
        self.t_peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self):
        while True:
            t = time.monotonic()
            tot, n = sample(self.root)
            dt = time.monotonic() - t
            self.cost += dt
            self.samples += 1
            self.max_procs = max(self.max_procs, n)
            if tot["Pss"] > self.peak["Pss"]:
                self.peak, self.peak_procs, self.t_peak = tot, n, t - self.t0
            pause = max(self.interval - dt, dt * (1 - self.max_duty) / self.max_duty)
            if self._stop.wait(pause):
                return

    def stop(self):
        """Stop sampling (take one last sample first) and return the stats."""
        self._stop.set()
        self._thread.join()
        span = time.monotonic() - self.t0
        return {
            "peak_kb": self.peak["Pss"],
            "peak_anon_kb": self.peak["Pss_Anon"],
            "peak_file_kb": self.peak["Pss_File"],
            "peak_shmem_kb": self.peak["Pss_Shmem"],
            "peak_rss_kb": self.peak["Rss"],
            "peak_procs": self.peak_procs,
            "max_procs": self.max_procs,
            "t_peak_s": self.t_peak,
            "samples": self.samples,
            "mean_period_ms": 1000 * span / max(self.samples, 1),
            "sampler_cpu_frac": self.cost / span if span > 0 else 0.0,
        }


def main(argv):
    if not argv or argv[0] != "--" or len(argv) < 2:
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    p = subprocess.Popen(argv[1:])
    s = TreeSampler(p.pid).start()
    rc = p.wait()
    stats = s.stop()
    stats["rc"] = rc
    print(json.dumps(stats))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
