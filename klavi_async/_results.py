"""
Requests and results: the values users pass in and get back (the failed result,
`CancelFailed`, lives with the exceptions it turns into, in `_errors`).

All are frozen attrs classes.  Reprs never show a full document (it is masked) nor a
response body (which may echo personal data); the body is still there as an attribute.
"""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen

from ._documents import clip_kept, mask_document, scrub_documents
from ._kinds import ErrorKind
from ._values import text_or_none

__all__ = ["Attempt", "CancelRequest", "Cancelled", "PaymentStatus"]

CANCELED_STATUSES = frozenset({"CANCELED", "CANCELLED"})
TERMINAL_STATUSES = frozenset(
    {
        *CANCELED_STATUSES,
        "PAYMENT_COMPLETED",
        "PAYMENT_REJECTED",
        "CONSENT_REJECTED",
        "CONSENT_REVOKED",
        "ERROR",
        "EXPIRED",
    }
)
"""Statuses no cancel can change any more (Klavi's "terminated" states and settled ones)."""


def _shown(value: object) -> str:
    """A field's repr with documents masked and long values clipped (ids, keys, codes)."""
    return repr(clip_kept(value)) if isinstance(value, str) else repr(value)


def _masked(value: object) -> str:
    """A field's repr with documents masked (messages)."""
    return repr(scrub_documents(value)) if isinstance(value, str) else repr(value)


@frozen
class CancelRequest:
    """
    One cancel to run through `KlaviClient.cancel_many()`.

    Nothing is validated when it is built: an invalid request becomes a
    `CancelFailed(kind=INVALID_REQUEST)` result, so a batch yields one result per input.
    Give `consent_id` to cancel an Automatic Pix payment.
    """

    payment_id: str = field(repr=_shown)
    cancelled_by: str = field(repr=mask_document)
    identifier_type: str | None = field(default=None, repr=_shown)
    idempotency_key: str | None = field(default=None, repr=_shown)
    consent_id: str | None = field(default=None, kw_only=True, repr=_shown)


@frozen(kw_only=True)
class Attempt:
    """One HTTP request of a cancel, as it happened."""

    number: int
    """1 for the first request of the call, then 2, 3, ..."""
    http_status: int | None
    """The status Klavi answered, or None when no response arrived."""
    kind: ErrorKind | None
    """Why the attempt failed, or None when it succeeded."""
    code: str | None = field(default=None, repr=_shown)
    """Business or Open Finance code from the error body, if any."""
    ambiguous: bool = False
    """It may have taken effect without our knowing (timeout after sending, 500/502/504)."""
    duration: float = 0.0
    """Seconds from sending to the end of the response."""
    delay: float | None = None
    """Seconds waited before the next attempt; None for the last one."""
    retry_after: float | None = None
    """The server's Retry-After hint in seconds, if it sent one."""
    request_id: str | None = field(default=None, repr=_shown)
    """A correlation id the server echoed (`x-fapi-interaction-id` or `x-request-id`)."""
    token_refreshed: bool = False
    """This attempt replayed the previous one with a fresh token after a 401."""


@frozen(kw_only=True)
class _ResultBase:
    payment_id: str = field(repr=_shown)
    """The payment the call was about (clipped to 100 characters when it was invalid)."""
    idempotency_key: str | None = field(repr=_shown)
    """The key sent on every attempt (None when the client sends none)."""
    interaction_id: str
    """The `x-fapi-interaction-id` sent on every attempt; quote it to Klavi's support."""
    attempts: int
    """How many HTTP requests the call sent (0 when rejected locally)."""
    history: tuple[Attempt, ...]
    """Every attempt, in order."""
    elapsed: float
    """Seconds from the call's start to its result."""
    consent_id: str | None = field(default=None, repr=_shown)
    """The Automatic Pix consent, for `cancel_automatic_payment()`."""


