"""
The two JetStream streams, and publishing cancel requests into the first.

`KLAVI_CANCEL` is a work queue: a message is removed once a worker acks or terms it.
`KLAVI_CANCEL_RESULTS` keeps what the workers concluded (limits retention): each
request's record on its own subject, one message per subject (see `_settle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from ._decide import DEAD_SUBJECT, RESULTS_SUBJECT
from ._settings import DEFAULT_DUPLICATE_WINDOW, apply_changes, stream_changes

__all__ = [
    "DEAD_SUBJECT",
    "LegacyStreamError",
    "REQUESTS_STREAM",
    "REQUESTS_SUBJECT",
    "RESULTS_STREAM",
    "RESULTS_SUBJECT",
    "connect",
    "ensure_streams",
]

REQUESTS_STREAM: Final = "KLAVI_CANCEL"
REQUESTS_SUBJECT: Final = "klavi.cancel.requests"
RESULTS_STREAM: Final = "KLAVI_CANCEL_RESULTS"
MSG_ID: Final = "Nats-Msg-Id"
# A node frozen or cut off answers no ping: after PING_INTERVAL x MAX_PINGS seconds
# without an answer the client drops it and moves to another node of the cluster.
PING_INTERVAL: Final = 5.0  # seconds between the client's pings to its server
MAX_PINGS: Final = 3  # unanswered pings before the client drops the connection
_STREAM_NAME_IN_USE: Final = 10058  # JetStream: a stream of that name, another config
# "No suitable peers for placement": the meta leader has not yet heard from enough
# nodes for the replicas asked, as on a cluster that has just formed or a node restarting.
_NO_PEERS: Final = 10005
# A cluster that has just formed, or is electing a leader, or a busy node, may leave a
# stream request unanswered for seconds, or refuse replicas until it hears its peers:
# ensure_streams asks again, a few times.
API_ATTEMPTS: Final = 5
API_PAUSE: Final = 0.5  # seconds before the second attempt; the pause grows by this much

_T = TypeVar("_T")

logger = logging.getLogger("klavi_async.nats")


def _server_urls(url: str | Sequence[str]) -> list[str]:
    """
    The server URLs in *url*: one URL, a comma-separated list of a cluster's servers (the
    NATS CLI's convention: `nats://a:4222,nats://b:4222`), or a sequence of URLs.

    Spaces around each are dropped; an empty list or entry is a `ValueError` (which never
    shows the URLs: they may hold a password).
    """
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = []
    for number, part in enumerate(parts, start=1):
        if not isinstance(part, str):
            raise TypeError(f"a NATS server URL must be a str, got {type(part).__name__}")
        part = part.strip()
        if not part:
            what = "no NATS server URL given" if len(parts) == 1 else f"server {number} is empty"
            raise ValueError(f"{what}: give nats://host:4222, or a comma-separated list")
        urls.append(part)
    if not urls:
        raise ValueError("no NATS server URL given: give nats://host:4222, or a list")
    return urls


async def connect(url: str | Sequence[str], *, first_timeout: float = 5.0, **options: Any) -> NATS:
    """
    Connect to NATS with options fit for a worker: reconnect for ever, log (not raise).

    *url* is one server or a cluster's: a comma-separated list, or a sequence of URLs
    (an empty one, or an empty entry, is a `ValueError`); the client reconnects to
    whichever node answers, and learns the cluster's other nodes from the server.
    Messages are on the servers' disks, so a restarted server loses nothing; the client
    buffers what it sends while reconnecting.  The first connection must succeed within
    *first_timeout* seconds (else `TimeoutError`); when every server refused it (the
    connection, the host's name or the credentials) it fails at once with that error,
    such as `ConnectionRefusedError`.  *options* go to `nats.connect()` (an `error_cb`
    given there is called for every error, as usual).
    """
    servers = _server_urls(url)
    client = NATS()
    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
    failures = 0
    error_cb = options.pop("error_cb", None)
    said = _Said()

    async def on_error(exc: Exception) -> None:
        nonlocal failures
        # Only before the first connection: later, reconnecting for ever is the point.
        if not refused.done() and _hopeless(exc):
            failures += 1
            if failures >= len(client.servers):  # every server said no, once each
                refused.set_result(exc)
        if error_cb is not None:
            await error_cb(exc)
        else:
            said.error(exc)

    settings: dict[str, Any] = {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2.0,
        "ping_interval": PING_INTERVAL,  # a frozen node is left in 15 s, not nats-py's 4 min
        "max_outstanding_pings": MAX_PINGS,
        "error_cb": on_error,
        "disconnected_cb": said.disconnected,
        "reconnected_cb": said.reconnected,
        "name": "klavi-async",
    }
    settings.update(options)
    connecting = asyncio.ensure_future(client.connect(servers, **settings))
    try:
        # Reconnecting for ever must not make a wrong URL hang: the first connection
        # has to succeed within the time of a few attempts, or be refused by all.
        async with asyncio.timeout(first_timeout):
            waiting: set[asyncio.Future[Any]] = {connecting, refused}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            raise refused.result()
        connecting.result()
    except BaseException:
        connecting.cancel()
        await asyncio.wait({connecting})
        # nats-py asserts on closing a client whose connect() failed in its setup (an
        # invalid URL): there is nothing to close then.
        with contextlib.suppress(AssertionError):
            await client.close()
        raise
    finally:
        if not refused.done():
            refused.cancel()  # later errors are the reconnecting's, logged only
    return client


class _Said:
    """
    What the connection says in the log: a connection error once per outage (then at
    DEBUG until reconnected: reconnecting every 0.25 s for an hour is not 14,400 lines).
    """

    def __init__(self) -> None:
        self._told = False

    def error(self, exc: Exception) -> None:
        log = logger.debug if self._told else logger.warning
        log("NATS connection error: %s", type(exc).__name__)
        self._told = True

    async def disconnected(self) -> None:
        logger.warning("NATS disconnected")

    async def reconnected(self) -> None:
        self._told = False
        logger.warning("NATS reconnected")  # as loud as the disconnect it ends


def _hopeless(exc: Exception) -> bool:
    """A first connection's error that trying again soon will not mend."""
    if isinstance(exc, OSError):  # refused, unknown host, unreachable; not a timeout
        return not isinstance(exc, TimeoutError)
    return isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int | None = None,
    duplicate_window: float | None = None,
    max_age: float | None = None,
    max_bytes: int | None = None,
    max_msgs: int | None = None,
) -> dict[str, StreamConfig]:
    """
    Create both streams if missing; change an existing one only where asked.

    Called with *js* alone (as `worker` and `enqueue` do), an existing stream is left as
    it is: its limits are the operator's.  Each setting given is applied to both streams,
    starting from each stream's current config, so its subjects and every setting not
    named stay; None keeps the stream's value (or the default, for a stream created
    now: one replica, a 120 s duplicate window, no limits).  *replicas* is 1 to 5;
    *duplicate_window* seconds above zero (a request published again inside it is
    dropped); *max_age* seconds, *max_bytes* and *max_msgs* zero or more, 0 meaning no
    limit.  Everything is checked before either stream is touched: `TypeError` or
    `ValueError` for a bad setting (a duplicate window longer than `max_age`
    included).  Raises `LegacyStreamError` for a results stream from before one record
    per request.  A request that goes unanswered (a timeout, or a 503 while a cluster
    elects a leader) or is refused for want of nodes heard is asked again, up to
    `API_ATTEMPTS` times.  Returns each stream's config as the server now has it, by
    name.
    """
    changes = stream_changes(
        replicas=replicas,
        duplicate_window=duplicate_window,
        max_age=max_age,
        max_bytes=max_bytes,
        max_msgs=max_msgs,
    )
    plans: list[tuple[StreamConfig, StreamConfig | None]] = []  # (wanted, as it is)
    for default in _default_configs():
        current = await _current_config(js, default.name or "")
        if current is not None and default.name == RESULTS_STREAM:
            _refuse_legacy(current)
        plans.append((apply_changes(current or default, changes), current))
    configs: dict[str, StreamConfig] = {}
    for wanted, current in plans:
        if current is None:
            configs[wanted.name or ""] = await _create(js, wanted, changes)
        else:
            configs[wanted.name or ""] = await _update(js, wanted, current)
    return configs


