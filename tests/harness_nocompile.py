#!/usr/bin/python3
"""harness_nocompile.py CC [ARG...] : what fst_test.h must refuse to compile.

ASSERT_EQ(0.3, 0.7) once passed (both sides cast to long long, 0 == 0).
Floating equality now takes a tolerance (ASSERT_NEAR), so ASSERT_EQ and
ASSERT_NE on a floating value, and a comparison of a pointer with a number,
are compile errors. Each snippet is compiled with -fsyntax-only by the
compiler and flags given (meson passes the test build's); the controls must
compile, so a snippet fails for the assert and not for a broken include.
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (body, must compile?, text the error must contain)
CASES = [
    ("ASSERT_NEAR(0.3, 0.7, 0.5);", True, None),
    ("ASSERT_LT(0.3, 0.7);", True, None),
    ("int x = 0; ASSERT_EQ(&x, &x); ASSERT_EQ(x, 0u);", True, None),
    ("ASSERT_EQ(0.3, 0.7);", False, "use ASSERT_NEAR"),
    ("ASSERT_NE(0.3f, 0.7f);", False, "use ASSERT_NEAR"),
    ("double d = 1; ASSERT_EQ(1, d);", False, "use ASSERT_NEAR"),
    ("int x = 0; ASSERT_EQ(&x, 0);", False, "one side is a pointer"),
    ("int x = 0; ASSERT_LT(x, &x);", False, "one side is a pointer"),
]


def main():
    cmd = sys.argv[1:]
    if not cmd:
        sys.exit(__doc__)
    bad = 0
    with tempfile.TemporaryDirectory(prefix="fst-harness-") as d:
        for i, (body, ok, want) in enumerate(CASES):
            src = os.path.join(d, "case%d.c" % i)
            with open(src, "w") as f:
                f.write('#include "fst_test.h"\nFST_TEST(t) { %s }\n' % body)
            r = subprocess.run(cmd + ["-I", HERE, "-fsyntax-only", src],
                               capture_output=True, text=True)
            if ok and r.returncode != 0:
                print("not ok: %s does not compile:\n%s" % (body, r.stderr))
                bad += 1
            elif not ok and r.returncode == 0:
                print("not ok: %s compiles" % body)
                bad += 1
            elif not ok and want not in r.stderr:
                print("not ok: %s: error lacks %r:\n%s" % (body, want, r.stderr))
                bad += 1
            else:
                print("ok: %s %s" % (body, "compiles" if ok else "refused: " + want))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
