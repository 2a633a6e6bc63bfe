"""
The two JetStream streams, and publishing cancel requests into the first.

`KLAVI_CANCEL` is a work queue: a message is removed once a worker acks or terms it.
`KLAVI_CANCEL_RESULTS` keeps what the workers concluded (limits retention): each
request's record on its own subject, one message per subject (see `_settle`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from .. import CancelRequest, deterministic_idempotency_key
from ._decide import DEAD_SUBJECT, RESULTS_SUBJECT

__all__ = [
    "DEAD_SUBJECT",
    "LegacyStreamError",
    "REQUESTS_STREAM",
    "REQUESTS_SUBJECT",
    "RESULTS_STREAM",
    "RESULTS_SUBJECT",
    "connect",
    "enqueue",
    "ensure_streams",
    "request_message",
]

REQUESTS_STREAM: Final = "KLAVI_CANCEL"
REQUESTS_SUBJECT: Final = "klavi.cancel.requests"
RESULTS_STREAM: Final = "KLAVI_CANCEL_RESULTS"
MSG_ID: Final = "Nats-Msg-Id"
_PUBLISH_WINDOW: Final = 256  # publishes awaiting their acks at once
# An idempotency key as Open Finance Brasil allows it; anything else never reaches a header.
_KEY_RE: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,38}[\x21-\x7e])?")

logger = logging.getLogger("klavi_async.nats")


async def connect(url: str, *, first_timeout: float = 5.0, **options: Any) -> NATS:
    """
    Connect to NATS with options fit for a worker: reconnect for ever, log (not raise).

    Messages are on the server's disk, so a restarted server loses nothing; the client
    buffers what it sends while reconnecting.  The first connection must succeed within
    *first_timeout* seconds (else `TimeoutError`).  *options* go to `nats.connect()`.
    """

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS connection error: %s", type(exc).__name__)

    async def on_disconnected() -> None:
        logger.warning("NATS disconnected")

    async def on_reconnected() -> None:
        logger.info("NATS reconnected")

    settings: dict[str, Any] = {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2.0,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "name": "klavi-async",
    }
    settings.update(options)
    client = NATS()
    try:
        # Reconnecting for ever must not make a wrong URL hang: the first connection
        # has to succeed within the time of a few attempts.
        async with asyncio.timeout(first_timeout):
            await client.connect(url, **settings)
    except BaseException:
        await client.close()
        raise
    return client


async def ensure_streams(js: JetStreamContext, *, duplicate_window: float = 120.0) -> None:
    """
    Create both streams, or update them to this configuration.

    *duplicate_window* (seconds) applies to both: a request re-published, or a result
    republished after a worker died between publishing and acking, is dropped by the
    server within it.  Keep it well above the workers' `ack_wait`.
    """
    if duplicate_window <= 0:
        raise ValueError("duplicate_window must be > 0")
    configs = (
        StreamConfig(
            name=REQUESTS_STREAM,
            subjects=[REQUESTS_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
        ),
        StreamConfig(
            name=RESULTS_STREAM,
            subjects=[f"{RESULTS_SUBJECT}.>", f"{DEAD_SUBJECT}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
            max_msgs_per_subject=1,  # one record per request, the server's guarantee
        ),
    )
    for name, config in zip((REQUESTS_STREAM, RESULTS_STREAM), configs, strict=True):
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            if name == RESULTS_STREAM:
                _refuse_legacy(info.config)
            await js.update_stream(config)


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


def request_message(request: CancelRequest) -> tuple[bytes, dict[str, str]]:
    """
    The body and headers `enqueue()` publishes for *request*.

    The body holds the batch row fields, the idempotency key included (derived when the
    request has none, so every worker sends the same one); the header `Nats-Msg-Id` is
    that key.  A request whose key cannot be derived (a malformed id or document) gets no
    header: the worker turns it into a dead letter.
    """
    if not isinstance(request, CancelRequest):
        raise TypeError(f"expected a CancelRequest, got {type(request).__name__}")
    for name in ("payment_id", "cancelled_by"):
        if not isinstance(getattr(request, name), str):
            raise TypeError(f"CancelRequest.{name} must be a str")
    for name in ("identifier_type", "idempotency_key", "consent_id"):
        value = getattr(request, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"CancelRequest.{name} must be a str or None")
    key = request.idempotency_key
    if key is None:
        try:
            key = deterministic_idempotency_key(request.payment_id, request.cancelled_by)
        except ValueError:
            key = None
    fields = {
        "payment_id": request.payment_id,
        "cancelled_by": request.cancelled_by,
        "identifier_type": request.identifier_type,
        "idempotency_key": key,
        "consent_id": request.consent_id,
    }
    body = {name: value for name, value in fields.items() if value is not None}
    headers = {MSG_ID: key} if key is not None and _KEY_RE.fullmatch(key) else {}
    return json.dumps(body, separators=(",", ":")).encode(), headers


async def enqueue(
    js: JetStreamContext,
    requests: Iterable[CancelRequest],
    *,
    on_duplicate: Callable[[CancelRequest], object] | None = None,
) -> int:
    """
    Publish *requests* to `klavi.cancel.requests`; return how many the server stored.

    A request published before, inside the stream's duplicate window, is dropped by the
    server: it is not counted, and *on_duplicate* (if given) is called with it.  Raises
    `TypeError` for an item that is not a `CancelRequest` (or has fields of the wrong
    types) before publishing it; the requests before it are published, as they are when
    *requests* itself raises.
    """
    stored = 0

    def count(request: CancelRequest) -> None:
        nonlocal stored
        stored += 1

    await publish_requests(js, requests, on_stored=count, on_duplicate=on_duplicate)
    return stored


async def publish_requests(
    js: JetStreamContext,
    requests: Iterable[CancelRequest],
    *,
    on_stored: Callable[[CancelRequest], object],
    on_duplicate: Callable[[CancelRequest], object] | None = None,
) -> None:
    """
    `enqueue()`, reporting each request as the server answers it.

    What the server stored is known even when it fails part-way (the CLI prints it).
    """
    window: list[tuple[CancelRequest, bytes, dict[str, str]]] = []

    async def flush() -> None:
        batch = window[:]
        window.clear()  # a failing flush is not retried by the `finally` below
        acks = await asyncio.gather(
            *(
                js.publish(REQUESTS_SUBJECT, body, headers=headers or None)
                for _, body, headers in batch
            )
        )
        for (request, _, _), ack in zip(batch, acks, strict=True):
            if not ack.duplicate:
                on_stored(request)
            elif on_duplicate is not None:
                on_duplicate(request)

    try:
        for request in requests:
            body, headers = request_message(request)
            window.append((request, body, headers))
            if len(window) >= _PUBLISH_WINDOW:
                await flush()
    finally:
        # Whatever stopped the loop (a bad item, the input failing), what was read is sent.
        if window:
            await flush()