def _default_configs() -> tuple[StreamConfig, StreamConfig]:
    return (
        StreamConfig(
            name=REQUESTS_STREAM,
            subjects=[REQUESTS_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=1,
            duplicate_window=DEFAULT_DUPLICATE_WINDOW,
        ),
        StreamConfig(
            name=RESULTS_STREAM,
            subjects=[f"{RESULTS_SUBJECT}.>", f"{DEAD_SUBJECT}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=1,
            duplicate_window=DEFAULT_DUPLICATE_WINDOW,
            max_msgs_per_subject=1,  # one record per request, the server's guarantee
        ),
    )


async def _api(call: Callable[[], Awaitable[_T]]) -> _T:
    """
    A JetStream API request, asked again when it went unanswered (a timeout), no
    leader could answer it (503: a cluster electing one) or too few nodes were heard
    for its replicas (10005: a cluster forming, a node restarting; one really down is
    still refused after the last attempt, about 5 s on).  Safe because every request
    here may be repeated: reading a stream, creating one with a config identical to
    what a first, unanswered attempt may have created, or updating to the same config.
    """
    for attempt in range(1, API_ATTEMPTS):
        try:
            return await call()
        except (nats.errors.TimeoutError, ServiceUnavailableError):
            pass
        except BadRequestError as exc:
            if exc.err_code != _NO_PEERS:
                raise
        await asyncio.sleep(API_PAUSE * attempt)
    return await call()  # the last attempt's error is the caller's


async def _current_config(js: JetStreamContext, name: str) -> StreamConfig | None:
    try:
        info = await _api(lambda: js.stream_info(name))
    except NotFoundError:
        return None
    return info.config


async def _create(
    js: JetStreamContext, config: StreamConfig, changes: dict[str, int | float]
) -> StreamConfig:
    try:
        return (await _api(lambda: js.add_stream(config))).config
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    # Another process created it since we looked (two workers starting together): it
    # is now the operator's like any other; make only the changes asked for.
    current = await _current_config(js, config.name or "")
    if current is None:  # pragma: no cover - deleted again within the same instant
        raise RuntimeError(f"the stream {config.name} vanished while it was being created")
    if config.name == RESULTS_STREAM:
        _refuse_legacy(current)
    return await _update(js, apply_changes(current, changes), current)


async def _update(
    js: JetStreamContext, wanted: StreamConfig, current: StreamConfig
) -> StreamConfig:
    if wanted == current:
        return current  # nothing asked for, or nothing different: no request
    return (await _api(lambda: js.update_stream(wanted))).config


class LegacyStreamError(RuntimeError):
    """The results stream was made by a klavi-async that kept all records on one subject."""


def _refuse_legacy(config: StreamConfig) -> None:
    # One record per subject, set on a stream whose records share one subject, would
    # have the server delete all but the last: never do it for the operator.
    subjects = config.subjects or []
    if f"{RESULTS_SUBJECT}.>" in subjects and config.max_msgs_per_subject == 1:
        return
    raise LegacyStreamError(
        f"the stream {RESULTS_STREAM} predates one record per request (subjects "
        f"{subjects}, max_msgs_per_subject {config.max_msgs_per_subject}); making it so "
        "would have the server delete all but the last of its records. Export them "
        "(klavi-async results --out FILE), delete the stream (nats stream rm "
        f"{RESULTS_STREAM}), then start again: it is created anew"
    )
