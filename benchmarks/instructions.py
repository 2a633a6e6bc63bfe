"""
Instructions per call, counted by valgrind (callgrind): a check that wall-clock noise cannot move.

    python benchmarks/instructions.py [CONTENDER ...] [--small 1000] [--large 3000]
    python benchmarks/instructions.py --worker [CONTENDER ...]

For each contender (default: plain aiohttp in a pool of workers, the floor, and under
gather + a semaphore; `cancel_payment` in the same pool; `cancel_many`), runs `run_one.py` under
`valgrind --tool=callgrind` twice, with N = *small* and N = *large* calls at concurrency 64,
against `server.py` in its own process (not under valgrind).  The difference in the client's
instruction count, divided by the difference in calls, is the cost of one call with start-up,
imports and the warm-up cancelled out.  Takes a few minutes; needs valgrind on PATH.

With `--worker`, also counts a `CancelWorker` the same way (`profile_worker.py --once`,
a local nats-server not under valgrind, the requests queued by a child process): what
one cancel costs a worker, beside what it costs `cancel_many`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import server
from fleet import nats_server

HERE = Path(__file__).resolve().parent


def instructions(contender: str, base: str, n: int, workdir: Path, nats: str = "") -> int:
    """The client process's instruction count for one run of *n* calls (and its warm-up)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={workdir / f'{contender}.{n}.out'}",
        sys.executable,
    ]
    if contender in (WORKER, FLOOR):
        command += [str(HERE / "profile_worker.py"), "--once", str(n)]
        command += ["--nats-url", nats, "--base", base, "--concurrency", "64"]
        command += ["--floor"] if contender == FLOOR else []
    else:
        command += [str(HERE / "run_one.py"), contender, base, str(n), "64"]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", output.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{output.stderr[-2000:]}")
    return int(match.group(1))


WORKER = "klavi_worker"
FLOOR = "nats_floor"  # a worker's broker work alone, no Klavi call: pull, publish, ack


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
    parser.add_argument("--worker", action="store_true", help="count a CancelWorker too")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    per_call: dict[str, float] = {}
    contenders = [*args.contenders, *([WORKER, FLOOR] if args.worker else [])]
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(server())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        brokered = {WORKER, FLOOR} & set(contenders)
        nats = stack.enter_context(nats_server())[0] if brokered else ""
        for contender in contenders:
            small = instructions(contender, base, args.small, Path(tmp), nats)
            large = instructions(contender, base, args.large, Path(tmp), nats)
            extra_calls = calls_measured(args.large) - calls_measured(args.small)
            per_call[contender] = (large - small) / extra_calls
            print(f"{contender}: {per_call[contender]:,.0f} instructions per call", flush=True)
    worker, many, floor = (per_call.get(k) for k in (WORKER, "klavi_cancel_many", FLOOR))
    if worker and many:
        print(f"{WORKER}: {worker / many:.3f}x klavi_cancel_many")
    if many and floor:
        # What a worker cannot avoid with nats-py: the least ratio it could reach.
        print(f"klavi_cancel_many + {FLOOR}: {(many + floor) / many:.3f}x klavi_cancel_many")
    # Against both shapes of plain aiohttp: the pool of workers is the honest floor (no
    # task per request); gather + a semaphore is what many callers write.
    for floor_name in ("raw_aiohttp_pool", "raw_aiohttp"):
        floor = per_call.get(floor_name)
        if floor:
            for contender, value in per_call.items():
                print(f"{contender}: {value / floor:.3f}x {floor_name}")


if __name__ == "__main__":
    main()
