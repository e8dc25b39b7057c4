#!/usr/bin/env python3
"""soak.py [--quick] [--pairs N] [--kill-every S] : the match soak (issue 6).

A match run over a million pairs of small images (64 to 256 keypoints) with
a random worker killed (SIGKILL) every few seconds, against a clean run of
the same command:

  - both runs exit 0 with every pair matched (none failed or isolated);
  - the two matches.h5 files hold the same pairs with identical datasets
    (compared by a streamed digest of every key, dtype and byte);
  - the coordinator's memory (sampled every 0.25 s from
    /proc/PID/smaps_rollup) stays flat while it matches: the median of the
    last fifth of the matching phase is within max(16 MB, 10%) of the
    median of its second fifth, for its anonymous memory (its heap) and
    for its RSS (which counts the pages of mapped files it touches too:
    the journal's LMDB map, which store/journal.c drops after each
    commit); and the file-backed part of its RSS (RSS - anonymous) within
    max(4 MB, 10%), which catches journal pages piling up even in a run
    too short for them to reach 16 MB.

Default: 2,000 images (500 each of 64, 128, 192 and 256 keypoints, 64-D
float16), 1,000,000 pairs, 2 workers, a kill every 1-2 s. --quick: 400
images and 20,000 pairs, a kill every 0.3-0.6 s (with a small per-pair
delay so the run lasts long enough to be killed a few times): the CI-size
check of the same logic (suite 'trust'; the full run is suite 'slow').
Figures go to stdout as `# figure:` lines (tests/RELIABILITY.md).
Uses $FEATSTORE; run it with a release build for the full size:
  FEATSTORE=build-soak/tools/featstore python3 tests/trust/soak.py
"""
import filecmp
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import caselib  # noqa: E402

FST = os.environ.get("FEATSTORE") or "featstore"


def log(*a):
    print("#", *a, flush=True)


