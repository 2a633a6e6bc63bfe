"""
Two `klavi-async cancel-batch` runs on one account, the second started 5 s after the
first: each adapting alone, then sharing the limit through a local nats-server
(`--nats-url`).  The bench emulator at a TPS limit runs in its own process.

    python benchmarks/batch_share.py [--limit 200] [--runs 3]

Each batch's completions per second come from its results file (lines counted every
0.25 s); the 429 share from the emulator's log.  Printed per run: the joiner's share of
what both completed from 10 s after it joined (issue 17's "within 20 % of fair after
10 s": at least 0.4), what both completed together then (of the limit), and the 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import nats_server
from ratelimit import emulator, server_log

CLI = str(Path(sys.executable).parent / "klavi-async")
JOIN = 5.0  # the second batch starts this long after the first
MEASURE = (10.0, 15.0)  # seconds after the join: the window measured
DOCUMENT = "52998224725"


async def _batch(base: str, source: Path, out: Path, url: str | None) -> Any:
    env = {**os.environ, "KLAVI_TOKEN": "bench-token", "KLAVI_BASE_URL": base}
    command = [CLI, "cancel-batch", str(source), "--out", str(out), "--concurrency", "64"]
    command += ["--nats-url", url] if url else []
    return await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def run(base: str, url: str | None, limit: float, work: Path) -> dict[str, Any]:
    end = JOIN + MEASURE[1] + 1.0
    outs = []
    for name in "ab":
        source, out = work / f"{name}.csv", work / f"{name}-{uuid.uuid4().hex[:6]}.jsonl"
        prefix = f"{name}{uuid.uuid4().hex[:6]}"
        rows = "".join(f"{prefix}-{i},{DOCUMENT}\n" for i in range(int(limit * end)))
        source.write_text("payment_id,cancelled_by\n" + rows)
        outs.append((source, out))
    start = time.monotonic()
    first = await _batch(base, *outs[0], url)
    samples: list[tuple[float, int, int]] = []
    second = None
    while (now := time.monotonic() - start) < end:
        if second is None and now >= JOIN:
            second = await _batch(base, *outs[1], url)
        samples.append((now, _lines(outs[0][1]), _lines(outs[1][1])))
        await asyncio.sleep(0.25)
    errors = []
    for process in (first, second):
        if process is not None:
            process.send_signal(signal.SIGINT)
            _, err = await process.communicate()
            errors.append(err.decode())
    return {"samples": samples, "start": start, "end": start + end, "stderr": errors}


def figures(result: dict[str, Any], limit: float, log: list[list[Any]]) -> dict[str, float]:
    a, b = JOIN + MEASURE[0], JOIN + MEASURE[1]
    inside = [s for s in result["samples"] if a <= s[0] <= b]
    (t0, a0, b0), (t1, a1, b1) = inside[0], inside[-1]
    first, second = a1 - a0, b1 - b0
    cancels = [r for r in log if r[2] == "cancel" and result["start"] <= r[0] <= result["end"]]
    return {
        "joiner": second / max(first + second, 1),
        "together": (first + second) / (t1 - t0) / limit,
        "refused": sum(1 for r in cancels if r[1] == 429) / max(len(cancels), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=float, default=200.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with (
        nats_server() as (url, _),
        emulator(args.limit) as base,
        tempfile.TemporaryDirectory() as work,
    ):
        results = []
        for number in range(args.runs):
            for mode, via in (("each alone", None), ("shared (--nats-url)", url)):
                result = asyncio.run(run(base, via, args.limit, Path(work)))
                results.append((number + 1, mode, result))
        log = server_log(base)
    for number, mode, result in results:
        f = figures(result, args.limit, log)
        shared = "shared through NATS" in result["stderr"][1]
        rows.append(
            f"| {number} | {mode}{'' if shared or mode == 'each alone' else ' (NOT shared)'} "
            f"| {f['joiner']:.2f} | {f['together']:.2f} | {f['refused']:.1%} |"
        )
    print(f"two cancel-batch runs, 5 s apart, concurrency 64, against {args.limit:g} requests/s\n")
    print("| run | mode | joiner's share, 10-15 s after joining | together (of the limit) | 429s |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print("\ntarget: the joiner within 20 % of fair (a share of at least 0.40)")


if __name__ == "__main__":
    main()
