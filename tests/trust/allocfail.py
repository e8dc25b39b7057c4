#!/usr/bin/env python3
"""allocfail.py CASE... : an allocation failure is always a clean error.

For import, import --append, verify, export and a match run (its
coordinator and, separately, its workers), fail featstore's k-th memory
allocation, for every k from 1 to the number the command makes, once as a
single failure (the next allocation succeeds) and once as exhaustion (that
one and every later one fail). The allocations are featstore's own (the
LD_PRELOAD shim allocshim.c counts malloc, calloc, realloc, strdup,
strndup, posix_memalign and aligned_alloc called from the featstore
executable; allocations inside libc, HDF5 and LMDB are theirs). After each:

  - no crash, no sanitizer report: the test build runs under ASan+UBSan,
    and LeakSanitizer at exit reports any block the failed command did not
    free (the shim forwards to ASan's allocator, so LSan sees every block);
  - a command whose allocation failed exits 1 with a one-line message that
    names featstore and says "out of memory" (a match: warnings about its
    workers may come first);
  - every file is as valid as before: a failed import leaves no store and
    no temporary; a failed append leaves the store byte for byte as it was;
    verify and export leave the store byte for byte as it was, and a failed
    export leaves no output and no temporary; a failed match leaves no
    temporary and an output, if any, holding only pairs exactly as a clean
    run matched them (pairs a worker could not match are left out; a
    failure after the output is in place leaves it whole), and the same
    command run again completes with an output identical to a clean run's
    and leaves no journal;
  - a command that succeeded although an allocation failed (a fallback
    path) produced the same result as a clean run.

Cases: alloc_import, alloc_append, alloc_verify_export,
alloc_match_coordinator, alloc_match_worker; one meson test each
(tests/trust/meson.build: trust_<case>, suite trust). Every k is covered
(the counts are small: tens per command on this data); the counts and
results are printed as `# figure:` lines (tests/RELIABILITY.md).
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trust  # noqa: E402
from trust import (FST, Workdir, base_env, caselib, figure, h5_content,  # noqa: E402
                   leftovers, log, log_problems, run, same_output, synth, verify_clean)

SHIM = os.environ.get("FST_ALLOCSHIM", "")


def shim_env(**kw):
    """Environment preloading allocshim.so with FST_ALLOC_<KEY>=value."""
    return trust.preload_env(SHIM, "FST_ALLOCSHIM", "FST_ALLOC_", **kw)


def count_allocs(w, args, argv1=None):
    """featstore's own allocations in a run of featstore ARGS that fails
    none (the largest count any process reports)."""
    st = w.p("allocs.stats")
    kw = {"stats": st}
    if argv1:
        kw["argv1"] = argv1
    run(args, env=shim_env(**kw))
    n = 0
    with open(st) as f:
        for line in f:
            n = max(n, int(line.split()[2]))
    os.unlink(st)
    return n


_where = {}


def where(offset):
    """function:line of a return address in featstore (addr2line), or the
    address itself."""
    if offset not in _where:
        try:
            r = subprocess.run(["addr2line", "-f", "-s", "-i", "-e", FST, offset],
                               capture_output=True, text=True, timeout=30)
            fl = r.stdout.split()
            _where[offset] = f"{fl[0]} {fl[1]}" if len(fl) >= 2 else offset
        except (OSError, subprocess.SubprocessError):
            _where[offset] = offset
    return _where[offset]


def attempt(w, args, k, persist, problems, desc, argv1=None):
    """Run featstore ARGS failing allocation k. Returns (hit, result, desc
    naming where the first failed allocation was made); the
    result is None (and a problem recorded) after a crash, a sanitizer
    report or an unclean exit. A command may succeed although an allocation
    failed (a best-effort step, a worker's pairs retried): check() then
    compares its result with a clean run's."""
    lp = w.p("allocs.log")
    kw = {"fail": k, "log": lp}
    if persist:
        kw["persist"] = 1
    if argv1:
        kw["argv1"] = argv1
    try:
        r = subprocess.run([FST] + args, capture_output=True, text=True,
                           env=base_env(shim_env(**kw)), timeout=120)
    except subprocess.TimeoutExpired:
        problems.append(f"{desc}: still running after 120 s (killed)")
        if os.path.exists(lp):
            os.unlink(lp)
        return 1, None, desc
    hit = 0
    if os.path.exists(lp):
        with open(lp) as f:
            sites = [l.split()[2] for l in f]
        hit = len(sites)
        os.unlink(lp)
        desc += f" (first at {where(sites[0])})"
    err = r.stderr.strip()
    lines = err.splitlines()
    bad = [l.strip() for l in lines if "Sanitizer" in l or "runtime error" in l]
    frames = [l.strip() for l in lines if l.strip().startswith("#")][:6]
    if r.returncode < 0 or bad:
        problems.append(f"{desc}: exit {r.returncode}, {bad[0] if bad else 'signal'} "
                        f"[{' <- '.join(frames)}] after '{lines[0] if lines else ''}'")
        return hit, None, desc
    if hit and r.returncode == 0:
        return hit, r, desc
    if hit and r.returncode != 1:
        problems.append(f"{desc}: exit {r.returncode}, expected 1: '{err[-300:]}'")
        return hit, None, desc
    # one line, or warnings before it (a match's workers that died)
    if hit and (not lines or not all(l.startswith("featstore ") for l in lines)
                or any(": warning: " not in l for l in lines[:-1])
                or "out of memory" not in err.lower()):
        problems.append(f"{desc}: unclear message: '{err[-500:]}'")
    if not hit and r.returncode != 0:
        problems.append(f"{desc}: nothing failed but exit {r.returncode}: '{err[-300:]}'")
        return hit, None, desc
    return hit, r, desc


def sweep(w, args, n, problems, check, argv1=None, modes=(False, True)):
    """attempt() every k in 1..n in each mode, then check(desc, hit, r)."""
    runs = hits = 0
    for persist in modes:
        for k in range(1, n + 1):
            desc = (f"featstore {args[0]}: allocation {k} of {n} "
                    f"{'and all later ones fail' if persist else 'fails'}"
                    f"{' in ' + argv1 if argv1 else ''}")
            hit, r, desc = attempt(w, args, k, persist, problems, desc, argv1)
            runs += 1
            hits += bool(hit)
            check(desc, hit, r)
    return runs, hits


def file_bytes(p):
    with open(p, "rb") as f:
        return f.read()


def data(w):
    src, pairs = synth(w, "a.h5", 12, 96, 32, npairs=20)
    src_b, _ = synth(w, "b.h5", 4, 50, 32, prefix="b/img", seed=2)
    return src, src_b, pairs


# ---- cases -------------------------------------------------------------------

def case_alloc_import(w):
    src, _, _ = data(w)
    dest = w.p("db.fst")
    args = ["import", src, dest, "--quiet"]
    n = count_allocs(w, args)
    ref = trust.info(dest)
    os.unlink(dest)
    for f in leftovers(w.dir, "db.fst"):
        os.unlink(w.p(f))
    problems = []

    def check(desc, hit, r):
        if hit and os.path.exists(dest):
            problems.append(f"{desc}: a store exists after a failed import")
        left = [f for f in leftovers(w.dir, "db.fst") if f != "db.fst"
                and not (f == "db.fst-lock" and not hit)]
        if hit and left:
            problems.append(f"{desc}: left {left}")
        if not hit and r is not None:
            verify_clean(dest)
            if trust.info(dest)["images"] != ref["images"]:
                problems.append(f"{desc}: succeeded with a different store")
        for f in leftovers(w.dir, "db.fst"):
            p = w.p(f)
            shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)

    runs, hits = sweep(w, args, n, problems, check)
    log_problems(problems)
    figure("alloc_import", f"{n} allocations; {runs} runs, {hits} failed an allocation; "
                           f"{len(problems)} problems")
    assert not problems, f"{len(problems)} problems"


