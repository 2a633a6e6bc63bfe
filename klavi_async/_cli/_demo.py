"""
`klavi-async demo`: the whole story, against the embedded emulator.

The demo starts the embedded emulator with faults on, seeds a few hundred payments
(most cancellable, some already settled, some already cancelled), cancels them all in
one resumable batch through the same code as `cancel-batch`, and checks the story: every
cancellable payment ends CANCELED, the refusals are the planned ones, and the emulator
saw no payment cancelled twice.

The same `--seed` tells the same story: payment ids come from the seed, and each fault is
drawn per payment and per request of that payment (not in arrival order, which 32
concurrent cancels shuffle), so the figures do not depend on timing.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final

import click
from aiohttp import web
from attrs import field, frozen

from .._client import KlaviClient
from .._process import start_in_fast_allocator_state
from .._retry import RetryPolicy
from .._tokens import ClientCredentials
from ..testing import CANCELLABLE, Fault, KlaviEmulator, RandomFaults
from ._common import say
from ._emulator import seed_payments, write_payments_csv
from ._resume import is_final
from ._runner import run_batch

__all__ = ["DEMO_FAULTS", "demo", "run_demo"]

DEMO_FAULTS: Final[Mapping[str, float]] = {
    "503": 0.06,
    "500_after": 0.02,
    "reset_after": 0.03,
    "reset_before": 0.02,
    "html_gateway": 0.02,
    "malformed_json": 0.02,
}
"""About 17 % of cancel requests meet a fault in the demo."""

_PAYMENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("_PAYMENT", default=None)
"""The payment id of the request the emulator is serving (set per request task)."""


@web.middleware
async def _note_payment(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    _PAYMENT.set(request.match_info.get("payment_id"))
    return await handler(request)


@frozen
class PerPaymentFaults(RandomFaults):
    """
    `RandomFaults` drawn from the seed, the payment and that payment's request count.

    Whatever order concurrent requests arrive in, the n-th cancel of a payment meets the
    same fault; *first_rate_limited* answers the first cancel of that payment 429.
    """

    first_rate_limited: str | None = None
    seen: Counter[str] = field(factory=Counter, eq=False, repr=False)

    def draw(self) -> Fault | None:
        payment = _PAYMENT.get() or ""
        self.seen[payment] += 1
        count = self.seen[payment]
        if payment == self.first_rate_limited and count == 1:
            return Fault.rate_limit(retry_after=1.0)  # a real Retry-After to honour
        name = f"{self.seed}/{payment}/{count}".encode()
        seed = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big")
        return RandomFaults(
            self.rates, seed=seed, latency=self.latency, retry_after=self.retry_after
        ).draw()


async def run_demo(
    echo: Callable[[str], None],
    *,
    payments: int = 300,
    seed: int = 2026,
    workdir: Path | None = None,
    progress: bool | None = None,
) -> int:
    """Run the story; return 0 when it went as planned, 1 otherwise."""
    # A reproducible story, not a secret: a seeded PRNG is the point.
    rng = random.Random(seed)  # noqa: S311  # nosec B311
    started = time.monotonic()
    emulator = KlaviEmulator(fault_rates=DEMO_FAULTS, seed=seed)
    emulator.app.middlewares.append(_note_payment)
    async with emulator:
        planned = seed_payments(emulator, payments, rng=rng)
        # One planned rate limit up front, with a real Retry-After the client must honour.
        emulator.random_faults = PerPaymentFaults(
            dict(DEMO_FAULTS), seed=seed, first_rate_limited=next(iter(planned), None)
        )
        echo(f"emulator at {emulator.url}: {len(planned)} payments seeded; faults on:")
        echo("  " + ", ".join(f"{name} {rate:.0%}" for name, rate in DEMO_FAULTS.items()))
        with tempfile.TemporaryDirectory() as scratch:
            folder = workdir or Path(scratch)
            source, results = folder / "payments.csv", folder / "results.jsonl"
            write_payments_csv(source, list(planned))
            await _batches(emulator, source, results, echo, progress)
        problems = _check_story(emulator, planned)
        faults = Counter(r.fault for r in emulator.records("cancel") if r.fault)
        twice = [p for p, n in emulator.effects.items() if n > 1]
    echo(
        "emulator: "
        + ", ".join(f"{name} {count}" for name, count in sorted(faults.items()))
        + " injected"
    )
    echo(
        f"emulator: {sum(emulator.effects.values())} payments cancelled, "
        f"{len(twice)} cancelled twice, auth calls {emulator.auth_calls}, "
        f"{len(emulator.records('cancel'))} cancel requests in {time.monotonic() - started:.1f} s"
    )
    for problem in problems:
        echo(f"story check failed: {problem}")
    echo("the story ran as planned" if not problems else "the story did not go as planned")
    return 0 if not problems else 1


async def _batches(
    emulator: KlaviEmulator,
    source: Path,
    results: Path,
    echo: Callable[[str], None],
    progress: bool | None,
) -> None:
    """The batch, and up to two reruns of what it left not final (the summary's advice)."""
    credentials = ClientCredentials(emulator.access_key, emulator.secret_key)
    # No jitter: the same seed, the same waits (nothing here is shared with others).
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, jitter=False)
    async with KlaviClient(credentials, base_url=emulator.url, retry=policy) as klavi:
        for run in range(3):  # the CLI's batch runner: the demo shows the real thing
            await run_batch(
                klavi,
                str(source),
                str(results),
                concurrency=32,
                grace=10.0,
                progress=progress,
                echo=echo,
            )
            left = _not_final(results)
            if not left or run == 2:
                break
            # What the summary advises, done: the same results file, the same keys.
            echo(
                f"demo: {_why(left)}; rerunning with the same results file, as "
                "`klavi-async cancel-batch payments.csv --out results.jsonl` would:"
            )


