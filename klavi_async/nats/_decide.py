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
import hashlib
import json
import math
import re
from typing import Any, Final

from attrs import frozen

from .. import CancelFailed, CancelRequest, CancelResult, ErrorKind
from .._documents import clip_kept
from .._rows import FIELDS, parse_row  # the cancel-batch row rules, shared on purpose

__all__ = ["Action", "Decision", "Poison", "decide", "is_final", "parse_request"]

RESULTS_SUBJECT: Final = "klavi.cancel.results"
"""The records' root: each request's record is on `klavi.cancel.results.<token>`."""
DEAD_SUBJECT: Final = "klavi.cancel.dead"
"""The dead letters' root: each message's is on `klavi.cancel.dead.<token>`."""
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")


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
    """
    `bad_json`, `not_an_object`, `missing_field`, `bad_field` (not a string),
    `invalid_request` or `worker_error`.
    """
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
    """Where the record goes: one subject per request (or per dead message), which the
    results stream keeps one record on."""
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
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        return Poison("bad_json", "the message is not valid JSON")
    if not isinstance(value, dict):
        return Poison("not_an_object", "the message is not a JSON object")
    request = _as_enqueued(value)
    if request is not None:
        return request
    row = parse_row(0, value)
    if row.request is None:
        key = value.get("idempotency_key")
        missing = (row.error or "").startswith("missing")
        return Poison(
            "missing_field" if missing else "bad_field",
            f"the message is {row.error}" if missing else f"in the message, {row.error}",
            payment_id=_kept(row.payment_id),
            consent_id=_kept(row.consent_id),
            idempotency_key=_kept(key if isinstance(key, str) else None),
        )
    return row.request


_FIELDS: Final = frozenset(FIELDS)


def _as_enqueued(value: dict[str, Any]) -> CancelRequest | None:
    """
    The request in a message of the shape `enqueue()` writes (known fields, strings or
    null, both required ones there), or None for `parse_row` to judge.  The same
    request `parse_row` gives (a test holds them equal), without what only a malformed
    row needs: the misspelling and type checks, and the digest naming a result line.
    """
    if not value.keys() <= _FIELDS:
        return None
    fields = {}
    for name, given in value.items():
        if given is None:
            continue
        if type(given) is not str:
            return None
        given = given.strip()
        if given:
            fields[name] = given
    if "payment_id" not in fields or "cancelled_by" not in fields:
        return None
    return CancelRequest(**fields)


LONGEST: Final = 1e9
"""The longest duration in seconds (31 years): under the server's int64 nanoseconds."""


