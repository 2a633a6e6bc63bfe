"""
One measurement in a fresh process: warm up, then time N requests of one contender.

    python benchmarks/run_one.py CONTENDER BASE_URL N CONCURRENCY [--uvloop] [--as-is]

Prints one JSON object: calls/s, client CPU microseconds per call (user + system time
of this process), p50/p99 latency in milliseconds, and peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
from contenders import CONTENDERS

from klavi_async._process import raise_mmap_threshold


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _measure(name: str, base: str, n: int, concurrency: int) -> dict[str, object]:
    contender = CONTENDERS[name]
    run = uuid.uuid4().hex[:8]
    contenders.PREFIX = f"w{run}-"
    await contender(base, max(n // 10, concurrency), concurrency)  # warm-up: imports, pools
    contenders.PREFIX = f"m{run}-"
    cpu, wall = _cpu(), time.perf_counter()
    latencies = await contender(base, n, concurrency)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    assert len(latencies) == n
    return {
        "contender": name,
        "n": n,
        "concurrency": concurrency,
        "calls_per_s": n / wall,
        "cpu_us_per_call": cpu / n * 1e6,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def equalise_allocator() -> None:
    """
    Start every contender's process from the same malloc state.

    glibc serves blocks over its mmap threshold (128 KiB at start) with mmap, and raises the
    threshold only when such a block is freed at full size.  asyncio reads each response
    into a fresh 256 KiB buffer and shrinks it, so a process that has never freed a large
    block pays mmap, mremap and munmap (and fresh zeroed pages) on every response.  Whether
    a process has freed one is an accident of its history: `asyncio.gather` over thousands
    of tasks does (large lists and dicts), a bounded worker pool never does.  Freeing one
    1 MiB block here puts every contender in the state a long-running process is in: the
    same function the CLI's commands start with (`klavi_async/_process.py`), called
    here unconditionally (its `KLAVI_ASYNC_KEEP_ALLOCATOR` switch is for the CLI).
    """
    raise_mmap_threshold()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=sorted(CONTENDERS))
    parser.add_argument("base_url")
    parser.add_argument("n", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--as-is", action="store_true", help="leave the allocator as the process's history left it"
    )
    args = parser.parse_args()
    if not args.as_is:
        equalise_allocator()
    if args.uvloop:
        import uvloop

        uvloop.install()
    result = asyncio.run(_measure(args.contender, args.base_url, args.n, args.concurrency))
    result["loop"] = "uvloop" if args.uvloop else "asyncio"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
