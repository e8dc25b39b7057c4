#!/usr/bin/env python3
"""e2e.py CASE : `featstore match` end to end (suite 'match').

Every case builds its own small data in a temporary directory (hloc's
features.h5 written with h5py, imported with `featstore import`), runs the
command as a user would ($FEATSTORE), and reads the output the way hloc does
(hloc_io.py). Cases:

  presets           every preset x 1, 2, 4 workers: identical outputs, equal
                    to the numpy re-implementation of hloc's matcher
  pairs             pairs-file quirks, duplicates, reversed pairs, self pairs
  bad_input         malformed lines, unknown names, unwritable output,
                    missing/corrupt store, missing pairs file, usage errors
  existing          pairs already in the output (new, reversed, old keys)
                    are skipped; --overwrite recomputes them
  kill_worker       kill -9 of one worker mid-run: complete, identical
  kill_coordinator  kill -9 of the coordinator mid-run, run again: identical,
                    no pair matched twice
  signals           SIGINT / SIGTERM, then resume; other parameters refused
  crash_pair        a pair that kills workers is isolated and reported
  query             --query with an hloc features.h5 and with a store
  int32             more than 32767 keypoints: refused, or --matches-dtype int32
  devices           --device cpu/cuda/cuda:N/auto on any build and machine
  fake_gpus         the GPU plumbing (one device per worker, fallbacks) with
                    FST_TEST_FAKE_CUDA
  hloc_keys         colliding matches.h5 keys refused; '#1.jpg b.jpg' is a
                    pair; a UTF-8 byte-order mark removed and counted
  output_paths      -o through a symbolic link; -o naming a features file
  messages          device strings, --backend-params keys, settings as written
  store_identity    a store or query replaced by another import with the same
                    counts within one second: journaled pairs refused, naming
                    both ids; after an append they are kept
  pairs_changed     pairs file edited after an interruption: journaled pairs
                    reused by name, the others discarded and counted
  counts            every count of the summary (text and --json) against the run
  corrupt_record    4 bytes of one image's descriptors overwritten in the
                    store: its pairs fail naming image and store, the rest is
                    written, a re-run retries only those; --no-verify says so
  stall             SIGSTOP one of two workers: killed after --stall-timeout,
                    its pairs redone, the output identical
  hang_pair         a pair that hangs every worker it is handed to
                    (FST_TEST_HANG_PAIR): killed at each stall, isolated after
                    four, reported; the rest written; the next run retries it
  stop_stalled      SIGSTOP every worker, then SIGTERM: exit 143 within the
                    stop deadline, the journal resumes to the identical file
  writer_stall      the process writing matches.h5 stopped (FST_TEST_WRITER_STOP):
                    killed after --stall-timeout (exit 1), or after the stop
                    deadline once SIGTERM came (exit 143); the journal keeps
                    every pair and the next run writes the identical file
  shard             --shard K/N and Slurm's environment: parts, summary, --json
  merge             featstore merge: parts = a single run, byte for byte; parts
                    of other runs, missing, duplicate and failed shards refused
  neural            every LightGlue / SuperGlue preset with small random
                    weights (neural_weights.py): 1 and 2 workers identical and
                    equal to fst_nn_match() called directly (nn_direct); kill -9
                    and resume to the identical file; missing weights, wrong-D
                    weights, --device cuda, sift without scales refused with
                    one message; sift+lightglue with DoG scales and oris equal
                    to fst_nn_match, an image without them failed by name; a resume with other weights or options refused;
                    .pth files (where torch is installed) equal to safetensors
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hloc_io  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import caselib  # noqa: E402
from caselib import h5_content  # noqa: E402

FST = os.environ.get("FEATSTORE") or "featstore"
RNG = np.random.default_rng(4)


def log(*a):
    print("#", *a, flush=True)


# ---- data -------------------------------------------------------------------

def unit(d, n):
    x = RNG.standard_normal((d, n)).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=0), 1e-6)


def write_features(path, images, dtype=np.float16):
    """images: {name: descriptors (D, N) float32}. hloc's layout."""
    with h5py.File(path, "w", libver="latest") as f:
        for name, desc in images.items():
            n = desc.shape[1]
            g = f.create_group(name)
            g.create_dataset("keypoints", data=(RNG.random((n, 2)) * 640).astype(np.float32))
            g.create_dataset("descriptors", data=desc.astype(dtype))
            g.create_dataset("scores", data=RNG.random(n).astype(np.float32))
            g.create_dataset("image_size", data=np.array([640, 480]))


def make_images(n_images=14, d=48, kmin=40, kmax=260, prefix="db/seq1/img", extra=True):
    """Random unit descriptors; image i+1 shares ~half of image i's
    (plus noise), so mutual matches exist. A few edge cases besides."""
    names = [f"{prefix}{i:03d}.jpg" for i in range(n_images)]
    imgs = {}
    prev = None
    for i, nm in enumerate(names):
        n = int(RNG.integers(kmin, kmax))
        desc = unit(d, n)
        if prev is not None:
            k = min(n, prev.shape[1]) // 2
            src = RNG.choice(prev.shape[1], k, replace=False)
            dst = RNG.choice(n, k, replace=False)
            noisy = prev[:, src] + 0.05 * RNG.standard_normal((d, k)).astype(np.float32)
            desc[:, dst] = noisy / np.linalg.norm(noisy, axis=0)
        imgs[nm] = desc
        prev = desc
    if extra:
        imgs["empty.jpg"] = np.zeros((d, 0), np.float32)      # no keypoints
        imgs["one.jpg"] = unit(d, 1)                          # ratio test off
        two = unit(d, 30)
        two[:, 7] = two[:, 3]                                 # exact ties
        imgs["ties-and_dashes.jpg"] = two
    return imgs


def pairs_text(names, extra=True, step=(1, 2, 3)):
    lines = []
    for s in step:
        for i in range(len(names) - s):
            lines.append(f"{names[i]} {names[i + s]}")
    if extra:
        first = names[0]
        lines += [f"empty.jpg {first}", f"{first} empty.jpg", f"one.jpg {first}",
                  f"{first} one.jpg", f"ties-and_dashes.jpg {names[1]}",
                  f"{names[2]} ties-and_dashes.jpg", "one.jpg ties-and_dashes.jpg"]
    return "\n".join(lines) + "\n"


class Workdir:
    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix=f"fst-match-{name}-")

    def p(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, text, mode="w"):
        with open(self.p(name), mode) as f:
            f.write(text)
        return self.p(name)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def dataset(w, **kw):
    imgs = make_images(**kw)
    h5 = w.p("features.h5")
    write_features(h5, imgs)
    store = w.p("db.fst")
    run(["import", h5, store, "--quiet"])
    feats = hloc_io.load_features(h5)
    return h5, store, feats, imgs


# ---- running featstore --------------------------------------------------------

