#!/usr/bin/env python3
"""trust.py CASE... : featstore's trust claims as tests (issue 6).

Every case builds its own data in a temporary directory with `featstore
synth` / `featstore import`, runs the command as a user would ($FEATSTORE),
and injects faults with the LD_PRELOAD shim ($FST_FAULTSHIM, faultshim.c).
TAP output; one meson test per case (tests/trust/meson.build). Cases:

  import_faults     disk full / I/O errors / failed fsync, ftruncate, mmap,
                    open at every system call of `import` (create): a clear
                    message, no store, no temporary left; a re-run works
  append_faults     the same during `import --append`: the old store intact
                    and `verify` clean after each; a re-run completes
  transient_faults  a single failed call (then the disk works again): the
                    command fails cleanly or succeeds with a correct store
  map_grow          `import --append` of ~7x the store's initial LMDB map
  export_faults     disk full / EIO at every call of `export`: no partial file
  match_faults      disk full / EIO on a match run's journal and output at
                    sampled calls: clear message, the old output untouched,
                    nothing taken for done: the re-run's output is identical
                    to a clean run's
  real_full_disk    the same on a small tmpfs and a small ext4 (loop device)
                    that really fill up (needs root; skipped otherwise)
  store_damage      truncated store files, an unreadable store (open/mmap
                    refused; `nobody` and mode 000), a newer format major
                    (store and record): clear errors, never a crash
  concurrent_match  two match runs on one store at once = sequential runs;
                    two runs on one output: one refused or both complete
  append_during_match  `import --append` while a match runs: the match
                    output is identical to a run without the append
  readers_512       512 processes hold a read transaction on one store at
                    once, every record read and checksummed by each
  shared_store      root's store read by `nobody` (no lock file, root's lock
                    file), from a read-only directory and file system, and
                    with --no-lock: info, verify, export, match as root's;
                    appends refused while such a reader runs; errors name
                    the lock file when it is at fault
  match_ulimit      `featstore match` under `ulimit -v` (16 GB, as on shared
                    clusters): completes, also resuming a killed run, with
                    the output of an unlimited run (a plain build: ASan
                    cannot run under an address-space limit)

Figures (faults injected and survived, readers...) are printed as
`# figure: ...` lines, collected into tests/RELIABILITY.md.
"""
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import caselib  # noqa: E402
from caselib import h5_content  # noqa: E402

FST = os.environ.get("FEATSTORE") or "featstore"
SHIM = os.environ.get("FST_FAULTSHIM", "")
STORETOOL = os.environ.get("FST_STORETOOL", "")
READERS = os.environ.get("FST_READERS", "")
HDF5_SUPP = os.path.join(os.environ.get("FST_SRCDIR", os.path.join(os.path.dirname(
    os.path.abspath(__file__)), "..", "..")), "tests", "fuzz", "lsan-hdf5.supp")
FIG = {}


def log(*a):
    # every line a TAP comment, also those inside a multi-line message
    print("# " + " ".join(str(x) for x in a).replace("\n", "\n# "), flush=True)


def log_problems(problems):
    """Group problems by kind (numbers and addresses blanked): count, one
    example each."""
    kinds = {}
    for p in problems:
        k = re.sub(r"0x[0-9a-f]+|\d+", "#", p)
        k = re.sub(r"/tmp/fst-trust-[^/ ]*/", "", k)[:160]
        kinds.setdefault(k, []).append(p)
    for k, ps in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        log(f"PROBLEM x{len(ps)}: {ps[0]}")


def figure(key, value):
    FIG[key] = value
    print(f"# figure: {key} = {value}", flush=True)


