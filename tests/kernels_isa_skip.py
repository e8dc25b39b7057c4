#!/usr/bin/python3
"""kernels_isa_skip.py TEST_KERNELS : an instruction set this CPU lacks is a
SKIP in test_kernels' TAP output, one it has runs (ok), never a silent pass.

Runs the per-ISA variants of one cheap test and compares each line with the
CPU's flags in /proc/cpuinfo (the features each path's supported() asks
for: kernels/cpu/cpu_avx512.c, cpu_avx2.c).
"""
import subprocess
import sys

NEEDS = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
    "avx2": {"avx2", "fma", "f16c"},
    "scalar": set(),
}
TEST = "reference_ratio_boundary_is_inclusive_at_064f"


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def main():
    flags = cpu_flags()
    names = ["%s_%s" % (TEST, isa) for isa in NEEDS]
    r = subprocess.run([sys.argv[1]] + names, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.startswith(("ok ", "not ok "))]
    for l in r.stdout.splitlines():       # as comments: not this test's TAP
        print("# " + l)
    bad = 0
    if r.returncode not in (0, 77) or len(lines) != len(NEEDS):
        print("not ok: exit %d, %d result lines for %d instruction sets"
              % (r.returncode, len(lines), len(NEEDS)))
        sys.exit(1)
    for (isa, need), line in zip(NEEDS.items(), lines):
        has = need <= flags
        skipped = "# SKIP" in line
        if line.startswith("not ok") or has == skipped:
            print("not ok: %s (CPU %s it): %s" % (isa, "has" if has else "lacks", line))
            bad += 1
        else:
            print("ok: %s %s" % (isa, "ran" if has else "skipped"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
