"""
The CLI's own process: `klavi-async cancel-batch` with glibc's mmap threshold raised, and not.

`cancel-batch` starts by freeing one 1 MiB block (`klavi_async/_process.py`), so
asyncio's 256 KiB read buffers come from the heap; `KLAVI_ASYNC_KEEP_ALLOCATOR=1` skips
that and leaves the process as its imports left it.  Each round runs, in fresh processes
against the benchmark's raw server (`server.py`): the batch with the call (the default),
without it, and raw aiohttp's semaphore loop (`contenders.raw_aiohttp`, the floor) over
as many cancels.  The order alternates each round, and the three runs of a round share
one `PYTHONHASHSEED`, which is what decides (through the sizes of the dicts freed while
importing) whether a process without the call happens to start in the fast state.

Each run is timed from outside: wall clock from start to exit, and the child's own
user + system CPU time and minor page faults from `os.wait4`.  Those count the whole
process (start-up, imports, reading the input, writing the results file), so per cancel
they are a little above what `run_one.py` reports for the loop alone.  A run without the
call that took over half a minor page fault per cancel more than the fast-state run of its
round (same seed, same imports) is counted as in the slow state: there, each response's
buffer is freshly mapped, so each costs at least one page fault.  Linux only (`os.wait4`).

    python benchmarks/cli_batch.py [--rounds 10] [--n 20000] [--concurrency 64] [--no-docs]

Writes `benchmarks/results/cli_batch.json` and the table in docs/performance.md
(between `<!-- cli-batch:start -->` and `<!-- cli-batch:end -->`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import DOC, RESULTS, machine, replace_block, server

from klavi_async._process import KEEP_ALLOCATOR_ENV

CLI = str(Path(sys.executable).with_name("klavi-async"))
DOCUMENT = "52998224725"
MODES = ["fast state (default)", f"{KEEP_ALLOCATOR_ENV}=1", "raw aiohttp loop"]
SLOW_EXTRA_FAULTS_PER_CANCEL = 0.5


def child_env(base: str, seed: int, *, keep_allocator: bool) -> dict[str, str]:
    """Our environment without Klavi settings or malloc tuning, plus the run's own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KLAVI_", "MALLOC_")) and k != "GLIBC_TUNABLES"
    }
    env.update({"KLAVI_TOKEN": "bench-token", "KLAVI_BASE_URL": base, "PYTHONHASHSEED": str(seed)})
    if keep_allocator:
        env[KEEP_ALLOCATOR_ENV] = "1"
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, Any, str]:
    """Run *command*; return its wall time, its resource usage and its stderr's tail."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
    if process.returncode != 0:
        raise RuntimeError(f"{command[1:3]} exited {process.returncode}: {tail}")
    return wall, usage, tail


def run_cli(base: str, n: int, concurrency: int, seed: int, *, keep: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        source, out = Path(workdir, "in.csv"), Path(workdir, "out.jsonl")
        with source.open("w") as file:
            file.write("payment_id,cancelled_by\n")
            file.writelines(f"{uuid.uuid4()},{DOCUMENT}\n" for _ in range(n))
        command = [CLI, "cancel-batch", str(source), "--out", str(out)]
        command += ["--concurrency", str(concurrency)]
        wall, usage, _ = timed(command, child_env(base, seed, keep_allocator=keep))
        lines = out.read_text().splitlines()
        assert len(lines) == n
        assert all(json.loads(line)["ok"] for line in lines)
    return result(wall, usage, n)


def run_raw(base: str, n: int, concurrency: int, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--raw-child", base, str(n), str(concurrency)]
    wall, usage, _ = timed(command, child_env(base, seed, keep_allocator=True))
    return result(wall, usage, n)


def result(wall: float, usage: Any, n: int) -> dict[str, Any]:
    return {
        "n": n,
        "wall_s": wall,
        "cancels_per_s": n / wall,
        "cpu_s_per_1k": (usage.ru_utime + usage.ru_stime) / n * 1000,
        "minor_faults_per_cancel": usage.ru_minflt / n,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def run_rounds(rounds: int, n: int, concurrency: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with server() as base:
        for round_number in range(rounds):
            seed = round_number + 1
            for mode in MODES if round_number % 2 == 0 else MODES[::-1]:
                if mode == MODES[2]:
                    run = run_raw(base, n, concurrency, seed)
                else:
                    run = run_cli(base, n, concurrency, seed, keep=mode != MODES[0])
                run["seed"] = seed
                runs[mode].append(run)
                print(
                    f"round {round_number + 1} {mode}: {run['cancels_per_s']:,.0f} cancels/s, "
                    f"{run['cpu_s_per_1k']:.3f} CPU s per 1,000, "
                    f"{run['minor_faults_per_cancel']:.2f} minor faults per cancel",
                    flush=True,
                )
    return runs


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per mode; per-round ratios against the fast-state run of the same round."""
    fast = runs[MODES[0]]
    for run, base in zip(runs[MODES[1]], fast, strict=True):
        extra = run["minor_faults_per_cancel"] - base["minor_faults_per_cancel"]
        run["extra_faults_per_cancel"] = extra
        run["slow_state"] = extra > SLOW_EXTRA_FAULTS_PER_CANCEL
    rounds = range(len(fast))
    groups: dict[str, list[int]] = {mode: list(rounds) for mode in MODES}
    slow = [i for i in rounds if runs[MODES[1]][i]["slow_state"]]
    groups[f"{MODES[1]}, slow-state runs only"] = slow
    groups[f"{MODES[1]}, fast-state runs only"] = [i for i in rounds if i not in slow]
    summary: dict[str, Any] = {}
    for name, indices in groups.items():
        if not indices:
            continue
        group = [runs[name.split(", ")[0]][i] for i in indices]
        pairs = [(run, fast[i]) for run, i in zip(group, indices, strict=True)]
        summary[name] = {
            "runs": len(group),
            "seeds": [run["seed"] for run in group],
            **{
                key: statistics.median(run[key] for run in group)
                for key in ("cancels_per_s", "cpu_s_per_1k", "minor_faults_per_cancel")
            },
            "cpu_vs_fast": statistics.median(
                r["cpu_s_per_1k"] / f["cpu_s_per_1k"] for r, f in pairs
            ),
            "calls_vs_fast": statistics.median(
                r["cancels_per_s"] / f["cancels_per_s"] for r, f in pairs
            ),
        }
    return summary


