"""
What the JetStream commands share: exit statuses, stderr lines, and opening NATS with
errors an operator can act on (which URL, what went wrong), never showing a password.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Final

import click
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from ..nats import REQUESTS_STREAM, RESULTS_STREAM, connect

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "NATS_URL_HELP",
    "echo",
    "jetstream_errors",
    "library_warnings",
    "mask_url",
    "open_nats",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130
FIRST_TIMEOUT: Final = 5.0  # seconds for the first connection
NATS_URL_HELP: Final = (
    "e.g. nats://host:4222; a cluster's servers as a comma-separated list, "
    "nats://a:4222,nats://b:4222,nats://c:4222"
)


def echo(text: str) -> None:
    """Print `klavi-async: <text>` on stderr."""
    click.echo(f"klavi-async: {text}", err=True)


async def warn_single_replicas(js: JetStreamContext, command: str) -> None:
    """
    On a cluster, say so of a stream with one replica: it stops with its node (streams
    are created with one unless asked, and a worker or enqueue never changes them).
    """
    for name in (REQUESTS_STREAM, RESULTS_STREAM):
        try:
            info = await js.stream_info(name)
        except (nats.errors.Error, TimeoutError):
            continue  # the command itself says what is wrong with the broker
        if info.cluster is not None and info.cluster.name and info.config.num_replicas == 1:
            echo(
                f"{command}: {name} has 1 replica on the cluster {info.cluster.name}: it stops "
                "when its node does; for money run `klavi-async streams --replicas 3`"
            )


def mask_url(url: str) -> str:
    """
    *url* (or a comma-separated list of them) with any user, password or token hidden:
    `nats://user:pass@host:4222` is shown as `nats://***@host:4222`.
    """
    return ",".join(_mask_one(part) for part in url.split(","))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    at = rest.rfind("@", 0, end)  # the last one: a password may hold an unescaped '@'
    if at == -1:
        return url
    return f"{scheme}{sep}***@{rest[at + 1 :]}"


@contextlib.contextmanager
def library_warnings(command: str) -> Iterator[None]:
    """
    Show the library's warnings and errors on stderr as `klavi-async: <command>: ...`
    (an outage, a record that could not be published): the library logs them, and a
    command's process has no logging set up unless whoever runs it did.
    """
    if logging.getLogger().handlers:  # set up by whoever runs us: theirs to show
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"klavi-async: {command}: %(message)s"))
    library = logging.getLogger("klavi_async")
    library.addHandler(handler)
    try:
        yield
    finally:
        library.removeHandler(handler)


async def open_nats(url: str) -> NATS:
    """`connect()`, its failures a `ClickException` (exit 1) naming the URL and the cause."""
    try:
        return await connect(url, first_timeout=FIRST_TIMEOUT)
    except TimeoutError:
        cause = f"no answer within {FIRST_TIMEOUT:g} s"
    except ConnectionRefusedError:
        cause = "connection refused"
    except OSError as exc:
        cause = exc.strerror or type(exc).__name__  # e.g. "Name or service not known"
    except nats.errors.Error as exc:
        cause = str(exc).removeprefix("nats: ").strip("'") or type(exc).__name__
    except ValueError as exc:  # an empty list or entry: says which, never the URLs
        raise click.BadParameter(str(exc), param_hint="'--nats-url'") from None
    raise click.ClickException(f"cannot connect to NATS at {mask_url(url)}: {cause}")


UNAVAILABLE_CODE: Final = 10008  # JetStream: temporarily unavailable


@contextlib.contextmanager
def jetstream_errors(url: str) -> Iterator[None]:
    """
    Turn a server without JetStream into a `ClickException` that says so.

    Wrap a command's first JetStream request: without JetStream (on the server, or for
    the account) nobody answers it, and nats-py raises a bare `ServiceUnavailableError`;
    a cluster without a quorum answers it as unavailable, or not in time: said too.
    """
    try:
        yield
    except ServiceUnavailableError as exc:
        if exc.err_code == UNAVAILABLE_CODE:  # JetStream is there, its cluster is not ready
            raise click.ClickException(
                f"JetStream at {mask_url(url)} is unavailable for now (a cluster without a "
                "quorum of its nodes, or electing its leaders): try again"
            ) from None
        raise click.ClickException(
            f"NATS at {mask_url(url)} has no JetStream: start nats-server with -js "
            "(or enable JetStream for this account)"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise click.ClickException(
            f"no answer from JetStream at {mask_url(url)} in time (a cluster without a "
            "quorum of its nodes, or electing its leaders?): try again"
        ) from None
