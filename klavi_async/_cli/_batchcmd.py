"""
`klavi-async cancel-batch`: the command's options, handed to `run_batch`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Final

import click

from ._common import client_from_env, fail_usage, say
from ._process import start_in_fast_allocator_state
from ._rows import InputError
from ._runner import run_batch

__all__ = ["MAX_CONCURRENCY", "cancel_batch"]

MAX_CONCURRENCY: Final = 10_000


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
@click.option("--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Cancels/s.")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, hidden=True)
def cancel_batch(
    input_path: str, out_path: str, concurrency: int, rate_limit: float | None, grace: float
) -> None:
    """Cancel every payment in INPUT (CSV or JSONL; '-' reads JSONL from stdin).

    Rerunning with the same --out sends only items without a final line, with the
    same idempotency keys as before.  Exit status: 0 all cancelled, 1 some failed for
    good, 2 usage or rejected credentials, 3 some items not final yet (rerun), 130
    interrupted.
    """
    start_in_fast_allocator_state()  # this process is ours: see _process.py
    client = client_from_env()

    async def run() -> int:
        async with client:
            return await run_batch(
                client,
                input_path,
                out_path,
                concurrency=concurrency,
                rate_limit=rate_limit,
                grace=grace,
                progress=None,
                echo=say,
            )

    try:
        code = asyncio.run(run())
    except InputError as exc:
        fail_usage(str(exc))
    sys.exit(code)
