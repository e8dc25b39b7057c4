#!/usr/bin/python3
"""run_pytest.py [pytest args...] : run pytest on tests/python and report one
TAP line per test case on stdout (tools/test_summary.py counts them), with
pytest's own report, its closing line included, on stderr and as TAP
comments at the end."""
import os
import sys

import pytest

tap = None


class TapPlugin:
    def __init__(self):
        self.n = 0
        self.counts = {}

    def _line(self, ok, report, note=""):
        self.n += 1
        tap.write(f"{'ok' if ok else 'not ok'} {self.n} {report.nodeid}{note}\n")

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.skipped:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
                self._line(True, report, f" # SKIP {reason}")
            elif report.passed:
                self._line(True, report)
            else:
                self._line(False, report)
                for line in str(report.longrepr).splitlines()[-30:]:
                    tap.write(f"# {line}\n")
        elif report.when == "teardown" and report.failed:
            self._line(False, report, " (teardown)")

    def pytest_terminal_summary(self, terminalreporter):
        stats = terminalreporter.stats
        parts = [f"{len(v)} {k}" for k, v in stats.items() if k and v]
        self.summary = ", ".join(parts)



def main():
    global tap
    # multiprocessing's spawn re-imports this file as __mp_main__: only
    # the real run may start pytest.
    tap = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                 # pytest's report goes to stderr
    sys.stdout = sys.stderr
    plugin = TapPlugin()
    here = os.path.dirname(os.path.abspath(__file__))
    args = ["-p", "no:cacheprovider", "-rfEs", here] + sys.argv[1:]
    rc = pytest.main(args, plugins=[plugin])
    tap.write(f"1..{plugin.n}\n")
    tap.write(f"# pytest: {getattr(plugin, 'summary', '')} (exit {int(rc)})\n")
    sys.exit(int(rc))


if __name__ == "__main__":
    main()
