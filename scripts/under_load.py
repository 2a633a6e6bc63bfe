"""
`make test` on a busy machine: two CPU hogs keep both cores busy while it runs N times.

    python scripts/under_load.py [--runs 3] [--hogs 2]

Prints each run's wall time, exit status and the load average at its end, then a line
`under load: P of N runs passed`; exits 0 only when every run passed.  The hogs are
killed however it ends.  `make test-under-load` runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HOG = "while True: pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=2)
    args = parser.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    passed = 0
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            done = subprocess.run(["make", "test"], check=False)
            elapsed = time.monotonic() - started
            load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            passed += done.returncode == 0
            print(
                f"under load: run {run}: exit {done.returncode} in {elapsed / 60:.1f} min "
                f"(load average {load})",
                flush=True,
            )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"under load: {passed} of {args.runs} runs passed with {args.hogs} CPU hogs")
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
