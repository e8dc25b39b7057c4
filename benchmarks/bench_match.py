#!/usr/bin/python3
"""bench_match.py : issue 4's figures. featstore match against the folk methods.

One run measures, on the same data and the same pairs:
  1. memory: peak total PSS of each run's process tree (coordinator + workers,
     or Python parent + Manager + workers), sampled from /proc every ~50 ms,
     with 1, 2, 4 and 8 workers, as a ratio to the features file's size;
  2. throughput: pairs/s (launch to exit) and CPU seconds per pair;
  3. time from launch to the first finished pair on a small and a large store;
and draws memory against workers (benchmarks/memory.png).

The folk methods (benchmarks/folk_baselines.py): (a) every process loads all
features, (b) a Manager().dict() filled by a parent that loaded everything,
(c) every process reads its pairs from the h5 file pair by pair (hloc's way);
and, with --methods ...,b-image, (b') the Manager dict filled image by image.
featstore's 2-vs-1-worker ratio is measured on alternated repeats (the
machine is shared: ratios within one run, not absolute figures, are what
compare).

  bench_match.py                 the full run (2.1 GB of descriptors; ~15 min)
  bench_match.py --quick         small data: checks that everything works
  bench_match.py --update-results --plot benchmarks/memory.png
                                 also rewrite the generated part of RESULTS.md

Memory guard: a run is skipped (and reported as skipped) when its expected
peak exceeds --mem-limit-gb or what /proc/meminfo says is available less a
margin. Method (a) needs workers x data: it runs on the main data up to
--folk-a-max-workers and on the small data set (the ratio is what counts)
for more workers.
"""

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import pss  # noqa: E402

FOLK = os.path.join(HERE, "folk_baselines.py")
PY = sys.executable or "/usr/bin/python3"
GB = 1e9
MB = 1e6
BEGIN = "<!-- bench_match.py: generated, begin -->"
END = "<!-- bench_match.py: generated, end -->"
SECTION = "## Match run: memory and throughput (issue 4)"


