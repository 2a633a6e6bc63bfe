"""
`klavi-async streams` and `results`: the operator's view of the two JetStream streams.

`streams` creates them, or changes the settings named on its command line and only
those, then prints each stream's settings.  `results` writes the records and dead
letters as JSON lines, then a summary by outcome on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

import click
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from .._signals import on_stop_signals
from ..nats import (
    REQUESTS_STREAM,
    RESULTS_STREAM,
    LegacyStreamError,
    ResultsSummary,
    ensure_streams,
    read_results,
    result_line,
    stream_changes,
)
from ._natsconnect import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    NATS_URL_HELP,
    echo,
    jetstream_errors,
    library_warnings,
    mask_url,
    open_nats,
)

__all__ = ["describe", "results", "run_results", "run_streams", "streams"]


def check_settings(settings: dict[str, Any]) -> None:
    """Each setting as `ensure_streams()` checks it; a bad one is a usage error naming it."""
    for name, value in settings.items():
        try:
            stream_changes(**{name: value})
        except (TypeError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint=f"--{name.replace('_', '-')}") from None


MANAGE_TIMEOUT: Final = 20.0  # seconds a stream's creation or change may take


async def run_streams(url: str, settings: dict[str, Any]) -> int:
    """Create or update both streams with *settings* (None: keep); print their settings."""
    check_settings(settings)  # before connecting
    nc = await open_nats(url)
    try:
        # A cluster changes a stream on every node: give it longer than a request's 5 s.
        js = nc.jetstream(timeout=MANAGE_TIMEOUT)
        with jetstream_errors(url):
            try:
                configs = await ensure_streams(js, **settings)
            except LegacyStreamError as exc:
                echo(f"streams: {exc}")
                return EXIT_FAILED
            except ValueError as exc:  # a setting at odds with the stream's (nothing changed)
                raise click.UsageError(f"{exc}; nothing was changed") from None
            except ServiceUnavailableError:
                raise  # no JetStream at all: said by jetstream_errors()
            except APIError as exc:
                echo(f"streams: the server refused: {exc.description} (code {exc.err_code})")
                await _print_streams(js)  # what each stream is now
                return EXIT_FAILED
            except (nats.errors.TimeoutError, TimeoutError):
                echo(
                    "streams: no answer in time: a change may be applied to one stream "
                    "and not the other; run `klavi-async streams` again to see them"
                )
                raise
        for config in configs.values():
            click.echo(describe(config))
        return EXIT_OK
    finally:
        await nc.close()


async def _print_streams(js: JetStreamContext) -> None:
    for name in (REQUESTS_STREAM, RESULTS_STREAM):
        try:
            click.echo(describe((await js.stream_info(name)).config))
        except NotFoundError:
            click.echo(f"{name}: missing")


async def run_results(url: str, *, follow: bool, out: TextIO | None = None) -> int:
    """Write the records as JSON lines to *out* (None: stdout); the summary to stderr."""
    write: Callable[[str], object] = click.echo if out is None else out.write
    end = "" if out is None else "\n"
    nc = await open_nats(url)
    try:
        js = nc.jetstream()
        with jetstream_errors(url):
            try:
                await js.stream_info(RESULTS_STREAM)
            except NotFoundError:
                echo(f"results: NATS at {mask_url(url)} has no stream {RESULTS_STREAM}")
                return EXIT_FAILED
        stop = asyncio.Event()
        summary = ResultsSummary()
        failed = False
        try:
            with on_stop_signals(stop.set), library_warnings("results"):
                reading = read_results(js, follow=follow, stop=stop)
                async with contextlib.aclosing(reading) as messages:
                    async for message in messages:
                        line = result_line(message)
                        write(json.dumps(line, ensure_ascii=False) + end)
                        summary.add(line)
        except (nats.errors.Error, TimeoutError) as exc:
            failed = True
            echo(f"results: stopped by {type(exc).__name__}; the summary counts what was read")
        finally:
            for text in summary.lines():
                click.echo(text, err=True)
        if failed:
            return EXIT_FAILED
        return EXIT_INTERRUPTED if stop.is_set() and not follow else EXIT_OK
    finally:
        await nc.close()


@click.command()
@click.option("--nats-url", required=True, envvar="NATS_URL", show_envvar=True, help=NATS_URL_HELP)
@click.option("--replicas", type=int, help="Copies of each stream: 1 to 5 (3 for money).")
@click.option(
    "--duplicate-window",
    type=float,
    help="Seconds in which a request published again is dropped (above 0).",
)
@click.option("--max-age", type=float, help="Seconds a message is kept; 0: no limit.")
@click.option("--max-bytes", type=int, help="Bytes each stream may hold; 0: no limit.")
@click.option("--max-msgs", type=int, help="Messages each stream may hold; 0: no limit.")
def streams(nats_url: str, **settings: Any) -> None:
    """Create the two streams, or change their settings.

    It prints their settings.
    A setting not given keeps each stream's value (the default, for a stream
    created now); `worker` and `enqueue` never change an existing stream.
    """
    sys.exit(asyncio.run(run_streams(nats_url, settings)))


@click.command()
@click.option("--nats-url", required=True, envvar="NATS_URL", show_envvar=True, help=NATS_URL_HELP)
@click.option("--follow", is_flag=True, help="Go on with new records until SIGINT/SIGTERM.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the JSON lines to this file (created or truncated) instead of stdout.",
)
def results(nats_url: str, follow: bool, out: str | None) -> None:
    """Print the records and dead letters as JSON lines.

    A summary by outcome follows on stderr.
    Without --follow it stops after what the stream held when it started.
    """
    if out is None or out == "-":
        sys.exit(asyncio.run(run_results(nats_url, follow=follow)))
    try:
        handle = open(out, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - with below
    except OSError as exc:
        raise click.UsageError(f"cannot write --out {out}: {exc.strerror}") from None
    with handle:
        code = asyncio.run(run_results(nats_url, follow=follow, out=handle))
    sys.exit(code)


def describe(config: StreamConfig) -> str:
    """One readable line of a stream's settings, e.g. `KLAVI_CANCEL: replicas 1, ...`."""
    subjects = " ".join(config.subjects or []) or "none"
    return (
        f"{config.name}: replicas {config.num_replicas}, "
        f"duplicate window {_duration(config.duplicate_window)}, "
        f"max age {_duration(config.max_age)}, max bytes {_amount(config.max_bytes, 'B')}, "
        f"max msgs {_amount(config.max_msgs, '')}, storage {_text(config.storage)}, "
        f"retention {_text(config.retention)}, subjects {subjects}"
    )


def _text(value: object) -> str:
    return str(getattr(value, "value", value))


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "unlimited"
    text = f"{seconds:.15g} s"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{text} ({seconds / size:.15g} {unit})"
    return text


def _amount(value: int | None, unit: str) -> str:
    if value is None or value < 0:
        return "unlimited"
    for prefix, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            return f"{value} ({value / size:.3g} {prefix}{unit})"
    return str(value)
