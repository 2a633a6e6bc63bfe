"""
`cancel-batch --nats-url`: the batch shares its account's rate limit with the fleet's
workers (and other batches) through the broker, for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator

import click

from .._client import KlaviClient
from ._common import fail_usage, say

__all__ = ["check_nats_extra", "shared_through"]


def check_nats_extra(url: str | None) -> None:
    """A usage error, before anything starts, when `--nats-url` is given without nats-py."""
    if url is None:
        return
    try:  # as the JetStream commands check: the library's own import
        importlib.import_module("klavi_async.nats")
    except ImportError:
        fail_usage("--nats-url needs nats-py: pip install 'klavi-async[nats]'")


@contextlib.asynccontextmanager
async def shared_through(url: str | None, client: KlaviClient) -> AsyncIterator[None]:
    """
    With *url*, *client*'s limit shared through that NATS server while the block runs; a
    broker that cannot be reached stops the batch before anything is sent (exit 2).
    Without *url*, nothing: the batch adapts alone.
    """
    if url is None:
        yield
        return
    from ..nats import shared_rate_limit
    from ._natsconnect import library_warnings, mask_url, open_nats

    try:
        nc = await open_nats(url)
    except click.ClickException as exc:
        fail_usage(f"{exc.format_message()}; nothing was sent (without --nats-url the "
                   "batch adapts alone)")  # fmt: skip
    try:
        with library_warnings("cancel-batch"):  # e.g. no key-value there: adapts alone
            async with shared_rate_limit(client, nc.jetstream(), who="batch") as shared:
                if shared:
                    say(_sharing_line(client, mask_url(url)))
                yield
    finally:
        # A broker gone meanwhile fails the close: the batch's results stand as they are.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await nc.close()


def _sharing_line(client: KlaviClient, url: str) -> str:
    stats = client.rate_limit_stats()
    size = 1 if stats is None or stats.fleet_size is None else stats.fleet_size
    part = None if stats is None else stats.fleet_part
    others = f"{size - 1} other client{'s' if size != 2 else ''} on this account"
    given = "" if part is None or size < 2 else f"; this batch's part {part:.0f}/s"
    return f"rate limit shared through NATS at {url}: {others}{given}"