def check_settings(concurrency: int, max_deliver: int, ack_wait: float) -> None:
    """A worker's counts are ints >= 1; *ack_wait* is in (0, LONGEST] (`ValueError`)."""
    for name, value in (("concurrency", concurrency), ("max_deliver", max_deliver)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int")
        if value < 1:
            raise ValueError(f"{name} must be >= 1")
    # The server takes durations in int64 nanoseconds: 9.2e9 s at most.
    if not LONGEST >= ack_wait > 0:
        raise ValueError(f"ack_wait must be > 0 and at most {LONGEST:g} s")


def check_schedule(
    retry_delay: float, max_retry_delay: float, max_age: float, *, longest: float = LONGEST
) -> None:
    """`ValueError` unless 0 < retry_delay <= max_retry_delay <= *longest* and max_age > 0."""
    if not retry_delay > 0:
        raise ValueError("retry_delay must be > 0 (a nak without a delay is immediate)")
    if not longest >= max_retry_delay >= retry_delay:
        at_most = f" and at most {longest:g} s" if longest < math.inf else ""
        raise ValueError(f"max_retry_delay must be >= retry_delay{at_most}")
    if not max_age > 0:
        raise ValueError("max_age must be > 0")


def decide(
    delivery_count: int,
    max_deliver: int,
    outcome: CancelResult | Poison,
    retry_delay: float,
    *,
    ref: str,
    max_retry_delay: float = 300.0,
    age: float = 0.0,
    max_age: float = 86400.0,
) -> Decision:
    """
    Decide what follows one delivery of a request whose cancel gave *outcome*.

    *delivery_count* is 1 for the first delivery (counting only the deliveries that were
    the message's own failures); *max_deliver* the last one allowed.  *age* is the
    seconds since the request was enqueued.  *ref* names the message stably across
    redeliveries (e.g. `KLAVI_CANCEL:42`); it is the de-duplication id of a dead letter,
    and of a result that carries no key.

    - a poison message or an `INVALID_REQUEST`: one dead letter, then `TERM`;
    - a final outcome: its record, then `ACK`;
    - the credentials were refused: `NAK` and `halt` (no message is to blame);
    - another failure: `NAK` after `retry_delay * 2**(delivery_count - 1)` (or the
      `retry_after` Klavi asked for, if longer), at most *max_retry_delay*; except on
      the last allowed delivery or at *max_age*: its record (not final), then `TERM`.
    """
    if delivery_count < 1 or max_deliver < 1:
        raise ValueError("delivery_count and max_deliver must be >= 1")
    check_schedule(retry_delay, max_retry_delay, max_age, longest=math.inf)
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
    key = outcome.idempotency_key
    if is_final(outcome):
        # The key: one final record per request, even when a worker dies before acking.
        msg_id = key or f"result-{ref}"
        return Decision(Action.ACK, record=record, subject=record_subject(key, ref), msg_id=msg_id)
    if delivery_count >= max_deliver or age >= max_age:  # NaN age: not known to be old
        # Not the bare key: a non-final record must not block the final record of the
        # same request enqueued again later.  Stable across this message's redeliveries.
        msg_id = f"{key}:unsettled:{ref}" if key else f"result-{ref}"
        return Decision(Action.TERM, record=record, subject=record_subject(key, ref), msg_id=msg_id)
    return Decision(
        Action.NAK, delay=redelivery_delay(delivery_count, outcome, retry_delay, max_retry_delay)
    )


def redelivery_delay(
    delivery_count: int, outcome: CancelResult, retry_delay: float, max_retry_delay: float
) -> float:
    """`retry_delay` doubling with each delivery, or Klavi's Retry-After; at most the cap."""
    delay = retry_delay * 2.0 ** min(delivery_count - 1, 60)  # no overflow at any count
    asked = outcome.retry_after if isinstance(outcome, CancelFailed) else None
    if asked is not None and asked > delay:
        delay = asked
    return min(delay, max_retry_delay)


def _kept(value: str | None, limit: int = 100) -> str | None:
    # What a poison message carries is kept only as far as a valid id could go, with
    # documents masked: it may be anything (a CPF in the wrong field, 800 KB of text).
    return clip_kept(value, limit) if value else None


def _dead(poison: Poison, delivery_count: int, ref: str) -> Decision:
    record: dict[str, Any] = {
        "ok": False,
        "kind": ErrorKind.INVALID_REQUEST.value,
        "reason": poison.reason,
        "message": _kept(poison.message, 500),
        "payment_id": _kept(poison.payment_id),
        "consent_id": _kept(poison.consent_id),
        "idempotency_key": _kept(poison.idempotency_key),
        "deliveries": delivery_count,
        "source": ref,
    }
    return Decision(
        Action.TERM, record=record, subject=dead_subject(ref), msg_id=dead_letter_id(ref)
    )


def subject_token(name: str) -> str:
    """
    *name* as one subject token: itself if made of letters, digits, `_` and `-` (a key
    from `deterministic_idempotency_key`), else `sha256-` and its hash (a key may hold
    `.`, `*`, `>` or spaces, which a subject cannot).
    """
    if _TOKEN_RE.fullmatch(name):
        return name
    return "sha256-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def record_subject(key: str | None, ref: str) -> str:
    """The subject of a request's record: by its idempotency key (else the message's)."""
    return f"{RESULTS_SUBJECT}.{subject_token(key or ref.replace(':', '-'))}"


def dead_subject(ref: str) -> str:
    """The subject of the dead letter of the message *ref* names."""
    return f"{DEAD_SUBJECT}.{subject_token(ref.replace(':', '-'))}"


def is_final_record(record: dict[str, Any]) -> bool:
    """`is_final()` for a published record (cancelled, or failed for good)."""
    return record.get("ok") is True or (
        record.get("retryable") is False and record.get("outcome_unknown") is False
    )


def dead_letter_id(ref: str) -> str:
    """The de-duplication id of the dead letter of the message *ref* names."""
    return f"dead-{ref}"


def minimal_dead_letter(reason: str, delivery_count: int, ref: str) -> dict[str, Any]:
    """
    A dead letter holding only *reason* and the source: for when the full one can't be sent.

    A record too large for the server (or a worker failing on the message) would
    otherwise leave the message unsettled, redelivered for ever.
    """
    return {
        "ok": False,
        "kind": ErrorKind.INVALID_REQUEST.value,
        "reason": reason,
        "deliveries": delivery_count,
        "source": ref,
    }
