"""
The benchmark suite: klavi_async against raw aiohttp and peers, on one loopback server.

The server (`server.py`) runs in its own process; every measurement (`run_one.py`)
runs in a fresh process too.  Contenders alternate A/B/A/B within each round so
machine drift hits all of them alike; the report gives medians over rounds and ratios
against raw aiohttp from the same run.

    python benchmarks/bench.py [--rounds 3] [--quick] [--no-docs]

Writes `benchmarks/results/latest.json` and the table in `docs/performance.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "performance.md"

CONTENDERS = [
    "raw_aiohttp_pool",
    "raw_aiohttp",
    "klavi_pool",
    "klavi_cancel_many",
    "klavi_gather",
    "aiohttp_retry",
    "httpx",
]
FLOOR = "raw_aiohttp_pool"
"""The honest floor: plain aiohttp, a pool of `concurrency` workers over one session (no
task per request).  `raw_aiohttp` (gather + a semaphore) is a contender against it."""
CONCURRENCY = [1, 16, 64, 256]


@contextmanager
def server(*, uvloop: bool = False, emulator: bool = False) -> Iterator[str]:
    """Start `server.py` (or the emulator) in its own process; yield its base URL."""
    command = [sys.executable, str(HERE / ("emulator_server.py" if emulator else "server.py"))]
    if uvloop:
        command.append("--uvloop")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}"
    finally:
        process.terminate()
        process.wait(10)


def measure(
    contender: str,
    base: str,
    n: int,
    concurrency: int,
    *,
    uvloop: bool = False,
    as_is: bool = False,
) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "run_one.py"), contender, base, str(n), str(concurrency)]
    if uvloop:
        command.append("--uvloop")
    if as_is:
        command.append("--as-is")
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def size_for(contender: str, concurrency: int, quick: bool) -> int:
    n = 1000 if concurrency == 1 else 4000
    if contender == "httpx":
        n = min(n, 300 if concurrency >= 64 else 600)  # httpx is far slower here; see docs
    return max(n // 4, 200) if quick else n


def summarise(runs: list[dict[str, Any]], floor: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Medians over rounds, and ratios against the floor (*floor*) round by round.

    Round i of a contender and round i of raw aiohttp ran next to each other (the order
    alternates), so their ratio cancels the machine's drift between rounds; the ratio
    reported is the median of those per-round ratios.
    """
    keys = ["calls_per_s", "cpu_us_per_call", "p50_ms", "p99_ms", "peak_rss_mib"]
    summary: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    summary["runs"] = len(runs)
    summary["n"] = runs[0]["n"]
    pairs = list(zip(runs, floor, strict=True))
    cpu = [run["cpu_us_per_call"] / raw["cpu_us_per_call"] for run, raw in pairs]
    calls = [run["calls_per_s"] / raw["calls_per_s"] for run, raw in pairs]
    summary["cpu_ratio"] = statistics.median(cpu)
    summary["throughput_ratio"] = statistics.median(calls)
    summary["cpu_ratios"] = [round(r, 4) for r in cpu]
    summary["throughput_ratios"] = [round(r, 4) for r in calls]
    return summary