def _not_final(results: Path) -> Counter[str]:
    """The requests with no final line in the results file, by why: unknown or retryable."""
    final: set[str] = set()
    latest: dict[str, str] = {}
    for text in results.read_text().splitlines():
        record = json.loads(text)
        digest = str(record.get("request_digest"))
        if is_final(record):
            final.add(digest)
        else:
            latest[digest] = "outcome unknown" if record.get("outcome_unknown") else "retryable"
    return Counter(why for digest, why in latest.items() if digest not in final)


def _why(left: Counter[str]) -> str:
    parts = []
    if left["outcome unknown"]:
        parts.append(
            f"{left['outcome unknown']} outcome unknown (a fault cut the cancel's answer and "
            "every status read after it)"
        )
    if left["retryable"]:
        parts.append(f"{left['retryable']} retryable failure(s) (the retries ran out)")
    return "not final yet: " + " and ".join(parts)


def _check_story(emulator: KlaviEmulator, planned: Mapping[str, str]) -> list[str]:
    problems = []
    for payment_id, status in planned.items():
        final = emulator.status_of(payment_id)
        effects = emulator.effects.get(payment_id, 0)
        expected = "CANCELED" if status in CANCELLABLE or status == "CANCELED" else status
        if final != expected:
            problems.append(f"{payment_id} ended {final}, expected {expected}")
        if effects > 1 or (status not in CANCELLABLE and effects):
            problems.append(f"{payment_id} was cancelled {effects} times")
    return problems


@click.command()
@click.option("--payments", type=click.IntRange(min=10), default=300, show_default=True)
@click.option("--seed", type=int, default=2026, show_default=True)
def demo(payments: int, seed: int) -> None:
    """Cancel a few hundred payments against the embedded emulator.

    Its faults are on: the story shows what the client does with each.
    """
    start_in_fast_allocator_state()  # this process is ours: see _process.py
    sys.exit(asyncio.run(run_demo(say, payments=payments, seed=seed)))
