"""
klavi_async: an async-first SDK for Klavi Pay's instant-payment API.

Cancel payment initiations safely at any volume: one awaited cancel, thousands
streamed through `cancel_many()`, or one per message in a consumer that may see the
same message twice (`deterministic_idempotency_key`).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._budget import RetryBudget, RetryBudgetStats
    from ._client import KlaviClient
    from ._config import Environment
    from ._documents import deterministic_idempotency_key, mask_document
    from ._errors import (
        APIStatusError,
        AuthenticationFailedError,
        BadRequestError,
        CancelFailed,
        CancelResult,
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
    from ._results import Attempt, Cancelled, CancelRequest, PaymentStatus
    from ._retry import RetryPolicy
    from ._tokens import AccessToken, ClientCredentials, StaticToken, TokenProvider

    __version__: str

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


_EXPORTS: Final = {
    "RetryBudget": "_budget",
    "RetryBudgetStats": "_budget",
    "KlaviClient": "_client",
    "Environment": "_config",
    "deterministic_idempotency_key": "_documents",
    "mask_document": "_documents",
    "APIStatusError": "_errors",
    "AuthenticationFailedError": "_errors",
    "BadRequestError": "_errors",
    "ClientClosedError": "_errors",
    "ConflictError": "_errors",
    "ErrorKind": "_errors",
    "ForbiddenError": "_errors",
    "InvalidRequestError": "_errors",
    "KlaviError": "_errors",
    "KlaviTimeoutError": "_errors",
    "NetworkError": "_errors",
    "NotCancellableError": "_errors",
    "NotFoundError": "_errors",
    "RateLimitedError": "_errors",
    "ServerError": "_errors",
    "TransportError": "_errors",
    "UnauthorizedError": "_errors",
    "UnexpectedResponseError": "_errors",
    "RateLimit": "_ratelimit",
    "RateLimitStats": "_ratelimit",
    "Attempt": "_results",
    "CancelFailed": "_errors",
    "CancelRequest": "_results",
    "CancelResult": "_errors",
    "Cancelled": "_results",
    "PaymentStatus": "_results",
    "RetryPolicy": "_retry",
    "AccessToken": "_tokens",
    "ClientCredentials": "_tokens",
    "StaticToken": "_tokens",
    "TokenProvider": "_tokens",
}
"""Each public name and the module that defines it: imported on first use (PEP 562)."""


if not TYPE_CHECKING:  # a type checker sees the imports above: a typo stays an error

    def __getattr__(name: str) -> Any:
        """
        A public name's value, importing its module the first time it is asked for.

        `import klavi_async` itself imports nothing heavy: a command's `--help`, or a
        program that only reads `__version__`, does not pay for aiohttp.
        """
        module = _EXPORTS.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f".{module}", __name__), name)
            globals()[name] = value  # the next lookup is a plain attribute
            return value
        if name == "__version__":
            from ._version import version

            return version
        raise AttributeError(f"module 'klavi_async' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names and the module's own dunders: not the helpers it imports."""
    own = {name for name in globals() if name.startswith("__") and name != "__getattr__"}
    return sorted({*own, *__all__, "__version__"})
