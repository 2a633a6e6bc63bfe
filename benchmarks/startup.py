"""
Start-up cost: `klavi-async --help` and `import klavi_async` against `import aiohttp`.

    python benchmarks/startup.py [--rounds 7] [--source DIR]

Each round runs every command once, in turn (alternating, so a busy moment hits all of
them alike); the table shows the median and the spread of *rounds* wall times, and each
median as a multiple of `import aiohttp`'s.  *--source* measures the klavi_async of
another checkout (say, a worktree of an older commit) through PYTHONPATH, with the CLI
run as `python -c "from klavi_async._cli import main; main()"` so the entry point is the
checkout's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CLI = "from klavi_async._cli import main; main()"
COMMANDS = {
    "import aiohttp": [sys.executable, "-c", "import aiohttp"],
    "klavi-async --help": [sys.executable, "-c", CLI, "--help"],
    "import klavi_async": [sys.executable, "-c", "import klavi_async"],
    "from klavi_async import KlaviClient": [
        sys.executable,
        "-c",
        "from klavi_async import KlaviClient",
    ],
    "python -c pass": [sys.executable, "-c", "pass"],
}


def once(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--source", help="a checkout whose klavi_async to measure")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.source:
        env["PYTHONPATH"] = os.path.abspath(args.source)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the disk cache, not measured
        once(command, env)
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(once(command, env))
    floor = statistics.median(times["import aiohttp"])
    print(f"source: {args.source or 'installed'}; median of {args.rounds} alternating rounds")
    print("| command | median ms | min-max ms | x import aiohttp |")
    print("|---|---:|---:|---:|")
    for name, found in times.items():
        median = statistics.median(found)
        print(
            f"| `{name}` | {median * 1000:.0f} | {min(found) * 1000:.0f}-{max(found) * 1000:.0f}"
            f" | {median / floor:.2f}x |"
        )


if __name__ == "__main__":
    main()