def log(*a):
    print("bench_match:", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# data

def find_featstore(arg):
    cands = [arg, os.environ.get("FEATSTORE"),
             os.path.join(ROOT, "build-bench/tools/featstore"),
             os.path.join(ROOT, "build/tools/featstore")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    sys.exit("bench_match: no featstore binary (--featstore, $FEATSTORE, build-bench/, build/)")


def has_subcommand(fs, name):
    r = subprocess.run([fs, name, "--help"], capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr


def synth_python(path, images, keypoints, dim, seed):
    """An hloc-layout features.h5: float16 unit descriptors (D,N), float32
    keypoints (N,2), scores, image_size; contiguous, uncompressed, as hloc."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        for i in range(images):
            g = h5.create_group(image_name(i))
            d = rng.random((dim, keypoints), dtype=np.float32) - 0.5
            d /= np.linalg.norm(d, axis=0, keepdims=True)
            g.create_dataset("descriptors", data=d.astype(np.float16))
            g.create_dataset("keypoints",
                             data=(rng.random((keypoints, 2), dtype=np.float32) * 1024))
            g.create_dataset("scores", data=rng.random(keypoints, dtype=np.float32))
            g.create_dataset("image_size", data=np.array([1024, 768], dtype=np.int64))


def image_name(i):
    return f"img{i:05d}.jpg"


def h5_names(path):
    sys.path.insert(0, HERE)
    import h5py
    from folk_baselines import image_names
    with h5py.File(path, "r") as h5:
        return image_names(h5)


def write_pairs(path, names, npairs, seed):
    """npairs random pairs of distinct images; while npairs <= images/2 no image
    appears twice, so the working set is 2 x npairs images (the whole data set
    at npairs = images/2): the worst case for a mapped store, and the same
    pairs for every method."""
    rng = random.Random(seed)
    pairs, pool = [], []
    while len(pairs) < npairs:
        if len(pool) < 2:
            pool = names[:]
            rng.shuffle(pool)
        pairs.append((pool.pop(), pool.pop()))
    with open(path, "w") as f:
        f.writelines(f"{a} {b}\n" for a, b in pairs)
    return pairs


def disk_bytes(path):
    """Bytes a file or a directory of files takes (allocated, not apparent,
    where smaller: a sparse LMDB map counts what it holds)."""
    def one(p):
        st = os.stat(p)
        return min(st.st_size, st.st_blocks * 512)
    if os.path.isdir(path):
        return sum(one(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
                   if not f.endswith("lock.mdb"))
    return one(path)


def warm(path):
    """Read a file or directory once so every method starts with it cached."""
    files = [path] if os.path.isfile(path) else \
        [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


class Dataset:
    def __init__(self, tag, work, fs, images, keypoints, dim, npairs, seed, synth, store=True):
        self.tag = tag
        self.dir = os.path.join(work, tag)
        os.makedirs(self.dir, exist_ok=True)
        self.h5 = os.path.join(self.dir, "features.h5")
        self.store = os.path.join(self.dir, "features.fst")
        self.pairs_path = os.path.join(self.dir, "pairs.txt")
        self.one_pair = os.path.join(self.dir, "one-pair.txt")
        t = time.monotonic()
        if synth == "featstore":
            subprocess.run([fs, "synth", self.h5, "--images", str(images),
                            "--keypoints", str(keypoints), "--dim", str(dim),
                            "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
        else:
            synth_python(self.h5, images, keypoints, dim, seed)
        self.synth_s = time.monotonic() - t
        self.names = h5_names(self.h5)
        self.images = len(self.names)
        self.pairs = write_pairs(self.pairs_path, self.names, npairs, seed + 1)
        with open(self.one_pair, "w") as f:
            f.write("%s %s\n" % self.pairs[0])
        self.h5_bytes = disk_bytes(self.h5)
        self.desc_bytes = self.images * keypoints * dim * 2
        self.store_bytes = None
        self.import_s = None
        if store:
            t = time.monotonic()
            subprocess.run([fs, "import", self.h5, self.store], check=True,
                           stdout=subprocess.DEVNULL)
            self.import_s = time.monotonic() - t
            self.store_bytes = disk_bytes(self.store)
        log(f"data {tag}: {self.images} images x {keypoints} x {dim}-D float16, "
            f"h5 {self.h5_bytes / GB:.2f} GB (synth {self.synth_s:.0f} s)"
            + (f", store {self.store_bytes / GB:.2f} GB (import {self.import_s:.0f} s)"
               if store else "") + f", {len(self.pairs)} pairs")

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# one measured run

def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def load_avg():
    return os.getloadavg()


def measure(cmd, env=None, max_duty=0.1):
    """Run cmd; sample its tree's PSS (using at most ~max_duty of a core);
    return wall time, CPU time, peak PSS, stdout and the monotonic launch time."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    la = load_avg()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    sampler = pss.TreeSampler(p.pid, interval=0.05, max_duty=max_duty).start()
    try:
        out, err = p.communicate()
    except BaseException:
        kill_tree(p.pid)              # interrupted: leave no workers behind
        p.wait()
        sampler.stop()
        raise
    t1 = time.monotonic()
    mem = sampler.stop()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{err[-2000:]}")
    return {"t_launch": t0, "wall_s": t1 - t0,
            "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "pss": mem, "stdout": out, "stderr": err, "load_before": la[0]}


def kill_tree(root):
    """SIGKILL root and its descendants (children first found, then root)."""
    import signal
    for pid in reversed(pss.tree_pids(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return {}


def run_featstore(fs, ds, workers, pairs_path, preset, tag, max_duty=0.1):
    out_dir = os.path.join(ds.dir, f"out-{tag}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    out = os.path.join(out_dir, "matches.h5")
    cmd = [fs, "match", ds.store, pairs_path, "-o", out, "--workers", str(workers),
           "--preset", preset, "--device", "cpu", "--quiet", "--json"]
    m = measure(cmd, max_duty=max_duty)
    js = last_json(m["stdout"])
    m.update(method="featstore", workers=workers, out=out, json=js)
    m["pairs"] = js.get("pairs", js.get("pairs_done"))
    fp = js.get("first_pair_ms")
    m["first_s"] = fp / 1000 if isinstance(fp, (int, float)) else None
    return m


def run_folk(method, ds, workers, pairs_path, tag, keep_out=False):
    out_dir = os.path.join(ds.dir, f"out-{tag}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    cmd = [PY, FOLK, "--method", method, "--features", ds.h5, "--pairs", pairs_path,
           "--workers", str(workers), "--out-dir", out_dir]
    m = measure(cmd)
    js = last_json(m["stdout"])
    m.update(method=method, workers=workers, out=out_dir, json=js, pairs=js.get("pairs"))
    m["first_s"] = js["t_first"] - m["t_launch"] if js.get("t_first") else None
    if not keep_out:
        shutil.rmtree(out_dir, ignore_errors=True)
    return m


# --------------------------------------------------------------------------
# checks

def agreement(fs_out, folk_dir, pairs):
    """Fraction of matches0 entries equal between featstore's matches.h5 and a
    folk run's per-worker files, over the pairs both hold."""
    import glob
    import h5py
    import numpy as np
    from folk_baselines import pair_key
    folk = {}
    files = [h5py.File(p, "r") for p in glob.glob(os.path.join(folk_dir, "*.h5"))]
    try:
        for f in files:
            def visit(name, obj, f=f):
                if isinstance(obj, h5py.Group) and "matches0" in obj:
                    folk[name] = obj["matches0"][()]
            f.visititems(visit)
        same = total = npairs = 0
        with h5py.File(fs_out, "r") as h5:
            for a, b in pairs:
                k = pair_key(a, b)
                if k not in folk or k not in h5:
                    continue
                m_fs = h5[k]["matches0"][()].astype(np.int64)
                m_py = folk[k].astype(np.int64)
                same += int((m_fs == m_py).sum())
                total += m_py.size
                npairs += 1
    finally:
        for f in files:
            f.close()
    return {"pairs": npairs, "entries": total, "equal": same,
            "frac": same / total if total else None}


# --------------------------------------------------------------------------
# report

def fmt(x, spec=".2f", none="–"):
    return none if x is None else format(x, spec)


def method_label(m):
    return {"featstore": "featstore match",
            "a": "(a) every process loads all",
            "b": "(b) Manager dict, parent loads all",
            "b-image": "(b') Manager dict, filled image by image",
            "c": "(c) h5 read pair by pair (hloc)"}[m]


def table(cfg, runs, first, check, skipped):
    ds = cfg["main"]
    data = ds["h5_bytes"]
    lines = []
    lines.append(f"Data: {ds['images']} images x {cfg['keypoints']} keypoints x "
                 f"{cfg['dim']}-D float16 = {ds['desc_bytes'] / GB:.2f} GB of descriptors; "
                 f"features.h5 {data / GB:.2f} GB, store {fmt(ds['store_bytes'] and ds['store_bytes'] / GB)} GB; "
                 f"{ds['npairs']} pairs, {ds['touched']} distinct images "
                 f"({100 * ds['touched'] / ds['images']:.0f}% of the data). "
                 f"Ratios are peak PSS / features.h5 bytes.")
    lines.append("")
    lines.append("| method | workers | peak PSS GB | PSS / data | pairs/s | CPU ms/pair "
                 "| first match s | load | note |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        pk = r["pss"]["peak_kb"] * 1024
        base = r.get("data_bytes", data)
        note = r.get("note", "")
        if r["method"] == "featstore":
            target = ds["store_bytes"] + 64 * MB * r["workers"]
            note = (note + "; " if note else "") + \
                f"target {target / GB:.2f} GB: {'met' if pk <= target else 'MISSED'}"
        lines.append(
            f"| {method_label(r['method'])} | {r['workers']} | {pk / GB:.2f} | "
            f"{pk / base:.2f}x | {fmt(r['pairs_s'], '.1f')} | "
            f"{fmt(1000 * r['cpu_s'] / r['pairs'] if r['pairs'] else None, '.0f')} | "
            f"{fmt(r['first_s'], '.2f')} | {r['load_before']:.1f} | {note} |")
    for s in skipped:
        lines.append(f"| {method_label(s['method'])} | {s['workers']} | – | – | – | – | – | – | "
                     f"skipped: {s['why']} |")
    lines.append("")
    speed = cfg.get("speedup") or []
    if speed:
        ratios = sorted(b / a for a, b, _ in speed)
        med = ratios[len(ratios) // 2] if len(ratios) % 2 else \
            (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
        each = ", ".join(f"{b / a:.2f}x ({a:.1f} -> {b:.1f}, load {la:.1f})" for a, b, la in speed)
        lines.append(f"featstore, 2 workers vs 1 on {os.cpu_count()} cores: "
                     f"**{med:.2f}x** pairs/s, median of {len(speed)} alternated pairs of runs "
                     f"(target >= 1.8x): {each}.")
        c1 = [r for r in runs if r["method"] == "featstore" and r["workers"] == 1
              and "data_bytes" not in r]
        c2 = [r for r in runs if r["method"] == "featstore" and r["workers"] == 2
              and "data_bytes" not in r]
        if c1 and c2 and c1[0]["cpu_s"] and c2[0]["cpu_s"]:
            e = (c1[0]["cpu_s"] / c1[0]["pairs"]) / (c2[0]["cpu_s"] / c2[0]["pairs"])
            lines.append(f"By CPU time (what wall time would show with both cores free): "
                         f"CPU per pair with 2 workers is {1 / e:.2f}x that with 1, so 2 "
                         f"workers would give {2 * e:.2f}x on 2 idle cores.")
    def cpu_pp(r):
        return r["cpu_s"] / r["pairs"]
    fs_main = [r for r in runs if r["method"] == "featstore" and "data_bytes" not in r]
    for m in ("a", "b", "b-image", "c"):
        folk = [r for r in runs if r["method"] == m and "data_bytes" not in r]
        if folk and fs_main:
            bf = max(folk, key=lambda r: r["pairs_s"])
            bs = max(fs_main, key=lambda r: r["pairs_s"])
            lines.append(f"- featstore vs {method_label(m)}: best pairs/s "
                         f"{bs['pairs_s'] / bf['pairs_s']:.1f}x ({bs['pairs_s']:.1f} with "
                         f"{bs['workers']} workers vs {bf['pairs_s']:.1f} with {bf['workers']}); "
                         f"CPU per pair {min(map(cpu_pp, folk)) / min(map(cpu_pp, fs_main)):.1f}x "
                         f"less ({1000 * min(map(cpu_pp, fs_main)):.0f} vs "
                         f"{1000 * min(map(cpu_pp, folk)):.0f} ms, best of each)")
    lines.append("")
    if first:
        lines.append("Time from launch to the first finished pair (one worker; "
                     "`featstore` column: the `first_pair_ms` of `--json`, and the whole "
                     "run of a one-pair file, launch to exit, as an upper bound):")
        lines.append("")
        sizes = sorted({f["size_gb"] for f in first})
        lines.append("| method | " + " | ".join(f"{s:.3g} GB" for s in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        rows = {}
        for f in first:
            rows.setdefault(f["label"], {})[f["size_gb"]] = f
        for label, by in rows.items():
            cells = []
            for s in sizes:
                f = by.get(s)
                if f is None:
                    cells.append("–")
                elif f.get("skipped"):
                    cells.append(f["skipped"])
                else:
                    cells.append(f"{1000 * f['value']:.0f} ms" if f["value"] < 0.9995
                                 else f"{f['value']:.1f} s")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if check:
        lines.append(f"Same matching: featstore's matches0 equal the numpy folk method's "
                     f"on {100 * check['frac']:.3f}% of {check['entries']} entries "
                     f"({check['pairs']} pairs compared).")
        lines.append("")
    return "\n".join(lines)


def plot(path, cfg, runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = cfg["main"]["h5_bytes"]
    store = cfg["main"]["store_bytes"]
    styles = {"featstore": ("tab:blue", "o", "-"), "a": ("tab:red", "s", "-"),
              "b": ("tab:orange", "^", "-"), "b-image": ("tab:olive", "v", "--"),
              "c": ("tab:green", "D", "-")}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    for m, (color, marker, ls) in styles.items():
        rs = [r for r in runs if r["method"] == m]
        full = [r for r in rs if "data_bytes" not in r]
        sub = [r for r in rs if "data_bytes" in r]
        if full:
            ax.plot([r["workers"] for r in full],
                    [r["pss"]["peak_kb"] * 1024 / data for r in full],
                    color=color, marker=marker, ls=ls, label=method_label(m))
            ax2.plot([r["workers"] for r in full],
                     [1000 * r["cpu_s"] / r["pairs"] for r in full],
                     color=color, marker=marker, ls=ls, label=method_label(m))
        if sub:
            ax.plot([r["workers"] for r in sub],
                    [r["pss"]["peak_kb"] * 1024 / r["data_bytes"] for r in sub],
                    color=color, marker=marker, ls="none", mfc="none",
                    label=f"{method_label(m)}, on the {sub[0]['data_bytes'] / GB:.2g} GB data set")
    ws = sorted({r["workers"] for r in runs})
    if ws and store:
        ax.plot(ws, [(store + 64 * MB * w) / data for w in ws], color="tab:blue", ls=":",
                lw=1, label="featstore target: store + 64 MB/worker")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ws, [str(w) for w in ws])
    ax.set_xlabel("worker processes")
    ax.set_ylabel("peak total PSS / features data size")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Host memory, {data / GB:.3g} GB of features")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(ws, [str(w) for w in ws])
    ax2.set_xlabel("worker processes")
    ax2.set_ylabel("CPU ms per pair (whole tree, loading included)")
    ax2.set_ylim(bottom=0)
    ax2.set_title(f"CPU time per pair, {cfg['main']['npairs']} pairs "
                  "(shared machine: CPU time, not wall)", fontsize=10)
    ax2.grid(alpha=0.3)
    fig.suptitle("featstore match vs the folk methods (NN-mutual, "
                 f"{cfg['keypoints']} x {cfg['dim']}-D float16, {cfg['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_results(path, body, command):
    text = open(path).read() if os.path.exists(path) else "# featstore benchmark results\n"
    gen = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        a = text.index(BEGIN)
        b = text.index(END) + len(END)
        text = text[:a] + gen + text[b:]
    elif SECTION in text:
        a = text.index(SECTION) + len(SECTION)
        text = text[:a] + "\n\n" + gen + "\n" + text[a:]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{gen}\n"
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data: check the script works")
    ap.add_argument("--featstore", help="featstore binary (default: $FEATSTORE, build-bench/)")
    ap.add_argument("--workdir", help="where the temporary data goes (default: a new dir in $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data")
    ap.add_argument("--images", type=int, help="images in the main data (default 2000)")
    ap.add_argument("--keypoints", type=int, help="keypoints per image (default 2048)")
    ap.add_argument("--dim", type=int, help="descriptor dimension (default 256)")
    ap.add_argument("--pairs", type=int, help="pairs (default images/2: every image once)")
    ap.add_argument("--workers", default="1,2,4,8", help="worker counts (default 1,2,4,8)")
    ap.add_argument("--methods", default="featstore,a,b,c",
                    help="of featstore,a,b,b-image,c (default featstore,a,b,c)")
    ap.add_argument("--speedup-repeats", type=int, default=2,
                    help="extra featstore 1- and 2-worker runs, alternated, for the "
                         "2-vs-1 ratio (median; default 2)")
    ap.add_argument("--preset", default="NN-mutual")
    ap.add_argument("--first-sizes", help="GB of descriptors of the two time-to-first-pair "
                                          "stores (default 0.4,4)")
    ap.add_argument("--folk-a-max-workers", type=int, default=4,
                    help="most workers for (a) on the main data; more run on the small data")
    ap.add_argument("--mem-limit-gb", type=float, default=12.0,
                    help="skip runs expected to peak above this (default 12)")
    ap.add_argument("--synth", choices=("auto", "featstore", "python"), default="auto")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--plot", help="write the memory plot here (PNG)")
    ap.add_argument("--json-out", help="write every measurement here")
    ap.add_argument("--update-results", nargs="?", const=os.path.join(HERE, "RESULTS.md"),
                    help="rewrite the generated part of this RESULTS.md section")
    ap.add_argument("--from-json", help="measure nothing: redo the report, plot and "
                                        "RESULTS.md from a --json-out file")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            d = json.load(f)
        report(d["config"], d["runs"], d["first"], d["check"], d["skipped"], args)
        return 0

    q = args.quick
    images = args.images or (160 if q else 2000)
    kp = args.keypoints or (512 if q else 2048)
    dim = args.dim or (128 if q else 256)
    npairs = args.pairs or images // 2
    workers = [int(w) for w in args.workers.split(",")]
    methods = args.methods.split(",")
    sizes = [float(s) for s in (args.first_sizes or ("0.005,0.05" if q else "0.4,4")).split(",")]
    fs = find_featstore(args.featstore)
    synth = args.synth
    if synth == "auto":
        ok, text = has_subcommand(fs, "synth")
        synth = "featstore" if ok and "--seed" in text and "--dim" in text else "python"
    os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")   # see CONTEXT.md
    mem_limit = args.mem_limit_gb * GB

    work = args.workdir or tempfile.mkdtemp(prefix="featstore-bench-")
    os.makedirs(work, exist_ok=True)
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    log(f"featstore {fs}; synth: {synth}; work dir {work}; load {load_avg()}")
    cfg = {"date": date, "keypoints": kp, "dim": dim, "cores": os.cpu_count(),
           "cpu": platform.processor() or platform.machine(),
           "command": "benchmarks/bench_match.py " + " ".join(argv or sys.argv[1:]),
           "load_start": load_avg()}
    runs, skipped, first = [], [], []
    check = None
    datasets = []
    try:
        need_store = "featstore" in methods
        main_ds = Dataset("main", work, fs, images, kp, dim, npairs, args.seed, synth,
                          need_store)
        datasets.append(main_ds)
        small_images = max(4, int(sizes[0] * GB / (kp * dim * 2)))
        small = Dataset("small", work, fs, small_images, kp, dim, small_images // 2,
                        args.seed + 10, synth, need_store)
        datasets.append(small)
        touched = len({n for p in main_ds.pairs for n in p})
        cfg["main"] = {"images": main_ds.images, "h5_bytes": main_ds.h5_bytes,
                       "store_bytes": main_ds.store_bytes, "desc_bytes": main_ds.desc_bytes,
                       "npairs": len(main_ds.pairs), "touched": touched,
                       "synth_s": main_ds.synth_s, "import_s": main_ds.import_s}
        warm(main_ds.h5)
        if need_store:
            warm(main_ds.store)

        def guard(method, w, data_bytes):
            est = {"featstore": data_bytes + 64 * MB * w,
                   "a": (w * 1.05 + 0.1) * data_bytes,
                   "b": 2.3 * data_bytes, "b-image": 1.3 * data_bytes,
                   "c": 0.1 * data_bytes}[method] + 0.15 * GB * (w + 1)
            avail = mem_available() - 2 * GB
            if est > mem_limit:
                return f"expected peak {est / GB:.1f} GB > --mem-limit-gb {mem_limit / GB:.0f}"
            if est > avail:
                return f"expected peak {est / GB:.1f} GB > {avail / GB:.1f} GB available"
            return None

        def record(m, ds):
            m["pairs"] = m["pairs"] or len(ds.pairs)
            m["pairs_s"] = m["pairs"] / m["wall_s"]
            if ds is not main_ds:
                m["data_bytes"] = ds.h5_bytes
                m["note"] = f"on the {ds.h5_bytes / GB:.2f} GB data set ({ds.images} images)"
            pk = m["pss"]["peak_kb"] * 1024
            log(f"{m['method']:>9} w={m['workers']}: peak PSS {pk / GB:.2f} GB "
                f"({pk / ds.h5_bytes:.2f}x), {m['pairs_s']:.1f} pairs/s, "
                f"cpu {m['cpu_s']:.1f} s, first {fmt(m['first_s'])} s, "
                f"sampler period {m['pss']['mean_period_ms']:.0f} ms, "
                f"load {m['load_before']:.2f}")
            runs.append(m)

        # 1+2. memory and throughput on the main data, every method, every N.
        for method in methods:
            for w in workers:
                ds = main_ds
                if method == "a" and w > args.folk_a_max_workers:
                    ds = small
                why = guard(method, w, ds.h5_bytes)
                if why:
                    skipped.append({"method": method, "workers": w, "why": why})
                    log(f"skip {method} w={w}: {why}")
                    continue
                if method == "featstore":
                    m = run_featstore(fs, ds, w, ds.pairs_path, args.preset, f"fs-w{w}")
                    if w != 1 or ds is not main_ds:
                        shutil.rmtree(os.path.dirname(m["out"]), ignore_errors=True)
                else:
                    keep = method == "c" and w == 1 and ds is main_ds
                    m = run_folk(method, ds, w, ds.pairs_path, f"{method}-w{w}", keep_out=keep)
                record(m, ds)

        # featstore 2 workers vs 1, repeated and alternated: the box is shared.
        speed = []
        if "featstore" in methods and 1 in workers and 2 in workers:
            first_pair = {r["workers"]: r for r in runs
                          if r["method"] == "featstore" and "data_bytes" not in r}
            if 1 in first_pair and 2 in first_pair:
                speed.append((first_pair[1]["pairs_s"], first_pair[2]["pairs_s"],
                              first_pair[1]["load_before"]))
            for i in range(args.speedup_repeats):
                pr = {}
                for w in (1, 2):
                    # memory is measured above: sample lightly, leave the cores
                    m = run_featstore(fs, main_ds, w, main_ds.pairs_path, args.preset,
                                      f"speed-w{w}", max_duty=0.01)
                    shutil.rmtree(os.path.dirname(m["out"]), ignore_errors=True)
                    pr[w] = (m["pairs"] or len(main_ds.pairs)) / m["wall_s"]
                    la = m["load_before"]
                log(f"speedup repeat {i + 1}: {pr[1]:.1f} -> {pr[2]:.1f} pairs/s "
                    f"= {pr[2] / pr[1]:.2f}x (load {la:.2f})")
                speed.append((pr[1], pr[2], la))
        cfg["speedup"] = speed

        # Same matching? featstore (1 worker) against folk (c) (1 worker).
        fs1 = [r for r in runs if r["method"] == "featstore" and r["workers"] == 1
               and "data_bytes" not in r]
        c1 = [r for r in runs if r["method"] == "c" and r["workers"] == 1
              and "data_bytes" not in r]
        if fs1 and c1:
            check = agreement(fs1[0]["out"], c1[0]["out"], main_ds.pairs)
            log(f"agreement featstore vs folk: {check}")

        # 3. time to first pair: small store and a large one (one worker).
        large_images = max(4, int(sizes[1] * GB / (kp * dim * 2)))
        main_ds_bytes = main_ds.h5_bytes
        for d in (main_ds,):
            if not args.keep:
                d.remove()
                datasets.remove(d)
        large = Dataset("large", work, fs, large_images, kp, dim, 4, args.seed + 20, synth,
                        need_store)
        datasets.append(large)
        for ds in (small, large):
            size_gb = ds.desc_bytes / GB
            if need_store:
                m = run_featstore(fs, ds, 1, ds.one_pair, args.preset, "first")
                first.append({"label": "featstore match (`first_pair_ms`)",
                              "size_gb": size_gb, "value": m["first_s"],
                              "skipped": None if m["first_s"] is not None else "no field"})
                first.append({"label": "featstore match, one-pair run launch to exit",
                              "size_gb": size_gb, "value": m["wall_s"]})
                log(f"first pair featstore {size_gb:.2f} GB: json {m['first_s']}, "
                    f"one-pair run {m['wall_s']:.3f} s")
            for method in [x for x in methods if x != "featstore"]:
                why = guard(method, 1, ds.h5_bytes)
                label = method_label(method)
                if why:
                    first.append({"label": label, "size_gb": size_gb, "value": None,
                                  "skipped": "skipped (memory)"})
                    log(f"skip first-pair {method} {size_gb:.2f} GB: {why}")
                    continue
                m = run_folk(method, ds, 1, ds.one_pair, f"first-{method}")
                first.append({"label": label, "size_gb": size_gb, "value": m["first_s"],
                              "peak_kb": m["pss"]["peak_kb"]})
                log(f"first pair {method} {size_gb:.3g} GB: {m['first_s']:.2f} s")
        cfg["first_sizes_bytes"] = {"small": small.h5_bytes, "large": large.h5_bytes}
        cfg["main"]["h5_bytes"] = main_ds_bytes
    finally:
        if not args.keep:
            for d in datasets:
                d.remove()
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
    cfg["load_end"] = load_avg()
    for r in runs:
        r.pop("stdout", None)
        r.pop("stderr", None)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"config": cfg, "runs": runs, "first": first, "check": check,
                       "skipped": skipped}, f, indent=1, default=str)
    report(cfg, runs, first, check, skipped, args)
    return 0


def report(cfg, runs, first, check, skipped, args):
    body = table(cfg, runs, first, check, skipped)
    header = (f"Run {cfg['date']} on {os.cpu_count()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
              f"load average {cfg['load_start'][0]:.2f} at the start, "
              f"{cfg['load_end'][0]:.2f} at the end.\n"
              f"Command: `{cfg['command'].strip()}`\n")
    body = header + "\n" + body
    print(body)
    if args.plot and runs:
        plot(args.plot, cfg, runs)
        log(f"plot: {args.plot}")
    if args.update_results:
        update_results(args.update_results, body, cfg["command"])
        log(f"updated {args.update_results}")


if __name__ == "__main__":
    sys.exit(main())
