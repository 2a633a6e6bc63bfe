"""
Failures: the failed result (`CancelFailed`), the exception tree it turns into, and
`CancelResult`.  Results import nothing from here; this module builds on them.

A cancel never raises for an outcome: it returns `Cancelled` or `CancelFailed`, and
`CancelFailed.kind` is one of the `ErrorKind` members below.  Exceptions appear only
when you ask for them (`result.unwrap()`), from `get_payment_status()`, and for misuse.

```
KlaviError                          root of every outcome error; .kind, .result, ...
├── InvalidRequestError             INVALID_REQUEST: rejected locally, nothing sent
├── AuthenticationFailedError       AUTHENTICATION_FAILED: the token provider failed
├── APIStatusError                  Klavi answered with an error status
│   ├── BadRequestError             BAD_REQUEST: 400 / 422
│   ├── UnauthorizedError           UNAUTHORIZED: 401 after one token refresh
│   ├── ForbiddenError              FORBIDDEN: 403
│   ├── NotFoundError               NOT_FOUND: 404
│   ├── ConflictError               CONFLICT: 409 (idempotency key reused)
│   ├── NotCancellableError         NOT_CANCELLABLE: 416 or a refusal code
│   ├── RateLimitedError            RATE_LIMITED: 429 / 529
│   ├── ServerError                 SERVER_ERROR: 5xx
│   └── UnexpectedResponseError     UNEXPECTED_RESPONSE: a status or body we cannot use
└── TransportError                  no usable HTTP response
    ├── KlaviTimeoutError           TIMEOUT (also a builtin TimeoutError)
    └── NetworkError                NETWORK: connect, reset, disconnect (also a ConnectionError)

ClientClosedError(RuntimeError)     misuse: the client was used after aclose()
```

Misuse (wrong argument types, a closed client, bad configuration) raises `TypeError`,
`ValueError` or `ClientClosedError`, never a `KlaviError`.
"""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen

from ._documents import clip_kept, scrub_documents
from ._kinds import ErrorKind
from ._results import Cancelled, _masked, _ResultBase, _shown

__all__ = [
    "ErrorKind",
    "KlaviError",
    "InvalidRequestError",
    "AuthenticationFailedError",
    "APIStatusError",
    "BadRequestError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "ConflictError",
    "NotCancellableError",
    "RateLimitedError",
    "ServerError",
    "UnexpectedResponseError",
    "TransportError",
    "KlaviTimeoutError",
    "NetworkError",
    "ClientClosedError",
    "CancelFailed",
    "CancelResult",
    "error_class",
]


class KlaviError(Exception):
    """
    Root of the outcome errors.

    Attributes mirror `CancelFailed`; `result` is the `CancelFailed` that
    `unwrap()` turned into this exception (None for `get_payment_status()`).
    """

    kind: ErrorKind = ErrorKind.UNEXPECTED_RESPONSE

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind | None = None,
        payment_id: str | None = None,
        http_status: int | None = None,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        payment_status: str | None = None,
        body: Any = None,
        result: CancelFailed | None = None,
    ) -> None:
        if kind is not None:
            self.kind = kind
        self.message = message
        self.payment_id = payment_id
        self.http_status = http_status
        self.code = code
        self.retryable = self.kind.retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.payment_status = payment_status
        self.body = body
        self.result = result
        super().__init__(self._describe())

    def _describe(self) -> str:
        # Documents masked and long values clipped whatever the fields hold (a CPF
        # passed as the payment id, a message of the caller's own).
        parts = [f"{self.kind.value}: {scrub_documents(self.message)}"]
        details = []
        if self.payment_id is not None:
            details.append(f"payment {clip_kept(self.payment_id)}")
        if self.http_status is not None:
            details.append(f"HTTP {self.http_status}")
        if self.code is not None:
            details.append(f"code {clip_kept(self.code)}")
        if self.payment_status is not None:
            details.append(f"status {self.payment_status}")
        if self.outcome_unknown:
            details.append("outcome unknown")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    @classmethod
    def from_result(cls, result: CancelFailed) -> KlaviError:
        """Build the exception matching `result.kind`, carrying every field of the result."""
        return result._error()


class InvalidRequestError(KlaviError):
    """The arguments were rejected locally; nothing was sent."""

    kind = ErrorKind.INVALID_REQUEST


class AuthenticationFailedError(KlaviError):
    """The token provider could not produce a token (rejected keys, auth endpoint down)."""

    kind = ErrorKind.AUTHENTICATION_FAILED


class APIStatusError(KlaviError):
    """Klavi answered with a status that is not a success; `http_status` says which."""


class BadRequestError(APIStatusError):
    """400 or 422: Klavi says the request is malformed."""

    kind = ErrorKind.BAD_REQUEST


class UnauthorizedError(APIStatusError):
    """401 even after the token was refreshed once."""

    kind = ErrorKind.UNAUTHORIZED


class ForbiddenError(APIStatusError):
    """403: the token lacks permission for this payment."""

    kind = ErrorKind.FORBIDDEN


