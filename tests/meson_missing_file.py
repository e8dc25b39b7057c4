#!/usr/bin/python3
"""meson_missing_file.py SRCDIR [MESON] : a file the build lists that is
missing fails `meson setup`, naming it; nothing vanishes from the build
silently.

Copies the source tree (no build folders, no .git), deletes one listed file
at a time and runs `meson setup -Dcuda=disabled` on the copy, which must
fail and name the file. The untouched copy must set up (the control: a
failure is the deleted file's, not the copy's).
"""
import os
import shutil
import subprocess
import sys
import tempfile

DELETE = [
    None,                           # control
    "tests/test_kernels.c",         # a listed unit test
    "tests/trust/meson.build",      # a test area
    "loaders/export.c",             # a library source
]


def ignore(d, names):
    return [n for n in names if n == ".git" or n.startswith("build")
            or n == "__pycache__"]


def main():
    src = os.path.abspath(sys.argv[1])
    meson = sys.argv[2] if len(sys.argv) > 2 else "meson"
    bad = 0
    with tempfile.TemporaryDirectory(prefix="fst-missing-") as tmp:
        for rel in DELETE:
            tree = os.path.join(tmp, "src")
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(src, tree, ignore=ignore, symlinks=True)
            if rel:
                os.unlink(os.path.join(tree, rel))
            r = subprocess.run([meson, "setup", os.path.join(tmp, "b"), tree,
                                "-Dcuda=disabled"], capture_output=True, text=True)
            out = r.stdout + r.stderr
            shutil.rmtree(os.path.join(tmp, "b"), ignore_errors=True)
            name = os.path.basename(rel) if rel else None
            if rel is None and r.returncode != 0:
                print("not ok: the untouched tree does not set up:\n" + out[-3000:])
                bad += 1
            elif rel and r.returncode == 0:
                print("not ok: without %s the build still sets up" % rel)
                bad += 1
            elif rel and name not in out:
                print("not ok: without %s setup fails but does not name it:\n%s"
                      % (rel, out[-3000:]))
                bad += 1
            else:
                print("ok: %s" % ("untouched tree sets up" if rel is None else
                                  "without %s setup fails naming it" % rel))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
