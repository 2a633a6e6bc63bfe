"""
The rate-limit workload: cancel batches against the emulator's TPS limit (Klavi's 429s).

    python benchmarks/ratelimit.py                  # every workload, about a minute
    python benchmarks/ratelimit.py --quick --no-docs          # a smaller smoke run
    python benchmarks/ratelimit.py --only tps100    # one workload (repeatable)
    python benchmarks/ratelimit.py --rate-limit-off # the client's limiter switched off
    python benchmarks/ratelimit.py --faults         # storms, noise, moving limits (virtual time)

The emulator (`emulator_server.py --tps-limit N`) runs in its own process, a fresh one per
workload; every client runs in a fresh process of its own (allocator equalised as in
`run_one.py`) with a default `KlaviClient` and policy, and runs one `cancel_many` batch.
The two-process workload starts both clients together against one emulator.  At the end
the emulator's request log (`GET /_bench/log`) gives what the server saw.

Per run: goodput / limit three ways: steady (the server's accepted cancels per second from
`STARTUP` seconds after the client started, leaving out its start-up, to the 90th
percentile of their timestamps: the target's measure), over the middle 80 % of those
timestamps (this bench's measure before the limiter's ramp: it starts inside the start-up
whenever a tenth of the batch is one second's worth of the limit, as at 200/s and 500/s),
and overall (successful cancels over the client's whole run, start-up included);
the 429 share of requests the server saw, cancels failed as RATE_LIMITED, other failures
by kind, p50/p99 of `result.elapsed`, the run's elapsed time, and the client's limiter
stats at the end.  For two processes, each one's share of the requests the server
accepted while both ran, and their goodput together over that window.  PASS/FAIL
against issue 11's targets is printed; the exit status is 0 either way (a report, not a gate).

Before the client has a limiter (no `rate_limit` parameter on `KlaviClient`, detected with
`inspect.signature`) it runs with the library's defaults, reports the limiter columns as
n/a and writes `results/ratelimit-before.json`; with one, `results/ratelimit.json`
(`--rate-limit-off`, which passes `rate_limit=None`: `results/ratelimit-off.json`).  The
tps-100 one-process run is also plotted over time into `docs/img/ratelimit.png`: the
client's allowed rate (sampled every 0.1 s in the client process) and the server's
accepted and 429 rates per 0.5 s.  Unless `--no-docs`, the tables between
`<!-- ratelimit:start -->` and `<!-- ratelimit:end -->` in docs/performance.md are rewritten
(the figures with the limiter, and beside them those measured before it, when present).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import inspect
import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "img" / "ratelimit.png"
sys.path.insert(0, str(HERE))

TOKEN = "bench-token"
DOCUMENT = "52998224725"
BUCKET = 0.5
"""Width in seconds of the server-side rate buckets in the time series."""
SAMPLE_EVERY = 0.1
"""Seconds between two readings of the client's allowed rate."""
STATS_FIELDS = ("allowed_rate", "throttle_events", "wait_time", "waits", "engaged")


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    limit: float
    n: int
    """Cancels per client process."""
    concurrency: int
    processes: int = 1
    series: bool = False
    """Plot this run over time."""


WORKLOADS = [
    Workload("tps100", 100, 1500, 64, series=True),
    Workload("tps500", 500, 5000, 128),
    Workload("tps200", 200, 2000, 32),
    Workload("tps100x2", 100, 1500, 64, processes=2),
]

TARGETS = {
    "rate_limited": "0 cancels failed as RATE_LIMITED",
    "share_429": "429s ≤ 5 % of requests",
    "goodput": "goodput ≥ 0.9 x limit",
    "fair": "two processes within 20 % of a fair share",
    "sum": "two processes' sum ≥ 0.85 x limit",
}


# -- the client process ----------------------------------------------------------------


def has_limiter() -> bool:
    """Whether this klavi_async's `KlaviClient` takes `rate_limit=` (the limiter is wired)."""
    from klavi_async import KlaviClient

    return "rate_limit" in inspect.signature(KlaviClient).parameters


