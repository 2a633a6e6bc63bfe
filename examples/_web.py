"""
What both example web apps share: the HTTP answer for a result, and their time limits.

`aiohttp_app.py` and `fastapi_app.py` import this module (run them from the repository
root as `python -m examples.aiohttp_app` / `python -m examples.fastapi_app`), so the two
apps can't drift apart and docs/integrations.md documents one table.  `http_answer()`
maps a result to a status code:

- 200: `Cancelled` (including `already_cancelled` and `reconciled` ones);
- 503 with `Retry-After`: `outcome_unknown` (whatever the kind), and every `retryable`
  failure: rate_limited, server_error, timeout, network, and authentication_failed when
  the auth endpoint failed transiently;
- 422: invalid_request (rejected before sending: a bad document, payment id or key) and
  bad_request (Klavi's 400/422);
- 404: not_found;
- 409: conflict and not_cancellable (Klavi refused; the status read found it not cancelled);
- 502: every other final failure, all on Klavi's side or ours rather than the caller's:
  unauthorized, forbidden, unexpected_response, authentication_failed (keys rejected).

The body is always `result.to_record()` (documents masked); a 503 adds `"hint"` saying
to retry with the same idempotency key, which the record carries.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Final, NamedTuple

from klavi_async import CancelFailed, Cancelled, ErrorKind, KlaviClient, RetryPolicy

__all__ = [
    "CANCEL_DEADLINE",
    "DEFAULT_RETRY_AFTER",
    "SHUTDOWN_TIMEOUT",
    "HttpAnswer",
    "extra_inputs_message",
    "http_answer",
    "exit_unless_configured",
    "klavi_from_env",
    "shutting_down",
]

CANCEL_DEADLINE: Final = 20.0
"""
Seconds one cancel may take, retries included (`RetryPolicy(deadline=...)`).

Below the web request's own deadline (a proxy's usual 30 s, say): a cancel that runs out
of time answers 503 with `Retry-After` instead of being cut off by the proxy unanswered.
"""
SHUTDOWN_TIMEOUT: Final = CANCEL_DEADLINE + 10.0
"""
Seconds a stopping server waits for requests in flight before it closes the client.

Above the deadline plus the reconciliation read a failing cancel may still make (at least
one second), so every cancel already started gets its answer.
"""

DEFAULT_RETRY_AFTER: Final = 1
"""Seconds sent in `Retry-After` when the result has no `retry_after` of its own."""

_FINAL_STATUS: Final[dict[ErrorKind, int]] = {
    ErrorKind.INVALID_REQUEST: 422,
    ErrorKind.BAD_REQUEST: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.NOT_CANCELLABLE: 409,
}
"""Final failures the caller can act on; every other final failure is Klavi's side: 502."""

_UNKNOWN_HINT: Final = (
    "the cancel may have taken effect, or may still: "
    "retry with the same idempotency_key to learn the outcome"
)
_RETRY_HINT: Final = (
    "a temporary failure, the payment is not cancelled yet: retry with the same idempotency_key"
)


def extra_inputs_message(count: int) -> str:
    """
    The `msg` of the one `extra_forbidden` problem both apps report for *count* unknown keys.

    A count, never the keys: a key may be a CPF, and 60,000 keys echoed one problem each
    would turn a small body into a large answer.
    """
    return f"Extra inputs are not permitted ({count} unknown field{'s' if count > 1 else ''})"


class HttpAnswer(NamedTuple):
    """What to send back: the status code, the JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def http_answer(result: Cancelled | CancelFailed) -> HttpAnswer:
    """Map a cancel's result to the HTTP status, body and headers of the web app's answer."""
    body = result.to_record()
    if isinstance(result, Cancelled):
        return HttpAnswer(200, body, {})
    # outcome_unknown first: a refusal whose status read failed is not retryable by kind,
    # yet only a retry with the same key can tell the caller what happened.
    if result.outcome_unknown or result.retryable:
        body["hint"] = _UNKNOWN_HINT if result.outcome_unknown else _RETRY_HINT
        return HttpAnswer(503, body, {"Retry-After": _retry_after(result.retry_after)})
    return HttpAnswer(_FINAL_STATUS.get(result.kind, 502), body, {})


def shutting_down() -> HttpAnswer:
    """The answer when the client is already closed: the server is stopping."""
    body = {"detail": "the server is shutting down: retry with the same idempotency_key"}
    return HttpAnswer(503, body, {"Retry-After": str(DEFAULT_RETRY_AFTER)})


def klavi_from_env() -> KlaviClient:
    """The apps' default client: credentials and target from `KLAVI_*` variables."""
    return KlaviClient.from_env(retry=RetryPolicy(deadline=CANCEL_DEADLINE))


def exit_unless_configured() -> None:
    """Stop with one line, not a traceback, when the `KLAVI_*` settings are missing or wrong."""
    try:
        klavi_from_env()  # builds a client, opens nothing
    except ValueError as exc:
        sys.exit(f"cannot start: {exc}")


def _retry_after(seconds: float | None) -> str:
    # Retry-After takes whole seconds; round up so the caller never comes back too early.
    # At least DEFAULT_RETRY_AFTER: "0" would invite a tight retry loop.
    return str(max(DEFAULT_RETRY_AFTER, math.ceil(seconds or 0)))
