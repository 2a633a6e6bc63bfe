"""
One queued request's cancel: its message parsed, cancelled with its idempotency key,
and what the worker keeps of one that failed.  No JetStream here; `_worker` settles
what this gives.
"""

from __future__ import annotations

import logging

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

__all__ = ["Failed", "cancel_message"]

logger = logging.getLogger("klavi_async.nats")


@define  # not frozen: made for every answer, and frozen attrs classes cost more to make
class Failed:
    """A delivery whose cancel failed retryably, kept to be settled later."""

    msg: Msg
    outcome: CancelResult
    delivery: int
    ref: str
    stored: float  # when the request was enqueued (the stream's wall clock)


async def cancel_message(
    client: KlaviClient, data: bytes, delivery: int, ref: str
) -> CancelResult | Poison | Decision:
    """The cancel's outcome (or the poison); a dead letter if the worker fails on it."""
    try:
        parsed = parse_request(data)
        return await _cancel(client, parsed) if isinstance(parsed, CancelRequest) else parsed
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


async def _cancel(client: KlaviClient, request: CancelRequest) -> CancelResult:
    key = request.idempotency_key
    if key is None:
        try:
            key = deterministic_idempotency_key(request.payment_id, request.cancelled_by)
        except ValueError:
            key = None  # the cancel reports the invalid input itself
    if request.consent_id is not None:
        return await client.cancel_automatic_payment(
            request.consent_id,
            request.payment_id,
            cancelled_by=request.cancelled_by,
            identifier_type=request.identifier_type,
            idempotency_key=key,
        )
    return await client.cancel_payment(
        request.payment_id,
        cancelled_by=request.cancelled_by,
        identifier_type=request.identifier_type,
        idempotency_key=key,
    )