def case_alloc_append(w):
    src, src_b, _ = data(w)
    pristine = w.p("pristine.fst")
    run(["import", src, pristine, "--quiet"])
    old = file_bytes(pristine)
    run(["export", pristine, w.p("old.h5"), "--quiet"])
    old_content = h5_content(w.p("old.h5"))
    changed = [0]
    dest = w.p("db.fst")
    shutil.copy(pristine, dest)
    args = ["import", src_b, dest, "--append", "--quiet"]
    n = count_allocs(w, args)
    run(["export", dest, w.p("ref.h5"), "--quiet"])
    ref = h5_content(w.p("ref.h5"))
    shutil.copy(pristine, dest)
    problems = []

    def check(desc, hit, r):
        if hit and r is not None and r.returncode != 0 and file_bytes(dest) != old:
            # an aborted append may leave pages no reader sees (the next
            # append reclaims them): the store must read as before
            changed[0] += 1
            verify_clean(dest)
            run(["export", dest, w.p("x.h5"), "--quiet"])
            if h5_content(w.p("x.h5")) != old_content:
                problems.append(f"{desc}: the store reads differently")
            os.unlink(w.p("x.h5"))
        if not hit and r is not None:
            verify_clean(dest)
            run(["export", dest, w.p("x.h5"), "--quiet"])
            if h5_content(w.p("x.h5")) != ref:
                problems.append(f"{desc}: succeeded with a different store")
            os.unlink(w.p("x.h5"))
        left = [f for f in os.listdir(w.dir) if ".tmp" in f]
        if left:
            problems.append(f"{desc}: left {left}")
        shutil.copy(pristine, dest)

    runs, hits = sweep(w, args, n, problems, check)
    log_problems(problems)
    figure("alloc_append", f"{n} allocations; {runs} runs, {hits} failed an allocation; "
                           f"store bytes unchanged after {hits - changed[0]}, the rest "
                           f"verify and export as before; {len(problems)} problems")
    assert not problems, f"{len(problems)} problems"


