"""
Why a call failed, and which failures are worth retrying: the one table.

Everything that decides "retryable" reads it: `ErrorKind.retryable`, the retry policy
(`RetryPolicy.should_retry` and the retry loop), a result's `retryable` and the
credentials exchange's verdict on a failed `/auth` call.  Nothing here imports another
module of the package.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "AUTH_REJECTED_STATUSES",
    "DEFAULT_RETRY_STATUSES",
    "RETRYABLE_KINDS",
    "TRANSPORT_KINDS",
    "ErrorKind",
    "attempt_retryable",
    "provider_error_retryable",
    "result_retryable",
]


class ErrorKind(enum.StrEnum):
    """Why a call failed.  The value is the lowercase name, as written to result files."""

    INVALID_REQUEST = "invalid_request"
    """Rejected locally before sending: bad document, payment id or idempotency key."""
    BAD_REQUEST = "bad_request"
    """Klavi answered 400 or 422."""
    UNAUTHORIZED = "unauthorized"
    """Klavi answered 401 even after one token refresh."""
    FORBIDDEN = "forbidden"
    """Klavi answered 403: the token lacks permission."""
    NOT_FOUND = "not_found"
    """Klavi answered 404: no such payment."""
    CONFLICT = "conflict"
    """Klavi answered 409: usually the idempotency key was used with another request."""
    NOT_CANCELLABLE = "not_cancellable"
    """Klavi refused: 416, or a body carrying `PAGAMENTO_NAO_PERMITE_CANCELAMENTO`."""
    RATE_LIMITED = "rate_limited"
    """Klavi answered 429 (or 529, overloaded) on every attempt."""
    SERVER_ERROR = "server_error"
    """Klavi answered 5xx on every attempt."""
    TIMEOUT = "timeout"
    """No answer within the timeout (or a 408)."""
    NETWORK = "network"
    """The connection failed, was reset or closed."""
    AUTHENTICATION_FAILED = "authentication_failed"
    """The token provider could not produce a token."""
    UNEXPECTED_RESPONSE = "unexpected_response"
    """A status or body the SDK cannot interpret (e.g. a redirect)."""

    @property
    def retryable(self) -> bool:
        """
        Whether the same call may succeed later, by kind alone.

        `AUTHENTICATION_FAILED` is decided per failure (transient or rejected keys), so
        this property says False for it; `CancelFailed.retryable` has the real answer.
        """
        return self in RETRYABLE_KINDS


# -- the table ------------------------------------------------------------------------

RETRYABLE_KINDS: Final = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.SERVER_ERROR, ErrorKind.TIMEOUT, ErrorKind.NETWORK}
)
"""Kinds a later call may get past: `ErrorKind.retryable` and a result's `retryable`."""

DEFAULT_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504, 529})
"""The statuses `RetryPolicy` retries by default (`retry_statuses`)."""

TRANSPORT_KINDS: Final = frozenset({ErrorKind.TIMEOUT, ErrorKind.NETWORK})
"""Kinds of an attempt that got no usable response: retried when no status came back."""

AUTH_REJECTED_STATUSES: Final = frozenset({400, 401, 403, 404, 422})
"""An `/auth` answer with one of these rejected the keys (not retryable); others are transient."""


def attempt_retryable(
    kind: ErrorKind | None,
    http_status: int | None,
    refused: bool,
    retry_statuses: frozenset[int],
    *,
    safe: bool = False,
) -> bool:
    """
    Whether one attempt's outcome is worth another attempt.

    Never a success or a refusal; a transport failure when no status came back; a status
    in *retry_statuses*.  A *safe* request (a GET) is also retried after a 2xx whose body
    broke off (a transport kind with a status): repeating it cannot apply anything twice.
    """
    if kind is None or refused:
        return False
    if http_status is None:
        return kind in TRANSPORT_KINDS
    if http_status in retry_statuses:
        return True
    return safe and kind in TRANSPORT_KINDS and 200 <= http_status < 300


def result_retryable(kind: ErrorKind | None, auth_retryable: bool) -> bool:
    """A final result's `retryable`: by kind, or as the token failure said for auth."""
    if kind is ErrorKind.AUTHENTICATION_FAILED:
        return auth_retryable
    return kind is not None and kind in RETRYABLE_KINDS


def provider_error_retryable(exc: Exception) -> bool:
    """Whether a token provider's own exception (not a `TokenError`) may pass next time."""
    return isinstance(exc, TimeoutError | ConnectionError) or (
        getattr(exc, "retryable", False) is True
    )
