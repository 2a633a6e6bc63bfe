"""
One queued request's cancel: its message parsed, cancelled with its idempotency key,
and what the worker keeps of one that failed.  No JetStream here; `_worker` settles
what this gives.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Coroutine
from typing import Any, Final

import attrs
from attrs import define
from nats.aio.msg import Msg

from .. import (
    CancelRequest,
    CancelResult,
    ClientClosedError,
    KlaviClient,
    deterministic_idempotency_key,
)
from ._decide import (
    Action,
    Decision,
    Poison,
    dead_letter_id,
    dead_subject,
    minimal_dead_letter,
    parse_request,
)

__all__ = ["Failed", "cancel_message", "delivery_of"]

logger = logging.getLogger("klavi_async.nats")


@define  # not frozen: made for every answer, and frozen attrs classes cost more to make
class Failed:
    """A delivery whose cancel failed retryably, kept to be settled later."""

    msg: Msg
    outcome: CancelResult
    delivery: int
    ref: str
    stored: float  # when the request was enqueued (the stream's wall clock)


_UTC: Final = datetime.UTC


def delivery_of(msg: Msg) -> tuple[int, str, float]:
    """
    The delivery's count, the message's *ref* and when it was stored (epoch seconds).

    The ref names the message stably across redeliveries and apart from a message with
    the same sequence in a stream deleted and made again (its dead letter's subject):
    `<stream>:<stream sequence>:<stored, µs>`.  Read from the ack subject as nats-py's
    `msg.metadata` reads it (the same tokens, the same datetime, so the same ref), without
    the two frozen dataclasses it builds and keeps on the message: this runs for every
    delivery.  Any other shape goes to `msg.metadata`.
    """
    tokens = msg.reply.split(".")
    if tokens[0] == "$JS" and tokens[1:2] == ["ACK"]:
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
            stream, delivered, sequence, stamp = tokens[2], tokens[4], tokens[5], tokens[7]
        elif len(tokens) >= 11:  # $JS.ACK.<domain>.<account hash>.<stream>. ... (as v1)
            stream, delivered, sequence, stamp = tokens[4], tokens[6], tokens[7], tokens[9]
        else:
            return _from_metadata(msg)
        # What nats-py does: the nanoseconds as a float of seconds, to a UTC datetime.
        stored = datetime.datetime.fromtimestamp(int(stamp) / 1e9, _UTC).timestamp()
        return int(delivered), f"{stream}:{int(sequence)}:{round(stored * 1e6)}", stored
    return _from_metadata(msg)


def _from_metadata(msg: Msg) -> tuple[int, str, float]:
    meta = msg.metadata
    stored = meta.timestamp.timestamp()
    return meta.num_delivered, f"{meta.stream}:{meta.sequence.stream}:{round(stored * 1e6)}", stored


async def cancel_message(
    client: KlaviClient, data: bytes, delivery: int, ref: str
) -> CancelResult | Poison | Decision:
    """The cancel's outcome (or the poison); a dead letter if the worker fails on it."""
    try:
        parsed = parse_request(data)
        if not isinstance(parsed, CancelRequest):
            return parsed
        return await _cancel(client, parsed)
    except ClientClosedError:
        raise  # the worker's fault, not the message's: it comes back to another worker
    except Exception as exc:
        # Failing on this message once means failing on it every time, and the server
        # redelivers without limit: end it with a dead letter rather than loop.  The
        # type only: an exception's text may hold what the message held (a document).
        name = type(exc).__name__
        logger.error("the worker failed on %s (%s): dead-lettered", ref, name)
        record = minimal_dead_letter("worker_error", delivery, ref)
        record["message"] = (
            f"the worker failed on this message ({name}); if it was a valid request, "
            "check the payment's status before enqueueing it again"
        )
        return Decision(
            Action.TERM, record=record, subject=dead_subject(ref), msg_id=dead_letter_id(ref)
        )


def _cancel(client: KlaviClient, request: CancelRequest) -> Coroutine[Any, Any, CancelResult]:
    """
    The cancel of *request* with its idempotency key (else the deterministic one): the
    coroutine `cancel_many` runs for a request (`cancel_payment`'s, or
    `cancel_automatic_payment`'s, checks included), one await level fewer than theirs.
    A client whose cancel methods are not `KlaviClient`'s own (a subclass that audits or
    refuses, a test's stub) has them called, as they always were.
    """
    key = request.idempotency_key
    if key is None:
        try:
            key = deterministic_idempotency_key(request.payment_id, request.cancelled_by)
        except ValueError:
            key = None  # the cancel reports the invalid input itself
        else:
            request = attrs.evolve(request, idempotency_key=key)
    if _own_methods(client):
        return client._request_call(request)
    if request.consent_id is not None:
        return client.cancel_automatic_payment(
            request.consent_id,
            request.payment_id,
            cancelled_by=request.cancelled_by,
            identifier_type=request.identifier_type,
            idempotency_key=key,
        )
    return client.cancel_payment(
        request.payment_id,
        cancelled_by=request.cancelled_by,
        identifier_type=request.identifier_type,
        idempotency_key=key,
    )


# Taken when this module is imported, as the worker is: a stub patched onto the class
# before then (not after) would be taken for the class's own.
_PLAIN: Final = (KlaviClient.cancel_payment, KlaviClient.cancel_automatic_payment)


def _own_methods(client: KlaviClient) -> bool:
    # The class's methods, and none replaced on the instance (`mock.patch.object(client,
    # ...)`): a stub set on either is called.
    cls = type(client)
    return (
        (cls.cancel_payment, cls.cancel_automatic_payment) == _PLAIN
        and "cancel_payment" not in getattr(client, "__dict__", ())
        and "cancel_automatic_payment" not in getattr(client, "__dict__", ())
    )
