"""
`klavi-async cancel-batch`: the command's options, handed to `run_batch`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Final

import click

from .._process import start_in_fast_allocator_state
from .._ratelimit import RateLimit, rate_value
from .._rows import InputError
from ._batchshare import check_nats_extra, shared_through
from ._common import client_from_env, fail_usage, say, single_use_tokens_option
from ._runner import run_batch

__all__ = ["MAX_CONCURRENCY", "cancel_batch", "rate_limit_option"]

MAX_CONCURRENCY: Final = 10_000


def rate_limit_option(rate_limit: float | None, adaptive: bool) -> RateLimit:
    """
    The client's `rate_limit` from `--rate-limit` and `--no-adaptive`.

    Without flags, the client's default (adaptive, no cap); `--rate-limit` caps that;
    `--no-adaptive` makes the cap fixed and means nothing without one (a usage error:
    the limiter cannot be switched off from the command line, only capped).
    """
    if rate_limit is None:
        if not adaptive:
            fail_usage("--no-adaptive needs --rate-limit RPS: the fixed rate to send at")
        return RateLimit()
    return RateLimit(rate_limit, adaptive=adaptive, min_rate=min(1.0, rate_limit))


def _requests_per_second(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    # The library's own check (its bounds, NaN): a usage error here, not a traceback later.
    try:
        return None if value is None else rate_value(value, "RPS")
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.command("cancel-batch")
@click.argument("input_path", metavar="INPUT")
@click.option("--out", "out_path", required=True, help="Results file (JSON Lines).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=32,
    show_default=True,
    help="Cancels in flight at once (1-10000).",
)
@click.option(
    "--rate-limit",
    type=float,
    callback=_requests_per_second,
    metavar="RPS",
    help="Requests/s at most (retries and status reads included); adaptive below it.",
)
@click.option(
    "--no-adaptive",
    "adaptive",
    flag_value=False,
    default=True,
    help="Send at exactly --rate-limit (a fixed cap), not adapting to Klavi's 429s.",
)
@click.option(
    "--nats-url",
    metavar="URL",
    help="Share the account's rate limit with the workers (and other batches) that "
    "share it through this NATS server; a cluster's servers as a comma-separated list. "
    "Needs the nats extra.",
)
@single_use_tokens_option
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, hidden=True)
def cancel_batch(
    input_path: str,
    out_path: str,
    concurrency: int,
    rate_limit: float | None,
    adaptive: bool,
    nats_url: str | None,
    single_use_tokens: bool,
    grace: float,
) -> None:
    """Cancel every payment in INPUT (CSV or JSON lines).

    INPUT '-' reads JSON lines from stdin.
    Rerunning with the same --out sends only items without a final line, with the
    same idempotency keys as before.  Exit status: 0 all cancelled, 1 some failed for
    good, 2 usage or rejected credentials, 3 some items not final yet (rerun), 130
    interrupted.
    """
    setting = rate_limit_option(rate_limit, adaptive)
    check_nats_extra(nats_url)
    start_in_fast_allocator_state()  # this process is ours: see _process.py
    client = client_from_env(rate_limit=setting, single_use_tokens=single_use_tokens)

    async def run() -> int:
        async with client, shared_through(nats_url, client):
            return await run_batch(
                client,
                input_path,
                out_path,
                concurrency=concurrency,
                grace=grace,
                progress=None,
                echo=say,
            )

    try:
        code = asyncio.run(run())
    except InputError as exc:
        fail_usage(str(exc))
    sys.exit(code)