@frozen(kw_only=True)
class Cancelled(_ResultBase):
    """The payment is cancelled: Klavi said so, or a status read confirmed it."""

    http_status: int | None
    """Status of the last cancel attempt (a refusal such as 409 or 416 when reconciled)."""
    body: Any = field(default=None, repr=False)
    """The parsed JSON of the successful response, or None (empty, HTML, invalid JSON)."""
    already_cancelled: bool = False
    """Klavi refused the cancel and a status read found the payment already CANCELED."""
    reconciled: bool = False
    """The outcome was confirmed by reading the payment's status."""

    @property
    def ok(self) -> Literal[True]:
        """Always True: the payment ends cancelled."""
        return True

    def unwrap(self) -> Cancelled:
        """Return this result (the matching call on `CancelFailed` raises)."""
        return self

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict with the fields of a `klavi-async` result line."""
        return {
            "payment_id": self.payment_id,
            "ok": True,
            "kind": None,
            "retryable": False,
            "http_status": self.http_status,
            "code": None,
            "message": None,
            "idempotency_key": self.idempotency_key,
            "interaction_id": self.interaction_id,
            "consent_id": self.consent_id,
            "attempts": self.attempts,
            "already_cancelled": self.already_cancelled,
            "reconciled": self.reconciled,
            "outcome_unknown": False,
            "payment_status": "CANCELED" if self.reconciled else None,
            "retry_after": None,
            "elapsed": round(self.elapsed, 6),
        }


@frozen(kw_only=True)
class PaymentStatus:
    """A payment's status as Klavi reports it (`GET .../instant/payments/{id}/status`)."""

    payment_id: str = field(repr=_shown)
    """The payment's id (`id` in the response; the requested id if absent)."""
    status: str = field(repr=_shown)
    """Klavi's status string as sent, e.g. `PAYMENT_PENDING`, `CANCELED`; unknown values kept."""
    client_request_id: str | None = field(default=None, repr=_shown)
    amount: str | None = None
    currency: str | None = None
    status_reason_code: str | None = field(default=None, repr=_shown)
    status_reason_message: str | None = field(default=None, repr=_masked)
    status_update_at: str | None = None
    body: Any = field(default=None, repr=False)
    """The parsed JSON response."""

    @property
    def cancelled(self) -> bool:
        """True when the status is `CANCELED` (or the spelling `CANCELLED`)."""
        return self.status.upper() in CANCELED_STATUSES

    @property
    def terminal(self) -> bool:
        """True when no cancel can change the payment any more (settled, rejected, ...)."""
        return self.status.upper() in TERMINAL_STATUSES

    @classmethod
    def from_body(
        cls, payment_id: str, body: dict[str, Any], *, secrets: tuple[str, ...] = ()
    ) -> PaymentStatus | None:
        """
        Build from a status response body; None when it carries no usable `status`.  Each
        of *secrets* (the client's keys) is replaced by `***` in every field kept.
        """
        status = body.get("status")
        if not isinstance(status, str) or not status.strip():
            return None
        reason = body.get("statusReason")
        reason = reason if isinstance(reason, dict) else {}

        # Every field is the server's to fill: a document in it (`PAYMENT_COMPLETED
        # 52998224725`) is masked, a key replaced and a huge one clipped, since they
        # reach records, reprs, log lines and spans.  `body` stays as sent, for the caller.
        def kept(value: object, clip: bool = True) -> str | None:
            text = text_or_none(value)
            if text is None:
                return None
            for secret in secrets:
                text = text.replace(secret, "***") if secret else text
            return clip_kept(text) if clip else scrub_documents(text)

        return cls(
            payment_id=kept(body.get("id")) or payment_id,
            status=kept(status.strip()) or "***",
            client_request_id=kept(body.get("clientRequestId")),
            amount=kept(body.get("amount")),
            currency=kept(body.get("currency")),
            status_reason_code=kept(reason.get("code")),
            status_reason_message=kept(reason.get("message"), clip=False),
            status_update_at=kept(body.get("statusUpdateAt")),
            body=body,
        )