def run(args, expect=0, env=None, timeout=120):
    e = dict(os.environ)
    if env:
        e.update(env)
    r = subprocess.run([FST] + args, capture_output=True, text=True, env=e, timeout=timeout)
    clean(r.stderr, args)
    if expect is not None and r.returncode != expect:
        raise AssertionError(f"featstore {' '.join(args)}: exit {r.returncode}, expected "
                             f"{expect}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def clean(stderr, what):
    """No sanitizer report from the coordinator or any worker (a worker's
    unclean exit is reported by the coordinator)."""
    assert "Sanitizer" not in stderr and "at the end" not in stderr, (what, stderr[-3000:])


def match(store, pairs, out, *extra, expect=0, env=None):
    r = run(["match", store, pairs, "-o", out, "--json", "--quiet", *extra], expect=expect,
            env=env)
    js = json.loads(r.stdout.strip().splitlines()[-1])
    return js, r


def assert_same_output(a, b):
    ca, cb = h5_content(a), h5_content(b)
    assert ca.keys() == cb.keys(), (sorted(set(ca) ^ set(cb))[:10])
    for k in ca:
        assert ca[k] == cb[k], f"{k} differs between {a} and {b}"


def check_against_hloc(out, feats0, pairs, conf, feats1=None):
    feats1 = feats0 if feats1 is None else feats1
    rows = diff = 0
    for a, b in pairs:
        r, d = hloc_io.check_pair(out, feats0, feats1, a, b, conf)
        rows += r
        diff += d
    assert diff <= max(2, rows // 1000), f"{diff} near-tie differences in {rows} rows"
    return rows, diff


def pair_keys(path):
    keys = set()
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "matches0" in obj:
                keys.add(name)
        f.visititems(visit)
    return keys


def leftovers(w, out):
    base = os.path.basename(out)
    return sorted(f for f in os.listdir(w.dir) if f.startswith(base))


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] == "Z"
    except OSError:
        return True


def wait_lines(path, n, proc, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.returncode}: {proc.stderr.read()}")
        try:
            with open(path) as f:
                if sum(1 for _ in f) >= n:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


def log_lines(path):
    try:
        with open(path) as f:
            return [tuple(l.split()) for l in f if l.strip()]
    except FileNotFoundError:
        return []


# ---- cases ----------------------------------------------------------------------

def case_presets(w):
    h5, store, feats, imgs = dataset(w)
    names = [n for n in imgs if n.startswith("db/")]
    pairs = w.write("pairs.txt", pairs_text(names))
    expect = hloc_io.hloc_pairs(open(pairs).read())
    for preset, conf in hloc_io.PRESETS.items():
        outs = []
        for nw in (1, 2, 4):
            out = w.p(f"m-{preset}-{nw}.h5")
            js, _ = match(store, pairs, out, "--preset", preset, "--workers", str(nw),
                          "--device", "cpu")
            assert js["status"] == "ok" and js["pairs"] == len(expect), js
            assert js["workers"] == nw and js["pairs_failed"] == 0, js
            assert js["first_pair_ms"] is not None and js["peak_pss_bytes"] > 0, js
            assert leftovers(w, out) == [os.path.basename(out)], leftovers(w, out)
            outs.append(out)
        for o in outs[1:]:
            assert_same_output(outs[0], o)
            with open(outs[0], "rb") as a, open(o, "rb") as b:
                assert a.read() == b.read(), f"{o}: not byte-identical to {outs[0]}"
        keys = pair_keys(outs[0])
        assert keys == {hloc_io.names_to_pair(a, b) for a, b in expect}, keys
        with h5py.File(outs[0], "r") as f:
            k = hloc_io.names_to_pair(*expect[0])
            assert f[k]["matches0"].dtype == np.int16
            assert f[k]["matching_scores0"].dtype == np.float16
        rows, diff = check_against_hloc(outs[0], feats, expect, conf)
        log(f"{preset}: {len(expect)} pairs, {rows} rows, {diff} near-tie differences")
    # options spelled out = the preset
    out = w.p("m-explicit.h5")
    match(store, pairs, out, "--ratio-threshold", "0.8", "--workers", "2")
    assert_same_output(out, w.p("m-NN-ratio-1.h5"))
    out = w.p("m-nomutual.h5")
    match(store, pairs, out, "--no-mutual", "--distance-threshold", "0.9", "--workers", "2")
    check_against_hloc(out, feats, expect, {"do_mutual_check": False, "ratio_threshold": None,
                                            "distance_threshold": 0.9})


def case_pairs(w):
    h5, store, feats, imgs = dataset(w, n_images=6, extra=False)
    n = sorted(imgs)
    a, b, c, d, e, f = n
    text = (f"# a comment\n\n   \n{a} {b}\r\n{b}\t{c}   \n  {a} {c}\n{c} {a}\n{a} {b}\n"
            f"{b} {a}\n{d} {d}\n{d} {d}\n# another comment\n{e} {f}\n{a} {e}\n{f} {e}")   # no final \n
    pairs = w.write("pairs.txt", text, mode="w")
    expect = hloc_io.hloc_pairs(text.replace("\r", ""))
    # grouping by first name: a's pairs first, then b's, c's...; (c,a), (b,a),
    # (f,e) are reverses of kept pairs; (a,b), (d,d) repeat
    assert expect == [(a, b), (a, c), (a, e), (b, c), (d, d), (e, f)], expect
    out = w.p("m.h5")
    r = run(["match", store, pairs, "-o", out, "--json", "--workers", "2"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs"] == 6 and js["pairs_lines"] == 11 and js["pairs_self"] == 1, js
    assert "paired with itself" in r.stderr and "pairs.txt:10:" in r.stderr, r.stderr
    assert pair_keys(out) == {hloc_io.names_to_pair(x, y) for x, y in expect}
    check_against_hloc(out, feats, expect, hloc_io.PRESETS["NN-mutual"])
    # reading the reversed orientation the way hloc does
    m, s = hloc_io.get_matches(out, c, a)
    m2, _ = hloc_io.get_matches(out, a, c)
    assert np.array_equal(m, np.flip(m2, -1))
    # a self pair: every keypoint matches itself (mutual NN of identical sets)
    m, s = hloc_io.get_matches(out, d, d)
    assert len(m) and np.array_equal(m[:, 0], m[:, 1]), m[:5]
    # a pipe works as a pairs file
    out2 = w.p("m2.h5")
    r = subprocess.run(f"cat {pairs} | {FST} match {store} /dev/stdin -o {out2} --quiet",
                       shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_output(out, out2)
    # an empty pairs file: an empty matches.h5
    empty = w.write("empty.txt", "# nothing here\n#\n")
    out3 = w.p("m3.h5")
    js, _ = match(store, empty, out3)
    assert js["pairs"] == 0 and os.path.exists(out3) and not pair_keys(out3), js


def case_bad_input(w):
    h5, store, feats, imgs = dataset(w, n_images=4, extra=False)
    n = sorted(imgs)
    out = w.p("m.h5")

    def nothing_written():
        assert leftovers(w, out) == [], leftovers(w, out)

    # malformed lines: file:line
    for bad, line in ((f"{n[0]} {n[1]}\n{n[1]}\n", 2), (f"{n[0]} {n[1]}\n\n{n[1]} {n[2]} x\n", 3)):
        p = w.write("bad.txt", bad)
        r = run(["match", store, p, "-o", out], expect=1)
        assert f"bad.txt:{line}:" in r.stderr and "expected 2 image names" in r.stderr, r.stderr
        nothing_written()
    # unknown names: the first few and the count; --skip-missing
    text = "".join(f"{n[0]} nope{i}.jpg\n" for i in range(7)) + f"{n[0]} {n[1]}\n"
    p = w.write("missing.txt", text)
    r = run(["match", store, p, "-o", out], expect=1)
    assert "7 images named in" in r.stderr and "'nope0.jpg'" in r.stderr, r.stderr
    assert "--skip-missing" in r.stderr and "..." in r.stderr, r.stderr
    nothing_written()
    js, r = match(store, p, out, "--skip-missing")
    assert js["pairs"] == 1 and js["pairs_missing"] == 7 and js["names_missing"] == 7, js
    assert "skipping 7 pairs" in r.stderr, r.stderr
    assert pair_keys(out) == {hloc_io.names_to_pair(n[0], n[1])}
    os.remove(out)
    good = w.write("pairs.txt", f"{n[0]} {n[1]}\n{n[1]} {n[2]}\n")
    # output that cannot be written
    for o, why in ((w.p("no", "such", "dir", "m.h5"), "No such file"), (w.dir, "is a directory")):
        r = run(["match", store, good, "-o", o], expect=1)
        assert why in r.stderr and o in r.stderr, r.stderr
    assert not os.path.exists(w.p("no"))
    # store missing, not a store, truncated store
    r = run(["match", w.p("nostore.fst"), good, "-o", out], expect=1)
    assert "nostore.fst" in r.stderr, r.stderr
    junk = w.write("junk.fst", os.urandom(65536), mode="wb")
    r = run(["match", junk, good, "-o", out], expect=1)
    assert "junk.fst" in r.stderr, r.stderr
    # pairs file missing
    r = run(["match", store, w.p("nopairs.txt"), "-o", out], expect=1)
    assert "nopairs.txt" in r.stderr, r.stderr
    nothing_written()
    # an existing output that is not HDF5 is not overwritten
    w.write("m.h5", "not hdf5")
    r = run(["match", store, good, "-o", out], expect=1)
    assert "not an HDF5 file" in r.stderr, r.stderr
    assert open(out).read() == "not hdf5"
    os.remove(out)
    # usage errors: exit 2
    for args in (["match", store, good], ["match", store, "-o", out], ["match", store, good, "-o",
                 out, "--workers", "0"], ["match", store, good, "-o", out, "--preset", "nope"],
                 ["match", store, good, "-o", out, "--bogus"],
                 ["match", store, good, "-o", out, "--matches-dtype", "int8"]):
        run(args, expect=2)
    r = run(["match", store, good, "-o", out, "--device", "gpu"], expect=2)
    assert "--device 'gpu'" in r.stderr, r.stderr
    nothing_written()
    # a store cut short (a copy interrupted): an error, not a crash
    trunc = w.p("trunc.fst")
    with open(store, "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[: len(data) // 3])
    r = run(["match", trunc, good, "-o", out], expect=None)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "trunc.fst" in r.stderr, r.stderr
    nothing_written()


def case_existing(w):
    h5, store, feats, imgs = dataset(w, n_images=10, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    full = w.p("full.h5")
    match(store, pairs, full)
    # half the pairs first, then all: the first half is skipped
    half = w.write("half.txt", "".join(f"{a} {b}\n" for a, b in expect[: len(expect) // 2]))
    out = w.p("m.h5")
    match(store, half, out)
    js, _ = match(store, pairs, out, "--workers", "2")
    assert js["pairs_existing"] == len(expect) // 2, js
    assert js["pairs"] == len(expect) - len(expect) // 2, js
    assert_same_output(out, full)
    # nothing to do: the file is left alone
    before = os.stat(out).st_mtime_ns
    js, _ = match(store, pairs, out)
    assert js["pairs"] == 0 and not js["output_written"], js
    assert os.stat(out).st_mtime_ns == before
    # an hloc file with reversed and old-style keys: those pairs are skipped
    hl = w.p("hloc.h5")
    (a0, b0), (a1, b1), (a2, b2) = expect[:3]
    with h5py.File(hl, "w", libver="latest") as f:
        g = f.create_group(hloc_io.names_to_pair(b0, a0))           # reversed
        g.create_dataset("matches0", data=np.full(5, -1, np.int16))
        g.create_dataset("matching_scores0", data=np.zeros(5, np.float16))
        g = f.create_group(hloc_io.names_to_pair_old(a1, b1))       # old
        g.create_dataset("matches0", data=np.full(5, -1, np.int16))
        g.create_dataset("matching_scores0", data=np.zeros(5, np.float16))
        g = f.create_group(hloc_io.names_to_pair_old(b2, a2))       # old reversed
        g.create_dataset("matches0", data=np.full(5, -1, np.int16))
        g.create_dataset("matching_scores0", data=np.zeros(5, np.float16))
        f.create_group(hloc_io.names_to_pair(*expect[3]))          # no matches0: not a pair
        f.create_dataset("unrelated", data=np.arange(3))
    js, _ = match(store, pairs, hl)
    assert js["pairs_existing"] == 3 and js["pairs"] == len(expect) - 3, js
    with h5py.File(hl, "r") as f:
        assert f["unrelated"][()].tolist() == [0, 1, 2]
        assert hloc_io.names_to_pair(b0, a0) in f and hloc_io.names_to_pair(a0, b0) not in f
    # --overwrite: everything recomputed; stale reversed/old keys removed
    js, _ = match(store, pairs, hl, "--overwrite")
    assert js["pairs"] == len(expect) and js["pairs_existing"] == 0, js
    with h5py.File(hl, "r") as f:
        assert hloc_io.names_to_pair(b0, a0) not in f
        assert hloc_io.names_to_pair_old(a1, b1) not in f
        assert hloc_io.names_to_pair_old(b2, a2) not in f
        assert f["unrelated"][()].tolist() == [0, 1, 2]
    c_full, c_hl = h5_content(full), h5_content(hl)
    del c_hl["unrelated"]
    assert c_full == c_hl
    check_against_hloc(hl, feats, expect, hloc_io.PRESETS["NN-mutual"])


def slow_env(log_path, ms=15, **more):
    e = {"FST_TEST_PAIR_DELAY_MS": str(ms), "FST_TEST_MATCH_LOG": log_path}
    e.update(more)
    return e


def start(args, env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.Popen([FST] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=e)


def case_kill_worker(w):
    h5, store, feats, imgs = dataset(w, n_images=12, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 4, 5))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--workers", "1")
    out = w.p("m.h5")
    lg = w.p("log.txt")
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json", "--quiet"],
              slow_env(lg))
    wait_lines(lg, 6, p)
    kids = caselib.children(p.pid)
    assert len(kids) == 2, kids
    os.kill(kids[0], signal.SIGKILL)
    stdout, stderr = p.communicate(timeout=120)
    clean(stderr, "kill_worker")
    assert p.returncode == 0, (p.returncode, stderr)
    js = json.loads(stdout.strip().splitlines()[-1])
    assert js["worker_restarts"] >= 1 and js["pairs"] == len(expect), js
    assert "killed by signal 9" in stderr and "back to the queue" in stderr, stderr
    assert_same_output(out, ref)
    assert leftovers(w, out) == ["m.h5"]


def case_kill_coordinator(w):
    h5, store, feats, imgs = dataset(w, n_images=12, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 4, 5))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    out = w.p("m.h5")
    lg1, lg2 = w.p("log1.txt"), w.p("log2.txt")
    # 80 ms a pair, 2 workers: ~1.8 s; killed after ~0.7 s, when the
    # journal (committed every 250 ms) holds some pairs and not all
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--quiet"],
              slow_env(lg1, ms=80))
    wait_lines(lg1, 8, p)
    time.sleep(0.4)
    kids = caselib.children(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    t0 = time.time()
    while not all(gone(k) for k in kids):          # workers die with it
        assert time.time() - t0 < 10, f"workers {kids} outlived the coordinator"
        time.sleep(0.02)
    assert not os.path.exists(out)
    assert os.path.exists(out + ".journal")
    done1 = set(log_lines(lg1))
    js, _ = match(store, pairs, out, "--workers", "2", env={"FST_TEST_MATCH_LOG": lg2})
    matched2 = log_lines(lg2)
    assert js["pairs_resumed"] > 0 and js["pairs"] > 0, js
    assert js["pairs_resumed"] + js["pairs"] == len(expect), js
    assert len(matched2) == js["pairs"] == len(set(matched2)), (len(matched2), js)
    # what the second run matched was not journaled by the first
    assert js["pairs_resumed"] <= len(done1)
    assert not os.path.exists(out + ".journal")
    assert_same_output(out, ref)
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read(), "resumed output not byte-identical"
    assert leftovers(w, out) == ["m.h5"], leftovers(w, out)


def case_signals(w):
    h5, store, feats, imgs = dataset(w, n_images=10, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 4))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = w.p(f"m{code}.h5")
        lg = w.p(f"log{code}.txt")
        p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json", "--quiet"],
                  slow_env(lg))
        wait_lines(lg, 4, p)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
        clean(stderr, "signal")
        assert p.returncode == code, (p.returncode, stderr)
        assert "run the same command again to resume" in stderr, stderr
        js = json.loads(stdout.strip().splitlines()[-1])
        assert js["status"] == "interrupted" and js["signal"] == sig, js
        assert not os.path.exists(out) and os.path.exists(out + ".journal")
        assert js["pairs"] >= 4, js
        # other parameters: refused, nothing lost
        r = run(["match", store, pairs, "-o", out, "--preset", "NN-ratio"], expect=1)
        assert "other parameters" in r.stderr and "--overwrite" in r.stderr, r.stderr
        assert "ratio_threshold" in r.stderr, r.stderr
        js2, _ = match(store, pairs, out)
        assert js2["pairs_resumed"] == js["pairs"], (js, js2)
        assert js2["pairs_resumed"] + js2["pairs"] == len(expect)
        assert_same_output(out, ref)
        assert leftovers(w, out) == [os.path.basename(out)]
    # an interrupted run, then --overwrite with other parameters: starts over
    out = w.p("mo.h5")
    lg = w.p("logo.txt")
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--quiet"], slow_env(lg))
    wait_lines(lg, 4, p)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    r = run(["match", store, pairs, "-o", out, "--preset", "NN-ratio", "--overwrite", "--json"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs_resumed"] == 0 and js["pairs"] == len(expect), js
    assert "note: discarding" in r.stderr, r.stderr
    ref2 = w.p("ref2.h5")
    match(store, pairs, ref2, "--preset", "NN-ratio")
    assert_same_output(out, ref2)


def case_crash_pair(w):
    h5, store, feats, imgs = dataset(w, n_images=10, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    bad = expect[len(expect) // 2]
    out = w.p("m.h5")
    js, r = match(store, pairs, out, "--workers", "2", expect=1,
                  env={"FST_TEST_CRASH_PAIR": f"{bad[0]} {bad[1]}"})
    assert js["status"] == "failed_pairs" and js["pairs_failed"] == 1, js
    f = js["failures"][0]
    assert (f["name0"], f["name1"]) == bad and f["status"] == "ECHILD", f
    assert "isolated" in f["detail"] and "signal 6" in f["detail"], f
    assert f"{bad[0]} {bad[1]}" in r.stderr and "isolated" in r.stderr, r.stderr
    assert js["pairs"] == len(expect) - 1 and js["output_written"], js
    keys = pair_keys(out)
    assert hloc_io.names_to_pair(*bad) not in keys and len(keys) == len(expect) - 1
    assert not os.path.exists(out + ".journal")
    # the same command without the crash: only the failed pair is matched
    js, _ = match(store, pairs, out)
    assert js["pairs"] == 1 and js["pairs_existing"] == len(expect) - 1, js
    assert_same_output(out, ref)


def case_query(w):
    db = make_images(n_images=8, prefix="db/img", extra=False)
    q = {f"query/q{i}.jpg": unit(48, int(RNG.integers(30, 200))) for i in range(4)}
    dbn = sorted(db)
    for i, name in enumerate(q):                   # plant some matches
        src = db[dbn[i]]
        k = min(src.shape[1], q[name].shape[1]) // 2
        q[name][:, :k] = src[:, :k]
    write_features(w.p("db.h5"), db)
    write_features(w.p("q.h5"), q)
    store = w.p("db.fst")
    run(["import", w.p("db.h5"), store, "--quiet"])
    text = "".join(f"{a} {b}\n" for a in q for b in dbn[:5])
    pairs = w.write("pairs.txt", text)
    expect = hloc_io.hloc_pairs(text)
    fq = hloc_io.load_features(w.p("q.h5"))
    fdb = hloc_io.load_features(w.p("db.h5"))
    out = w.p("m.h5")
    js, _ = match(store, pairs, out, "--query", w.p("q.h5"), "--workers", "2")
    assert js["pairs"] == len(expect), js
    check_against_hloc(out, fq, expect, hloc_io.PRESETS["NN-mutual"], feats1=fdb)
    assert sorted(os.listdir(w.dir)) == sorted(["db.h5", "q.h5", "db.fst", "db.fst-lock",
                                                "pairs.txt", "m.h5"]), os.listdir(w.dir)
    # the query as a store
    qs = w.p("q.fst")
    run(["import", w.p("q.h5"), qs, "--quiet"])
    out2 = w.p("m2.h5")
    js, _ = match(store, pairs, out2, "--query", qs)
    assert_same_output(out, out2)
    # a query name missing from the query
    bad = w.write("bad.txt", f"{dbn[0]} {dbn[1]}\n")
    r = run(["match", store, bad, "-o", w.p("m3.h5"), "--query", qs], expect=1)
    assert "(query)" in r.stderr, r.stderr


def case_int32(w):
    big = unit(8, 33000)
    imgs = {"small.jpg": big[:, 1000:1010].copy(), "big.jpg": big, "tiny.jpg": unit(8, 5)}
    write_features(w.p("f.h5"), imgs)
    store = w.p("db.fst")
    run(["import", w.p("f.h5"), store, "--quiet"])
    pairs = w.write("pairs.txt", "small.jpg big.jpg\nsmall.jpg tiny.jpg\n")
    out = w.p("m.h5")
    r = run(["match", store, pairs, "-o", out], expect=1)
    assert "'big.jpg' has 33000 keypoints" in r.stderr and "--matches-dtype int32" in r.stderr
    assert leftovers(w, out) == []
    js, _ = match(store, pairs, out, "--matches-dtype", "int32")
    feats = hloc_io.load_features(w.p("f.h5"))
    with h5py.File(out, "r") as f:
        m = f["small.jpg/big.jpg/matches0"]
        assert m.dtype == np.int32 and m[()].tolist() == list(range(1000, 1010)), m[()]
    check_against_hloc(out, feats, [("small.jpg", "tiny.jpg")], hloc_io.PRESETS["NN-mutual"])


def case_devices(w):
    """--device on any build and machine: CUDA built or not, GPU or not."""
    h5, store, feats, imgs = dataset(w, n_images=6, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    out = w.p("m.h5")
    built = "CUDA backend built" in run([], expect=2).stderr
    log("CUDA backend", "built" if built else "not built")
    # a malformed device string is a usage error, on any build (issue 10, 11b)
    r = run(["match", store, pairs, "-o", out, "--device", "cuda:x"], expect=2)
    assert "--device 'cuda:x': expected cpu, cuda, cuda:N" in r.stderr, r.stderr
    # no device: an error naming the problem, never a quiet CPU run
    r = run(["match", store, pairs, "-o", out, "--device", "cuda"], expect=1,
            env={"CUDA_VISIBLE_DEVICES": ""})
    assert "backend not available" in r.stderr, r.stderr
    assert ("no CUDA device found" if built else "built without") in r.stderr, r.stderr
    r = run(["match", store, pairs, "-o", out, "--device", "cuda:7"], expect=1,
            env={"CUDA_VISIBLE_DEVICES": "0"})
    assert "backend not available" in r.stderr, r.stderr
    assert not os.path.exists(out)
    # auto without a device: the CPU (said so when CUDA is built)
    r = run(["match", store, pairs, "-o", out, "--device", "auto", "--json"],
            env={"CUDA_VISIBLE_DEVICES": ""})
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["backend"] == "cpu" and js["pairs"] == len(expect), js
    assert ("no CUDA device found" in r.stderr) == built, r.stderr
    os.remove(out)
    if not built:
        return
    # a device named: a GPU worker bound to it, or (no GPU here) a clear failure
    # with --device cuda and a fallback to the CPU with auto
    r = run(["match", store, pairs, "-o", out, "--device", "cuda", "--json"], expect=None,
            env={"CUDA_VISIBLE_DEVICES": "0"})
    js = json.loads(r.stdout.strip().splitlines()[-1])
    if r.returncode == 0:
        assert js["backend"] == "cuda" and js["device"] == "cuda:0", js
        check_against_hloc(out, feats, expect, hloc_io.PRESETS["NN-mutual"])
        os.remove(out)
        log("a GPU is here: --device cuda checked against hloc's matcher")
    else:
        assert r.returncode == 1 and "worker 0 on GPU 0" in r.stderr, r.stderr
        assert not os.path.exists(out)
    r = run(["match", store, pairs, "-o", out, "--device", "auto", "--json"],
            env={"CUDA_VISIBLE_DEVICES": "0"})
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs"] == len(expect), js
    if js["backend"] == "cpu":
        assert "no usable CUDA device" in r.stderr, r.stderr
    check_against_hloc(out, feats, expect, hloc_io.PRESETS["NN-mutual"])


def case_fake_gpus(w):
    """The GPU plumbing without a GPU (FST_TEST_FAKE_CUDA: a "cuda" worker
    runs the CPU backend if its CUDA_VISIBLE_DEVICES is in the list): one
    device per worker, round robin, ids mapped through the caller's
    CUDA_VISIBLE_DEVICES, broken devices left out, auto's fallback."""
    h5, store, feats, imgs = dataset(w, n_images=8, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--device", "cpu")

    def fake(tag, visible, works, *args, expect_rc=0, delay=0):
        out, lg = w.p(f"m-{tag}.h5"), w.p(f"log-{tag}.txt")
        env = {"CUDA_VISIBLE_DEVICES": visible, "FST_TEST_FAKE_CUDA": works,
               "FST_TEST_MATCH_LOG": lg, "FST_TEST_PAIR_DELAY_MS": str(delay)}
        r = run(["match", store, pairs, "-o", out, "--json", *args], expect=expect_rc, env=env)
        js = json.loads(r.stdout.strip().splitlines()[-1])
        lines = log_lines(lg)
        ready = {l[1] for l in lines if l[0] == "#ready"}
        used = {l[2] for l in lines if len(l) == 3}
        assert used <= ready, (used, ready)
        return js, r, out, ready

    js, r, out, ids = fake("all", "0,1,2", "0,1,2", "--device", "cuda")
    assert js["backend"] == "cuda" and js["device"] == "cuda:0,1,2" and js["workers"] == 3, js
    assert ids == {"cuda=0", "cuda=1", "cuda=2"}, ids
    assert_same_output(out, ref)
    js, r, out, ids = fake("pick", "0,1,2", "0,1,2", "--device", "cuda:0,2",
                           "--workers-per-device", "2")
    assert js["workers"] == 4 and ids == {"cuda=0", "cuda=2"}, (js, ids)
    assert_same_output(out, ref)
    js, r, out, ids = fake("map", "5,7", "7", "--device", "cuda:1")   # index 1 of the caller's
    assert ids == {"cuda=7"} and js["device"] == "cuda:7", (js, ids)
    # (slowed down, so that the broken worker reports before the end)
    js, r, out, ids = fake("broken", "0,1", "0", "--device", "cuda", delay=25)
    assert ids == {"cuda=0"} and "cannot use GPU 1" in r.stderr, (ids, r.stderr)
    assert js["pairs"] == len(expect), js
    assert_same_output(out, ref)
    js, r, out, ids = fake("none", "0,1", "none", "--device", "cuda", expect_rc=1)
    assert "backend not available" in r.stderr and "on GPU" in r.stderr, r.stderr
    assert not os.path.exists(out)
    js, r, out, ids = fake("auto", "0,1", "none", "--device", "auto")
    assert js["backend"] == "cpu" and "no usable CUDA device" in r.stderr, (js, r.stderr)
    assert_same_output(out, ref)


def case_hloc_keys(w):
    """Pairs are never lost silently (issue 10, items 3, 4, 11g): names
    whose matches.h5 keys collide are refused before matching; a line of two
    names starting with '#' is a pair, as in hloc; a UTF-8 byte-order mark is
    removed and counted."""
    imgs = make_images(n_images=4, extra=False, prefix="img")
    a, b, c, d = sorted(imgs)
    imgs["x/y.jpg"], imgs["x-y.jpg"], imgs["#1.jpg"] = imgs[a], imgs[b], imgs[c]
    h5 = w.p("features.h5")
    write_features(h5, imgs)
    store = w.p("db.fst")
    run(["import", h5, store, "--quiet"])
    feats = hloc_io.load_features(h5)
    # 3. x/y.jpg and x-y.jpg both give the key "x-y.jpg/<d>": refused, both
    # pairs, both images and the key named, nothing written or journaled
    text = f"{a} {b}\nx/y.jpg {d}\n{a} {c}\nx-y.jpg {d}\n"
    pairs = w.write("collide.txt", text)
    out = w.p("m.h5")
    r = run(["match", store, pairs, "-o", out, "--workers", "1"], expect=1)
    for t in (f"(x/y.jpg, {d}) and (x-y.jpg, {d})", f"'x-y.jpg/{d}'",
              "images x/y.jpg and x-y.jpg", "1 colliding pair in all"):
        assert t in r.stderr, (t, r.stderr)
    assert not leftovers(w, out), leftovers(w, out)
    # ... in the other orientation, and as first and second name at once
    pairs = w.write("collide2.txt", f"{d} x/y.jpg\n{d} x-y.jpg\nx/y.jpg x/y.jpg\n"
                                    "x-y.jpg x-y.jpg\n")
    r = run(["match", store, pairs, "-o", out, "--workers", "1"], expect=1)
    assert f"'{d}/x-y.jpg'" in r.stderr and "2 colliding pairs in all" in r.stderr, r.stderr
    # hloc's de-duplication comes first: (x/y, d) and its reverse are one pair
    pairs = w.write("nocollide.txt", f"x/y.jpg {d}\n{d} x/y.jpg\nx-y.jpg {a}\n")
    js, _ = match(store, pairs, out, "--workers", "1")
    assert js["pairs"] == 2 and pair_keys(out) == {f"x-y.jpg/{d}", f"x-y.jpg/{a}"}, js
    os.unlink(out)
    # ... and pairs dropped by --skip-missing are not written, so cannot collide
    pairs = w.write("skipped.txt", f"x/y.jpg nosuch.jpg\nx-y.jpg nosuch.jpg\n{a} {b}\n")
    js, _ = match(store, pairs, out, "--workers", "1", "--skip-missing")
    assert js["pairs"] == 1 and js["pairs_missing"] == 2, js
    os.unlink(out)

    # 4. '#1.jpg b.jpg' is a pair (hloc: `q, r = p.split()`); '#' lines hloc
    # would refuse (one name, three or more) are comments
    text = (f"# retrieval pairs, top 2\n#\n#1.jpg {a}\n  #1.jpg\t{b}\n{a} #1.jpg\n"
            f"#{a} {b} {c}\n{c} {d}\n")
    pairs = w.write("hash.txt", text)
    expect = hloc_io.hloc_pairs(text)
    assert expect == [("#1.jpg", a), ("#1.jpg", b), (c, d)], expect
    js, _ = match(store, pairs, out, "--workers", "1")
    assert js["pairs"] == 3 and js["pairs_lines"] == 4 and js["pairs_bom"] == 0, js
    assert pair_keys(out) == {hloc_io.names_to_pair(x, y) for x, y in expect}, pair_keys(out)
    check_against_hloc(out, feats, expect, hloc_io.PRESETS["NN-mutual"])
    os.unlink(out)
    # a '#' line of two unknown names is a pair too: an error, never skipped
    pairs = w.write("hash2.txt", f"{a} {b}\n# nothing\n")
    r = run(["match", store, pairs, "-o", out, "--workers", "1"], expect=1)
    assert "'#', 'nothing'" in r.stderr and "are not in" in r.stderr, r.stderr
    assert "a line of two names is a pair even if it starts with '#'" in r.stderr, r.stderr

    # 11g. a UTF-8 byte-order mark before the first name: removed, said, counted
    text = f"\ufeff{a} {b}\n{b} {c}\n"
    pairs = w.write("bom.txt", text, mode="w")
    with open(pairs, "rb") as f:
        assert f.read(3) == b"\xef\xbb\xbf"
    r = run(["match", store, pairs, "-o", out, "--json", "--workers", "1"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs"] == 2 and js["pairs_bom"] == 1, js
    assert "removed the UTF-8 byte-order mark" in r.stderr, r.stderr
    assert pair_keys(out) == {hloc_io.names_to_pair(a, b), hloc_io.names_to_pair(b, c)}


def case_output_paths(w):
    """-o through a symbolic link writes where it points; -o naming a
    features file is refused (issue 10, item 10)."""
    h5, store, feats, imgs = dataset(w, n_images=5, extra=False)
    n = sorted(imgs)
    text = f"{n[0]} {n[1]}\n{n[1]} {n[2]}\n{n[2]} {n[3]}\n"
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--workers", "1")
    # a link, relative, to a file in another folder that does not exist yet
    os.mkdir(w.p("real"))
    link = w.p("link.h5")
    os.symlink(os.path.join("real", "m.h5"), link)
    js, _ = match(store, pairs, link, "--workers", "1")
    assert os.path.islink(link) and os.readlink(link) == os.path.join("real", "m.h5")
    assert js["pairs"] == 3 and os.path.isfile(w.p("real", "m.h5")), js
    assert_same_output(w.p("real", "m.h5"), ref)
    # again, through a link to the link, with new pairs: the target is updated
    link2 = w.p("link2.h5")
    os.symlink("link.h5", link2)
    pairs2 = w.write("pairs2.txt", text + f"{n[3]} {n[4]}\n")
    js, _ = match(store, pairs2, link2, "--workers", "1")
    assert js["pairs"] == 1 and js["pairs_existing"] == 3, js
    assert os.path.islink(link) and os.path.islink(link2)
    assert len(pair_keys(w.p("real", "m.h5"))) == 4
    # interrupted: the journal is beside the target, and the same command resumes
    os.unlink(w.p("real", "m.h5"))
    logp = w.p("log.txt")
    p = start(["match", store, pairs2, "-o", link2, "--workers", "1", "--batch", "1"],
              slow_env(logp, ms=300))
    wait_lines(logp, 1, p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    assert os.path.exists(w.p("real", "m.h5.journal")), os.listdir(w.p("real"))
    assert not os.path.exists(w.p("link2.h5.journal")) and not os.path.exists(w.p("link.h5.journal"))
    js, _ = match(store, pairs2, link2, "--workers", "1")
    assert js["pairs_resumed"] >= 1 and os.path.islink(link2), js
    assert sorted(os.listdir(w.p("real"))) == ["m.h5"], os.listdir(w.p("real"))
    assert len(pair_keys(w.p("real", "m.h5"))) == 4

    # a features file as the output: refused, naming a group, left unchanged
    with open(h5, "rb") as f:
        before = f.read()
    for extra in ([], ["--overwrite"]):
        r = run(["match", store, pairs, "-o", h5, "--workers", "1", *extra], expect=1)
        assert "holds hloc features" in r.stderr and f"/{n[0]}/descriptors" in r.stderr, r.stderr
        with open(h5, "rb") as f:
            assert f.read() == before
        assert leftovers(w, h5) == ["features.h5"], leftovers(w, h5)
    # nested image names: features deeper in the file are found too
    nested = w.p("nested.h5")
    write_features(nested, {"db/seq/a.jpg": unit(48, 30)})
    r = run(["match", store, pairs, "-o", nested, "--workers", "1"], expect=1)
    assert "(/db/seq/a.jpg/" in r.stderr, r.stderr


def case_messages(w):
    """Messages that say what is wrong (issue 10, item 11): malformed device
    strings are usage errors; unknown --backend-params keys are refused
    before any worker or journal; settings print as written."""
    h5, store, feats, imgs = dataset(w, n_images=4, extra=False)
    n = sorted(imgs)
    pairs = w.write("pairs.txt", f"{n[0]} {n[1]}\n{n[1]} {n[2]}\n{n[2]} {n[3]}\n")
    out = w.p("m.h5")
    # 11b
    for dev in ["", "cuda:", "cuda:-1", "cuda:0,", "cuda:,1", "cuda:1x", "cuda:+1", "gpu",
                "cuda0", " cuda"]:
        r = run(["match", store, pairs, "-o", out, "--device", dev], expect=2)
        assert f"--device '{dev}': expected cpu, cuda, cuda:N" in r.stderr, (dev, r.stderr)
        assert "usage: featstore match" in r.stderr, r.stderr
        assert not leftovers(w, out), (dev, leftovers(w, out))
    # 11d: refused before workers start, no journal left
    for prm, key in [("thread=2", "thread"), ("threads=1,cache_mb=4", "cache_mb")]:
        r = run(["match", store, pairs, "-o", out, "--device", "cpu", "--backend-params", prm],
                expect=1)
        assert f"unknown parameter '{key}' (known: threads, isa)" in r.stderr, r.stderr
        assert "worker" not in r.stderr, r.stderr
        assert not leftovers(w, out), leftovers(w, out)
    r = run(["match", store, pairs, "-o", out, "--device", "cpu", "--backend-params", "oops"],
            expect=1)
    assert "malformed parameter 'oops'" in r.stderr and not leftovers(w, out), r.stderr
    js, _ = match(store, pairs, out, "--device", "cpu", "--backend-params", "threads=2,isa=auto")
    assert js["pairs"] == 3, js
    os.unlink(out)
    # 11c: an interrupted run's settings, compared with the new ones
    logp = w.p("log.txt")
    pairs = w.write("all.txt", "".join(f"{x} {y}\n" for x in n for y in n if x < y))
    p = start(["match", store, pairs, "-o", out, "--workers", "1", "--batch", "1",
               "--ratio-threshold", "0.8", "--distance-threshold", "0.7"], slow_env(logp, ms=300))
    wait_lines(logp, 1, p)
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
    assert os.path.exists(out + ".journal"), (p.returncode, p.stderr.read())
    r = run(["match", store, pairs, "-o", out, "--workers", "1", "--ratio-threshold", "0.9",
             "--distance-threshold", "0.7"], expect=1)
    assert "ratio_threshold was '0.8', now '0.9'" in r.stderr, r.stderr
    r = run(["match", store, pairs, "-o", out, "--workers", "1", "--ratio-threshold", "0.8",
             "--distance-threshold", "0.1"], expect=1)
    assert "distance_threshold was '0.7', now '0.1'" in r.stderr, r.stderr
    assert "0000000" not in r.stderr, r.stderr


def info(store):
    return json.loads(run(["info", store, "--json"]).stdout)


def interrupt(store, pairs, out, lg, *extra, n=4, ms=15, kill9=False):
    """A run stopped by SIGINT (or kill -9) once n pairs are matched: its
    journal stays."""
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--quiet", "--json", *extra],
              slow_env(lg, ms=ms))
    wait_lines(lg, n, p)
    if kill9:
        time.sleep(0.4)                        # the journal commits every 250 ms
        kids = caselib.children(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.communicate()
        t0 = time.time()
        while not all(gone(k) for k in kids):
            assert time.time() - t0 < 10, f"workers {kids} outlived the coordinator"
            time.sleep(0.02)
        assert not os.path.exists(out) and os.path.exists(out + ".journal")
        return None
    p.send_signal(signal.SIGINT)
    stdout, err = p.communicate(timeout=60)
    clean(err, "interrupt")
    assert p.returncode == 130, (p.returncode, err)
    assert not os.path.exists(out) and os.path.exists(out + ".journal")
    return json.loads(stdout.strip().splitlines()[-1])


def rm(*paths):
    for p in paths:
        if os.path.exists(p):
            os.remove(p)


def twin_stores(w, a, b, sa, sb):
    """Import a and b (same names and counts, other content) into sa and sb
    within one second: what the journal used to identify a store by."""
    for _ in range(10):
        rm(sa, sa + "-lock", sb, sb + "-lock")
        while time.time() % 1 > 0.4:
            time.sleep(0.02)
        run(["import", a, sa, "--quiet"])
        run(["import", b, sb, "--quiet"])
        ia, ib = info(sa), info(sb)
        if (ia["created"], ia["modified"]) == (ib["created"], ib["modified"]):
            return ia, ib
    # a loaded machine: the ids must tell them apart all the same
    log("note: could not import twice within one second; going on")
    return ia, ib


def case_store_identity(w):
    """Issue 10, item 1: a store replaced by another import at the same path
    (same counts and sizes, within one second) is another store: its
    journaled pairs are refused, naming both ids; an append keeps the id and
    the journaled pairs."""
    imgs = make_images(n_images=10, extra=False)
    flipped = {n: np.flip(d, 1).copy() for n, d in imgs.items()}   # same shapes, other matches
    write_features(w.p("a.h5"), imgs)
    write_features(w.p("b.h5"), flipped)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 4))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    t, t2 = w.p("t.fst"), w.p("t2.fst")
    ia, ib = twin_stores(w, w.p("a.h5"), w.p("b.h5"), t, t2)
    for k in ("images", "keypoints", "payload_bytes", "d", "dtype"):
        assert ia[k] == ib[k], (k, ia, ib)
    refb = w.p("refb.h5")
    match(t2, pairs, refb)
    out = w.p("m.h5")
    interrupt(t, pairs, out, w.p("log1.txt"), ms=80, kill9=True)
    os.replace(t2, t)                      # t.fst is now b.h5's store
    rm(t2 + "-lock")
    r = run(["match", t, pairs, "-o", out, "--json"], expect=1)
    for i in (ia, ib):
        assert len(i["store_id"]) == 32 and int(i["store_id"], 16) > 0, i
        assert i["generation"] == 1 and i["format_version"] == "1.1", i
        assert i["identity"] == "id=" + i["store_id"], i
    assert ia["store_id"] != ib["store_id"]
    txt = run(["info", t]).stdout
    assert f"id           {ib['store_id']}, generation 1\n" in txt, txt
    assert "another store" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert f"id={ia['store_id']} generation=1" in r.stderr, r.stderr
    assert f"id={ib['store_id']} generation=1" in r.stderr, r.stderr
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["status"] == "error" and js["pairs_resumed"] == 0, js
    assert not os.path.exists(out) and os.path.exists(out + ".journal")
    r = run(["match", t, pairs, "-o", out, "--overwrite", "--json"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert "note: discarding" in r.stderr and "another store" in r.stderr, r.stderr
    assert js["pairs_resumed"] == 0 and js["pairs"] == len(expect), js
    with open(out, "rb") as x, open(refb, "rb") as y:
        assert x.read() == y.read(), "not the fresh run's output on the new store"

    # an append keeps the id and advances the generation; the journaled
    # pairs stay valid (an append never changes a stored image)
    c = w.p("c.fst")
    run(["import", w.p("a.h5"), c, "--quiet"])
    ic = info(c)
    out2 = w.p("m2.h5")
    interrupt(c, pairs, out2, w.p("log2.txt"))
    write_features(w.p("x.h5"), {"new.jpg": unit(48, 50)})
    run(["import", w.p("x.h5"), c, "--append", "--quiet"])
    ic2 = info(c)
    assert ic2["store_id"] == ic["store_id"] and ic2["generation"] == 2, (ic, ic2)
    assert ic2["images"] == ic["images"] + 1
    r = run(["match", c, pairs, "-o", out2, "--json"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs_resumed"] >= 4 and js["pairs_resumed"] + js["pairs"] == len(expect), js
    assert "appended to" in r.stderr and "generation=1" in r.stderr, r.stderr
    assert "generation=2" in r.stderr, r.stderr
    refc = w.p("refc.h5")
    match(c, pairs, refc)
    with open(out2, "rb") as x, open(refc, "rb") as y:
        assert x.read() == y.read()

    # a byte copy has the id; two copies appended to separately are two
    # stores: the same generation, or a later one, refused all the same
    d = w.p("d.fst")
    shutil.copy(c, d)
    assert info(d)["store_id"] == ic["store_id"]
    write_features(w.p("x2.h5"), {"new2.jpg": unit(48, 50)})
    write_features(w.p("y2.h5"), {"new2.jpg": unit(48, 50)})   # the name, other content
    write_features(w.p("z.h5"), {"other.jpg": unit(48, 50)})
    run(["import", w.p("x2.h5"), c, "--append", "--quiet"])
    run(["import", w.p("y2.h5"), d, "--append", "--quiet"])
    assert info(c)["generation"] == info(d)["generation"] == 3
    pairs_new = w.write("pairs-new.txt", text + "".join(f"new2.jpg {n}\n" for n in names))
    for extra_append in (False, True):
        out5 = w.p(f"m5-{extra_append}.h5")
        rm(out5 + ".journal")
        interrupt(c, pairs_new, out5, w.p(f"log5-{extra_append}.txt"))
        shutil.copy(d, w.p("d2.fst"))
        if extra_append:
            run(["import", w.p("z.h5"), w.p("d2.fst"), "--append", "--quiet"])
        r = run(["match", w.p("d2.fst"), pairs_new, "-o", out5], expect=1)
        assert "another store (another copy of it, appended to separately)" in r.stderr, r.stderr
        rm(w.p("d2.fst"), w.p("d2.fst-lock"))

    # the query: a store replaced the same way, and a features.h5 rewritten
    # with the same size and modification time
    db = w.p("db.fst")
    run(["import", w.p("a.h5"), db, "--quiet"])
    qa, qb = w.p("qa.fst"), w.p("qb.fst")
    twin_stores(w, w.p("a.h5"), w.p("b.h5"), qa, qb)
    out3 = w.p("m3.h5")
    interrupt(db, pairs, out3, w.p("log3.txt"), "--query", qa)
    os.replace(qb, qa)
    rm(qb + "-lock")
    r = run(["match", db, pairs, "-o", out3, "--query", qa], expect=1)
    assert "another query" in r.stderr, r.stderr
    q5 = w.p("q.h5")
    shutil.copy(w.p("a.h5"), q5)
    out4 = w.p("m4.h5")
    interrupt(db, pairs, out4, w.p("log4.txt"), "--query", q5)
    st = os.stat(q5)
    shutil.copy(w.p("b.h5"), q5)
    assert os.stat(q5).st_size == st.st_size
    os.utime(q5, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(["match", db, pairs, "-o", out4, "--query", q5], expect=1)
    assert "another query" in r.stderr and "h5=" in r.stderr, r.stderr


def case_pairs_changed(w):
    """Issue 10, item 9: the pairs file edited after an interruption. The
    journaled pairs the new list has are reused (by name), the others
    discarded and counted; the output is the new list's, byte for byte a
    fresh run's."""
    h5, store, feats, imgs = dataset(w, n_images=12, extra=False)
    names = sorted(imgs)
    old = hloc_io.hloc_pairs(pairs_text(names, extra=False, step=(1, 2, 3, 4, 5)))
    pairs = w.write("pairs.txt", "".join(f"{a} {b}\n" for a, b in old))
    out = w.p("m.h5")
    lg = w.p("log.txt")
    js1 = interrupt(store, pairs, out, lg, n=6)
    done1 = set(log_lines(lg))           # a graceful stop journals every pair matched
    assert len(done1) == js1["pairs"] >= 6, (len(done1), js1)
    # the new list: every other old pair, one of them reversed, new pairs,
    # in another order
    keep = old[::2]
    rev = keep[0]
    new = [(rev[1], rev[0])] + keep[1:][::-1] + [(names[0], names[7]), (names[1], names[9])]
    text = "".join(f"{a} {b}\n" for a, b in new)
    w.write("pairs.txt", text)
    expect = hloc_io.hloc_pairs(text)
    ref = w.p("ref.h5")
    match(store, w.write("fresh.txt", text), ref)
    lg2 = w.p("log2.txt")
    r = run(["match", store, pairs, "-o", out, "--json", "--workers", "2"],
            env={"FST_TEST_MATCH_LOG": lg2})
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs_resumed"] == len(done1 & set(expect)) >= 1, (js, done1)
    assert js["journal_stale"] == len(done1 - set(expect)) >= 1, (js, done1)
    assert js["status"] == "ok" and js["pairs_resumed"] >= 1, js
    assert js["pairs_resumed"] + js["pairs"] == len(expect), js
    matched = set(log_lines(lg2))
    assert len(matched) == js["pairs"] == js["pairs_matched"], (matched, js)
    # the reversed pair is matched again: its matches0 is the other image's
    assert (rev[1], rev[0]) in matched, matched
    assert js["pairs_written"] == len(expect), js
    assert f"{js['journal_stale']} journaled pair" in r.stderr and "discarded" in r.stderr, r.stderr
    assert pair_keys(out) == {hloc_io.names_to_pair(a, b) for a, b in expect}
    with open(out, "rb") as x, open(ref, "rb") as y:
        assert x.read() == y.read(), "not byte-identical to a fresh run of the new list"
    assert not os.path.exists(out + ".journal")


def matches_in(path):
    n = 0
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            nonlocal n
            if isinstance(obj, h5py.Group) and "matches0" in obj:
                n += int((obj["matches0"][()] > -1).sum())
        f.visititems(visit)
    return n


def case_counts(w):
    """Issue 10, item 5: every count of the summary (--json and text) against
    the run it describes."""
    h5, store, feats, imgs = dataset(w, n_images=6, extra=False)
    a, b, c, d, e, f = sorted(imgs)
    text = (f"{a} {b}\n{a} {b}\n{b} {a}\n{a} {c}\n{c} {c}\n{a} nope.jpg\nnope.jpg {b}\n"
            f"zz.jpg qq.jpg\n{d} {e}\n{e} {d}\n{d} {f}\n")
    pairs = w.write("pairs.txt", text)
    expect = hloc_io.hloc_pairs(text)
    assert len(expect) == 8
    lines = {"pairs_missing": 3, "names_missing": 3, "pairs_lines": 11, "pairs_unique": 8,
             "pairs_duplicates": 1, "pairs_reversed": 2, "pairs_self": 1}

    def check(js, **want):
        for k, v in {**lines, **want}.items():
            assert js[k] == v, (k, js[k], v, js)

    out = w.p("m.h5")
    # missing names refused: the counts still say what the run found
    js, r = match(store, pairs, out, expect=1)
    check(js, pairs=0, pairs_todo=0, pairs_matched=0, pairs_failed=0, pairs_written=0,
          pairs_existing=0, pairs_resumed=0, journal_stale=0, matches=0)
    assert js["status"] == "error" and "3 images named" in js["error"], js
    # --skip-missing, one pair failing: 5 to match, 4 matched, 1 failed
    crash = {"FST_TEST_CRASH_PAIR": f"{d} {f}"}
    js, r = match(store, pairs, out, "--skip-missing", "--workers", "2", expect=1, env=crash)
    check(js, pairs=4, pairs_todo=5, pairs_matched=4, pairs_failed=1, pairs_written=4,
          pairs_existing=0, pairs_resumed=0, journal_stale=0, matches=matches_in(out))
    assert js["status"] == "failed_pairs" and len(js["failures"]) == 1, js
    assert len(pair_keys(out)) == 4
    # again, text summary: the failed pair only; 4 already in the output
    r = run(["match", store, pairs, "-o", out, "--skip-missing", "--json"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    check(js, pairs=1, pairs_todo=1, pairs_matched=1, pairs_failed=0, pairs_written=1,
          pairs_existing=4, pairs_resumed=0, journal_stale=0)
    assert js["matches"] == hloc_io.get_matches(out, d, f)[0].shape[0], js
    summary = r.stderr
    assert (f"1 pair matched, {js['matches']} match" in summary and
            "(4 already in the output, 3 skipped: unknown images)" in summary), summary
    assert ("pairs file: 11 lines, 8 unique pairs, 1 duplicate dropped, 2 reversed dropped, "
            "1 self pair\n" in summary), summary
    assert "wrote " + out + " (1 pair from the run and journal)" in summary, summary
    assert len(pair_keys(out)) == 5
    # an interrupted run, resumed: resumed + matched = the pairs, all written
    out2 = w.p("m2.h5")
    js1 = interrupt(store, pairs, out2, w.p("log.txt"), "--skip-missing", "--workers", "1",
                    n=1, ms=400)
    assert 1 <= js1["pairs"] < 5, js1
    r = run(["match", store, pairs, "-o", out2, "--skip-missing", "--json"])
    js = json.loads(r.stdout.strip().splitlines()[-1])
    check(js, pairs=5 - js1["pairs"], pairs_todo=5 - js1["pairs"],
          pairs_matched=5 - js1["pairs"], pairs_resumed=js1["pairs"], pairs_failed=0,
          pairs_written=5, pairs_existing=0, journal_stale=0)
    assert f"{js1['pairs']} resumed from the journal" in r.stderr, r.stderr
    assert_same_output(out2, out)
def corrupt_store(store, desc, at=None, new=b"\x00\x7c\x00\x7c"):
    """Overwrite 4 bytes inside the descriptor block `desc` (N x D float16,
    as the store holds it) of a store file, found by its bytes. Returns the
    old bytes and where they were, to put them back."""
    blob = desc.astype(np.float16).tobytes()
    with open(store, "r+b") as f:
        data = f.read()
        off = data.find(blob)
        assert off >= 0 and data.find(blob, off + 1) < 0, "descriptor block not found once"
        off += len(blob) // 2 & ~3 if at is None else at
        old = data[off:off + 4]
        assert old != new
        f.seek(off)
        f.write(new)
    return off, old


def put_back(store, off, old):
    with open(store, "r+b") as f:
        f.seek(off)
        f.write(old)


def case_corrupt_record(w):
    h5, store, feats, imgs = dataset(w, n_images=10, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    bad = names[4]
    nbad = sum(bad in p for p in expect)
    assert 0 < nbad < len(expect)
    off, old = corrupt_store(store, imgs[bad].T)
    r = run(["verify", store], expect=1)
    assert bad in r.stdout + r.stderr, r
    # the corrupt image's pairs fail by name; the others are matched and written
    out = w.p("m.h5")
    js, r = match(store, pairs, out, "--workers", "2", expect=1)
    assert js["status"] == "failed_pairs" and js["verify"] is True, js
    assert js["pairs_failed"] == nbad and js["pairs"] == len(expect) - nbad, js
    for f in js["failures"]:
        assert bad in (f["name0"], f["name1"]) and f["status"] == "ECORRUPT", f
        assert store in f["detail"] and f"image '{bad}'" in f["detail"], f
        assert "checksum" in f["detail"], f
    assert f"image '{bad}'" in r.stderr and store in r.stderr, r.stderr
    keys = pair_keys(out)
    good = [p for p in expect if bad not in p]
    assert keys == {hloc_io.names_to_pair(*p) for p in good}, keys
    cref, cout = h5_content(ref), h5_content(out)
    for k in cout:
        assert cout[k] == cref[k], k
    assert not os.path.exists(out + ".journal")
    # the same command retries only the failed pairs (still corrupt: same end)
    js, _ = match(store, pairs, out, expect=1)
    assert js["pairs_todo"] == nbad and js["pairs_existing"] == len(expect) - nbad, js
    assert js["pairs_failed"] == nbad and js["pairs"] == 0, js
    # --no-verify: matched as it is, and the summary says so
    nv = w.p("nv.h5")
    js, _ = match(store, pairs, nv, "--no-verify")
    assert js["status"] == "ok" and js["verify"] is False, js
    r = run(["match", store, pairs, "-o", w.p("nv2.h5"), "--no-verify"])
    assert "checksums not verified (--no-verify)" in r.stdout, r.stdout
    # repaired: the re-run matches just those pairs; the file is the clean one
    put_back(store, off, old)
    run(["verify", store])
    js, _ = match(store, pairs, out)
    assert js["pairs"] == nbad and js["pairs_failed"] == 0, js
    assert_same_output(out, ref)


def finish(p, timeout):
    """communicate(), or kill the run's process group and fail (a hang)."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for k in caselib.children(p.pid):
            os.kill(k, signal.SIGKILL)
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"the run did not end within {timeout} s: {err[-2000:]}")


def case_stall(w):
    h5, store, feats, imgs = dataset(w, n_images=12, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 4, 5))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--workers", "1")
    out = w.p("m.h5")
    lg = w.p("log.txt")
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json", "--quiet",
               "--stall-timeout", "2"], slow_env(lg, ms=40))
    wait_lines(lg, 6, p)
    kids = caselib.children(p.pid)
    assert len(kids) == 2, kids
    t0 = time.time()
    os.kill(kids[0], signal.SIGSTOP)
    stdout, stderr = finish(p, 60)
    took = time.time() - t0
    clean(stderr, "stall")
    assert p.returncode == 0, (p.returncode, stderr)
    js = json.loads(stdout.strip().splitlines()[-1])
    assert js["worker_stalls"] >= 1 and js["worker_restarts"] >= 1, js
    assert js["pairs"] == len(expect) and js["pairs_failed"] == 0, js
    assert f"(pid {kids[0]}) made no progress for" in stderr, stderr
    assert "killing it (SIGKILL)" in stderr and "back to the queue" in stderr, stderr
    assert took < 30, took
    assert gone(kids[0])
    assert_same_output(out, ref)
    assert leftovers(w, out) == ["m.h5"]
    for bad in ("0", "-1", "x", "1e9"):
        r = run(["match", store, pairs, "-o", w.p("u.h5"), "--stall-timeout", bad], expect=2)
        assert "--stall-timeout" in r.stderr, r.stderr


def case_hang_pair(w):
    h5, store, feats, imgs = dataset(w, n_images=10, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    bad = expect[len(expect) // 2]
    out = w.p("m.h5")
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json",
               "--stall-timeout", "1"], {"FST_TEST_HANG_PAIR": f"{bad[0]} {bad[1]}"})
    stdout, stderr = finish(p, 90)
    clean(stderr, "hang_pair")
    assert p.returncode == 1, (p.returncode, stderr)
    js = json.loads(stdout.strip().splitlines()[-1])
    # one stall is not enough to blame a pair: it takes four, alone
    assert js["worker_stalls"] >= 4, js
    assert js["status"] == "failed_pairs" and js["pairs_failed"] == 1, js
    f = js["failures"][0]
    assert (f["name0"], f["name1"]) == bad and f["status"] == "ECHILD", f
    assert "isolated" in f["detail"] and "stalled" in f["detail"], f
    assert js["pairs"] == len(expect) - 1 and js["output_written"], js
    assert stderr.count("made no progress") == js["worker_stalls"], stderr
    # the same command without the hook: only that pair is matched
    js, _ = match(store, pairs, out)
    assert js["pairs"] == 1 and js["pairs_existing"] == len(expect) - 1, js
    assert_same_output(out, ref)


def case_stop_stalled(w):
    h5, store, feats, imgs = dataset(w, n_images=12, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 4, 5))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    out = w.p("m.h5")
    lg = w.p("log.txt")
    # the default stall limit (60 s) stays out of the way: the stop's own
    # deadline (10 s) ends this run
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json"],
              slow_env(lg, ms=40))
    wait_lines(lg, 6, p)
    time.sleep(0.3)                    # a journal commit (250 ms) holds some pairs
    kids = caselib.children(p.pid)
    assert len(kids) == 2, kids
    for k in kids:
        os.kill(k, signal.SIGSTOP)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    stdout, stderr = finish(p, 40)
    took = time.time() - t0
    clean(stderr, "stop_stalled")
    assert p.returncode == 143, (p.returncode, stderr)
    assert took < 10 + 8, took
    assert "for at most 10 s" in stderr and "did not finish within 10 s" in stderr, stderr
    js = json.loads(stdout.strip().splitlines()[-1])
    assert js["status"] == "interrupted" and js["signal"] == signal.SIGTERM, js
    assert 0 < js["pairs"] < len(expect), js
    t1 = time.time()
    while not all(gone(k) for k in kids):
        assert time.time() - t1 < 10, f"workers {kids} outlived the run"
        time.sleep(0.02)
    assert not os.path.exists(out) and os.path.exists(out + ".journal")
    js2, _ = match(store, pairs, out)
    assert js2["pairs_resumed"] == js["pairs"], (js, js2)
    assert js2["pairs_resumed"] + js2["pairs"] == len(expect), js2
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read(), "resumed output not byte-identical"
    assert leftovers(w, out) == ["m.h5"]


def stopped_child(pid, timeout=60):
    """Wait for a child of `pid` in state T (stopped); its pid."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for k in caselib.children(pid, live_only=True):
            try:
                with open(f"/proc/{k}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if st[st.rindex(")") + 2] == "T":
                return k
        time.sleep(0.02)
    raise AssertionError(f"no stopped child of {pid} after {timeout} s")


def case_writer_stall(w):
    h5, store, feats, imgs = dataset(w, n_images=10, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False)
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    ref = w.p("ref.h5")
    match(store, pairs, ref)
    hook = {"FST_TEST_WRITER_STOP": "1"}
    # a stalled writer is killed after the stall limit: exit 1, journal kept
    out = w.p("m.h5")
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json",
               "--stall-timeout", "2"], hook)
    kid = stopped_child(p.pid)
    t0 = time.time()
    stdout, stderr = finish(p, 60)
    took = time.time() - t0
    clean(stderr, "writer_stall")
    assert p.returncode == 1, (p.returncode, stderr)
    assert took < 2 + 8, took
    assert f"writing {out} (pid {kid}) made no progress" in stderr, stderr
    assert "run the same command again" in stderr, stderr
    js = json.loads(stdout.strip().splitlines()[-1])
    assert js["pairs"] == len(expect) and not js["output_written"], js
    assert gone(kid)
    assert leftovers(w, out) == ["m.h5.journal", "m.h5.journal-lock"], leftovers(w, out)
    js, _ = match(store, pairs, out)
    assert js["pairs_resumed"] == len(expect) and js["pairs"] == 0, js
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read(), "output not byte-identical"
    assert leftovers(w, out) == ["m.h5"]
    # SIGTERM while the writer is stopped: exit 143 within the stop deadline
    out = w.p("m2.h5")
    p = start(["match", store, pairs, "-o", out, "--workers", "2", "--json"], hook)
    kid = stopped_child(p.pid)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    stdout, stderr = finish(p, 60)
    took = time.time() - t0
    clean(stderr, "writer_stall")
    assert p.returncode == 143, (p.returncode, stderr)
    assert took < 10 + 8, took
    assert "did not stop within 10 s" in stderr, stderr
    js = json.loads(stdout.strip().splitlines()[-1])
    assert js["status"] == "interrupted" and js["signal"] == signal.SIGTERM, js
    assert gone(kid)
    assert leftovers(w, out) == ["m2.h5.journal", "m2.h5.journal-lock"], leftovers(w, out)
    js, _ = match(store, pairs, out)
    assert js["pairs_resumed"] == len(expect), js
    with open(out, "rb") as a, open(ref, "rb") as b:
        assert a.read() == b.read(), "resumed output not byte-identical"


NO_SLURM = {k: "" for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                            "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "SLURM_PROCID",
                            "SLURM_STEP_NUM_TASKS")}


def slurm_env(**kv):
    """The environment without Slurm's variables, plus kv."""
    e = {k: v for k, v in os.environ.items() if k not in NO_SLURM}
    e.update({k: str(v) for k, v in kv.items()})
    return e


def run_clean_env(args, env, expect=0):
    r = subprocess.run([FST] + args, capture_output=True, text=True, env=env, timeout=120)
    clean(r.stderr, args)
    assert r.returncode == expect, (args, r.returncode, r.stdout, r.stderr)
    return r


def shard_dataset(w, n_images=16):
    h5, store, feats, imgs = dataset(w, n_images=n_images, extra=False)
    names = sorted(imgs)
    text = pairs_text(names, extra=False, step=(1, 2, 3, 5))
    return store, w.write("pairs.txt", text), hloc_io.hloc_pairs(text), feats


def case_shard(w):
    """--shard K/N matches part K of the list (hloc's order, a first
    image's pairs in one part); without it Slurm's array or srun variables
    name the part; the summary and --json say which and from where."""
    store, pairs, expect, _ = shard_dataset(w)
    parts = []
    for k in range(3):
        out = w.p(f"part{k}.h5")
        r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1",
                           "--shard", f"{k}/3"], slurm_env())
        js = json.loads(r.stdout.strip().splitlines()[-1])
        assert js["shard"] == {"index": k, "count": 3, "source": "--shard",
                               "pairs": js["pairs"]}, js
        assert js["pairs_unique"] == len(expect), js
        assert f"shard {k}/3 (from --shard): {js['pairs']} of the {len(expect)} unique pairs" \
            in r.stderr, r.stderr
        keys = pair_keys(out)
        assert len(keys) == js["pairs"] > 0, (keys, js)
        parts.append(keys)
        with h5py.File(out, "r") as f:
            assert f.attrs["featstore_shard"] == f"{k}/3", dict(f.attrs)
            assert f.attrs["featstore_shard_pairs"] == str(js["pairs"]), dict(f.attrs)
    # disjoint, complete, in hloc's order: part k is the next run of the list
    want = [hloc_io.names_to_pair(a, b) for a, b in expect]
    assert set().union(*parts) == set(want) and sum(map(len, parts)) == len(want)
    pos = 0
    for keys in parts:
        assert set(want[pos:pos + len(keys)]) == keys
        pos += len(keys)
    firsts = [{k.split("/")[0] for k in keys} for keys in parts]
    assert not (firsts[0] & firsts[1]) and not (firsts[1] & firsts[2]), firsts

    # Slurm: array task 1 of --array=4-6 is shard 1/3 (the same part)
    out = w.p("env.h5")
    r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1"],
                      slurm_env(SLURM_ARRAY_TASK_ID=5, SLURM_ARRAY_TASK_MIN=4,
                                SLURM_ARRAY_TASK_MAX=6, SLURM_ARRAY_TASK_COUNT=3))
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["shard"]["index"] == 1 and js["shard"]["source"] == "SLURM_ARRAY_TASK_ID", js
    assert "(from SLURM_ARRAY_TASK_ID)" in r.stderr and pair_keys(out) == parts[1], r.stderr
    os.unlink(out)
    # a stepped array (--array=0-8:4, tasks 0 4 8): task 8 is the last of 3
    r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1"],
                      slurm_env(SLURM_ARRAY_TASK_ID=8, SLURM_ARRAY_TASK_MIN=0,
                                SLURM_ARRAY_TASK_MAX=8, SLURM_ARRAY_TASK_STEP=4,
                                SLURM_ARRAY_TASK_COUNT=3))
    assert pair_keys(out) == parts[2], r.stderr
    os.unlink(out)
    # srun tasks: SLURM_PROCID of SLURM_STEP_NUM_TASKS
    r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1"],
                      slurm_env(SLURM_PROCID=0, SLURM_STEP_NUM_TASKS=3, SLURM_NTASKS=3))
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["shard"]["source"] == "SLURM_PROCID" and pair_keys(out) == parts[0], js
    os.unlink(out)
    # a batch script's own environment (one task, no step) is no shard
    r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1"],
                      slurm_env(SLURM_PROCID=0, SLURM_NTASKS=4))
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["shard"] is None and js["pairs"] == len(expect), js
    with h5py.File(out, "r") as f:
        assert not any(a.startswith("featstore_") for a in f.attrs), dict(f.attrs)
    os.unlink(out)
    # --shard wins over the environment; --shard all is the whole list
    r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1", "--shard",
                       "2/3"], slurm_env(SLURM_ARRAY_TASK_ID=0, SLURM_ARRAY_TASK_MIN=0,
                                         SLURM_ARRAY_TASK_COUNT=3, SLURM_ARRAY_TASK_MAX=2))
    assert pair_keys(out) == parts[2], r.stderr
    os.unlink(out)
    r = run_clean_env(["match", store, pairs, "-o", out, "--json", "--workers", "1", "--shard",
                       "all"], slurm_env(SLURM_ARRAY_TASK_ID=0, SLURM_ARRAY_TASK_MIN=0,
                                         SLURM_ARRAY_TASK_COUNT=3, SLURM_ARRAY_TASK_MAX=2))
    assert len(pair_keys(out)) == len(expect) and json.loads(r.stdout.splitlines()[-1])["shard"] is None
    os.unlink(out)
    # an array of one task (a task resubmitted alone) cannot know N: refused
    r = run_clean_env(["match", store, pairs, "-o", out, "--workers", "1"],
                      slurm_env(SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_MIN=2,
                                SLURM_ARRAY_TASK_MAX=2, SLURM_ARRAY_TASK_COUNT=1), expect=1)
    assert "an array of one task" in r.stderr and "--shard K/N" in r.stderr, r.stderr
    # indices that are no even range (--array=1,2,7)
    r = run_clean_env(["match", store, pairs, "-o", out, "--workers", "1"],
                      slurm_env(SLURM_ARRAY_TASK_ID=7, SLURM_ARRAY_TASK_MIN=1,
                                SLURM_ARRAY_TASK_MAX=7, SLURM_ARRAY_TASK_COUNT=3), expect=1)
    assert "not one evenly spaced range" in r.stderr, r.stderr
    assert not leftovers(w, out), leftovers(w, out)
    # a part run again: its pairs are kept (a part of this very run) ...
    part1 = w.p("part1.h5")
    with open(part1, "rb") as f:
        before = f.read()
    r = run_clean_env(["match", store, pairs, "-o", part1, "--json", "--workers", "1",
                       "--shard", "1/3"], slurm_env())
    js = json.loads(r.stdout.strip().splitlines()[-1])
    assert js["pairs"] == 0 and js["pairs_existing"] == len(parts[1]), js
    with open(part1, "rb") as f:
        assert f.read() == before
    # ... but not over a part of another run or shard, or a plain matches.h5
    for extra, what in ((["--shard", "1/3", "--ratio-threshold", "0.9"], "its params is"),
                        (["--shard", "2/3"], "its shard is '1/3', this run's '2/3'")):
        r = run_clean_env(["match", store, pairs, "-o", part1, "--workers", "1", *extra],
                          slurm_env(), expect=1)
        assert "is a part of another run" in r.stderr and what in r.stderr, r.stderr
        assert "--overwrite" in r.stderr, r.stderr
    plain = w.p("plain.h5")
    run_clean_env(["match", store, pairs, "-o", plain, "--quiet", "--workers", "1"], slurm_env())
    r = run_clean_env(["match", store, pairs, "-o", plain, "--workers", "1", "--shard", "0/3"],
                      slurm_env(), expect=1)
    assert "is not a part written by `featstore match --shard`" in r.stderr, r.stderr
    js = json.loads(run_clean_env(["match", store, pairs, "-o", plain, "--json", "--workers", "1",
                                   "--shard", "0/3", "--overwrite"], slurm_env()
                                  ).stdout.strip().splitlines()[-1])
    assert js["pairs"] == len(parts[0]) and js["pairs_existing"] == 0, js
    assert pair_keys(plain) == parts[0], "--overwrite: a part holds its shard's pairs only"
    for bad in ["3/3", "1", "a/3", "1/0", "-1/3", "1/3x", "/3", "1/"]:
        r = run_clean_env(["match", store, pairs, "-o", out, "--shard", bad], slurm_env(),
                          expect=2)
        assert f"--shard '{bad}': expected K/N" in r.stderr, (bad, r.stderr)


def case_merge(w):
    """featstore merge: the parts of any split give the single run's file,
    byte for byte; it refuses, naming the parts, parts of other runs,
    missing, duplicate and failed shards, and then writes nothing."""
    store, pairs, expect, feats = shard_dataset(w)
    ref = w.p("ref.h5")
    run_clean_env(["match", store, pairs, "-o", ref, "--quiet", "--workers", "2"], slurm_env())
    with open(ref, "rb") as f:
        ref_bytes = f.read()
    for n in (1, 4, 7):
        parts = [w.p(f"p{n}-{k}.h5") for k in range(n)]
        for k, part in enumerate(parts):
            run_clean_env(["match", store, pairs, "-o", part, "--quiet", "--workers", "1",
                           "--shard", f"{k}/{n}"], slurm_env())
        out = w.p(f"merged{n}.h5")
        r = run(["merge", out, *reversed(parts), "--json"])
        js = json.loads(r.stdout.strip().splitlines()[-1])
        assert js["status"] == "ok" and js["pairs"] == len(expect) and js["parts"] == n, js
        assert_same_output(out, ref)
        with open(out, "rb") as f:
            assert f.read() == ref_bytes, f"{out} differs from {ref} in its bytes"
        assert leftovers(w, out) == [os.path.basename(out)], leftovers(w, out)
    check_against_hloc(w.p("merged4.h5"), feats, expect, hloc_io.PRESETS["NN-mutual"])
    p4 = [w.p(f"p4-{k}.h5") for k in range(4)]
    out = w.p("out.h5")

    def refused(args, *texts):
        r = run(["merge", out, *args], expect=1)
        for t in texts:
            assert t in r.stderr, (t, r.stderr)
        assert "nothing written" in r.stderr or "not a part" in r.stderr, r.stderr
        assert not leftovers(w, out), leftovers(w, out)
        return r

    refused(p4[:1] + p4[2:], "missing shard 1 of 4")
    refused(p4[:2], "missing shards 2, 3 of 4")
    refused(p4 + [p4[2]], f"{p4[2]} and {p4[2]} are both shard 2/4")
    refused(p4 + [w.p("p7-3.h5")], "parts of different splits", "shard 0/4 and 3/7")
    refused(p4 + [ref], f"{ref} is not a part of a sharded run")
    # another run: other settings, another pair list, another store
    other = w.p("other-1.h5")
    run_clean_env(["match", store, pairs, "-o", other, "--quiet", "--workers", "1", "--shard",
                   "1/4", "--ratio-threshold", "0.9"], slurm_env())
    refused([p4[0], other, p4[2], p4[3]], "parts of different runs", "matcher settings",
            "'ratio_threshold=0' vs 'ratio_threshold=0.90000000000000002'")
    with open(pairs) as f:
        text = f.read()
    pairs2 = w.write("pairs2.txt", text + f"{sorted(feats)[0]} {sorted(feats)[9]}\n")
    run_clean_env(["match", store, pairs2, "-o", other, "--quiet", "--workers", "1", "--shard",
                   "1/4", "--overwrite"], slurm_env())
    refused([p4[0], other, p4[2], p4[3]], "parts of different runs", "pair list")
    # the same list written otherwise (comments, CRLF) is the same run
    pairs3 = w.write("pairs3.txt", "# retrieval, top 5\r\n" + text.replace("\n", "\r\n"))
    same = w.p("same-1.h5")
    run_clean_env(["match", store, pairs3, "-o", same, "--quiet", "--workers", "1", "--shard",
                   "1/4"], slurm_env())
    run(["merge", out, p4[0], same, p4[2], p4[3]])
    with open(out, "rb") as f:
        assert f.read() == ref_bytes
    os.unlink(out)
    store2 = w.p("db2.fst")
    run(["import", w.p("features.h5"), store2, "--quiet"])
    run_clean_env(["match", store2, pairs, "-o", other, "--quiet", "--workers", "1", "--shard",
                   "1/4", "--overwrite"], slurm_env())
    refused([p4[0], other, p4[2], p4[3]], "parts of different runs", "their store differ")
    # a shard whose run had a failed pair: named, nothing written
    with h5py.File(p4[1], "r") as f:
        k1 = sorted(pair_keys(p4[1]))[0]
    a, b = next((x, y) for x, y in expect if hloc_io.names_to_pair(x, y) == k1)
    bad = w.p("bad-1.h5")
    r = run_clean_env(["match", store, pairs, "-o", bad, "--json", "--quiet", "--workers", "1",
                       "--shard", "1/4"], slurm_env(FST_TEST_CRASH_PAIR=f"{a} {b}"), expect=1)
    assert json.loads(r.stdout.splitlines()[-1])["pairs_failed"] == 1
    refused([p4[0], bad, p4[2], p4[3]], f"{bad} (shard 1/4) is incomplete: 1 pair failed")
    # ... run again: complete, and the merge goes through
    run_clean_env(["match", store, pairs, "-o", bad, "--quiet", "--workers", "1", "--shard",
                   "1/4"], slurm_env())
    run(["merge", out, p4[0], bad, p4[2], p4[3]])
    with open(out, "rb") as f:
        assert f.read() == ref_bytes
    # a merge killed with -9 leaves its journal: the next one removes it
    dead = subprocess.Popen(["true"])
    dead.wait()
    for suffix in (".journal", ".journal-lock"):
        with open(f"{out}.merge-{dead.pid}{suffix}", "w") as f:
            f.write("left by a dead merge")
    run(["merge", out, *p4])
    assert leftovers(w, out) == [os.path.basename(out)], leftovers(w, out)
    # a part given as the output, a missing part, usage
    refused_out = run(["merge", p4[0], *p4], expect=1)
    assert "is the part" in refused_out.stderr, refused_out.stderr
    r = run(["merge", out, p4[0], w.p("nope.h5")], expect=1)
    assert "nope.h5" in r.stderr, r.stderr
    run(["merge", out], expect=2)
def direct(kind, weights, store, pairs, *conf):
    """{(name0, name1): (matches0, scores0 as float16 bits)} from nn_direct."""
    exe = os.environ.get("FST_NN_DIRECT")
    assert exe, "FST_NN_DIRECT not set (run through meson test)"
    r = subprocess.run([exe, kind, weights, store, pairs, *conf], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        left, right = line.split("|")
        f = left.split()
        out[(f[0], f[1])] = ([int(x) for x in f[2:]], [int(x) for x in right.split()])
    return out


def read_matches(path, pairs):
    got = {}
    with h5py.File(path, "r") as f:
        for a, b in pairs:
            g = f[hloc_io.names_to_pair(a, b)]
            got[(a, b)] = ([int(x) for x in g["matches0"][()]],
                           [int(x) for x in g["matching_scores0"][()].view(np.uint16)])
            assert g["matches0"].dtype == np.int16, g["matches0"].dtype
            assert g["matching_scores0"].dtype == np.float16
    return got


def case_neural(w):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import neural_weights
    imgs = make_images(n_images=7, d=256, kmin=30, kmax=90)   # + no / one keypoint
    h5 = w.p("features.h5")
    write_features(h5, imgs)
    store = w.p("db.fst")
    run(["import", h5, store, "--quiet"])
    names = sorted(n for n in imgs if n.startswith("db/"))
    text = pairs_text(names, step=(1, 2, 3))
    expect = hloc_io.hloc_pairs(text)
    pairs = w.write("pairs.txt", text)
    lg = neural_weights.write(w.p("lg.safetensors"), "lightglue", seed=1)
    lg2 = neural_weights.write(w.p("lg2.safetensors"), "lightglue", seed=2)
    sg = neural_weights.write(w.p("sg.safetensors"), "superglue", seed=1)
    lg128 = neural_weights.write(w.p("lg128.safetensors"), "lightglue", seed=1, input_dim=128,
                                 scale_ori=True)
    # preset, weights, extra options, nn_direct's kind and conf
    runs = [("superpoint+lightglue", lg, [], "lightglue", []),
            ("disk+lightglue", lg, [], "lightglue", []),
            ("aliked+lightglue", lg2, ["--depth-confidence", "0", "--width-confidence", "0.5",
                                       "--filter-threshold", "0.3"],
             "lightglue", ["depth=0", "width=0.5", "filter=0.3"]),
            ("superglue", sg, ["--match-threshold", "0.05"], "superglue", ["match=0.05"]),
            ("superglue-fast", sg, ["--match-threshold", "0.05"], "superglue",
             ["match=0.05", "sinkhorn=5"])]
    unique = w.write("unique.txt", "".join(f"{a} {b}\n" for a, b in expect))  # hloc's pairs
    refs = {}
    for preset, wt, extra, kind, conf in runs:
        outs = []
        for nw in (1, 2):
            out = w.p(f"{preset}-{nw}.h5")
            js, _ = match(store, pairs, out, "--preset", preset, "--weights", wt,
                          "--workers", str(nw), *extra)
            assert js["status"] == "ok" and js["pairs"] == len(expect), js
            assert js["preset"] == preset and js["weights"] == wt, js
            assert js["backend"] == "cpu", js
            outs.append(out)
        assert_same_output(outs[0], outs[1])
        got = read_matches(outs[0], expect)
        ref = direct(kind, wt, store, unique, *conf)
        assert set(ref) == set(got), (sorted(set(ref) ^ set(got))[:4])
        nmatch = 0
        for k in got:
            assert got[k] == ref[k], f"{preset} {k}: featstore differs from fst_nn_match"
            nmatch += sum(1 for x in got[k][0] if x >= 0)
        assert nmatch > 0, f"{preset}: no matches at all (weights too random for a test)"
        log(f"{preset}: {len(got)} pairs, {nmatch} matches, equal to fst_nn_match")
        refs[preset] = outs[0]
    # --query: the first image of each pair from an hloc features.h5
    js, _ = match(store, pairs, w.p("q.h5"), "--preset", "superpoint+lightglue", "--weights",
                  lg, "--query", h5)
    assert js["pairs"] == len(expect), js
    assert_same_output(w.p("q.h5"), refs["superpoint+lightglue"])
    # the options matter: the same weights without them differ
    a = read_matches(refs["superglue"], expect)
    b = read_matches(refs["superglue-fast"], expect)
    assert a != b, "5 and 50 Sinkhorn iterations gave the same output"

    # kill -9 of the coordinator, then resume: identical
    for preset, wt, extra in (("superpoint+lightglue", lg, []),
                              ("superglue", sg, ["--match-threshold", "0.05"])):
        out = w.p(f"k-{preset}.h5")
        lgf = w.p(f"k-{preset}.log")
        interrupt(store, pairs, out, lgf, "--preset", preset, "--weights", wt, *extra,
                  n=3, ms=60, kill9=True)
        js, _ = match(store, pairs, out, "--preset", preset, "--weights", wt, *extra)
        assert js["pairs_resumed"] > 0 and js["pairs_resumed"] + js["pairs"] == len(expect), js
        assert_same_output(out, refs[preset])
        with open(out, "rb") as x, open(refs[preset], "rb") as y:
            assert x.read() == y.read(), f"{preset}: resumed output not byte-identical"

    # a resume with other weights, other options or another algorithm: refused
    out = w.p("r.h5")
    interrupt(store, pairs, out, w.p("r.log"), "--preset", "superpoint+lightglue", "--weights",
              lg, n=3, ms=60)
    for args, what in ((["--preset", "superpoint+lightglue", "--weights", lg2], "weights_xxh3"),
                       (["--preset", "superpoint+lightglue", "--weights", lg,
                         "--depth-confidence", "0.5"], "depth_confidence"),
                       (["--preset", "superglue", "--weights", sg], "algorithm"),
                       ([], "algorithm")):
        r = run(["match", store, pairs, "-o", out, *args], expect=1)
        assert "other parameters" in r.stderr and what in r.stderr, (args, r.stderr)
    # the same tensors in another file: resumed (the journal keeps their hash)
    moved = w.p("moved.safetensors")
    shutil.copy(lg, moved)
    js, _ = match(store, pairs, out, "--preset", "superpoint+lightglue", "--weights", moved)
    assert js["pairs_resumed"] > 0, js
    assert_same_output(out, refs["superpoint+lightglue"])

    # no weights: one line naming the file and where it is published
    for preset, fname, where in (("superpoint+lightglue", "superpoint_lightglue.pth",
                                  "github.com/cvg/LightGlue"),
                                 ("doghardnet+lightglue", "doghardnet_lightglue.pth",
                                  "github.com/cvg/LightGlue"),
                                 ("superglue-fast", "superglue_outdoor.pth",
                                  "magicleap/SuperGluePretrainedNetwork")):
        r = run(["match", store, pairs, "-o", w.p("n.h5"), "--preset", preset], expect=2)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fname in lines[0] and where in lines[0], r.stderr
    # weights for another descriptor size: one message, naming the tensor and both sizes
    r = run(["match", store, pairs, "-o", w.p("n.h5"), "--preset", "superpoint+lightglue",
             "--weights", lg128, "--workers", "3"], expect=1)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "input_proj.weight" in lines[0] and "128" in lines[0] and "256" in lines[0], r.stderr
    assert not os.path.exists(w.p("n.h5.journal")), "a journal for a refused run"
    # options of the other algorithm, a neural preset on CUDA: refused
    r = run(["match", store, pairs, "-o", w.p("n.h5"), "--preset", "superglue", "--weights",
             sg, "--depth-confidence", "0.5"], expect=2)
    assert "--depth-confidence" in r.stderr and "superglue" in r.stderr, r.stderr
    r = run(["match", store, pairs, "-o", w.p("n.h5"), "--preset", "NN-ratio", "--weights",
             sg], expect=2)
    assert "--weights" in r.stderr, r.stderr
    r = run(["match", store, pairs, "-o", w.p("n.h5"), "--preset", "superglue", "--weights",
             sg, "--device", "cuda"], expect=1)
    assert "CPU only" in r.stderr and "superglue" in r.stderr, r.stderr
    for extra in (["--threads", "2"], ["--backend-params", "isa=scalar"]):
        r = run(["match", store, pairs, "-o", w.p("n.h5"), "--preset", "superglue",
                 "--weights", sg, *extra], expect=1)
        assert extra[0] in r.stderr and "superglue" in r.stderr, r.stderr
    # SIFT LightGlue needs scales and orientations, which the store lacks
    sift = make_images(n_images=3, d=128, kmin=20, kmax=40, prefix="s/img", extra=False)
    write_features(w.p("sift.h5"), sift)
    sstore = w.p("sift.fst")
    run(["import", w.p("sift.h5"), sstore, "--quiet"])
    sn = sorted(sift)
    spairs = w.write("spairs.txt", pairs_text(sn, extra=False, step=(1,)))
    r = run(["match", sstore, spairs, "-o", w.p("s.h5"), "--preset", "sift+lightglue",
             "--weights", lg128], expect=1)
    assert "scales and orientations" in r.stderr and sn[0] in r.stderr, r.stderr
    # ... and with them (hloc's DoG extractor writes `scales` and `oris`):
    # the same as fst_nn_match fed those blocks; an image without them fails
    # its pairs by name, the rest is written
    dog = w.p("dog.h5")
    write_features(dog, sift)
    with h5py.File(dog, "a") as f:
        for nm in sn:
            n = f[nm]["keypoints"].shape[0]
            f[nm].create_dataset("scales", data=(1 + 9 * RNG.random(n)).astype(np.float32))
            f[nm].create_dataset("oris", data=(np.pi * (2 * RNG.random(n) - 1)).astype(np.float32))
    dstore = w.p("dog.fst")
    run(["import", dog, dstore, "--quiet"])
    dexpect = hloc_io.hloc_pairs(open(spairs).read())
    js, _ = match(dstore, spairs, w.p("d.h5"), "--preset", "sift+lightglue", "--weights",
                  lg128, "--workers", "2")
    assert js["status"] == "ok" and js["pairs"] == len(dexpect), js
    got = read_matches(w.p("d.h5"), dexpect)
    dunique = w.write("dunique.txt", "".join(f"{a} {b}\n" for a, b in dexpect))
    ref = direct("lightglue", lg128, dstore, dunique)
    assert set(ref) == set(got) and all(got[k] == ref[k] for k in got), "sift+lightglue differs"
    with h5py.File(dog, "a") as f:
        del f[sn[1]]["scales"]
    dstore2 = w.p("dog2.fst")
    run(["import", dog, dstore2, "--quiet"])
    r = run(["match", dstore2, spairs, "-o", w.p("d2.h5"), "--preset", "sift+lightglue",
             "--weights", lg128, "--workers", "1"], expect=1)
    assert sn[1] in r.stderr and "scales" in r.stderr, r.stderr
    got2 = read_matches(w.p("d2.h5"), [p for p in dexpect if sn[1] not in p])
    assert all(got2[k] == ref[k] for k in got2), "sift+lightglue: the other pairs differ"
    # .pth as published: LightGlue's old `self_attn.N` names in torch's zip
    # format, SuperGlue in the legacy format with int64 BatchNorm counters;
    # the same output as the safetensors files. Only where Debian's
    # python3-torch is installed (nothing else needs it).
    try:
        import torch
    except ImportError:
        torch = None
        log("no torch: .pth weights not checked here (tests/weights covers the reader)")
    if torch is not None:
        import re
        old = {}
        for k, v in neural_weights.tensors("lightglue", seed=1).items():
            m = re.match(r"transformers\.(\d+)\.(self_attn|cross_attn)\.(.*)", k)
            old[f"{m.group(2)}.{m.group(1)}.{m.group(3)}" if m else k] = torch.from_numpy(v)
        torch.save(old, w.p("lg.pth"))
        sgt = {}
        for k, v in neural_weights.tensors("superglue", seed=1).items():
            sgt[k] = torch.from_numpy(v)
            if k.endswith("running_var"):
                sgt[k[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(7)
        torch.save(sgt, w.p("sg.pth"), _use_new_zipfile_serialization=False)
        for preset, wt, extra in (("superpoint+lightglue", w.p("lg.pth"), []),
                                  ("superglue", w.p("sg.pth"), ["--match-threshold", "0.05"])):
            out = w.p(f"pth-{preset}.h5")
            match(store, pairs, out, "--preset", preset, "--weights", wt, *extra)
            assert_same_output(out, refs[preset])
        log(".pth weights (zip with old names, legacy): outputs identical to safetensors")
    # --help says what each preset sets
    r = run(["match", "--help"])
    for preset in ("superpoint+lightglue", "disk+lightglue", "aliked+lightglue",
                   "sift+lightglue", "doghardnet+lightglue", "superglue", "superglue-fast"):
        assert preset in r.stdout, preset
    assert "50 Sinkhorn" in r.stdout and "5 Sinkhorn" in r.stdout and "0.95" in r.stdout


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}


if __name__ == "__main__":
    caselib.main(CASES, Workdir)
