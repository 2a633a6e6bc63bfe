"""
Scale: `cancel_many` over 10k, 100k and 1M generated requests, each size in its own process.

Memory must not grow with the input's length (peak RSS grows at most 25 MB from 10k to
1M) and throughput must not fall with size.  Throughput is also taken per tenth of each run
(the median of the ten, and the first and last tenths), which shows whether it falls as a
run goes on and is steadier than one number against this machine's noise.

    python benchmarks/scale.py [--sizes 10000 100000 1000000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import server
from run_one import equalise_allocator

from klavi_async import CancelRequest, KlaviClient


async def _requests(n: int) -> AsyncIterator[CancelRequest]:
    for i in range(n):
        yield CancelRequest(f"pay-{i}", "52998224725")


async def _run(base: str, n: int, concurrency: int) -> dict[str, float]:
    started = time.perf_counter()
    ok = 0
    tenth = max(n // 10, 1)
    marks = [started]
    async with KlaviClient(
        "bench-token", base_url=base, max_connections=max(100, concurrency)
    ) as klavi:
        async for result in klavi.cancel_many(_requests(n), concurrency=concurrency):
            ok += result.ok
            if ok % tenth == 0:
                marks.append(time.perf_counter())
    wall = time.perf_counter() - started
    assert ok == n
    tenths = [tenth / (end - start) for start, end in itertools.pairwise(marks)]
    return {
        "n": n,
        "calls_per_s": n / wall,
        "tenths_calls_per_s": tenths,
        "median_tenth_calls_per_s": statistics.median(tenths),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("BASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        equalise_allocator()  # as for every measurement: see run_one.py
        print(json.dumps(asyncio.run(_run(args.child[0], int(args.child[1]), args.concurrency))))
        return
    rows = []
    with server() as base:
        for n in args.sizes:
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    base,
                    str(n),
                    "--concurrency",
                    str(args.concurrency),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(output.stdout.strip().splitlines()[-1])
            rows.append(row)
            tenths = row["tenths_calls_per_s"]
            print(
                f"| {n:,} | {row['calls_per_s']:,.0f} | {row['median_tenth_calls_per_s']:,.0f} "
                f"| {tenths[0]:,.0f} | {tenths[-1]:,.0f} | {row['peak_rss_mib']:.1f} "
                f"| {row['seconds']:.1f} |",
                flush=True,
            )
    growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    print(f"\npeak RSS growth from {rows[0]['n']:,} to {rows[-1]['n']:,}: {growth:+.1f} MiB")
    out = HERE / "results" / "scale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"concurrency": args.concurrency, "rows": rows, "rss_growth_mib": growth}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
