"""
klavi_async: an async-first SDK for Klavi Pay's instant-payment API.

Cancel payment initiations safely at any volume: one awaited cancel, thousands
streamed through `cancel_many()`, or one per message in a consumer that may see the
same message twice (`deterministic_idempotency_key`).
"""

from __future__ import annotations

import logging

from ._budget import RetryBudget, RetryBudgetStats
from ._client import KlaviClient
from ._config import Environment
from ._documents import deterministic_idempotency_key, mask_document
from ._errors import (
    APIStatusError,
    AuthenticationFailedError,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    ErrorKind,
    ForbiddenError,
    InvalidRequestError,
    KlaviError,
    KlaviTimeoutError,
    NetworkError,
    NotCancellableError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnexpectedResponseError,
)
from ._ratelimit import RateLimit, RateLimitStats
from ._results import Attempt, CancelFailed, Cancelled, CancelRequest, CancelResult, PaymentStatus
from ._retry import RetryPolicy
from ._tokens import AccessToken, ClientCredentials, StaticToken, TokenProvider

# A library never configures logging; this only stops Python's last-resort handler
# from printing our warnings when the application set up no logging at all.
logging.getLogger("klavi_async").addHandler(logging.NullHandler())

__all__ = [
    "APIStatusError",
    "AccessToken",
    "Attempt",
    "AuthenticationFailedError",
    "BadRequestError",
    "CancelFailed",
    "CancelRequest",
    "CancelResult",
    "Cancelled",
    "ClientClosedError",
    "ClientCredentials",
    "ConflictError",
    "Environment",
    "ErrorKind",
    "ForbiddenError",
    "InvalidRequestError",
    "KlaviClient",
    "KlaviError",
    "KlaviTimeoutError",
    "NetworkError",
    "NotCancellableError",
    "NotFoundError",
    "PaymentStatus",
    "RateLimit",
    "RateLimitStats",
    "RateLimitedError",
    "RetryBudget",
    "RetryBudgetStats",
    "RetryPolicy",
    "ServerError",
    "StaticToken",
    "TokenProvider",
    "TransportError",
    "UnauthorizedError",
    "UnexpectedResponseError",
    "deterministic_idempotency_key",
    "mask_document",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from ._version import version

        return version
    raise AttributeError(f"module 'klavi_async' has no attribute {name!r}")
