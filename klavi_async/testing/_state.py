"""
The emulator's data: Klavi's status vocabulary, a test payment, a logged request, and the
answer a route computes before the HTTP layer sends it (or a fault replaces it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from attrs import define, field, frozen

__all__ = [
    "AUTOMATIC_PIX_STATUSES",
    "CANCELLABLE",
    "KLAVI_STATUSES",
    "REFUSAL_CODE",
    "Payment",
    "RequestRecord",
]

KLAVI_STATUSES: Final = frozenset(
    {
        "PREPARING",
        "STARTED",
        "ENQUEUED",
        "CONSENT_AWAITING_AUTHORIZATION",
        "CONSENT_AUTHORIZED",
        "CONSENT_REJECTED",
        "PAYMENT_PENDING",
        "PAYMENT_PARTIALLY_ACCEPTED",
        "PAYMENT_READY_FOR_SETTLEMENT",
        "PAYMENT_SCHEDULED",
        "PAYMENT_SETTLEMENT_PROCESSING",
        "PAYMENT_SETTLEMENT_DEBTOR_ACCOUNT",
        "PAYMENT_COMPLETED",
        "PAYMENT_REJECTED",
        "CANCELED",
        "ERROR",
        "EXPIRED",
        "CONSENT_PARTIALLY_ACCEPTED",
        "CONSENT_REVOKED",
    }
)
"""Klavi's payment statuses (docs.klavi.ai status guides and enum, Automatic Pix included)."""
AUTOMATIC_PIX_STATUSES: Final = frozenset({"CONSENT_PARTIALLY_ACCEPTED", "CONSENT_REVOKED"})
"""
The statuses only Klavi's Automatic Pix guide lists: a consent waiting for more approvals
(cancellable, like `PAYMENT_PARTIALLY_ACCEPTED`) and a revoked consent (refused).
"""
CANCELLABLE: Final = frozenset(
    {
        "PREPARING",
        "STARTED",
        "ENQUEUED",
        "CONSENT_AWAITING_AUTHORIZATION",
        "CONSENT_AUTHORIZED",
        "PAYMENT_PENDING",
        "PAYMENT_PARTIALLY_ACCEPTED",
        "PAYMENT_SCHEDULED",
        "CONSENT_PARTIALLY_ACCEPTED",
    }
)
"""Pre-settlement statuses: a cancel moves them to CANCELED; any other is refused (416)."""
REFUSAL_CODE: Final = "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"


@define
class Payment:
    """A test payment held by the emulator."""

    id: str
    client_request_id: str
    status: str
    amount: str = "10.00"
    currency: str = "BRL"
    consent_id: str | None = None
    status_update_at: str = field(factory=lambda: _now_iso())
    reason_code: str = "NAO_INFORMADO"
    reason_message: str = ""

    def status_body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "clientRequestId": self.client_request_id,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "statusReason": {"code": self.reason_code, "message": self.reason_message},
            "statusUpdateAt": self.status_update_at,
        }

    def body(self) -> dict[str, Any]:
        body = self.status_body()
        if self.consent_id is not None:
            body["consentId"] = self.consent_id
        return body


@frozen
class RequestRecord:
    """One request as the emulator saw it.  Never holds a token."""

    time: float
    method: str
    path: str
    route: str
    payment_id: str | None
    idempotency_key: str | None
    interaction_id: str | None
    authorized: bool
    """An `Authorization` header was present (its value is not kept)."""
    fault: str | None
    """The injected fault's name, or None."""
    status: int | None
    """The status sent, or None when the connection was dropped."""
    effect: bool
    """This request cancelled a payment."""
    replayed: bool = False
    """An idempotent replay of a stored response."""


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@define
class _Answer:
    status: int
    body: dict[str, Any] | None
    """None sends an empty body."""
    effect: bool = False
    replayed: bool = False
    headers: dict[str, str] = field(factory=dict)
