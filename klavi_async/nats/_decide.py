"""
What to do with one delivery of a cancel request: broker-agnostic and pure.

A consumer on any broker that redelivers (JetStream, RabbitMQ, Kafka with a retry topic)
turns a message into a request with `parse_request()`, runs the cancel, and asks
`decide()` what follows: acknowledge, retry later (with a delay), or stop redelivering,
and which record to publish first.  Nothing here does I/O, reads a clock or imports a
broker's client.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Final

from attrs import frozen

from .. import CancelFailed, CancelRequest, CancelResult, ErrorKind
from .._cli._rows import parse_row  # the cancel-batch row rules, shared on purpose

__all__ = ["Action", "Decision", "Poison", "decide", "is_final", "parse_request"]

RESULTS_SUBJECT: Final = "klavi.cancel.results"
DEAD_SUBJECT: Final = "klavi.cancel.dead"


class Action(enum.Enum):
    """What the adapter does with the delivery once the record (if any) is published."""

    ACK = "ack"
    """Done: remove it from the queue."""
    NAK = "nak"
    """Not done: deliver it again after `Decision.delay` seconds."""
    TERM = "term"
    """Done for good without success: never deliver it again."""


@frozen
class Poison:
    """A message that cannot be a cancel request; its reason never holds a document."""

    reason: str
    """`bad_json`, `not_an_object`, `missing_field` or `invalid_request`."""
    message: str
    payment_id: str | None = None
    consent_id: str | None = None
    idempotency_key: str | None = None


@frozen
class Decision:
    """The outcome of `decide()`: publish `record` on `subject` (if any), then `action`."""

    action: Action
    delay: float | None = None
    """Seconds before the redelivery, for `NAK` (always set then: a plain nak is immediate)."""
    record: dict[str, Any] | None = None
    subject: str | None = None
    msg_id: str | None = None
    """The de-duplication id to publish the record with."""
    halt: bool = False
    """Stop taking messages: the failure is the worker's (credentials), not the message's."""


def is_final(result: CancelResult) -> bool:
    """Cancelled, or failed for good: the rule `cancel-batch` uses for a final line."""
    return result.ok or (not result.retryable and not result.outcome_unknown)


def parse_request(data: bytes) -> CancelRequest | Poison:
    """Turn a message body into a request, with the rules of `cancel-batch` rows."""
    try:
        value = json.loads(data)
    except ValueError:  # includes bytes that are not UTF-8
        return Poison("bad_json", "the message is not valid JSON")
    if not isinstance(value, dict):
        return Poison("not_an_object", "the message is not a JSON object")
    row = parse_row(0, value)
    if row.request is None:
        key = value.get("idempotency_key")
        return Poison(
            "missing_field",
            f"the message is {row.error}",
            payment_id=_clip(row.payment_id) or None,
            consent_id=row.consent_id,
            idempotency_key=key if isinstance(key, str) else None,
        )
    return row.request


def decide(
    delivery_count: int,
    max_deliver: int,
    outcome: CancelResult | Poison,
    retry_delay: float,
    *,
    ref: str,
) -> Decision:
    """
    Decide what follows one delivery of a request whose cancel gave *outcome*.

    *delivery_count* is 1 for the first delivery; *max_deliver* the last one allowed.
    *ref* names the message stably across redeliveries (e.g. `KLAVI_CANCEL:42`); it is
    the de-duplication id of a dead letter, and of a result that carries no key.

    - a poison message or an `INVALID_REQUEST`: one dead letter, then `TERM`;
    - a final outcome: its record, then `ACK`;
    - the credentials were refused: `NAK` and `halt` (no message is to blame);
    - another failure: `NAK` after its `retry_after` or *retry_delay*, except on the
      last allowed delivery: its record (not final), then `TERM`.
    """
    if delivery_count < 1 or max_deliver < 1:
        raise ValueError("delivery_count and max_deliver must be >= 1")
    if retry_delay <= 0:
        raise ValueError("retry_delay must be > 0 (a nak without a delay is immediate)")
    if isinstance(outcome, Poison):
        return _dead(outcome, delivery_count, ref)
    if isinstance(outcome, CancelFailed) and outcome.kind is ErrorKind.INVALID_REQUEST:
        poison = Poison(
            "invalid_request",
            outcome.message,
            payment_id=outcome.payment_id,
            consent_id=outcome.consent_id,
            idempotency_key=outcome.idempotency_key,
        )
        return _dead(poison, delivery_count, ref)
    if (
        isinstance(outcome, CancelFailed)
        and outcome.kind is ErrorKind.AUTHENTICATION_FAILED
        and not outcome.retryable
    ):
        return Decision(Action.NAK, delay=retry_delay, halt=True)
    record = outcome.to_record()
    record["deliveries"] = delivery_count
    msg_id = outcome.idempotency_key or f"result-{ref}"
    if is_final(outcome):
        return Decision(Action.ACK, record=record, subject=RESULTS_SUBJECT, msg_id=msg_id)
    if delivery_count >= max_deliver:
        return Decision(Action.TERM, record=record, subject=RESULTS_SUBJECT, msg_id=msg_id)
    delay = outcome.retry_after if isinstance(outcome, CancelFailed) else None
    return Decision(Action.NAK, delay=delay if delay and delay > 0 else retry_delay)


def _clip(value: str) -> str:
    # What a poison message carries is kept only as far as a valid id could go.
    return value if len(value) <= 100 else value[:100] + "..."


def _dead(poison: Poison, delivery_count: int, ref: str) -> Decision:
    record: dict[str, Any] = {
        "ok": False,
        "kind": ErrorKind.INVALID_REQUEST.value,
        "reason": poison.reason,
        "message": poison.message,
        "payment_id": poison.payment_id,
        "consent_id": poison.consent_id,
        "idempotency_key": poison.idempotency_key,
        "deliveries": delivery_count,
        "source": ref,
    }
    return Decision(Action.TERM, record=record, subject=DEAD_SUBJECT, msg_id=f"dead-{ref}")
