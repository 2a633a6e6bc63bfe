"""
Logging as one subscriber of the events seam: every `klavi_async` log line is written here.

Strictly private.  Lines and `extra` keys (`klavi_event`, `klavi_payment_id`, ...) are a
stable interface that log pipelines match on; change them only on purpose.  A library
never configures logging: this writes to the `klavi_async` logger and leaves levels and
handlers to the application.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from ._events import (
    AttemptEnded,
    CallInfo,
    CancelGaveUp,
    CancelRejected,
    CancelSucceeded,
    Events,
    Reconciled,
    RetryScheduled,
    TokenFailed,
    TokenRefreshed,
    default_subscribers,
)

__all__ = ["LogSubscriber", "default_events", "logger"]

logger: Final = logging.getLogger("klavi_async")


def _extra(call: CallInfo, **values: Any) -> dict[str, Any]:
    extra = {"klavi_payment_id": call.payment_id, "klavi_interaction_id": call.interaction_id}
    if call.document is not None:
        extra["klavi_document"] = call.document
    for name, value in values.items():
        extra[f"klavi_{name}"] = value
    return extra


def _attempt(event: AttemptEnded) -> None:
    attempt = event.attempt
    logger.debug(
        "%s attempt %d for payment %s: %s",
        event.method,
        attempt.number,
        event.call.payment_id,
        attempt.http_status if attempt.http_status is not None else event.message,
        extra=_extra(
            event.call,
            event="attempt",
            attempt=attempt.number,
            status=attempt.http_status,
            kind=attempt.kind.value if attempt.kind else None,
            duration=attempt.duration,
        ),
    )


def _retry(event: RetryScheduled) -> None:
    logger.info(
        "retrying payment %s after attempt %d (%s) in %.3f s",
        event.call.payment_id,
        event.attempt,
        event.http_status or (event.kind.value if event.kind else "ok"),
        event.delay,
        extra=_extra(
            event.call,
            event="retry",
            attempt=event.attempt,
            status=event.http_status,
            kind=event.kind.value if event.kind else None,
            delay=event.delay,
        ),
    )


def _reconciled(event: Reconciled) -> None:
    logger.info(
        "reconciliation read for payment %s: %s",
        event.call.payment_id,
        event.payment_status if event.payment_status is not None else event.failure,
        extra={
            "klavi_event": "reconcile",
            "klavi_payment_id": event.call.payment_id,
            "klavi_status": event.http_status,
            "klavi_payment_status": event.payment_status,
            "klavi_reads": event.reads,
        },
    )


def _cancelled(event: CancelSucceeded) -> None:
    result = event.result
    logger.debug(
        "payment %s cancelled after %d attempt(s)%s",
        event.call.payment_id,
        result.attempts,
        " (reconciled)" if result.reconciled else "",
        extra=_extra(
            event.call,
            event="cancelled",
            attempt=result.attempts,
            status=result.http_status,
            reconciled=result.reconciled,
        ),
    )


def _gave_up(event: CancelGaveUp) -> None:
    result = event.result
    logger.warning(
        "giving up on payment %s after %d attempt(s): %s",
        event.call.payment_id,
        result.attempts,
        result.message,
        extra=_extra(
            event.call,
            event="give_up",
            attempt=result.attempts,
            status=result.http_status,
            kind=result.kind.value,
            outcome_unknown=result.outcome_unknown,
            payment_status=result.payment_status,
        ),
    )


def _rejected(event: CancelRejected) -> None:
    result = event.result
    logger.info(
        "cancel rejected locally: %s",
        result.message,
        extra={
            "klavi_event": "cancel_invalid",
            "klavi_payment_id": result.payment_id,
            "klavi_kind": result.kind.value,
        },
    )


def _token_refreshed(event: TokenRefreshed) -> None:
    logger.debug(
        "token refreshed; valid for %.0f s",
        event.lifetime,
        extra={"klavi_event": "token_refreshed"},
    )


def _token_failed(event: TokenFailed) -> None:
    logger.warning(
        "token provider failed: %s", event.message, extra={"klavi_event": "token_failed"}
    )


_WRITERS: Final[dict[type, Callable[[Any], None]]] = {
    AttemptEnded: _attempt,
    RetryScheduled: _retry,
    Reconciled: _reconciled,
    CancelSucceeded: _cancelled,
    CancelGaveUp: _gave_up,
    CancelRejected: _rejected,
    TokenRefreshed: _token_refreshed,
    TokenFailed: _token_failed,
}
"""The events that have a log line; the others (budget refusals, status reads) have none."""


class LogSubscriber:
    """Writes today's log lines to the `klavi_async` logger.  Strictly private."""

    __slots__ = ("wants",)

    def __init__(self) -> None:
        # Whether the logger would write at a level (asked each time: levels change).  The
        # logger's own method, not a wrapper: this is asked on every attempt.
        self.wants: Callable[[int], bool] = logger.isEnabledFor

    def __call__(self, event: Any) -> None:
        writer = _WRITERS.get(type(event))
        if writer is not None:
            writer(event)


def default_events() -> Events:
    """A new client's subscribers: logging, then those `_events.subscribed()` added."""
    return Events((LogSubscriber(), *default_subscribers()))