class NotFoundError(APIStatusError):
    """404: Klavi knows no such payment."""

    kind = ErrorKind.NOT_FOUND


class ConflictError(APIStatusError):
    """409: the idempotency key was already used, usually with another request."""

    kind = ErrorKind.CONFLICT


class NotCancellableError(APIStatusError):
    """The payment cannot be cancelled; `payment_status` tells its current status if read."""

    kind = ErrorKind.NOT_CANCELLABLE


class RateLimitedError(APIStatusError):
    """429 (or 529) on every attempt; `retry_after` holds the server's hint in seconds."""

    kind = ErrorKind.RATE_LIMITED


class ServerError(APIStatusError):
    """A 5xx on every attempt."""

    kind = ErrorKind.SERVER_ERROR


class UnexpectedResponseError(APIStatusError):
    """A status or body the SDK cannot use, such as a redirect or a malformed status body."""

    kind = ErrorKind.UNEXPECTED_RESPONSE


class TransportError(KlaviError):
    """No usable HTTP response arrived."""


class KlaviTimeoutError(TransportError, TimeoutError):
    """No answer within the timeout; `except TimeoutError` catches it too."""

    kind = ErrorKind.TIMEOUT


class NetworkError(TransportError, ConnectionError):
    """The connection failed, was reset or closed; `except ConnectionError` catches it too."""

    kind = ErrorKind.NETWORK


class ClientClosedError(RuntimeError):
    """The client was used after `aclose()`; create a new `KlaviClient`."""


_BY_KIND: dict[ErrorKind, type[KlaviError]] = {
    ErrorKind.INVALID_REQUEST: InvalidRequestError,
    ErrorKind.BAD_REQUEST: BadRequestError,
    ErrorKind.UNAUTHORIZED: UnauthorizedError,
    ErrorKind.FORBIDDEN: ForbiddenError,
    ErrorKind.NOT_FOUND: NotFoundError,
    ErrorKind.CONFLICT: ConflictError,
    ErrorKind.NOT_CANCELLABLE: NotCancellableError,
    ErrorKind.RATE_LIMITED: RateLimitedError,
    ErrorKind.SERVER_ERROR: ServerError,
    ErrorKind.TIMEOUT: KlaviTimeoutError,
    ErrorKind.NETWORK: NetworkError,
    ErrorKind.AUTHENTICATION_FAILED: AuthenticationFailedError,
    ErrorKind.UNEXPECTED_RESPONSE: UnexpectedResponseError,
}


def error_class(kind: ErrorKind) -> type[KlaviError]:
    """The exception class raised for *kind*."""
    return _BY_KIND[kind]


@frozen(kw_only=True)
class CancelFailed(_ResultBase):
    """The call ended without the payment being known to be cancelled."""

    kind: ErrorKind
    """Why it failed; the last attempt's kind when retries ran out."""
    http_status: int | None
    """Status of the last attempt, or None when no response arrived."""
    code: str | None = field(repr=_shown)
    """Business or Open Finance code from the error body, if any."""
    message: str = field(repr=_masked)
    """A readable reason; never holds the token, the secret key or a full document."""
    retryable: bool
    """Whether the same call later may succeed."""
    outcome_unknown: bool = False
    """The cancel may have taken effect and no status read could tell."""
    payment_status: str | None = None
    """The payment's status when a reconciliation read found it, e.g. `PAYMENT_COMPLETED`."""
    retry_after: float | None = None
    """Seconds the server asked to wait, or the wait the deadline did not allow."""
    body: Any = field(default=None, repr=False)
    """The parsed JSON error body, or None."""

    @property
    def ok(self) -> Literal[False]:
        """Always False."""
        return False

    def unwrap(self) -> Cancelled:
        """Raise the `KlaviError` subclass matching `kind`, carrying this result."""
        raise self._error()

    def _error(self) -> KlaviError:
        """The exception `unwrap()` raises: built from this result's own fields."""
        return error_class(self.kind)(
            self.message,
            kind=self.kind,
            payment_id=self.payment_id,
            http_status=self.http_status,
            code=self.code,
            retryable=self.retryable,
            retry_after=self.retry_after,
            outcome_unknown=self.outcome_unknown,
            payment_status=self.payment_status,
            body=self.body,
            result=self,
        )

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict with the fields of a `klavi-async` result line."""
        return {
            "payment_id": self.payment_id,
            "ok": False,
            "kind": self.kind.value,
            "retryable": self.retryable,
            "http_status": self.http_status,
            "code": self.code,
            "message": self.message,
            "idempotency_key": self.idempotency_key,
            "interaction_id": self.interaction_id,
            "consent_id": self.consent_id,
            "attempts": self.attempts,
            "already_cancelled": False,
            "reconciled": False,
            "outcome_unknown": self.outcome_unknown,
            "payment_status": self.payment_status,
            "retry_after": self.retry_after,
            "elapsed": round(self.elapsed, 6),
        }


CancelResult = Cancelled | CancelFailed
"""What every cancel returns."""