def _stats(client: Any) -> dict[str, Any]:
    stats = client.rate_limit_stats()
    return {name: getattr(stats, name, None) for name in STATS_FIELDS}


async def _requests(n: int, prefix: str) -> AsyncIterator[Any]:
    from klavi_async import CancelRequest

    for i in range(n):
        yield CancelRequest(f"{prefix}{i}", DOCUMENT)


async def run_batch(
    base: str, n: int, concurrency: int, prefix: str, *, limiter: bool, off: bool
) -> dict[str, Any]:
    """One `cancel_many` batch with a default client; what the client saw."""
    from klavi_async import KlaviClient

    options: dict[str, Any] = {"rate_limit": None} if off else {}
    samples: list[list[float | None]] = []
    latencies: list[float] = []
    failures: dict[str, int] = {}
    ok = outcome_unknown = attempts = throttled_attempts = 0
    async with KlaviClient(
        TOKEN, base_url=base, max_connections=max(100, concurrency), **options
    ) as klavi:
        sampling = limiter and not off

        async def sample() -> None:
            while True:
                samples.append([time.monotonic(), _stats(klavi)["allowed_rate"]])
                await asyncio.sleep(SAMPLE_EVERY)

        sampler = asyncio.create_task(sample()) if sampling else None
        started = time.monotonic()
        try:
            async for result in klavi.cancel_many(_requests(n, prefix), concurrency=concurrency):
                latencies.append(result.elapsed)
                attempts += result.attempts
                throttled_attempts += sum(a.http_status == 429 for a in result.history)
                if result.ok:
                    ok += 1
                    continue
                kind = result.kind.value
                failures[kind] = failures.get(kind, 0) + 1
                outcome_unknown += result.outcome_unknown
        finally:
            ended = time.monotonic()
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        stats = _stats(klavi) if sampling else None
    ordered = sorted(latencies)
    return {
        "prefix": prefix,
        "n": n,
        "concurrency": concurrency,
        "ok": ok,
        "failures": failures,
        "outcome_unknown": outcome_unknown,
        "attempts": attempts,
        "throttled_attempts": throttled_attempts,
        "started": started,
        "ended": ended,
        "elapsed": ended - started,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        "stats": stats,
        "samples": samples,
    }


def client_main(argv: list[str]) -> None:
    """`ratelimit.py _client BASE N CONCURRENCY PREFIX [--off]`: ready, wait for GO, run."""
    parser = argparse.ArgumentParser(prog="ratelimit.py _client")
    parser.add_argument("base")
    parser.add_argument("n", type=int)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("prefix")
    parser.add_argument("--off", action="store_true")
    args = parser.parse_args(argv)
    from run_one import equalise_allocator

    equalise_allocator()
    limiter = has_limiter()
    if args.off and not limiter:
        raise SystemExit("--rate-limit-off: this KlaviClient has no rate_limit parameter")
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return  # the parent went away before the start
    result = asyncio.run(
        run_batch(args.base, args.n, args.concurrency, args.prefix, limiter=limiter, off=args.off)
    )
    result["limiter"] = limiter and not args.off
    print(json.dumps(result), flush=True)


# -- the parent: processes -------------------------------------------------------------


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if this process dies, even by SIGKILL, so no emulator
    # or client outlives an interrupted benchmark.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], **options: Any) -> subprocess.Popen[str]:
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.Popen(
        [sys.executable, *args], text=True, stdout=subprocess.PIPE, preexec_fn=preexec, **options
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def emulator(tps_limit: float) -> Iterator[str]:
    """The bench emulator with *tps_limit*, in its own process; yield its base URL."""
    process = _spawn([str(HERE / "emulator_server.py"), "--tps-limit", f"{tps_limit:g}"])
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}"
    finally:
        _stop(process)


def server_log(base: str) -> list[list[Any]]:
    """The emulator's request log: `[time, status, route, payment_id]` rows."""
    with urllib.request.urlopen(base + "/_bench/log", timeout=30) as response:  # noqa: S310
        rows: list[list[Any]] = json.loads(response.read())
    return rows