def table(summary: dict[str, Any], info: dict[str, Any], n: int, concurrency: int) -> str:
    lines = [
        "| run | runs | CPU s per 1,000 cancels | cancels/s | minor page faults per cancel "
        "| CPU vs fast state | cancels/s vs fast state |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        label = name if name.startswith("raw") else f"`cancel-batch`, {name}"
        lines.append(
            f"| {label} | {row['runs']} | {row['cpu_s_per_1k']:.3f} | {row['cancels_per_s']:,.0f} "
            f"| {row['minor_faults_per_cancel']:.2f} | {row['cpu_vs_fast']:.2f}x "
            f"| {row['calls_vs_fast']:.2f}x |"
        )
    rounds = summary[MODES[0]]["runs"]
    return (
        f"Measured {info['date']} on {info['cpu']} (2 cores), Python {info['python']}, "
        f"aiohttp {info['aiohttp']}: `klavi-async cancel-batch` over {n:,} CSV rows at "
        f"concurrency {concurrency} against the raw server, {rounds} rounds, alternating; "
        f"each figure counts the whole child process (start-up, input and results file "
        f"included) and is the median over its runs; ratios are medians of per-round ratios "
        f"to the fast-state run of the same round (same `PYTHONHASHSEED`).\n\n" + "\n".join(lines)
    )


def raw_child(base: str, n: int, concurrency: int) -> None:
    """The raw aiohttp floor in this process, once (no warm-up: the CLI has none either)."""
    import contenders

    contenders.PREFIX = f"r{uuid.uuid4().hex[:8]}-"
    latencies = asyncio.run(contenders.raw_aiohttp(base, n, concurrency))
    assert len(latencies) == n


def main() -> None:
    if sys.argv[1:2] == ["--raw-child"]:
        base, n, concurrency = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        raw_child(base, n, concurrency)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--n", type=int, default=20000, help="cancels per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args()
    started = time.monotonic()
    info = machine()
    runs = run_rounds(args.rounds, args.n, args.concurrency)
    summary = summarise(runs)
    block = table(summary, info, args.n, args.concurrency)
    print("\n" + block)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_batch.json").write_text(
        json.dumps(
            {
                "machine": info,
                "n": args.n,
                "concurrency": args.concurrency,
                "summary": summary,
                "runs": runs,
                "elapsed_s": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    if not args.no_docs:
        DOC.write_text(replace_block(DOC.read_text(), "cli-batch", block))


if __name__ == "__main__":
    main()
