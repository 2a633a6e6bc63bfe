"""
`get_payment_status()`: one status read, retried like a cancel (a GET is safe to repeat).

Strictly private.  It goes through the same attempt and retry loop as a cancel
(`_attempt`), and raises the `KlaviError` subclass matching its failure.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from ._attempt import Call, Shared, final_message
from ._cancel import path_templates
from ._config import INTERACTION_HEADER, Endpoints
from ._documents import InvalidInput, clip_kept, validate_payment_id
from ._errors import InvalidRequestError, KlaviError, UnexpectedResponseError, error_class
from ._events import DEBUG, TRACE, CallEnded, CallInfo, CallStarted, StatusEnded
from ._outcome import Outcome
from ._results import PaymentStatus
from ._retry import RetryLoop
from ._speedups import uuid4

__all__ = ["read_status"]


def read_status(
    shared: Shared, endpoints: Endpoints, payment_id: str, consent_id: str | None
) -> Coroutine[Any, Any, PaymentStatus]:
    """`get_payment_status()`'s coroutine: in a call scope only when a subscriber wants one."""
    if not isinstance(payment_id, str):
        raise TypeError(f"payment_id must be a str, got {type(payment_id).__name__}")
    if consent_id is not None and not isinstance(consent_id, str):
        raise TypeError(f"consent_id must be a str, got {type(consent_id).__name__}")
    if shared.events.wants(TRACE):
        return _scoped(shared, endpoints, payment_id, consent_id)
    return _read(shared, endpoints, payment_id, consent_id)


async def _scoped(
    shared: Shared, endpoints: Endpoints, payment_id: str, consent_id: str | None
) -> PaymentStatus:
    """The read between `CallStarted` and `CallEnded` (ended even when cancelled)."""
    interaction_id = uuid4()
    info = CallInfo.of(payment_id, interaction_id, None)
    template = path_templates(endpoints)[1 if consent_id is None else 3]
    shared.events.emit(
        CallStarted(
            call=info, name="get_payment_status", url_template=template, status_template=template
        )
    )
    exception: BaseException | None = None
    try:
        return await _read(shared, endpoints, payment_id, consent_id, interaction_id)
    except BaseException as exc:
        exception = exc
        raise
    finally:
        shared.events.emit(CallEnded(call=info, exception=exception))


async def _read(
    shared: Shared,
    endpoints: Endpoints,
    payment_id: str,
    consent_id: str | None,
    interaction_id: str | None = None,
) -> PaymentStatus:
    """`get_payment_status()`: retried like a cancel; raises the matching `KlaviError`."""
    try:
        validate_payment_id(payment_id)
        if consent_id is not None:
            validate_payment_id(consent_id, "consent_id")
    except InvalidInput as exc:
        # The id may be a document passed by mistake, or anything at all.
        raise InvalidRequestError(str(exc), payment_id=clip_kept(payment_id)) from None
    call = Call(shared, payment_id, None, uuid4() if interaction_id is None else interaction_id)
    loop = shared.loop(call, safe=True)
    url = endpoints.status_url(payment_id, consent_id)
    headers = {"Accept": "application/json", INTERACTION_HEADER: call.interaction_id}
    outcome = await loop.run(call.attempt, loop, "GET", url, headers, None)
    try:
        status = _status_or_raise(payment_id, outcome, loop, call, shared.secrets)
    except KlaviError as error:
        _status_ended(shared, call, None, error)
        raise
    _status_ended(shared, call, status, None)
    return status


def _status_ended(
    shared: Shared, call: Call, status: PaymentStatus | None, error: KlaviError | None
) -> None:
    if shared.events.wants(DEBUG):
        shared.events.emit(StatusEnded(call=call.info(), status=status, error=error))


def _status_or_raise(
    payment_id: str, outcome: Outcome, loop: RetryLoop, call: Call, secrets: tuple[str, ...]
) -> PaymentStatus:
    """The status read's result, or the `KlaviError` matching its failure."""
    if outcome.kind is None:
        body = outcome.body
        status = (
            PaymentStatus.from_body(payment_id, body, secrets=secrets)
            if isinstance(body, dict)
            else None
        )
        if status is None:
            raise UnexpectedResponseError(
                "the status response has no usable 'status' field",
                payment_id=payment_id,
                http_status=outcome.http_status,
                body=body,
            )
        return status
    raise error_class(outcome.kind)(
        final_message(outcome, loop),
        kind=outcome.kind,
        payment_id=payment_id,
        http_status=outcome.http_status,
        code=outcome.code,
        retryable=call.retryable(outcome),
        retry_after=outcome.retry_after,
        body=outcome.body,
    )