def run_clients(base: str, workload: Workload, off: bool) -> list[dict[str, Any]]:
    """Start the workload's client processes, release them together, collect their reports."""
    run = uuid.uuid4().hex[:6]
    prefixes = [f"{chr(ord('a') + i)}{run}-" for i in range(workload.processes)]
    processes: list[subprocess.Popen[str]] = []
    try:
        for prefix in prefixes:
            args = [__file__, "_client", base, str(workload.n), str(workload.concurrency), prefix]
            processes.append(_spawn(args + (["--off"] if off else []), stdin=subprocess.PIPE))
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"a client process did not start: {line!r}")
        for process in processes:  # released within a millisecond of each other
            assert process.stdin is not None
            process.stdin.write("GO\n")
            process.stdin.flush()
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=300)
            if process.returncode != 0:
                raise RuntimeError(f"a client process failed (exit {process.returncode})")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for process in processes:
            _stop(process)


# -- analysis ---------------------------------------------------------------------------


STARTUP = 4.0
"""Seconds from a client's start that the steady window leaves out: the unthrottled first
burst, the server's 1 s Retry-After, the limiter's ramp and a second 1 s pause take about
3.5 s at these limits (measured: the last of them ends by 3.6 s at 500/s)."""


def steady_window(started: float, times: list[float]) -> tuple[float, float]:
    """From `STARTUP` after the client started to the 90th percentile of sorted *times*."""
    end = times[len(times) - 1 - len(times) // 10] if times else started
    return started + STARTUP, end


def middle(times: list[float], fraction: float = 0.8) -> tuple[float, float]:
    """The window holding the middle *fraction* of sorted *times* (start-up, tail left out)."""
    if len(times) < 10:
        return (times[0], times[-1]) if times else (0.0, 0.0)
    lo = int(len(times) * (1 - fraction) / 2)
    return times[lo], times[len(times) - 1 - lo]


def rate_in(times: list[float], start: float, end: float) -> float | None:
    """
    Events per second in [start, end), over a whole number of seconds when it spans one.

    The emulator allows `limit` requests in any one-second window, in bursts: a window of
    3.2 s can hold four bursts (1.25x the limit), one of exactly 3 s at most three.
    """
    if end <= start:
        return None
    if end - start >= 1.0:
        end = start + int(end - start)
    return sum(start <= t < end for t in times) / (end - start)


def analyse(
    workload: Workload, reports: list[dict[str, Any]], log: list[list[Any]]
) -> dict[str, Any]:
    """Per process and for the run: what the server saw and what the client got."""
    limit = workload.limit
    processes = []
    for report in reports:
        rows = [r for r in log if r[3] is not None and r[3].startswith(report["prefix"])]
        accepted = sorted(r[0] for r in rows if r[1] is not None and r[1] != 429)
        cancels = sorted(r[0] for r in rows if r[2] == "cancel" and r[1] == 200)
        throttled = sum(r[1] == 429 for r in rows)
        start, end = steady_window(report["started"], cancels)
        goodput = rate_in(cancels, start, end)
        middle80 = rate_in(cancels, *middle(cancels))
        failures = dict(report["failures"])
        rate_limited = failures.pop("rate_limited", 0)
        processes.append(
            {
                **{k: v for k, v in report.items() if k not in ("samples", "failures")},
                "requests": len(rows),
                "responses_429": throttled,
                "share_429": throttled / len(rows) if rows else 0.0,
                "rate_limited": rate_limited,
                "other_failures": failures,
                "accepted": accepted,
                "steady": [start, end],
                "goodput_steady": None if goodput is None else goodput / limit,
                "goodput_middle80": None if middle80 is None else middle80 / limit,
                "goodput_overall": report["ok"] / report["elapsed"] / limit,
                "cancel_times": cancels,
            }
        )
    run: dict[str, Any] = {
        "workload": workload.name,
        "limit": limit,
        "n": workload.n,
        "concurrency": workload.concurrency,
        "processes": len(processes),
        "requests": sum(p["requests"] for p in processes),
        "responses_429": sum(p["responses_429"] for p in processes),
        "rate_limited": sum(p["rate_limited"] for p in processes),
        "ok": sum(p["ok"] for p in processes),
        "elapsed": max(p["ended"] for p in processes) - min(p["started"] for p in processes),
        "p50_ms": statistics.median(p["p50_ms"] for p in processes),
        "p99_ms": max(p["p99_ms"] for p in processes),
        "limiter": reports[0]["limiter"],
        "stats": [p["stats"] for p in processes],
    }
    run["share_429"] = run["responses_429"] / run["requests"] if run["requests"] else 0.0
    others: dict[str, int] = {}
    for p in processes:
        for kind, count in p["other_failures"].items():
            others[kind] = others.get(kind, 0) + count
    run["other_failures"] = others
    if len(processes) == 1:
        run["goodput_steady"] = processes[0]["goodput_steady"]
        run["goodput_middle80"] = processes[0]["goodput_middle80"]
        run["goodput_overall"] = processes[0]["goodput_overall"]
    else:
        # Shares only mean something while every process is sending: once one has
        # finished, the other has the whole limit to itself.
        start = max(p["steady"][0] for p in processes)
        end = min(p["steady"][1] for p in processes)
        counts = [sum(start <= t <= end for t in p["accepted"]) for p in processes]
        total = sum(counts)
        run["overlap"] = [start, end]
        run["shares"] = [c / total for c in counts] if total and end > start else None
        cancels = sorted(t for p in processes for t in p["cancel_times"])
        together = rate_in(cancels, start, end)
        run["goodput_steady"] = None if together is None else together / limit
        windows = [middle(p["cancel_times"]) for p in processes]
        old = rate_in(cancels, max(w[0] for w in windows), min(w[1] for w in windows))
        run["goodput_middle80"] = None if old is None else old / limit
        run["goodput_overall"] = run["ok"] / run["elapsed"] / limit
    for p in processes:
        del p["accepted"], p["cancel_times"]
    run["per_process"] = processes
    run["checks"] = checks(run)
    return run


def checks(run: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's targets for this run: True (PASS), False (FAIL), None (not measurable)."""
    result: dict[str, bool | None] = {
        "rate_limited": run["rate_limited"] == 0,
        "share_429": run["share_429"] <= 0.05,
    }
    goodput = run["goodput_steady"]
    if run["processes"] == 1:
        result["goodput"] = None if goodput is None else goodput >= 0.9
    else:
        shares = run["shares"]
        fair = 1 / run["processes"]
        result["fair"] = (
            None if shares is None else all(abs(s - fair) <= 0.2 * fair for s in shares)
        )
        result["sum"] = None if goodput is None else goodput >= 0.85
    return result


def series(reports: list[dict[str, Any]], log: list[list[Any]]) -> dict[str, Any]:
    """The run over time from its start: server rates per bucket, client allowed rate."""
    t0 = reports[0]["started"]
    end = max(r[0] for r in log) if log else reports[0]["ended"]
    buckets = int((end - t0) / BUCKET) + 1
    accepted, throttled = [0] * buckets, [0] * buckets
    for t, status, _, _ in log:
        index = int((t - t0) / BUCKET)
        if 0 <= index < buckets and status is not None:
            (throttled if status == 429 else accepted)[index] += 1
    return {
        "bucket": BUCKET,
        "t": [i * BUCKET for i in range(buckets)],
        "accepted_per_s": [c / BUCKET for c in accepted],
        "throttled_per_s": [c / BUCKET for c in throttled],
        "allowed": [[t - t0, rate] for t, rate in reports[0]["samples"]],
    }


def plot(run: dict[str, Any], data: dict[str, Any], mode: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = run["limit"]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    edges = [*data["t"], data["t"][-1] + BUCKET]
    ax.stairs(
        data["accepted_per_s"], edges, color="tab:green", lw=1.8, label="server: accepted / s"
    )
    ax.stairs(data["throttled_per_s"], edges, color="tab:red", lw=1.4, label="server: 429s / s")
    if data["allowed"]:
        xs = [t for t, _ in data["allowed"]]
        ys = [float("nan") if rate is None else rate for _, rate in data["allowed"]]
        ax.plot(xs, ys, color="tab:blue", lw=1.6, label="client: allowed rate (a gap: unthrottled)")
    ax.axhline(limit, color="black", ls="--", lw=1.2, label=f"server limit ({limit:g} / s)")
    when = {
        "after": "with the client's adaptive rate limiter",
        "before": "before the client had a rate limiter",
        "off": "with the client's rate limiter off (rate_limit=None)",
    }[mode]
    ax.set_title(
        f"{run['n']:,} cancels at concurrency {run['concurrency']} against a "
        f"{limit:g} requests/s limit,\n{when}"
    )
    ax.set_xlabel(f"seconds since the batch started (server rates per {BUCKET:g} s bucket)")
    ax.set_ylabel("requests per second")
    ax.set_xlim(0, edges[-1])
    ax.set_ylim(0, max(limit * 1.6, max(data["throttled_per_s"] + data["accepted_per_s"]) * 1.1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    fig.text(
        0.01,
        0.01,
        "The emulator admits up to the limit in any one-second window, so a client sending "
        "faster gets each second's quota in one burst.",
        fontsize=8,
        color="dimgray",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# -- report -----------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{value * 100:.0f} %" if value >= 0.01 or value == 0 else f"{value * 100:.1f} %"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _stat(run: dict[str, Any], name: str, fmt: Callable[[Any], str]) -> str:
    values = [s[name] if s else None for s in run["stats"]]
    if all(v is None for v in values) and not run["limiter"]:
        return "n/a"
    return " / ".join("-" if v is None else fmt(v) for v in values)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| limit | batch | concurrency | processes | requests | 429 share | cancels failed "
        "RATE_LIMITED | other failures | goodput / limit (steady) | (middle 80 %) | (overall) "
        "| p50 ms | p99 ms | elapsed s | allowed rate at end | throttle events | wait s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for run in runs:
        batch = f"{run['n']:,}" + (f" x {run['processes']}" if run["processes"] > 1 else "")
        others = ", ".join(f"{k} {v}" for k, v in sorted(run["other_failures"].items())) or "0"
        failed = f"{run['rate_limited']:,} of {run['n'] * run['processes']:,}"
        lines.append(
            f"| {run['limit']:g}/s | {batch} | {run['concurrency']} | {run['processes']} | "
            f"{run['requests']:,} | {_pct(run['share_429'])} | {failed} | {others} | "
            f"{_ratio(run['goodput_steady'])} | {_ratio(run.get('goodput_middle80'))} | "
            f"{_ratio(run['goodput_overall'])} | "
            f"{run['p50_ms']:.0f} | {run['p99_ms']:.0f} | {run['elapsed']:.1f} | "
            f"{_stat(run, 'allowed_rate', lambda v: f'{v:.0f}')} | "
            f"{_stat(run, 'throttle_events', str)} | {_stat(run, 'wait_time', lambda v: f'{v:.1f}')} |"
        )
    shared = [run for run in runs if run["processes"] > 1]
    notes = []
    for run in shared:
        shares = run["shares"]
        each = "n/a" if shares is None else ", ".join(_pct(s) for s in shares)
        notes.append(
            f"- {run['processes']} processes sharing {run['limit']:g}/s: shares of the accepted "
            f"requests while both ran {each} (fair: {_pct(1 / run['processes'])}); together "
            f"{_ratio(run['goodput_steady'])} x the limit in accepted cancels."
        )
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")


def targets_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| run | target | result |", "|---|---|---|"]
    for run in runs:
        label = f"{run['limit']:g}/s, {run['n']:,} at {run['concurrency']}" + (
            f", {run['processes']} processes" if run["processes"] > 1 else ""
        )
        for key, ok in run["checks"].items():
            verdict = "n/a" if ok is None else ("PASS" if ok else "**FAIL**")
            lines.append(f"| {label} | {TARGETS[key]} | {verdict} |")
    return "\n".join(lines)


def doc_block(mode: str, runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The docs block: the figures of this mode, and beside them those measured before."""
    parts = []
    before_file = RESULTS / "ratelimit-before.json"
    sections: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [(mode, runs, info)]
    if mode != "before" and before_file.exists():
        before = json.loads(before_file.read_text())
        sections.append(("before", before["runs"], before["machine"]))
    titles = {
        "after": "With the client's adaptive rate limiter (the default `KlaviClient`)",
        "off": "With the client's rate limiter off (`rate_limit=None`)",
        "before": "**Measured before the limiter was wired into `KlaviClient`** (default client "
        "and retry policy of that time; the limiter columns do not exist there)",
    }
    for name, section_runs, section_info in sections:
        parts.append(
            f"{titles[name]}: {section_info['date']}, {section_info['cpu']} (2 cores), "
            f"Python {section_info['python']}.\n\n{table(section_runs)}\n\n"
            f"{targets_table(section_runs)}"
        )
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a third of each batch, a smoke run")
    parser.add_argument(
        "--only", action="append", choices=[w.name for w in WORKLOADS], help="run only these"
    )
    parser.add_argument(
        "--rate-limit-off", action="store_true", help="pass rate_limit=None to the client"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument(
        "--faults", action="store_true", help="the fault shapes in virtual time instead"
    )
    args = parser.parse_args()
    from bench import machine, replace_block

    if args.faults:
        import ratelimit_faults

        block = ratelimit_faults.table(ratelimit_faults.measure())
        print("\n" + block)
        if not args.no_plot:
            path = PLOT.with_name("ratelimit-faults.png")
            ratelimit_faults.plot(path)
            print(f"plotted {path.relative_to(ROOT)}")
        if not args.no_docs:
            DOC.write_text(replace_block(DOC.read_text(), "ratelimit-faults", block))
            print(f"rewrote the ratelimit-faults block of {DOC.relative_to(ROOT)}")
        return

    started = time.monotonic()
    limiter = has_limiter()
    if args.rate_limit_off and not limiter:
        parser.error("this KlaviClient has no rate_limit parameter: nothing to switch off")
    mode = "off" if args.rate_limit_off else ("after" if limiter else "before")
    print(f"mode: {mode} (KlaviClient {'takes' if limiter else 'has no'} rate_limit=)", flush=True)
    runs: list[dict[str, Any]] = []
    timeline: dict[str, Any] | None = None
    for workload in WORKLOADS:
        if args.only and workload.name not in args.only:
            continue
        if args.quick:
            workload = dataclasses.replace(workload, n=max(workload.n // 3, 200))
        with emulator(workload.limit) as base:
            reports = run_clients(base, workload, args.rate_limit_off)
            log = server_log(base)
        run = analyse(workload, reports, log)
        runs.append(run)
        verdicts = ", ".join(
            f"{key} {'n/a' if ok is None else ('PASS' if ok else 'FAIL')}"
            for key, ok in run["checks"].items()
        )
        print(f"{workload.name}: {run['elapsed']:.1f} s; {verdicts}", flush=True)
        if workload.series and workload.processes == 1:
            timeline = series(reports, log)
            run["series"] = timeline
            if not args.no_plot:
                path = PLOT if mode != "off" else PLOT.with_name("ratelimit-off.png")
                plot(run, timeline, mode, path)
                print(f"plotted {path.relative_to(ROOT)}", flush=True)
    import klavi_async

    info = {**machine(), "klavi_async": str(Path(klavi_async.__file__).parent)}
    print("\n" + table(runs) + "\n\n" + targets_table(runs) + "\n", flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = {"after": "ratelimit", "before": "ratelimit-before", "off": "ratelimit-off"}[mode]
    out = RESULTS / (f"{name}-quick.json" if args.quick else f"{name}.json")
    out.write_text(json.dumps({"machine": info, "mode": mode, "runs": runs}, indent=2) + "\n")
    if not args.no_docs and not args.quick and not args.only:
        text = DOC.read_text()
        if "<!-- ratelimit:start -->" in text:
            DOC.write_text(replace_block(text, "ratelimit", doc_block(mode, runs, info)))
            print(f"rewrote the ratelimit block of {DOC.relative_to(ROOT)}")
        else:
            print(f"no <!-- ratelimit:start --> block in {DOC.relative_to(ROOT)}: docs left alone")
    print(f"wrote {out.relative_to(ROOT)} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"]:
        client_main(sys.argv[2:])
    else:
        main()