def case_alloc_verify_export(w):
    src, src_b, _ = data(w)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    run(["import", src_b, store, "--append", "--quiet"])
    old = file_bytes(store)
    out = w.p("x.h5")
    run(["export", store, w.p("ref.h5"), "--quiet"])
    ref = h5_content(w.p("ref.h5"))
    problems = []
    totals = []
    for args in (["verify", store, "--quiet"], ["export", store, out, "--quiet"]):
        n = count_allocs(w, args)
        if os.path.exists(out):
            os.unlink(out)

        def check(desc, hit, r):
            if file_bytes(store) != old:
                problems.append(f"{desc}: the store changed")
            if hit and os.path.exists(out):
                problems.append(f"{desc}: an output exists after a failed export")
            left = leftovers(w.dir, "x.h5")
            if hit and left:
                problems.append(f"{desc}: left {left}")
            if not hit and r is not None and args[0] == "export":
                if h5_content(out) != ref:
                    problems.append(f"{desc}: exported something else")
            for f in left:
                os.unlink(w.p(f))

        runs, hits = sweep(w, args, n, problems, check)
        totals.append(f"{args[0]}: {n} allocations, {runs} runs, {hits} failed one")
    log_problems(problems)
    figure("alloc_verify_export", "; ".join(totals) + f"; {len(problems)} problems")
    assert not problems, f"{len(problems)} problems"


def alloc_match(w, who):
    """Sweep the allocations of a match's coordinator (who="match", its
    argv[1]) or of its worker ("worker")."""
    src, _, pairs = data(w)
    store = w.p("db.fst")
    run(["import", src, store, "--quiet"])
    ref = w.p("ref.h5")
    out = w.p("m.h5")
    args = ["match", store, pairs, "-o", out, "--device", "cpu", "--workers", "1", "--quiet"]
    run(args)
    os.replace(out, ref)
    problems = []

    ref_content = h5_content(ref)
    kept = [0]

    def check(desc, hit, r):
        if hit and r is not None and r.returncode != 0 and os.path.exists(out):
            # pairs that failed (a worker out of memory) are left out of an
            # output the run still writes, and a failure after the output
            # was renamed into place (removing the journal) leaves it whole:
            # either way, every pair in it must be a clean run's
            kept[0] += 1
            try:
                got = h5_content(out)
                wrong = [k for k in got if ref_content.get(k) != got[k]]
                if wrong:
                    problems.append(f"{desc}: the output left holds {len(wrong)} "
                                    f"datasets unlike a clean run's ({wrong[0]})")
            except OSError as e:
                problems.append(f"{desc}: the output left is not readable: {e}")
        tmps = [f for f in leftovers(w.dir, "m.h5") if ".tmp" in f]
        if tmps:
            problems.append(f"{desc}: left {tmps}")
        if r is None or r.returncode != 0:
            rr = run(args, expect=None)
            if rr.returncode != 0:
                problems.append(f"{desc}: the re-run failed: {rr.stderr.strip()}")
                run(args + ["--overwrite"])
        try:
            same_output(out, ref)
        except AssertionError as e:
            problems.append(f"{desc}: output differs from a clean run's: {e}")
        left = [f for f in leftovers(w.dir, "m.h5") if f != "m.h5"]
        if left:
            problems.append(f"{desc}: {left} left after a complete run")
        for f in leftovers(w.dir, "m.h5"):
            os.unlink(w.p(f))

    n = count_allocs(w, args, argv1=who)
    os.unlink(out)
    runs, hits = sweep(w, args, n, problems, check, argv1=who)
    log_problems(problems)
    name = "coordinator" if who == "match" else "worker"
    figure(f"alloc_match_{name}", f"{n} allocations, {runs} runs, {hits} failed one; "
                                  f"{kept[0]} failed runs left an output (failed pairs "
                                  f"left out, or whole), every pair in it correct; "
                                  f"{len(problems)} problems")
    assert not problems, f"{len(problems)} problems"


def case_alloc_match_coordinator(w):
    alloc_match(w, "match")


def case_alloc_match_worker(w):
    alloc_match(w, "worker")


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}


if __name__ == "__main__":
    caselib.main(CASES, Workdir)