class Workdir:
    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix=f"fst-trust-{name}-")

    def p(self, *names):
        return os.path.join(self.dir, *names)

    def cleanup(self):
        if not os.environ.get("FST_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- running featstore ---------------------------------------------------------

def base_env(extra=None):
    e = dict(os.environ)
    if extra:
        e.update(extra)
    return e


def shim_env(**kw):
    """Environment that preloads the fault shim with FST_FAULT_<KEY>=value."""
    return preload_env(SHIM, "FST_FAULTSHIM", "FST_FAULT_", **kw)


def preload_env(shim, built_as, prefix, **kw):
    """Environment that preloads `shim` (a test LD_PRELOAD library, the path
    meson passes as $<built_as>) with <prefix><KEY>=value settings."""
    assert shim and os.path.exists(shim), f"{built_as} not built"
    asan = os.environ.get("ASAN_OPTIONS", "")
    e = {"LD_PRELOAD": shim,
         # the shim comes before libasan in the link order: harmless here.
         # HDF5 leaks some of its own buffers when a write fails inside
         # H5Fcreate/H5Fclose (no ID is left to close): ignore exactly those
         # (tests/fuzz/lsan-hdf5.supp; needs full unwinding to name them)
         "ASAN_OPTIONS": (asan + ":" if asan else "") +
                         "verify_asan_link_order=0:fast_unwind_on_malloc=0",
         "LSAN_OPTIONS": "suppressions=" + HDF5_SUPP}
    for k, v in kw.items():
        e[prefix + k.upper()] = str(v)
    return e


def sanitizer_clean(stderr, what):
    bad = [m for m in ("Sanitizer", "runtime error:", "AddressSanitizer", "LeakSanitizer")
           if m in stderr]
    assert not bad, f"{what}: sanitizer report:\n{stderr[-4000:]}"


def run(args, expect=0, env=None, timeout=300, cmd=None):
    """Run featstore; a signal (crash) or a sanitizer report always fails.
    expect: an exit code, 'fail' (any code > 0), or None (anything)."""
    r = subprocess.run((cmd or [FST]) + args, capture_output=True, text=True,
                       env=base_env(env), timeout=timeout)
    what = " ".join(args)
    assert r.returncode >= 0, f"featstore {what}: killed by signal {-r.returncode}\n{r.stderr[-3000:]}"
    assert r.returncode not in (134, 139), f"featstore {what}: crashed ({r.returncode})\n{r.stderr[-3000:]}"
    sanitizer_clean(r.stderr, what)
    if expect == "fail":
        assert r.returncode > 0, f"featstore {what}: succeeded, expected a failure\n{r.stderr}"
    elif expect is not None and r.returncode != expect:
        raise AssertionError(f"featstore {what}: exit {r.returncode}, expected {expect}\n"
                             f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}")
    return r


def full_disk_message(r):
    """A message that says the disk is full, in one line: not HDF5's file
    driver dump ("time = ..., errno = 28, error message = ..., buf = ...")."""
    clear_message(r, *DISK_FULL_WORDS)
    assert "errno =" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def clear_message(r, *words):
    """One line naming the command, with at least one of `words` in it."""
    err = r.stderr.strip()
    assert err, "no message"
    assert err.startswith("featstore ") or "featstore" in err.splitlines()[-1], err
    if words:
        low = err.lower()
        assert any(w.lower() in low for w in words), f"message lacks {words}: {err}"


def synth(w, name, images, kp, dim=64, npairs=None, prefix=None, seed=1, dtype=None):
    args = ["synth", w.p(name), "--images", str(images), "--keypoints", str(kp),
            "--dim", str(dim), "--seed", str(seed), "--quiet"]
    pairs = None
    if npairs is not None:
        pairs = w.p(name + ".pairs")
        args += ["--pairs", pairs, "--npairs", str(npairs)]
    if prefix:
        args += ["--prefix", prefix]
    if dtype:
        args += ["--dtype", dtype]
    run(args)
    return w.p(name), pairs


def info(store):
    return json.loads(run(["info", store, "--json"]).stdout)


def verify_clean(store):
    r = run(["verify", store, "--quiet"], expect=None)
    assert r.returncode == 0, f"verify {store}: exit {r.returncode}\n{r.stdout}{r.stderr}"


def count_calls(args, path, ops="write,pwrite,fsync,fdatasync,ftruncate,fallocate,mmap,open,msync",
                expect=0):
    """System calls of `ops` on files whose path contains `path` made by a
    fault-free run of featstore ARGS (every process)."""
    st = tempfile.mktemp(prefix="fst-shim-stats-")
    run(args, expect=expect, env=shim_env(ops=ops, path=path, after_calls=-1, stats=st))
    calls = byts = 0
    with open(st) as f:
        for line in f:
            m = re.match(r"\d+ calls (\d+) bytes (\d+)", line)
            calls += int(m.group(1))
            byts += int(m.group(2))
    os.unlink(st)
    return calls, byts


def faults_hit(logpath):
    try:
        with open(logpath) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def leftovers(dirpath, prefix):
    return sorted(f for f in os.listdir(dirpath) if f.startswith(prefix))


def same_output(a, b):
    ca, cb = h5_content(a), h5_content(b)
    assert ca.keys() == cb.keys(), f"{a} vs {b}: keys differ: {sorted(set(ca) ^ set(cb))[:10]}"
    for k in ca:
        assert ca[k] == cb[k], f"{k} differs between {a} and {b}"
    return len(ca) // 2


def file_bytes(p):
    with open(p, "rb") as f:
        return f.read()


def match(store, pairs, out, *extra, expect=0, env=None, timeout=600):
    return run(["match", store, pairs, "-o", out, "--device", "cpu", "--quiet", *extra],
               expect=expect, env=env, timeout=timeout)


def spread(n, k):
    """About k distinct indices in range(n), dense at both ends."""
    if n <= k:
        return list(range(n))
    idx = set(range(min(8, n))) | set(range(max(0, n - 8), n))
    step = max(1, n // max(1, k - len(idx)))
    idx |= set(range(0, n, step))
    return sorted(idx)


ERRNOS = ("ENOSPC", "EIO")
FULL_WORDS = ("full", "space", "i/o error", "input/output", "quota")
# a message that says the disk is full (not just "I/O error"; the work
# directories' names hold "full", so not that word alone)
DISK_FULL_WORDS = ("disk full", "disk or map full", "no space left", "quota")


# ---- cases -----------------------------------------------------------------------

def case_import_faults(w):
    """Fail the k-th system call on the store being created, for every k."""
    src, _ = synth(w, "a.h5", 24, 200, 64)
    dest = w.p("db.fst")
    ops = "write,pwrite,fsync,fdatasync,ftruncate,fallocate,mmap,open,msync"
    n, nbytes = count_calls(["import", src, dest, "--quiet"], "db.fst", ops)
    ref = info(dest)
    shutil.rmtree(dest, ignore_errors=True)
    for f in leftovers(w.dir, "db.fst"):
        os.unlink(w.p(f))
    log(f"import touches db.fst* in {n} system calls, {nbytes} bytes written")
    injected = 0
    runs = 0
    for err in ERRNOS:
        for k in range(n):
            lp = w.p("faults.log")
            r = run(["import", src, dest, "--quiet"], expect=None,
                    env=shim_env(ops=ops, path="db.fst", after_calls=k, errno=err, log=lp))
            hit = faults_hit(lp)
            if os.path.exists(lp):
                os.unlink(lp)
            runs += 1
            if hit == 0:
                # the fault fell on a call this run did not make (the count
                # varies a little: e.g. stale-temporary cleanup)
                assert r.returncode == 0, r.stderr
                shutil.rmtree(dest, ignore_errors=True)
                for f in leftovers(w.dir, "db.fst"):
                    os.unlink(w.p(f))
                continue
            injected += 1
            assert r.returncode == 1, f"call {k} {err}: exit {r.returncode}: {r.stderr}"
            clear_message(r, *FULL_WORDS, "permission", "db.fst")
            assert not os.path.exists(dest), f"call {k} {err}: a store exists after a failed import"
            left = leftovers(w.dir, "db.fst")
            assert not left, f"call {k} {err}: left behind {left}: {r.stderr}"
    # byte limits: the disk fills up at N bytes (clean ENOSPC, and short
    # writes as a real disk gives them)
    limits = sorted({0, 1, 4096, 8191, 65536, nbytes // 3, nbytes // 2, nbytes - 4096,
                     nbytes - 1})
    for short in ("0", "1"):
        for lim in limits:
            lp = w.p("faults.log")
            r = run(["import", src, dest, "--quiet"], expect=None,
                    env=shim_env(path="db.fst", after_bytes=lim, short=short, log=lp))
            runs += 1
            hit = faults_hit(lp)
            if os.path.exists(lp):
                os.unlink(lp)
            if not hit:
                # fewer bytes went through write(2) than the limit: CREATE
                # writes the records through LMDB's map (MDB_WRITEMAP), where
                # a full disk shows at fallocate(2) (swept above) instead
                assert r.returncode == 0, r.stderr
                os.unlink(dest)
                for f in leftovers(w.dir, "db.fst"):
                    os.unlink(w.p(f))
                continue
            injected += 1
            assert r.returncode == 1, f"limit {lim}: exit {r.returncode}: {r.stderr}"
            clear_message(r, *FULL_WORDS)
            assert not os.path.exists(dest)
            assert not leftovers(w.dir, "db.fst"), leftovers(w.dir, "db.fst")
    # the same command without the fault completes
    run(["import", src, dest, "--quiet"])
    verify_clean(dest)
    assert info(dest)["images"] == ref["images"]
    figure("import_faults", f"{injected} faults injected in {runs} runs "
                            f"({n} distinct calls x {len(ERRNOS)} errnos + byte limits), "
                            f"all failed cleanly; re-run complete")


def case_append_faults(w):
    src_a, _ = synth(w, "a.h5", 20, 200, 64, prefix="a/img")
    src_b, _ = synth(w, "b.h5", 20, 200, 64, prefix="b/img", seed=2)
    dest = w.p("db.fst")
    run(["import", src_a, dest, "--quiet"])
    before = info(dest)
    before_bytes = None
    ops = "write,pwrite,fsync,fdatasync,ftruncate,fallocate,mmap,open,msync"
    # count on a copy, so the real store stays the pre-append one
    shutil.copy(dest, w.p("count.fst"))
    n, nbytes = count_calls(["import", src_b, w.p("count.fst"), "--append", "--quiet"],
                            "count.fst", ops)
    log(f"append touches the store in {n} system calls, {nbytes} bytes written")
    injected = runs = landed = 0
    for err in ERRNOS:
        for k in range(n):
            lp = w.p("faults.log")
            r = run(["import", src_b, dest, "--append", "--quiet"], expect=None,
                    env=shim_env(ops=ops, path="db.fst", after_calls=k, errno=err, log=lp))
            hit = faults_hit(lp)
            if os.path.exists(lp):
                os.unlink(lp)
            runs += 1
            if not hit:
                assert r.returncode == 0, r.stderr
                # an append went through: start again from the old store
                run(["import", src_a, w.p("fresh.fst"), "--quiet"])
                os.replace(w.p("fresh.fst"), dest)
                continue
            injected += 1
            assert r.returncode == 1, f"call {k} {err}: exit {r.returncode}: {r.stderr}"
            clear_message(r, *FULL_WORDS, "permission", "db.fst")
            # the old store: intact for every reader
            now = info(dest)
            for key in ("images", "keypoints", "payload_bytes", "d", "dtype"):
                assert now[key] == before[key], f"call {k} {err}: {key} {now[key]} != {before[key]}"
            verify_clean(dest)
    for lim in sorted({0, 4096, 65536, nbytes // 4, nbytes // 2, nbytes - 1}):
        lp = w.p("faults.log")
        r = run(["import", src_b, dest, "--append", "--quiet"], expect=None,
                env=shim_env(path="db.fst", after_bytes=lim, short="1", log=lp))
        runs += 1
        if not faults_hit(lp):
            # this append wrote less than the limit (the byte count varies
            # with what earlier failed appends left to clean up)
            assert r.returncode == 0, r.stderr
            run(["import", src_a, w.p("fresh.fst"), "--quiet"])
            os.replace(w.p("fresh.fst"), dest)
            continue
        os.unlink(lp)
        injected += 1
        assert r.returncode == 1, r.stderr
        clear_message(r, *FULL_WORDS)
        now = info(dest)["images"]
        if now == before["images"] + 20:
            # The limit fell on LMDB's last write, the tail of the meta page,
            # cut short of bytes that hold nothing new: the append is in
            # place for every reader, and LMDB's write-back of the old page
            # failed too (writes fail for good here). Nothing can undo it;
            # what is checked is that featstore says so rather than
            # claiming the store is as it was, and that the store is whole.
            clear_message(r, "the append is complete for readers")
            verify_clean(dest)
            landed += 1
            run(["import", src_a, w.p("fresh.fst"), "--quiet"])
            os.replace(w.p("fresh.fst"), dest)
            continue
        assert now == before["images"], f"limit {lim}: {now} images: {r.stderr}"
        verify_clean(dest)
    # a re-run without the fault completes (and clears what the failed
    # appends left invisible)
    run(["import", src_b, dest, "--append", "--quiet"])
    verify_clean(dest)
    after = info(dest)
    assert after["images"] == before["images"] + 20, after
    # and the appended data is the data: export and compare with a fresh import
    run(["import", src_a, w.p("ref.fst"), "--quiet"])
    run(["import", src_b, w.p("ref.fst"), "--append", "--quiet"])
    run(["export", dest, w.p("x1.h5"), "--quiet"])
    run(["export", w.p("ref.fst"), w.p("x2.h5"), "--quiet"])
    same_ds = h5_content(w.p("x1.h5")) == h5_content(w.p("x2.h5"))
    assert same_ds, "store after failed appends + re-run differs from a clean one"
    del before_bytes
    figure("append_faults", f"{injected} faults injected in {runs} runs, old store intact "
                            f"and verify clean after each ({landed} on the meta page's last "
                            f"bytes: the append complete, and said so); re-run complete and "
                            f"equal to a clean store")


def case_transient_faults(w):
    """One failing call, after which the disk works again: the command must
    fail cleanly or succeed with a correct store, never leave a bad one."""
    src, _ = synth(w, "a.h5", 16, 150, 64)
    dest = w.p("db.fst")
    ops = "write,pwrite,fsync,fdatasync,ftruncate,fallocate,mmap,open,msync"
    n, _ = count_calls(["import", src, dest, "--quiet"], "db.fst", ops)
    ref = info(dest)
    run(["export", dest, w.p("ref.h5"), "--quiet"])
    refc = h5_content(w.p("ref.h5"))
    os.unlink(dest)
    ok = failed = 0
    for k in range(n):
        r = run(["import", src, dest, "--quiet"], expect=None,
                env=shim_env(ops=ops, path="db.fst", after_calls=k, errno="EIO", once=1))
        if r.returncode == 0:
            ok += 1
            verify_clean(dest)
            assert info(dest)["images"] == ref["images"]
            os.unlink(dest)
        else:
            failed += 1
            clear_message(r)
            assert not os.path.exists(dest)
        assert not [f for f in leftovers(w.dir, "db.fst") if "tmp" in f], leftovers(w.dir, "db.fst")
    run(["import", src, dest, "--quiet"])
    run(["export", dest, w.p("x.h5"), "--quiet"])
    assert h5_content(w.p("x.h5")) == refc
    figure("transient_faults", f"{n} single transient EIO faults: {failed} clean failures, "
                               f"{ok} successes with a verified store")


def case_map_grow(w):
    src_small, _ = synth(w, "small.h5", 2, 64, 128, prefix="s/img")
    # 420 images x 1024 keypoints x 128 x float16 = 110 MB of descriptors:
    # ~7x the 16 MB map a new store starts with
    src_big, _ = synth(w, "big.h5", 420, 1024, 128, prefix="b/img")
    dest = w.p("db.fst")
    run(["import", src_small, dest, "--quiet"])
    size0 = os.path.getsize(dest)
    t0 = time.time()
    run(["import", src_big, dest, "--append", "--quiet"], timeout=900)
    t = time.time() - t0
    verify_clean(dest)
    i = info(dest)
    assert i["images"] == 422, i
    size1 = os.path.getsize(dest)
    assert size1 > 100 << 20, size1
    figure("map_grow", f"append of {i['payload_bytes'] >> 20} MB into a {size0 >> 10} kB store "
                       f"(initial map 16 MB): grew to {size1 >> 20} MB in {t:.1f} s, verify clean")


def run_faulted(args, env, problems, desc):
    """Run featstore under the shim. Returns (faults injected, result or
    None). A crash, a sanitizer report or an exit other than 1 after a
    fault is a problem (collected, not raised, so one run lists them all)."""
    lp = tempfile.mktemp(prefix="fst-faults-")
    env = dict(env, FST_FAULT_LOG=lp)
    r = subprocess.run([FST] + args, capture_output=True, text=True, env=base_env(env),
                       timeout=600)
    hit = faults_hit(lp)
    first = open(lp).readline().strip() if hit else ""
    if os.path.exists(lp):
        os.unlink(lp)
    tail = r.stderr.strip().splitlines()
    msg = tail[0] if tail else ""
    crash = [l.strip() for l in tail if "ERROR: AddressSanitizer" in l or "ERROR: LeakSanitizer"
             in l or "runtime error" in l]
    frames = [l.strip() for l in tail if l.strip().startswith("#")][:4]
    if r.returncode < 0 or crash:
        problems.append(f"{desc} [first fault: {first}]: exit {r.returncode}, "
                        f"{crash[0] if crash else 'signal'} after '{msg}' "
                        f"[{' <- '.join(frames)}]")
        return hit, None
    if hit and r.returncode != 1:
        problems.append(f"{desc} [first fault: {first}]: exit {r.returncode} "
                        f"(expected 1): '{msg}'")
        return hit, None
    if not hit and r.returncode != 0:
        problems.append(f"{desc}: no fault injected but exit {r.returncode}: '{msg}'")
        return hit, None
    return hit, r


def case_match_faults(w):
    src, pairs = synth(w, "f.h5", 40, 128, 64, npairs=240)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--workers", "2")
    out = w.p("out.h5")
    margs = ["match", store, pairs, "-o", out, "--device", "cpu", "--workers", "2", "--quiet"]
    # every call on out.h5, its journal and its temporary (coordinator only:
    # the workers never touch them)
    ops = "write,pwrite,fsync,fdatasync,ftruncate,fallocate,mmap,open,msync"
    n, nbytes = count_calls(margs, "out.h5", ops)
    same_output(out, ref)
    os.unlink(out)
    log(f"a match run touches out.h5* in {n} calls, {nbytes} bytes")
    injected = runs = 0
    problems = []

    def after_fault(desc, hit, r, old=None):
        """Check what a failed run left, then re-run without the fault:
        complete and identical to the clean run."""
        if r is not None and hit:
            try:
                clear_message(r, *FULL_WORDS, "permission", "out.h5")
            except AssertionError as e:
                problems.append(f"{desc}: unclear message: {e}")
            if old is None and os.path.exists(out):
                problems.append(f"{desc}: an output exists after a failed run")
            if old is not None and file_bytes(out) != old:
                problems.append(f"{desc}: the failed run changed the existing output")
        tmps = [f for f in leftovers(w.dir, "out.h5") if ".tmp-" in f]
        if tmps:
            problems.append(f"{desc}: left {tmps}")
        rr = match(store, pairs, out, "--workers", "2", expect=None)
        if rr.returncode != 0:
            problems.append(f"{desc}: the re-run failed: {rr.stderr.strip()}")
            match(store, pairs, out, "--workers", "2", "--overwrite")
        same_output(out, ref)
        for f in leftovers(w.dir, "out.h5"):
            if f != "out.h5" and ".tmp-" not in f:
                problems.append(f"{desc}: {f} left after a complete re-run")
        for f in leftovers(w.dir, "out.h5"):
            os.unlink(w.p(f))

    ks = spread(n, 40)
    for i, k in enumerate(ks):
        for err in ERRNOS:
            desc = f"match, call {k} of {n} fails with {err}"
            hit, r = run_faulted(margs, shim_env(ops=ops, path="out.h5", after_calls=k,
                                                 errno=err), problems, desc)
            runs += 1
            injected += bool(hit)
            after_fault(desc, hit, r)
    # byte limits on the journal and the output
    for lim in sorted({0, 4096, 65536, nbytes // 4, nbytes // 2, nbytes - 1}):
        for short in ("0", "1"):
            desc = f"match, disk full after {lim} bytes (short writes: {short})"
            hit, r = run_faulted(margs, shim_env(path="out.h5", after_bytes=lim, short=short),
                                 problems, desc)
            runs += 1
            injected += bool(hit)
            after_fault(desc, hit, r)
    # an existing output (half the pairs done) stays byte for byte as it was
    # when the run that extends it fails
    with open(pairs) as f:
        lines = f.readlines()
    half = w.p("half.txt")
    with open(half, "w") as f:
        f.writelines(lines[: len(lines) // 2])
    for k in spread(n, 8):
        match(store, half, out, "--workers", "2")
        old = file_bytes(out)
        desc = f"match onto an existing output, call {k} fails with ENOSPC"
        hit, r = run_faulted(margs, shim_env(ops=ops, path="out.h5", after_calls=k),
                             problems, desc)
        runs += 1
        injected += bool(hit)
        after_fault(desc, hit, r, old=old)
    log_problems(problems)
    figure("match_faults", f"{injected} faults injected in {runs} runs ({n} calls on "
                           f"output+journal, {len(ks)} sampled x 2 errnos, byte limits, an "
                           f"existing output); every final output identical to a clean run "
                           f"({len(lines)} pairs); {len(problems)} problems")
    assert not problems, f"{len(problems)} problems"


def case_export_faults(w):
    """Disk full while `export` writes its features.h5."""
    src, _ = synth(w, "f.h5", 20, 128, 64)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    ref = w.p("ref.h5")
    run(["export", store, ref, "--quiet"])
    out = w.p("x.h5")
    args = ["export", store, out, "--quiet"]
    ops = "write,pwrite,fsync,fdatasync,ftruncate,fallocate,mmap,open,msync"
    n, nbytes = count_calls(args, "x.h5", ops)
    os.unlink(out)
    problems = []
    injected = runs = 0
    for k in range(n):
        for err in ERRNOS:
            desc = f"export, call {k} of {n} fails with {err}"
            hit, r = run_faulted(args, shim_env(ops=ops, path="x.h5", after_calls=k, errno=err),
                                 problems, desc)
            runs += 1
            injected += bool(hit)
            if hit and r is not None and os.path.exists(out):
                problems.append(f"{desc}: an output exists after a failed export")
            left = leftovers(w.dir, "x.h5")
            if hit and left:
                problems.append(f"{desc}: left {left}")
            for f in left:
                os.unlink(w.p(f))
    run(args)
    assert h5_content(out) == h5_content(ref)
    log_problems(problems)
    figure("export_faults", f"{injected} faults injected in {runs} runs ({n} calls x 2 errnos); "
                            f"{len(problems)} problems; re-run identical")
    assert not problems, f"{len(problems)} problems"


class SmallFs:
    """A small real file system (tmpfs, or ext4 on a loop device) mounted in
    the work directory, with a ballast file that leaves `free` bytes: a disk
    that really fills up. Needs root (mount); None if it cannot be made."""

    def __init__(self, w, kind, size_mb=24):
        self.dir = w.p(f"mnt-{kind}")
        self.img = None
        os.makedirs(self.dir)
        if kind == "tmpfs":
            cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", self.dir]
        else:
            self.img = w.p(f"{kind}.img")
            with open(self.img, "wb") as f:
                f.truncate(size_mb << 20)
            # -m 0: no blocks reserved for root (the tests run as root)
            r = subprocess.run(["mkfs." + kind, "-q", "-F", "-m", "0", self.img],
                               capture_output=True)
            if r.returncode:
                raise OSError(r.stderr)
            cmd = ["mount", "-o", "loop", self.img, self.dir]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise OSError(r.stderr.strip())

    def p(self, name):
        return os.path.join(self.dir, name)

    def fill(self, free):
        """Leave about `free` bytes free: a ballast file written until the
        file system says ENOSPC, then cut by `free` bytes."""
        self.free_space()
        chunk = b"\0" * (1 << 16)
        size = 0
        fd = os.open(self.p("ballast"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while True:
                try:
                    n = os.write(fd, chunk)
                except OSError:
                    break
                if n <= 0:
                    break
                size += n
            os.fsync(fd) if False else None
            os.ftruncate(fd, max(0, size - free))
        finally:
            os.close(fd)
        os.sync()

    def free_space(self):
        if os.path.exists(self.p("ballast")):
            os.unlink(self.p("ballast"))

    def empty(self):
        for f in os.listdir(self.dir):
            if f != "lost+found":
                os.unlink(self.p(f))

    def close(self):
        subprocess.run(["umount", self.dir], capture_output=True)
        if self.img:
            os.unlink(self.img)


def case_real_full_disk(w):
    """The same claims on a file system that really fills up: tmpfs, and
    ext4 on a loop device (delayed allocation: blocks are taken at
    writeback, so a full disk shows at fsync, the riskiest case for a
    memory-mapped writer)."""
    if os.geteuid() != 0:
        print("# SKIP: needs root to mount a small file system")
        return
    # HDF5's own leaks when a write fails inside it (lsan-hdf5.supp)
    os.environ["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                  ":fast_unwind_on_malloc=0:malloc_context_size=6")
    os.environ["LSAN_OPTIONS"] = "suppressions=" + HDF5_SUPP
    src, pairs = synth(w, "f.h5", 40, 512, 64, npairs=300)     # store ~2.8 MB
    src2, _ = synth(w, "g.h5", 40, 512, 64, prefix="g/img", seed=3)
    ref = w.p("ref.fst")
    run(["import", src, ref, "--quiet"])
    refm = w.p("ref.h5")
    match(ref, pairs, refm, "--workers", "2")
    run(["export", ref, w.p("refx.h5"), "--quiet"])
    store_mb = os.path.getsize(ref) / 2 ** 20
    problems = []
    messages = []
    steps = 0

    def step(desc, fn):
        nonlocal steps
        steps += 1
        try:
            fn()
        except AssertionError as e:
            lines = [l for l in str(e).splitlines() if l.strip()]
            crash = [l.strip() for l in lines if "ERROR: AddressSanitizer" in l or "signal" in l]
            frames = [l.strip() for l in lines if l.strip().startswith("#")][:5]
            err = [l.strip() for l in lines if l.startswith("stderr:")][:1]
            problems.append(f"{desc}: {crash[0] if crash else lines[0][:300]} "
                            f"{err[0][:300] if err else ''} [{' <- '.join(frames)}]")

    done = []
    for kind in ("tmpfs", "ext4"):
        try:
            fs = SmallFs(w, kind)
        except OSError as e:
            log(f"{kind}: cannot mount ({e}): skipped")
            continue
        try:
            for free in (0, 64 << 10, 700 << 10, 1400 << 10):
                tag = f"{kind}, {free >> 10} kB free"
                dest = fs.p("db.fst")

                def create():
                    fs.fill(free)
                    r = run(["import", src, dest, "--quiet"], expect="fail")
                    messages.append(f"import on {tag}: {r.stderr.strip()}")
                    full_disk_message(r)
                    assert not os.path.exists(dest), "a store exists"
                    left = [f for f in os.listdir(fs.dir) if f.startswith("db.fst")]
                    assert not left, f"left {left}"

                def append():
                    fs.free_space()
                    for f in [f for f in os.listdir(fs.dir) if f.startswith("db.fst")]:
                        os.unlink(fs.p(f))
                    run(["import", src, dest, "--quiet"])
                    before = info(dest)
                    fs.fill(free)
                    r = run(["import", src2, dest, "--append", "--quiet"], expect="fail")
                    messages.append(f"import --append on {tag}: {r.stderr.strip()}")
                    # LMDB reports the short write of a full disk as EIO:
                    # the writer asks the file system (statvfs) and says
                    # disk full, not "I/O error"
                    full_disk_message(r)
                    now = info(dest)
                    assert now["images"] == before["images"], (now, before)
                    verify_clean(dest)
                    fs.free_space()
                    run(["import", src2, dest, "--append", "--quiet"])
                    verify_clean(dest)
                    assert info(dest)["images"] == 80

                def match_full():
                    out = fs.p("m.h5")
                    fs.empty()
                    fs.fill(free)
                    r = run(["match", ref, pairs, "-o", out, "--device", "cpu", "--workers", "2",
                             "--quiet"], expect=None)
                    if r.returncode == 0:           # it fitted
                        same_output(out, refm)
                        return
                    messages.append(f"match on {tag}: {r.stderr.strip()}")
                    full_disk_message(r)
                    assert not os.path.exists(out), "partial output"
                    fs.free_space()
                    match(ref, pairs, out, "--workers", "2")
                    same_output(out, refm)

                def export_full():
                    fs.empty()
                    fs.fill(free)
                    r = run(["export", ref, fs.p("x.h5"), "--quiet"], expect="fail")
                    messages.append(f"export on {tag}: {r.stderr.strip()}")
                    full_disk_message(r)
                    assert not [f for f in os.listdir(fs.dir) if f.startswith("x.h5")], "left"
                    fs.free_space()
                    run(["export", ref, fs.p("x.h5"), "--quiet"])
                    assert h5_content(fs.p("x.h5")) == h5_content(w.p("refx.h5"))

                for name, fn in (("import", create), ("import --append", append),
                                 ("match", match_full), ("export", export_full)):
                    step(f"{name} on {tag}", fn)
                fs.empty()
                done.append(f"{kind}:{free >> 10}k")
        finally:
            fs.close()
    if not done:
        print("# SKIP: no small file system could be mounted (no mount permission?)")
        return
    for m in messages:
        log(re.sub(r"/tmp/fst-trust-[^/ ]*/", "", m).splitlines()[0][:300])
    log_problems(problems)
    kinds = ", ".join(sorted({d.split(":")[0] for d in done}))
    figure("real_full_disk", f"import, import --append, match and export on a full {kinds} "
                             f"({len(done)} fill levels, store {store_mb:.1f} MB): {steps} runs, "
                             f"{steps - len(problems)} failed cleanly and completed after "
                             f"freeing space, {len(problems)} problems")
    assert not problems, f"{len(problems)} problems"


def case_store_damage(w):
    src, pairs = synth(w, "f.h5", 30, 128, 64, npairs=60)
    good = w.p("good.fst")
    run(["import", src, good, "--quiet"])
    size = os.path.getsize(good)
    checks = 0
    cmds = lambda s: [["info", s], ["verify", s, "--quiet"], ["export", s, w.p("x.h5"), "--quiet"],
                      ["match", s, pairs, "-o", w.p("m.h5"), "--device", "cpu", "--workers", "1",
                       "--quiet"]]

    problems = []

    def expect_error(s, *words):
        """Every command fails with a clear message. Problems are collected
        (and fail the case at the end) so that one run lists them all."""
        nonlocal checks
        for c in cmds(s):
            checks += 1
            try:
                r = run(c, expect="fail", timeout=120)
                assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
                clear_message(r, *words)
            except AssertionError as e:
                first = [l for l in str(e).splitlines() if "ERROR: AddressSanitizer" in l
                         or "exit" in l or "signal" in l][:1]
                frames = [l.strip() for l in str(e).splitlines() if " in " in l and "#" in l][:5]
                problems.append(f"{' '.join(c[:2])} ({os.path.basename(s)}): "
                                f"{first[0].strip() if first else str(e)[:200]} "
                                f"[{' <- '.join(frames)}]")
            for f in ("x.h5", "m.h5"):
                if os.path.exists(w.p(f)):
                    problems.append(f"{c}: wrote {f}")
                    os.unlink(w.p(f))

    # truncated: the file cut at these sizes
    # (not size - 1: LMDB's last page then lacks a byte it never reads, and
    # the store is still whole; `verify` proves it below)
    cuts = sorted({0, 1, 100, 4096, 8192, size // 4, size // 2, size - 8192, size - 4096})
    for cut in cuts:
        s = w.p(f"cut{cut}.fst")
        with open(good, "rb") as f, open(s, "wb") as g:
            g.write(f.read(cut))
        expect_error(s, "cut", "trunc", "damaged", "not a featstore", "corrupt", "incomplete",
                     f"cut{cut}.fst")
    s = w.p("cut1.fst")
    with open(good, "rb") as f, open(s, "wb") as g:
        g.write(f.read(size - 1))
    r = run(["verify", s, "--quiet"], expect=None)
    assert r.returncode in (0, 1), r.stderr
    figure("truncated_store", f"{len(cuts)} truncation points x 4 commands: "
                              f"{len(problems)} problems")
    # unreadable: open() or mmap() refused with EACCES / EIO
    for ops, err in (("open", "EACCES"), ("mmap", "EACCES"), ("mmap", "ENOMEM"), ("open", "EIO")):
        for c in cmds(good):
            r = run(c, expect="fail", env=shim_env(ops=ops, path="good.fst", errno=err))
            assert r.returncode == 1, f"{ops} {err} {c}: exit {r.returncode}: {r.stderr}"
            clear_message(r, "good.fst")
            checks += 1
    # unreadable for real: mode 000 as an unprivileged user, if we can be one
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if os.geteuid() == 0 and runuser and os.path.basename(runuser) == "runuser":
        os.chmod(w.dir, 0o755)
        os.chmod(good, 0o000)
        try:
            for c in (["info", good], ["verify", good]):
                r = run(["-u", "nobody", "--", FST] + c, expect="fail", cmd=[runuser])
                assert r.returncode == 1, r.stderr
                clear_message(r, "permission", "good.fst")
                checks += 1
        finally:
            os.chmod(good, 0o644)
    else:
        log("runuser not available or not root: mode-000 case done through the shim only")
    verify_clean(good)
    # a newer format major: in the metadata, then in one record
    newer = w.p("newer.fst")
    shutil.copy(good, newer)
    subprocess.run([STORETOOL, "meta-u64", newer, "format_major", "2"], check=True)
    expect_error(newer, "newer")
    r = run(["import", src, newer, "--append", "--quiet"], expect="fail")
    clear_message(r, "newer")
    checks += 1
    rec = w.p("rec.fst")
    shutil.copy(good, rec)
    name = "synth/img0003.jpg"
    subprocess.run([STORETOOL, "record-major", rec, name, "2"], check=True)
    r = run(["verify", rec], expect=1)
    assert name in r.stdout + r.stderr, r.stdout + r.stderr
    r = match(rec, pairs, w.p("m.h5"), "--workers", "1", expect="fail")
    assert name in r.stderr, r.stderr
    checks += 2
    log_problems(problems)
    figure("store_damage", f"{checks} runs on truncated, unreadable and newer-format stores: "
                           f"{checks - len(problems)} clear errors (exit 1), "
                           f"{len(problems)} problems")
    assert not problems, f"{len(problems)} of {checks} runs crashed or gave no clear error"


def plain_featstore():
    """$FEATSTORE, or where it is sanitized (ASan reserves terabytes of
    shadow memory: it cannot run under `ulimit -v`, nor under valgrind) the
    featstore of a plain build of this tree: the one tests/trust/valgrind.sh
    uses (<build>/tests/trust/plain, or $FST_VG_BUILD), made here if
    missing (a few minutes the first time). Locked against valgrind.sh
    building it at the same time."""
    r = subprocess.run(["ldd", FST], capture_output=True, text=True)
    if "libasan" not in r.stdout:
        return FST
    b = os.environ.get("FST_VG_BUILD") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(FST))), "tests", "trust", "plain")
    src = os.environ.get("FST_SRCDIR") or os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "..", "..")
    os.makedirs(os.path.dirname(b), exist_ok=True)
    with open(b + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(b, "build.ninja")):
            r = subprocess.run(["meson", "setup", b, src, "-Dbuildtype=debugoptimized",
                                "-Db_sanitize=none", "-Dcuda=disabled"],
                               capture_output=True, text=True)
            assert r.returncode == 0, f"meson setup {b}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        r = subprocess.run(["ninja", "-C", b, "-j2", "tools/featstore"], capture_output=True,
                           text=True)
        assert r.returncode == 0, f"ninja -C {b}:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
    return os.path.join(b, "tools", "featstore")


def case_match_ulimit(w):
    """The journal used to reserve 1 TiB of address space for its map:
    under `ulimit -v` every match failed ("out of memory: ...journal:
    opening"). It now maps what it holds and grows."""
    fst = plain_featstore()
    limit_kb = 16 * 1000 * 1000         # 16 GB, a common cluster setting
    src, pairs = synth(w, "f.h5", 60, 256, 64, npairs=1500)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--workers", "2")

    def limited(out, env=None):
        return subprocess.Popen(["bash", "-c", f'ulimit -v {limit_kb} && exec "$0" "$@"', fst,
                                 "match", store, pairs, "-o", out, "--device", "cpu",
                                 "--workers", "2", "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=base_env(env))

    out = w.p("m.h5")
    p = limited(out)
    err = p.communicate(timeout=600)[1]
    assert p.returncode == 0, f"match under ulimit -v {limit_kb}: exit {p.returncode}: {err}"
    sanitizer_clean(err, "match under ulimit")
    same_output(out, ref)
    # a run killed half way, resumed under the limit (the journal reopened)
    out2 = w.p("m2.h5")
    p = limited(out2, {"FST_TEST_PAIR_DELAY_MS": "4"})
    journal = out2 + ".journal"
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        if os.path.exists(journal) and os.path.getsize(journal) > 300 << 10:
            break
        time.sleep(0.1)
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert not killed or os.path.exists(journal), "no journal left by the killed run"
    p = limited(out2)
    err = p.communicate(timeout=600)[1]
    assert p.returncode == 0, f"resumed match under ulimit -v: exit {p.returncode}: {err}"
    same_output(out2, ref)
    assert not os.path.exists(journal)
    figure("match_ulimit", f"match of 1500 pairs under ulimit -v {limit_kb // 1000 // 1000} GB: "
                           f"complete, identical; a run killed half way resumed under it "
                           f"({'killed' if killed else 'finished before the kill'}), identical")


def case_concurrent_match(w):
    src, pairs = synth(w, "f.h5", 60, 160, 64, npairs=600)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    with open(pairs) as f:
        lines = f.readlines()
    p1, p2 = w.p("p1.txt"), w.p("p2.txt")
    with open(p1, "w") as f:
        f.writelines(lines[:400])
    with open(p2, "w") as f:
        f.writelines(lines[200:])
    match(store, p1, w.p("ref1.h5"), "--workers", "2")
    match(store, p2, w.p("ref2.h5"), "--workers", "2")
    env = base_env({"FST_TEST_PAIR_DELAY_MS": "2"})
    rounds = 3
    for i in range(rounds):
        a = subprocess.Popen([FST, "match", store, p1, "-o", w.p(f"a{i}.h5"), "--device", "cpu",
                              "--workers", "2", "--quiet"], env=env, stderr=subprocess.PIPE,
                             text=True)
        b = subprocess.Popen([FST, "match", store, p2, "-o", w.p(f"b{i}.h5"), "--device", "cpu",
                              "--workers", "2", "--quiet"], env=env, stderr=subprocess.PIPE,
                             text=True)
        ea, eb = a.communicate(timeout=600)[1], b.communicate(timeout=600)[1]
        assert a.returncode == 0, ea
        assert b.returncode == 0, eb
        sanitizer_clean(ea + eb, "concurrent match")
        same_output(w.p(f"a{i}.h5"), w.p("ref1.h5"))
        same_output(w.p(f"b{i}.h5"), w.p("ref2.h5"))
    # two runs on the same output at once: one is refused (or the first was
    # already done), the output is complete either way
    out = w.p("same.h5")
    procs = [subprocess.Popen([FST, "match", store, p1, "-o", out, "--device", "cpu",
                               "--workers", "1", "--quiet"], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    sanitizer_clean("".join(errs), "same output")
    assert codes in ([0, 0], [0, 1]), (codes, errs)
    if codes == [0, 1]:
        msg = [e for p, e in zip(procs, errs) if p.returncode == 1][0]
        assert "another" in msg.lower() or "exist" in msg.lower() or "lock" in msg.lower(), msg
    same_output(out, w.p("ref1.h5"))
    figure("concurrent_match", f"{rounds} rounds of 2 concurrent runs (400 pairs each, 2 workers "
                               f"each) on one store: identical to sequential runs; 2 runs on one "
                               f"output: exits {codes}, output complete")


def case_append_during_match(w):
    src, pairs = synth(w, "a.h5", 60, 160, 64, npairs=500, prefix="a/img")
    extra, _ = synth(w, "b.h5", 160, 2048, 64, prefix="b/img", seed=9)   # ~40 MB: grows the map
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    ref = w.p("ref.h5")
    match(store, pairs, ref, "--workers", "2")
    out = w.p("out.h5")
    env = base_env({"FST_TEST_PAIR_DELAY_MS": "8"})
    t0 = time.time()
    m = subprocess.Popen([FST, "match", store, pairs, "-o", out, "--device", "cpu",
                          "--workers", "2", "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    ra = run(["import", extra, store, "--append", "--quiet"], timeout=600)
    t_append = time.time() - t0
    still = m.poll() is None
    err = m.communicate(timeout=600)[1]
    t_match = time.time() - t0
    assert m.returncode == 0, err
    sanitizer_clean(err + ra.stderr, "append during match")
    assert still, "the match ended before the append: make it slower"
    same_output(out, ref)
    verify_clean(store)
    assert info(store)["images"] == 220
    figure("append_during_match", f"append of 160 images (~40 MB, map grown) finished at "
                                  f"{t_append:.1f} s into a {t_match:.1f} s match of 500 pairs: "
                                  f"match output identical, store verifies")


def case_readers_512(w):
    n = int(os.environ.get("FST_READERS_N", "512"))
    src, _ = synth(w, "f.h5", 200, 256, 64)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    r = subprocess.run([READERS, store, str(n)], capture_output=True, text=True, timeout=900,
                       env=base_env())
    sanitizer_clean(r.stderr, "readers")
    assert r.returncode == 0, r.stdout + r.stderr
    log(r.stdout.strip())
    figure("readers", r.stdout.strip().replace("readers: ", ""))
    verify_clean(store)


def store_mapped_by(pid, store, depth):
    """True once a process `depth` or more levels under `pid` maps `store`:
    a match's workers (not its coordinator, which opens the store only for
    a moment) have it open."""
    todo, seen = [(pid, 0)], set()
    while todo:
        p, d = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        if d >= depth:
            try:
                with open(f"/proc/{p}/maps") as f:
                    if store in f.read():
                        return True
            except OSError:
                pass
        todo += [(c, d + 1) for c in caselib.children(p, live_only=True)]
    return False


def append_refused_during(cmd, store, depth, src2, ref_out, out):
    """Run the match `cmd` (writing `out`; its workers `depth` levels below
    the process started) slowly; once its workers have the store open, an
    `import --append` of src2 must be refused as a lock-less reader's, the
    store unchanged; the match must then complete with `ref_out`'s
    content."""
    before = file_bytes(store)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=base_env({"FST_TEST_PAIR_DELAY_MS": "100"}))
    try:
        deadline = time.time() + 60
        while not store_mapped_by(p.pid, store, depth):
            assert p.poll() is None and time.time() < deadline, "the match never opened the store"
            time.sleep(0.05)
        r = run(["import", src2, store, "--append", "--quiet"], expect=1)
        clear_message(r, "without its lock file")
        assert p.poll() is None, "the match ended before the append was tried: too fast"
        assert file_bytes(store) == before
        o, e = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    sanitizer_clean(e, " ".join(cmd))
    assert p.returncode == 0, e
    same_output(out, ref_out)


def case_shared_store(w):
    """Issue 10 item 7: a store imported by root (files 644) is read by
    `nobody` (info, verify, export, match: the outputs of root's own run),
    first with no lock file, then with root's; in a directory nobody owns
    but cannot write; on a read-only bind mount (as root); and with
    --no-lock. Nothing creates a lock file where it cannot. An append is
    refused while such a reader has the store open and goes through after;
    an append that cannot write the lock file names it."""
    runuser = shutil.which("runuser")
    if os.geteuid() != 0 or not runuser:
        print("# SKIP: needs root and runuser to run as another user")
        return
    src, pairs = synth(w, "f.h5", 30, 128, 64, npairs=60)
    src2, _ = synth(w, "g.h5", 6, 128, 64, prefix="g/img", seed=3)
    ref = w.p("ref.fst")
    run(["import", src, ref, "--quiet"])
    match(ref, pairs, w.p("ref.h5"), "--workers", "2")
    run(["export", ref, w.p("refx.h5"), "--quiet"])
    nimages = info(ref)["images"]
    os.chmod(w.dir, 0o755)
    for f in ("f.h5", "g.h5", os.path.basename(pairs)):
        os.chmod(w.p(f), 0o644)
    out = w.p("out")
    os.mkdir(out)
    os.chmod(out, 0o777)
    checks = 0

    def as_nobody(args, expect=0, env=None):
        return run(["-u", "nobody", "--", FST] + args, expect=expect, env=env,
                   cmd=[runuser])

    def reads_all(store, tag, runas, *extra):
        """info, verify, export and match on `store`: what root's run gave."""
        nonlocal checks
        r = runas(["info", store, "--json", *extra])
        d = json.loads(r.stdout)
        assert d["images"] == nimages and d["lock_file"] is False, (tag, d)
        runas(["verify", store, "--quiet", *extra])
        x = os.path.join(out, f"x-{tag}.h5")
        runas(["export", store, x, "--quiet", *extra])
        same_output(x, w.p("refx.h5"))
        m = os.path.join(out, f"m-{tag}.h5")
        runas(["match", store, pairs, "-o", m, "--device", "cpu", "--workers", "2", "--quiet",
               *extra])
        same_output(m, w.p("ref.h5"))
        checks += 4

    sdir = w.p("s")
    os.mkdir(sdir)
    store = os.path.join(sdir, "db.fst")
    lock = store + "-lock"
    run(["import", src, store, "--quiet"])
    assert not os.path.exists(lock)
    reads_all(store, "nolockfile", as_nobody)
    assert not os.path.exists(lock), "a lock file was created"
    run(["info", store])                            # root's reader makes one, 644
    assert os.path.exists(lock) and os.stat(lock).st_mode & 0o777 == 0o644
    reads_all(store, "rootlock", as_nobody)
    before = file_bytes(store)

    # nobody cannot append: the message names the lock file
    r = as_nobody(["import", src2, store, "--append", "--quiet"], expect=1)
    clear_message(r, "db.fst-lock: permission denied")
    assert file_bytes(store) == before
    checks += 1

    # root's append while nobody's lock-less match runs: refused, the match
    # unaffected; after it, the append goes through
    m = os.path.join(out, "m-during.h5")
    append_refused_during([runuser, "-u", "nobody", "--", FST, "match", store, pairs, "-o", m,
                           "--device", "cpu", "--workers", "2", "--quiet"], store, 2, src2,
                          w.p("ref.h5"), m)
    run(["import", src2, store, "--append", "--quiet"])
    assert info(store)["images"] == nimages + 6
    verify_clean(store)
    checks += 3

    # a directory nobody owns but cannot write, no lock file
    rodir = w.p("ro")
    os.mkdir(rodir)
    rostore = os.path.join(rodir, "db.fst")
    shutil.copy(ref, rostore)
    nobody = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True,
                                check=True).stdout)
    os.chown(rostore, nobody, -1)
    os.chown(rodir, nobody, -1)
    os.chmod(rodir, 0o555)
    reads_all(rostore, "rodir", as_nobody)
    assert not os.path.exists(rostore + "-lock")
    before = file_bytes(rostore)
    r = as_nobody(["import", src2, rostore, "--append", "--quiet"], expect=1)
    clear_message(r, "db.fst-lock: permission denied")
    assert file_bytes(rostore) == before
    checks += 1

    # a read-only file system (a read-only bind mount of s/), as root
    mnt = w.p("mnt")
    os.mkdir(mnt)
    mounted = subprocess.run(["mount", "--bind", sdir, mnt], capture_output=True, text=True)
    if mounted.returncode == 0:
        try:
            rm = subprocess.run(["mount", "-o", "remount,ro,bind", mnt], capture_output=True,
                                text=True)
            if rm.returncode == 0:
                mstore = os.path.join(mnt, "db.fst")
                # s/db.fst has g.h5's images now: compare with a store that has them
                run(["import", src2, ref, "--append", "--quiet"])
                nimages += 6
                run(["export", ref, w.p("refx2.h5"), "--quiet"])
                os.replace(w.p("refx2.h5"), w.p("refx.h5"))
                reads_all(mstore, "rofs", lambda a, **k: run(a, **k))
                r = run(["import", src2, mstore, "--append", "--quiet"], expect=1)
                clear_message(r, "db.fst-lock: read-only file system")
                checks += 1
            else:
                log(f"cannot remount read-only ({rm.stderr.strip()}): that part skipped")
        finally:
            subprocess.run(["umount", mnt], check=True)
    else:
        log(f"cannot bind-mount ({mounted.stderr.strip()}): read-only file system part skipped")

    # asked for: --no-lock on a store whose lock file root could use; the
    # workers read without it too (an append is refused while they run)
    reads_all(ref, "asked", lambda a, **k: run(a, **k), "--no-lock")
    m = os.path.join(out, "m-asked-during.h5")
    append_refused_during([FST, "match", ref, pairs, "-o", m, "--device", "cpu", "--workers",
                           "2", "--quiet", "--no-lock"], ref, 1, src2, w.p("ref.h5"), m)
    checks += 1

    # the lock file fails in another way (its mmap refused): the error names
    # the lock file, not the store; --no-lock does without it
    r = run(["info", ref], expect=1, env=shim_env(ops="mmap", path="ref.fst-lock",
                                                  errno="ENOMEM"))
    clear_message(r, "ref.fst-lock")
    run(["info", ref, "--no-lock"], env=shim_env(ops="mmap", path="ref.fst-lock",
                                                 errno="ENOMEM"))
    checks += 2
    figure("shared_store", f"{checks} runs as another user, from a read-only directory, a "
                           f"read-only file system and with --no-lock: all read the store "
                           f"without its lock file; appends refused meanwhile")


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}


if __name__ == "__main__":
    caselib.main(CASES, Workdir)
