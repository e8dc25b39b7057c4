#!/usr/bin/python3
"""Count test results from meson's testlog.json files, one per TAP test case.

A TAP program contributes each 'ok' / 'not ok' line; a program that died
before printing its plan's worth of lines counts one more failure. Other
tests count by their result. Prints 'N passed, N failed, N skipped' last.
"""
import json
import re
import sys

passed = failed = skipped = 0
for path in sys.argv[1:]:
    for line in open(path):
        t = json.loads(line)
        result = t.get('result', '')
        out = t.get('stdout') or ''
        plan = re.search(r'^1\.\.(\d+)\s*$', out, re.M)
        if t.get('protocol', '') == 'tap' or plan:
            lines = re.findall(r'^(not ok|ok)\b([^\n]*)$', out, re.M)
            p = sum(1 for k, rest in lines if k == 'ok' and '# SKIP' not in rest)
            s = sum(1 for k, rest in lines if k == 'ok' and '# SKIP' in rest)
            fl = sum(1 for k, rest in lines if k == 'not ok')
            missing = (int(plan.group(1)) - len(lines)) if plan else 0
            if result not in ('OK', 'SKIP', 'EXPECTEDFAIL') and fl == 0:
                fl += 1           # crashed, timed out or exited non-zero
            elif missing > 0:
                fl += 1
            passed += p; skipped += s; failed += fl
        elif result == 'OK':
            passed += 1
        elif result == 'SKIP':
            skipped += 1
        else:
            failed += 1
print(f'{passed} passed, {failed} failed, {skipped} skipped')
