"""
Profile one contender's hot path with cProfile and group the cost by where it is spent.

    python benchmarks/profile_hot_path.py [CONTENDER] [--n 5000] [--concurrency 64]

Starts `server.py` in its own process, runs the contender once to warm up, then profiles
a second run.  Prints the share of profiled time per area (klavi_async, aiohttp,
asyncio, ...) and the top functions by own time.  cProfile inflates every Python call,
so read the shares, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import server
from contenders import CONTENDERS

AREAS = [
    ("klavi_async", "/klavi_async/"),
    ("tenacity", "/tenacity/"),
    ("attrs", "<attrs generated"),
    ("aiohttp", "/aiohttp/"),
    ("yarl/multidict", "/yarl/"),
    ("yarl/multidict", "/multidict/"),
    ("asyncio", "/asyncio/"),
]


def area_of(filename: str) -> str:
    for name, marker in AREAS:
        if marker in filename:
            return name
    return "other (stdlib, builtins)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "contender", nargs="?", default="klavi_cancel_many", choices=sorted(CONTENDERS)
    )
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    contender = CONTENDERS[args.contender]
    with server() as base:
        asyncio.run(contender(base, 500, args.concurrency))
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(contender(base, args.n, args.concurrency))
        profiler.disable()
    by_area, total, rows = own_times(pstats.Stats(profiler))
    print(
        f"{args.contender}, {args.n} calls at concurrency {args.concurrency}: "
        f"{total / args.n * 1e6:.0f} µs profiled per call\n"
    )
    print_tables(by_area, total, rows, args.n, args.top)


Row = tuple[float, int, str, str]  # own seconds, calls, where, area


def own_times(stats: pstats.Stats) -> tuple[dict[str, float], float, list[Row]]:
    """Own time per area, in all, and per function, from a profile."""
    by_area: dict[str, float] = defaultdict(float)
    total = 0.0
    rows = []
    for (filename, line, name), (_, calls, own, _cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        by_area[area_of(filename)] += own
        total += own
        rows.append((own, calls, f"{Path(filename).name}:{line}({name})", area_of(filename)))
    return by_area, total, rows


def print_tables(
    by_area: dict[str, float], total: float, rows: list[Row], n: int, top: int
) -> None:
    """The share of own time per area, then the *top* functions, per call of *n*."""
    print("| area | share of own time | µs per call (profiled) |\n|---|---:|---:|")
    for area, own in sorted(by_area.items(), key=lambda item: -item[1]):
        print(f"| {area} | {own / total:.1%} | {own / n * 1e6:.1f} |")
    if top <= 0:
        return
    print(
        "\n| top functions by own time | area | calls per call | µs per call |\n|---|---|---:|---:|"
    )
    for own, calls, where, area in sorted(rows, reverse=True)[:top]:
        print(f"| `{where}` | {area} | {calls / n:.2f} | {own / n * 1e6:.1f} |")


if __name__ == "__main__":
    main()
