"""
Workers sharing one account's rate limit, joining and leaving: real `klavi-async worker`
processes, a local nats-server, the bench emulator at a TPS limit in its own process.

    python benchmarks/fleet_limit.py [--limit 100] [--workers 2|3] [--no-plot]

The issue's timeline: worker A starts; B joins 6 s later; (with three, C 6 s after B);
A stops 10 s after the last joined; the rest run on for 14 s.  Run twice, with the
limit shared (the default) and each worker adapting alone (`--no-shared-limit`).  Each
worker's accepted rate comes from its own progress lines (`ok N` every 0.5 s, stamped
as they are read); the 429 share from the emulator's log.  Prints the figures against
the issue's targets and, with matplotlib (the `bench` extra), plots each worker's rate
over time to docs/img/fleet-limit.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from fleet import nats_server
from ratelimit import emulator, server_log

from klavi_async import CancelRequest
from klavi_async.nats import connect, enqueue, ensure_streams

HERE = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).parent / "klavi-async")
JOIN = 6.0  # seconds between starts
LEAVE = 10.0  # A stops this long after the last joined
AFTER = 14.0  # the others run on this long after A stopped
DOCUMENT = "52998224725"


async def _worker(url: str, base: str, flag: str | None) -> asyncio.subprocess.Process:
    env = {**os.environ, "KLAVI_TOKEN": "bench-token", "KLAVI_BASE_URL": base}
    command = [CLI, "worker", "--nats-url", url, "--concurrency", "32"]
    command += ["--progress-interval", "0.5", *([flag] if flag else [])]
    return await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )


async def _follow(process: asyncio.subprocess.Process, start: float, out: list[Any]) -> None:
    """(seconds since the start, ok so far, fleet size or None) per progress line."""
    assert process.stderr is not None
    while line := (await process.stderr.readline()).decode():
        ok = re.search(r"done \d+ \(ok (\d+)\)", line)
        if ok:
            size = re.search(r"shared by (\d+)", line)
            out.append((time.monotonic() - start, int(ok.group(1)), size and int(size.group(1))))


async def run(url: str, base: str, workers: int, shared: bool) -> dict[str, Any]:
    nc = await connect(url)
    js = nc.jetstream()
    try:
        await ensure_streams(js)
        total = int(130 * (JOIN * (workers - 1) + LEAVE + AFTER))  # more than can be done
        prefix = uuid.uuid4().hex[:8]
        await enqueue(js, (CancelRequest(f"{prefix}-{i}", DOCUMENT) for i in range(total)))
        flag = None if shared else "--no-shared-limit"
        start = time.monotonic()
        processes, lines, followers = [], [], []
        for number in range(workers):
            if number:
                await asyncio.sleep(JOIN)
            process = await _worker(url, base, flag)
            processes.append(process)
            lines.append([])
            followers.append(asyncio.create_task(_follow(process, start, lines[-1])))
        await asyncio.sleep(LEAVE)
        left = time.monotonic() - start
        processes[0].terminate()
        await asyncio.sleep(AFTER)
        for process in processes[1:]:
            process.terminate()
        for process in processes:
            await process.wait()
        await asyncio.gather(*followers)
        end = time.monotonic()
        await js.purge_stream("KLAVI_CANCEL")
    finally:
        await nc.close()
    joined = [JOIN * n for n in range(workers)]
    return {"lines": lines, "joined": joined, "left": left, "start": start, "end": end}


def rate(lines: list[Any], a: float, b: float) -> float:
    """Cancels per second a worker's progress lines show between *a* and *b*."""
    inside = [(t, ok) for t, ok, _ in lines if a <= t <= b]
    if len(inside) < 2:
        return 0.0
    (t0, ok0), (t1, ok1) = inside[0], inside[-1]
    return (ok1 - ok0) / (t1 - t0)


def figures(result: dict[str, Any], limit: float, log: list[list[Any]]) -> dict[str, float]:
    lines, joined, left = result["lines"], result["joined"], result["left"]
    last = joined[-1]
    together = (last + 4.0, left)
    alone_after = (left + 4.0, left + AFTER - 1.0)
    start, end = result["start"], result["end"]
    cancels = [row for row in log if row[2] == "cancel" and start <= row[0] <= end]
    refused = sum(1 for row in cancels if row[1] == 429)
    return {
        "joiner": rate(lines[-1], *together) / limit,
        "together": sum(rate(w, *together) for w in lines) / limit,
        "after": sum(rate(w, *alone_after) for w in lines[1:]) / limit,
        "refused": refused / max(len(cancels), 1),
    }


def plot(results: dict[str, dict[str, Any]], limit: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    for ax, (mode, result) in zip(axes, results.items(), strict=True):
        for name, lines in zip("ABC", result["lines"], strict=False):
            points = [(t, ok) for t, ok, _ in lines]
            xs = [(a[0] + b[0]) / 2 for a, b in itertools.pairwise(points)]
            ys = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(points)]
            ax.plot(xs, ys, lw=1.4, label=f"worker {name}")
        ax.axhline(limit, color="black", ls="--", lw=1, label=f"limit {limit:g}/s")
        ax.axvline(result["left"], color="gray", ls=":", lw=1, label="A stops")
        ax.set_title(mode)
        ax.set_xlabel("seconds since A started")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cancels accepted per second (per 0.5 s)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=float, default=100.0)
    parser.add_argument("--workers", type=int, choices=(2, 3), default=2)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with nats_server() as (url, _), emulator(args.limit) as base:
        for mode, shared in (("shared (the default)", True), ("each alone", False)):
            results[mode] = asyncio.run(run(url, base, args.workers, shared))
        log = server_log(base)
    print(f"{args.workers} workers at concurrency 32 against {args.limit:g} requests/s\n")
    print("| | joiner, 4 s after joining | together then | after A left | 429s |")
    print("|---|---:|---:|---:|---:|")
    for mode, result in results.items():
        f = figures(result, args.limit, log)
        print(
            f"| {mode} | {f['joiner']:.2f} | {f['together']:.2f} | {f['after']:.2f} "
            f"| {f['refused']:.1%} |"
        )
    print(
        "\ntargets (of the limit): joiner >= 0.33 (two workers), together >= 0.85, "
        "after A left >= 0.80, 429s <= 10 %"
    )
    if not args.no_plot:
        try:
            plot(results, args.limit, HERE.parent / "docs" / "img" / "fleet-limit.png")
            print("plot: docs/img/fleet-limit.png")
        except ImportError:
            print("no plot: pip install -e '.[bench]' for matplotlib")


if __name__ == "__main__":
    main()
