#!/usr/bin/python3
"""Print how many of the example's planted correspondences matches.h5 holds.

usage: example_recall.py MATCHES.h5 TRUTH.txt
TRUTH.txt lines: name0 name1 i j (keypoint i of name0 planted in name1 at j).
Reads matches.h5 the way hloc does (pair key name0/name1 with '/' -> '-').
"""
import sys
from collections import defaultdict

import h5py


def pair_key(a, b):
    return a.replace('/', '-') + '/' + b.replace('/', '-')


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    truth = defaultdict(list)
    with open(sys.argv[2]) as f:
        for line in f:
            n0, n1, i, j = line.split()
            truth[(n0, n1)].append((int(i), int(j)))
    found = total = 0
    with h5py.File(sys.argv[1], 'r') as h:
        for (n0, n1), ij in truth.items():
            key, rev = pair_key(n0, n1), False
            if key not in h:
                key, rev = pair_key(n1, n0), True
            m = h[key]['matches0'][()]
            for i, j in ij:
                total += 1
                if rev:
                    i, j = j, i
                found += int(m[i] == j)
    print(f'{found} of {total} planted correspondences matched '
          f'({100.0 * found / max(total, 1):.1f}%)')
    sys.exit(0 if total and found >= 0.95 * total else 1)


main()