def run_matrix(rounds: int, quick: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with server() as base:
        for concurrency in CONCURRENCY:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
            for round_number in range(rounds):
                order = CONTENDERS if round_number % 2 == 0 else CONTENDERS[::-1]
                for name in order:
                    runs[name].append(
                        measure(name, base, size_for(name, concurrency, quick), concurrency)
                    )
            for name in CONTENDERS:
                row = {
                    "contender": name,
                    "concurrency": concurrency,
                    "loop": "asyncio",
                    **summarise(runs[name], runs[FLOOR]),
                }
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def run_pair(
    rounds: int,
    quick: bool,
    *,
    label: str,
    uvloop: bool = False,
    emulator: bool = False,
    as_is: bool = False,
) -> list[dict[str, Any]]:
    """
    raw aiohttp against cancel_many at concurrency 64: the target check (asyncio), and the
    same pair on uvloop or against the emulator.  *as_is* skips `equalise_allocator()`.
    """
    rows: list[dict[str, Any]] = []
    names = [FLOOR, "raw_aiohttp", "klavi_cancel_many"]
    with server(uvloop=uvloop, emulator=emulator) as base:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_number in range(rounds):
            for name in names if round_number % 2 == 0 else names[::-1]:
                n = size_for(name, 64, quick) // (2 if emulator else 1)
                runs[name].append(measure(name, base, n, 64, uvloop=uvloop, as_is=as_is))
        for name in names:
            row = {
                "contender": name,
                "concurrency": 64,
                "loop": label,
                **summarise(runs[name], runs[FLOOR]),
            }
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def target_block(equalised: list[dict[str, Any]], as_is: list[dict[str, Any]]) -> str:
    """The issue's two targets, from the dedicated concurrency-64 runs."""

    def quartiles(values: list[float]) -> str:
        q = statistics.quantiles(sorted(values), n=4)
        return f"{q[0]:.2f} to {q[2]:.2f}"

    lines = []
    for rows, state in ((equalised, "same for every process"), (as_is, "as each process left it")):
        row = next(r for r in rows if r["contender"] == "klavi_cancel_many")
        lines.append(
            f"| CPU per call vs the pool floor | {state} | {row['runs']} | "
            f"{row['cpu_ratio']:.3f}x | {quartiles(row['cpu_ratios'])} | ≤ 1.15x |"
        )
        lines.append(
            f"| Calls/s vs the pool floor | {state} | {row['runs']} | "
            f"{row['throughput_ratio']:.3f}x | {quartiles(row['throughput_ratios'])} | ≥ 0.90x |"
        )
    n = next(r for r in equalised if r["contender"] == "klavi_cancel_many")["n"]
    return (
        f"`cancel_many` against the plain aiohttp pool of workers at concurrency 64 (asyncio, no faults), in rounds "
        f"of {n:,} calls each, alternating, each run in its own process; the ratio is the "
        f"median over rounds of the ratio to the pool floor run beside it. Measured with the "
        f"allocator state made the same for every process (the method above), and as each "
        f"process's own history left it.\n\n"
        f"| Measure | Allocator state | Rounds | Result (median) | Middle half of rounds "
        f"| Target |\n|---|---|---:|---:|---:|---:|\n" + "\n".join(lines)
    )


def run_uvloop(rounds: int, quick: bool) -> list[dict[str, Any]]:
    """The same pair with client and server on uvloop (skipped when it is not installed)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print(
            "uvloop is not installed: skipping the uvloop rows (pip install 'klavi-async[uvloop]')"
        )
        return []
    return run_pair(rounds, quick, label="uvloop", uvloop=True)


def format_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['contender']} | {row['loop']} | {row['concurrency']} | {row['calls_per_s']:,.0f} | "
        f"{row['cpu_us_per_call']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
        f"{row['peak_rss_mib']:.1f} | {row['cpu_ratio']:.2f}x | {row['throughput_ratio']:.2f}x |"
    )


HEADER = (
    "| contender | loop | concurrency | calls/s | CPU µs/call | p50 ms | p99 ms | peak RSS MiB "
    "| CPU vs pool floor | calls/s vs pool floor |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def machine() -> dict[str, Any]:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    import aiohttp

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "aiohttp": aiohttp.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def replace_block(text: str, name: str, block: str) -> str:
    """Put *block* between `<!-- name:start -->` and `<!-- name:end -->` in *text*."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    return f"{before}{start}\n{block.strip()}\n{end}{after}"


def matrix_block(rows: list[dict[str, Any]], info: dict[str, Any], rounds: int) -> str:
    table = "\n".join([HEADER, *(format_row(r) for r in rows)])
    return (
        f"Measured {info['date']} on {info['cpu']} (2 cores), Python {info['python']}, "
        f"aiohttp {info['aiohttp']}; median of {rounds} rounds per cell; ratios are medians of "
        f"per-round ratios against the raw aiohttp run of the same round.\n\n{table}"
    )


def run_script(name: str, *args: str) -> str:
    """Run another benchmark script in its own process; return what it printed."""
    output = subprocess.run(
        [sys.executable, str(HERE / name), *args], capture_output=True, text=True, check=True
    )
    print(output.stdout, flush=True)
    return output.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--target-rounds", type=int, default=15, help="rounds of the concurrency-64 target check"
    )
    parser.add_argument(
        "--as-is-rounds",
        type=int,
        default=9,
        help="rounds of the target check with each process's allocator left as it is",
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args()
    started = time.monotonic()
    info = machine()
    print("The target check: raw aiohttp against cancel_many at concurrency 64", flush=True)
    print(HEADER, flush=True)
    target_rounds = max(4, args.target_rounds // (3 if args.quick else 1))
    target = run_pair(target_rounds, args.quick, label="asyncio")
    as_is_rounds = max(4, args.as_is_rounds // (3 if args.quick else 1))
    target_as_is = run_pair(as_is_rounds, args.quick, label="asyncio (allocator as is)", as_is=True)
    print("\n" + target_block(target, target_as_is) + "\n", flush=True)
    print(HEADER, flush=True)
    rows = (
        run_matrix(args.rounds, args.quick)
        + run_uvloop(args.rounds, args.quick)
        + run_pair(args.rounds, args.quick, label="emulator", emulator=True)
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("quick.json" if args.quick else "latest.json")
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "rounds": args.rounds,
                "target": target,
                "target_allocator_as_is": target_as_is,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    sizes = ["10000", "100000"] if args.quick else ["10000", "100000", "1000000"]
    scale = run_script("scale.py", "--sizes", *sizes)
    tokens = run_script("tokens.py", "--cancels", "2000" if args.quick else "10000")
    profile = run_script("profile_hot_path.py", "--n", "2000" if args.quick else "5000")
    run_script(
        "ratelimit.py", *(["--quick"] if args.quick else []), *(["--no-docs"] * args.no_docs)
    )
    run_script(
        "cli_batch.py", *(["--rounds", "4"] if args.quick else []), *(["--no-docs"] * args.no_docs)
    )
    run_script("fleet.py", *(["--no-docs"] * args.no_docs))
    if not args.no_docs and not args.quick:
        text = DOC.read_text()
        text = replace_block(text, "target", target_block(target, target_as_is))
        text = replace_block(text, "bench", matrix_block(rows, info, args.rounds))
        scale_table = (
            "| requests | calls/s (whole run) | calls/s (median tenth) | first tenth | last tenth "
            "| peak RSS MiB | seconds |\n|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        text = replace_block(text, "scale", scale_table + scale)
        text = replace_block(text, "tokens", "```text\n" + tokens.strip() + "\n```")
        text = replace_block(text, "profile", profile)
        DOC.write_text(text)
    print(f"\nwrote {out.relative_to(ROOT)} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
