"""caselib.py : what the Python test scripts (tests/match/e2e.py,
tests/trust/trust.py, tests/trust/soak.py) share: their TAP runner, a look
at a process's children in /proc, and an HDF5 file's whole content."""
import os
import sys
import time
import traceback


def run_cases(cases, workdir, names=None):
    """Run the named cases (all of `cases`, a dict name -> fn(w), when
    `names` is empty) in order, each with workdir(name) as its argument,
    printing one TAP line each. A case fails by raising; its traceback is
    printed as TAP comments and its files kept (w.dir), else w.cleanup().
    Returns the exit status: 1 if any failed, else 0."""
    names = names or list(cases)
    print(f"1..{len(names)}")
    failed = 0
    for i, name in enumerate(names, 1):
        w = workdir(name)
        t0 = time.time()
        try:
            cases[name](w)
            print(f"ok {i} {name} ({time.time() - t0:.1f} s)", flush=True)
            w.cleanup()
        except Exception:
            failed += 1
            for line in traceback.format_exc().splitlines():
                print("#", line)
            print(f"not ok {i} {name} (files kept in {w.dir})", flush=True)
    return 1 if failed else 0


def main(cases, workdir):
    """run_cases() on the names given on the command line, as the exit status."""
    sys.exit(run_cases(cases, workdir, sys.argv[1:]))


def children(pid, live_only=False):
    """The pids whose parent is `pid` (zombies too, unless live_only)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[1]) == pid and not (live_only and rest[0] == "Z"):
            kids.append(int(d))
    return kids


def h5_content(path):
    """{dataset path: (dtype, bytes)} of a whole HDF5 file, for comparing
    two files dataset by dataset (h5py imported here: only some scripts
    need it)."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (str(obj.dtype), obj[()].tobytes())
        f.visititems(visit)
    return out
