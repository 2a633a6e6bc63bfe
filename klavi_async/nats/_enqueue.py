"""
Publishing cancel requests: `enqueue()` and `publish_requests()`, and the message each
request becomes (`request_message()`).

Requests are published a window at a time and their acks awaited together; each ack is
counted on its own, so what the server stored is known even when some publishes fail.
A publish the broker did not answer (a cluster electing the stream's leader, a
reconnect) is sent again within the caller's patience: its `Nats-Msg-Id` makes a copy
of one already stored a duplicate, dropped by the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from .. import CancelRequest, deterministic_idempotency_key
from ._streams import MSG_ID, REQUESTS_STREAM, REQUESTS_SUBJECT

__all__ = ["enqueue", "publish_requests", "request_message"]

logger = logging.getLogger("klavi_async.nats")

_PUBLISH_WINDOW: Final = 256  # publishes awaiting their acks at once
# An idempotency key as Open Finance Brasil allows it; anything else never reaches a header.
_KEY_RE: Final = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,38}[\x21-\x7e])?")


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
    patience: float = 30.0,
) -> int:
    """
    Publish *requests* to `klavi.cancel.requests`; return how many the server stored.

    A request published before, inside the stream's duplicate window, is dropped by the
    server: it is not counted, and *on_duplicate* (if given) is called with it.  A
    publish the broker did not answer (a cluster electing the stream's leader after a
    node died, a reconnect) is sent again for up to *patience* seconds: its
    `Nats-Msg-Id` makes a copy of one already stored a duplicate.  Raises `TypeError`
    for an item that is not a `CancelRequest` (or has fields of the wrong types) before
    publishing it; the requests before it are published, as they are when *requests*
    itself raises.
    """
    stored = 0

    def count(request: CancelRequest) -> None:
        nonlocal stored
        stored += 1

    await publish_requests(
        js, requests, on_stored=count, on_duplicate=on_duplicate, patience=patience
    )
    return stored


async def publish_requests(
    js: JetStreamContext,
    requests: Iterable[CancelRequest],
    *,
    on_stored: Callable[[CancelRequest], object],
    on_duplicate: Callable[[CancelRequest], object] | None = None,
    patience: float = 30.0,
) -> None:
    """
    `enqueue()`, reporting each request as the server answers it.

    What the server stored is known even when it fails part-way (the CLI prints it):
    each answer is counted, whatever happened to the others sent with it.
    """
    if not patience >= 0:
        raise ValueError(f"patience must be 0 or more seconds, got {patience!r}")
    window: list[tuple[CancelRequest, bytes, dict[str, str]]] = []
    said: set[str] = set()  # why publishes were sent again, logged once each

    async def flush() -> None:
        batch = window[:]
        window.clear()  # a failing flush is not retried by the `finally` below
        acks = await asyncio.gather(
            *(_publish(js, body, headers, patience, said) for _, body, headers in batch),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        for (request, _, _), ack in zip(batch, acks, strict=True):
            if isinstance(ack, BaseException):
                failure = failure or ack
            elif not ack.duplicate:
                on_stored(request)
            elif on_duplicate is not None:
                on_duplicate(request)
        if failure is not None:
            raise failure

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


_RETRYABLE: Final = (
    nats.errors.TimeoutError,  # no ack: stored or not, a copy is dropped by its id
    nats.errors.NoRespondersError,  # no leader yet (an election)
    nats.js.errors.NoStreamResponseError,  # the same, as `js.publish` raises it
    nats.js.errors.ServiceUnavailableError,  # JetStream unavailable for now (no quorum)
    TimeoutError,
)


async def _publish(
    js: JetStreamContext, body: bytes, headers: dict[str, str], patience: float, said: set[str]
) -> PubAck:
    """
    One request, sent again while the broker cannot answer, for *patience* seconds.  Why
    is logged once per enqueue (*said* holds what was), not once per request.
    """
    loop = asyncio.get_running_loop()
    deadline, pause, asked = loop.time() + patience, 0.1, False
    while True:
        try:
            return await js.publish(REQUESTS_SUBJECT, body, headers=headers or None)
        except _RETRYABLE as exc:
            # Without an id a copy would be a second request: only an id makes it safe.
            if MSG_ID not in headers or loop.time() + pause > deadline:
                raise
            # "No response from stream" is also what a stream that is gone answers
            # (deleted mid-enqueue): no election will bring it back.  Asked once per
            # request, not at every retry of a whole window through an election.
            if isinstance(exc, nats.js.errors.NoStreamResponseError) and not asked:
                asked = True
                if await _gone(js) or loop.time() + pause > deadline:  # the question took time
                    raise
            reason = type(exc).__name__
            if reason not in said:
                said.add(reason)
                logger.warning(
                    "enqueue: no answer from the stream (%s); sending again for up to %g s",
                    reason,
                    patience,
                )
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


async def _gone(js: JetStreamContext) -> bool:
    """Whether the requests stream no longer exists (an unanswered question: not gone)."""
    try:
        await js.stream_info(REQUESTS_STREAM)
    except nats.js.errors.NotFoundError:
        return True
    except (nats.errors.Error, TimeoutError):
        return False
    return False
