"""
Instructions per call, counted by valgrind (callgrind): a check that wall-clock noise cannot move.

    python benchmarks/instructions.py [CONTENDER ...] [--small 1000] [--large 3000]

For each contender (default: plain aiohttp in a pool of workers, the floor, and under
gather + a semaphore; `cancel_payment` in the same pool; `cancel_many`), runs `run_one.py` under
`valgrind --tool=callgrind` twice, with N = *small* and N = *large* calls at concurrency 64,
against `server.py` in its own process (not under valgrind).  The difference in the client's
instruction count, divided by the difference in calls, is the cost of one call with start-up,
imports and the warm-up cancelled out.  Takes a few minutes; needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import server

HERE = Path(__file__).resolve().parent


def instructions(contender: str, base: str, n: int, workdir: Path) -> int:
    """The client process's instruction count for one run of *n* calls (and its warm-up)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={workdir / f'{contender}.{n}.out'}",
        sys.executable,
        str(HERE / "run_one.py"),
        contender,
        base,
        str(n),
        "64",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", output.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{output.stderr[-2000:]}")
    return int(match.group(1))


def calls_measured(n: int) -> int:
    """run_one.py's warm-up plus its measured calls."""
    return max(n // 10, 64) + n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "contenders",
        nargs="*",
        default=["raw_aiohttp_pool", "raw_aiohttp", "klavi_pool", "klavi_cancel_many"],
    )
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    per_call: dict[str, float] = {}
    with server() as base, tempfile.TemporaryDirectory() as tmp:
        for contender in args.contenders:
            small = instructions(contender, base, args.small, Path(tmp))
            large = instructions(contender, base, args.large, Path(tmp))
            extra_calls = calls_measured(args.large) - calls_measured(args.small)
            per_call[contender] = (large - small) / extra_calls
            print(f"{contender}: {per_call[contender]:,.0f} instructions per call", flush=True)
    # Against both shapes of plain aiohttp: the pool of workers is the honest floor (no
    # task per request); gather + a semaphore is what many callers write.
    for floor_name in ("raw_aiohttp_pool", "raw_aiohttp"):
        floor = per_call.get(floor_name)
        if floor:
            for contender, value in per_call.items():
                print(f"{contender}: {value / floor:.3f}x {floor_name}")


if __name__ == "__main__":
    main()
