"""
The rate limiter against fault shapes, in virtual time: storms, noise, a limit that
moves or flaps, no Retry-After, a high limit, a late joiner.

    python benchmarks/ratelimit.py --faults          # this table (also rewrites the docs)
    python benchmarks/ratelimit_faults.py            # the same, printed only

Each scenario runs twice with the same seed against the same scripted fake Klavi
(`tests/ratesim.py`: the client's retry loop, budget and limiter on a virtual clock, so a
minute takes a second and nothing depends on the machine): once with the default client
(`RateLimit()`) and once with the limiter off (`rate_limit=None`), the floor any limiter
is measured against.  Printed per run: cancels ok and failed, the time to finish (for a
batch) and the figure each scenario is about.  The wire-level runs against the emulator
stay in `ratelimit.py`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from klavi_async._ratelimit import RateLimit
from tests.ratesim import Client, Server, simulate

Run = Callable[[RateLimit | None], tuple[Client, str]]


def _failed(client: Client) -> int:
    return sum(count for result, count in client.results.items() if result != "ok")


def storm(limiter: RateLimit | None) -> tuple[Client, str]:
    """Every request 429 (Retry-After: 1) for 3 s, then open; 3,000 cancels."""
    server = Server(storms=((0.0, 3.0),))
    client = Client(payments=3000, rate_limit=limiter)
    simulate(server, [client])
    return client, f"done at {client.finished:.1f} s"


def one_off(limiter: RateLimit | None) -> tuple[Client, str]:
    """A 429 (Retry-After: 0) on the first attempt of every fifth payment; 1,000 cancels."""
    server = Server(noise=lambda payment, attempt: attempt == 1 and payment % 5 == 0)
    server.retry_after = 0.0
    client = Client(payments=1000, rate_limit=limiter)
    simulate(server, [client])
    return client, f"done at {client.finished:.2f} s"


def noise(limiter: RateLimit | None) -> tuple[Client, str]:
    """Random 429s on 8 % of all requests, under a 500/s limit, for 40 s."""
    draw = random.Random(7).random
    server = Server(limit=lambda _: 500, noise=lambda _p, _a: draw() < 0.08)
    client = Client(until=40.0, rate_limit=limiter)
    simulate(server, [client])
    return client, f"{client.results['ok'] / 40:.0f} ok/s"


def moving(limiter: RateLimit | None) -> tuple[Client, str]:
    """A limit of 200/s, then 100/s, then 300/s, 8 s each."""

    def limit(t: float) -> float:
        return 200 if t < 8 else 100 if t < 16 else 300

    server = Server(limit=limit)
    client = Client(until=24.0, rate_limit=limiter)
    simulate(server, [client])
    parts = [
        server.accepted(None, start, end) / (end - start) / value
        for start, end, value in ((3.0, 8.0, 200), (11.0, 16.0, 100), (19.0, 24.0, 300))
    ]
    shares = " / ".join(f"{part:.2f}" for part in parts)
    return client, f"{shares} of it; {server.share_refused(4.0, 24.0):.1%} 429s"


def flapping(limiter: RateLimit | None) -> tuple[Client, str]:
    """300/s and 100/s, two seconds each, no Retry-After."""

    def limit(t: float) -> float:
        return 300 if int(t) % 4 < 2 else 100

    server = Server(limit=limit, retry_after=None)
    client = Client(until=30.0, rate_limit=limiter)
    simulate(server, [client])
    offered = sum(limit(t + 0.5) for t in range(6, 30))
    used = server.accepted(None, 6.0, 30.0) / offered
    return client, f"{used:.2f} of the capacity; {server.share_refused(6.0, 30.0):.0%} 429s"


def _steady(limiter: RateLimit | None, limit: int, retry_after: float | None) -> tuple[Client, str]:
    server = Server(limit=lambda _: limit, retry_after=retry_after)
    client = Client(until=30.0, rate_limit=limiter)
    simulate(server, [client])
    used = server.accepted(None, 10.0, 30.0) / 20 / limit
    return client, f"{used:.2f} of the limit; {server.share_refused(10.0, 30.0):.1%} 429s"


def no_retry_after(limiter: RateLimit | None) -> tuple[Client, str]:
    """A steady 500/s limit whose 429s carry no Retry-After."""
    return _steady(limiter, 500, None)


def high_limit(limiter: RateLimit | None) -> tuple[Client, str]:
    """A steady 2,000/s limit (Retry-After: 1)."""
    return _steady(limiter, 2000, 1.0)


def late_joiner(limiter: RateLimit | None) -> tuple[Client, str]:
    """Two processes on 200/s, the second started 5 s after the first."""
    server = Server(limit=lambda _: 200)
    first = Client(until=35.0, rate_limit=limiter)
    second = Client(start=5.0, until=35.0, rate_limit=limiter)
    simulate(server, [first, second])

    def share(start: float) -> float:
        return server.accepted(1, start, start + 5) / max(
            server.accepted(None, start, start + 5), 1
        )

    second.results.update(first.results)
    return second, f"the late one's share {share(15.0):.0%} at +10 s, {share(30.0):.0%} at +25 s"


SCENARIOS: list[tuple[str, Run]] = [
    ("a 3 s storm, then open", storm),
    ("one-off 429s on a fifth of first attempts", one_off),
    ("random 429s on 8 % of requests, 500/s", noise),
    ("a limit moving 200 → 100 → 300/s", moving),
    ("a limit flapping 300/100/s every 2 s", flapping),
    ("500/s, 429s without Retry-After", no_retry_after),
    ("a steady 2,000/s", high_limit),
    ("two processes, 5 s apart, 200/s", late_joiner),
]


def measure() -> list[dict[str, Any]]:
    rows = []
    for name, scenario in SCENARIOS:
        row: dict[str, Any] = {"scenario": name}
        for mode, limiter in (("default", RateLimit()), ("off", None)):
            started = time.monotonic()
            client, figure = scenario(limiter)
            row[mode] = {"ok": client.results["ok"], "failed": _failed(client), "figure": figure}
            row[mode]["seconds"] = round(time.monotonic() - started, 1)
        rows.append(row)
        print(f"{name}: {_cell(row['default'])} | off: {_cell(row['off'])}", flush=True)
    return rows


def _cell(run: dict[str, Any]) -> str:
    return f"{run['ok']:,} ok, {run['failed']:,} failed; {run['figure']}"


def _noisy(share: float) -> Server:
    draw = random.Random(7).random
    return Server(limit=lambda _: 500, noise=lambda _p, _a: draw() < share)


PANELS: list[tuple[str, Callable[[], Server], float]] = [
    (
        "a 3 s storm (10-13 s) in a 500/s limit",
        lambda: Server(limit=lambda _: 500, storms=((10.0, 13.0),)),
        20.0,
    ),
    (
        "a limit moving 200 → 100 → 300/s",
        lambda: Server(limit=lambda t: 200 if t < 8 else 100 if t < 16 else 300),
        24.0,
    ),
    ("random 429s on 8 % of requests, 500/s", lambda: _noisy(0.08), 30.0),
]


def plot(path: Path) -> None:
    """Accepted and refused requests per second over time, default client against off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(9, 8.5), dpi=110)
    step = 1.0  # Klavi's window: finer, a client off the limiter fills it in bursts
    for ax, (title, make, until) in zip(axes, PANELS, strict=True):
        edges = [i * step for i in range(int(until / step) + 1)]
        for limiter, color, label in (
            (RateLimit(), "tab:blue", "default"),
            (None, "tab:gray", "off"),
        ):
            server = make()
            simulate(server, [Client(until=until, rate_limit=limiter)])
            ok = [server.accepted(None, a, a + step) / step for a in edges[:-1]]
            ax.stairs(ok, edges, color=color, lw=1.6, label=f"accepted / s, limiter {label}")
            if limiter is not None:
                bad = [
                    sum(1 for t, _, accepted in server.log if a <= t < a + step and not accepted)
                    / step
                    for a in edges[:-1]
                ]
                ax.stairs(bad, edges, color="tab:red", lw=1.0, label="429s / s, limiter default")
        limit = make().limit
        ax.plot(edges, [limit(t) for t in edges], color="black", lw=0.8, ls="--", label="limit")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 700)
        ax.set_ylabel("per second")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds (virtual time)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| fault shape (virtual time) | default client | limiter off |",
        "|---|---|---|",
    ]
    lines += [
        f"| {row['scenario']} | {_cell(row['default'])} | {_cell(row['off'])} |" for row in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n" + table(measure()))
    if "--plot" in sys.argv:
        plot(ROOT / "docs" / "img" / "ratelimit-faults.png")