def fst(*args, timeout=3600):
    r = subprocess.run([FST, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"featstore {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return r


def is_worker(pid):
    """A `featstore worker` process (not, say, the coordinator's forked
    matches.h5 writer, which a worker kill must not hit)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        return len(argv) > 1 and argv[1] == b"worker"
    except OSError:
        return False


def mem_of(pid):
    """(rss, pss, anonymous) in bytes from smaps_rollup, or None. RSS and
    PSS include the pages of mapped files the process touched (the
    journal's LMDB map, the store's, the binary and its libraries);
    Anonymous is its own memory."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            v = {}
            for line in f:
                k, _, rest = line.partition(":")
                if k in ("Rss", "Pss", "Anonymous"):
                    v[k] = int(rest.split()[0]) * 1024
            return v["Rss"], v["Pss"], v["Anonymous"]
    except (OSError, KeyError):
        return None


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(path):
    """(pairs, sha256) over every dataset's name, dtype and bytes, in name
    order, streamed (a million pairs do not fit in a dict of bytes)."""
    import h5py
    h = hashlib.sha256()
    n = 0
    with h5py.File(path, "r") as f:
        names = []
        f.visit(names.append)
        names.sort()
        for name in names:
            obj = f[name]
            if isinstance(obj, h5py.Dataset):
                h.update(name.encode() + b"\0" + str(obj.dtype).encode() + b"\0")
                h.update(obj[()].tobytes())
                n += name.endswith("/matches0")
    return n, h.hexdigest()


def make_data(d, n_per, pairs_wanted):
    """4 synthetic feature files (64..256 keypoints) in one store, and a
    pairs file of pairs_wanted unique pairs (each image with the next k)."""
    store = os.path.join(d, "db.fst")
    names = []
    for i, k in enumerate((64, 128, 192, 256)):
        h5 = os.path.join(d, f"k{k}.h5")
        fst("synth", h5, "--images", str(n_per), "--keypoints", str(k), "--dim", "64",
            "--prefix", f"k{k:03d}/img", "--seed", str(11 + i), "--quiet")
        fst("import", h5, store, "--quiet", *(["--append"] if i else []))
        os.unlink(h5)
        names += [f"k{k:03d}/img{j:04d}.jpg" for j in range(n_per)]
    n = len(names)
    per = -(-pairs_wanted // n)
    assert per < n // 2, "not enough images for that many unique pairs"
    rng = random.Random(5)
    order = names[:]
    rng.shuffle(order)                  # mix the keypoint counts
    pairs = os.path.join(d, "pairs.txt")
    count = 0
    with open(pairs, "w") as f:
        for i in range(n):
            for k in range(1, per + 1):
                if count == pairs_wanted:
                    break
                f.write(f"{order[i]} {order[(i + k) % n]}\n")
                count += 1
    return store, pairs, count


def run_match(store, pairs, out, workers, kill_every=None, env=None):
    """Run match; optionally SIGKILL a random worker every kill_every=(lo, hi)
    seconds. Returns (summary json, kills, memory samples)."""
    cmd = [FST, "match", store, pairs, "-o", out, "--device", "cpu", "--workers", str(workers),
           "--quiet", "--json"]
    e = dict(os.environ)
    if env:
        e.update(env)
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    samples = []                        # (t, rss, pss, writing, anon, rss - anon)
    kills = []
    stop = threading.Event()
    tmp_prefix = os.path.basename(out) + ".tmp-"
    outdir = os.path.dirname(out)

    def sampler():
        while not stop.is_set():
            m = mem_of(p.pid)
            if m:
                writing = any(f.startswith(tmp_prefix) for f in os.listdir(outdir))
                samples.append((time.time() - t0, m[0], m[1], writing, m[2], m[0] - m[2]))
            stop.wait(0.25)

    def killer():
        rng = random.Random(7)
        while not stop.wait(rng.uniform(*kill_every)):
            if any(s[3] for s in samples[-1:]):
                break                   # writing the output: no workers left
            kids = [k for k in caselib.children(p.pid, live_only=True) if is_worker(k)]
            if not kids:
                continue
            victim = rng.choice(kids)
            try:
                os.kill(victim, signal.SIGKILL)
                kills.append((round(time.time() - t0, 2), victim))
            except ProcessLookupError:
                pass

    th = [threading.Thread(target=sampler, daemon=True)]
    if kill_every:
        th.append(threading.Thread(target=killer, daemon=True))
    for t in th:
        t.start()
    out_s, err_s = p.communicate()
    stop.set()
    for t in th:
        t.join()
    if p.returncode != 0:
        raise AssertionError(f"match exit {p.returncode}\n{err_s[-3000:]}")
    for bad in ("Sanitizer", "runtime error"):
        assert bad not in err_s, err_s[-3000:]
    js = json.loads(out_s.strip().splitlines()[-1])
    js["_wall"] = time.time() - t0
    return js, kills, samples


def flat(samples, idx):
    """Median of the 2nd fifth vs the last fifth of the matching phase."""
    m = [s[idx] for s in samples if not s[3]]
    if len(m) < 10:
        return None
    k = len(m) // 5
    a = sorted(m[k:2 * k])[k // 2]
    b = sorted(m[-k:])[k // 2]
    return a, b, max(m)


def main():
    quick = "--quick" in sys.argv
    pairs_wanted = 20000 if quick else 1000000
    n_per = 100 if quick else 500
    # the matching phase of a million pairs takes about a minute on a quiet
    # machine: a kill every 1-2 s gives the >= 10 kills asked for below
    kill_every = (0.3, 0.6) if quick else (1.0, 2.0)
    workers = 2
    args = sys.argv[1:]
    if "--pairs" in args:
        pairs_wanted = int(args[args.index("--pairs") + 1])
    if "--kill-every" in args:
        s = float(args[args.index("--kill-every") + 1])
        kill_every = (s * 0.67, s * 1.33)
    d = tempfile.mkdtemp(prefix="fst-soak-")
    print("1..1")
    ok = False
    try:
        t = time.time()
        store, pairs, npairs = make_data(d, n_per, pairs_wanted)
        log(f"data: {4 * n_per} images (64-256 keypoints, 64-D), {npairs} pairs, "
            f"store {os.path.getsize(store) >> 20} MB, made in {time.time() - t:.0f} s")
        slow = {"FST_TEST_PAIR_DELAY_MS": "1"} if quick else None
        clean, _, _ = run_match(store, pairs, os.path.join(d, "clean.h5"), workers, env=slow)
        log(f"clean run: {clean['_wall']:.0f} s, {clean.get('pairs_matched')} pairs")
        killed, kills, samples = run_match(store, pairs, os.path.join(d, "killed.h5"), workers,
                                           kill_every=kill_every, env=slow)
        log(f"killed run: {killed['_wall']:.0f} s, {len(kills)} workers killed, "
            f"{killed.get('worker_restarts')} restarts")
        for js in (clean, killed):
            assert js.get("pairs_failed", 0) == 0, js
            assert js.get("pairs_matched") == npairs, (js.get("pairs_matched"), npairs)
        assert len(kills) >= (3 if quick else 10), f"only {len(kills)} kills"
        t = time.time()
        # the writer is deterministic (key order, no timestamps): the two
        # files should be byte for byte the same; if not, compare content
        same_bytes = filecmp.cmp(os.path.join(d, "clean.h5"), os.path.join(d, "killed.h5"),
                                 shallow=False)
        h1 = file_sha(os.path.join(d, "clean.h5"))
        if not same_bytes:
            n1, c1 = digest(os.path.join(d, "clean.h5"))
            n2, c2 = digest(os.path.join(d, "killed.h5"))
            assert n1 == n2 == npairs, (n1, n2, npairs)
            assert c1 == c2, "outputs differ"
        written = {clean.get("pairs_written"), killed.get("pairs_written")}
        assert written == {npairs}, written
        log(f"compared in {time.time() - t:.0f} s: byte-identical {same_bytes}, "
            f"sha256 {h1[:16]}, {npairs} pairs written by each run")
        rss, pss, anon = flat(samples, 1), flat(samples, 2), flat(samples, 4)
        filed = flat(samples, 5)
        assert rss and pss and anon, f"too few memory samples ({len(samples)})"
        mb = 1 << 20
        series = [(round(s[0]), round(s[4] / mb, 1), round(s[1] / mb, 1), "w" if s[3] else "m")
                  for s in samples[:: max(1, len(samples) // 24)]]
        log(f"coordinator (s, anonymous MB, RSS MB, m=matching/w=writing): {series}")
        top = max(samples, key=lambda s: s[4])
        log(f"coordinator anonymous memory peak over the whole run: {top[4] / mb:.1f} MB at "
            f"{top[0]:.0f} s ({'writing' if top[3] else 'matching'}); run took "
            f"{killed['_wall']:.0f} s")
        for name, (a, b, mx) in (("RSS", rss), ("PSS", pss), ("anonymous", anon),
                                 ("file-backed RSS", filed)):
            log(f"coordinator {name} while matching: {a / mb:.1f} MB (2nd fifth) -> "
                f"{b / mb:.1f} MB (last fifth), max {mx / mb:.1f} MB, {len(samples)} samples")
        # the claim: the coordinator's memory does not grow with the pairs
        # done: neither its own (anonymous) nor what it maps (RSS: the
        # journal's pages it touched are dropped after each commit)
        grew = []
        for name, (a, b, _), floor in (("anonymous memory", anon, 16 * mb), ("RSS", rss, 16 * mb),
                                       ("file-backed RSS", filed, 4 * mb)):
            if b - a > max(floor, 0.10 * a):
                grew.append(f"{name} {a / mb:.1f} -> {b / mb:.1f} MB")
        assert not grew, "coordinator memory grew while matching: " + ", ".join(grew)
        print(f"# figure: soak = {npairs} pairs x 2 runs ({workers} workers): {len(kills)} workers "
              f"SIGKILLed in the killed run ({killed['_wall']:.0f} s, clean {clean['_wall']:.0f} s), "
              f"{killed.get('worker_restarts')} restarts; outputs identical (sha256 {h1[:16]}), "
              f"0 pairs failed or lost; coordinator memory while matching: anonymous "
              f"{anon[0] / mb:.1f} -> {anon[1] / mb:.1f} MB (max {anon[2] / mb:.1f}), RSS "
              f"{rss[0] / mb:.1f} -> {rss[1] / mb:.1f} MB (max {rss[2] / mb:.1f}), file-backed "
              f"{filed[0] / mb:.1f} -> {filed[1] / mb:.1f} MB, PSS {pss[0] / mb:.1f} -> "
              f"{pss[1] / mb:.1f} MB",
              flush=True)
        ok = True
    except Exception:
        import traceback
        for line in traceback.format_exc().splitlines():
            print("#", line)
    finally:
        if ok and not os.environ.get("FST_TEST_KEEP"):
            shutil.rmtree(d, ignore_errors=True)
    print(("ok" if ok else "not ok") + f" 1 soak{' (quick)' if quick else ''}"
          + ("" if ok else f" (files kept in {d})"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
