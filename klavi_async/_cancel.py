"""
One cancel, top to bottom.

Strictly private.  `Canceller.cancel()` is the whole story of one cancel:

1. draw the interaction id and idempotency key;
2. validate the ids and the document (`_validate`; invalid input → `_rejected`);
3. build URL, headers and body, and run the retry loop (`RetryLoop.run`), each attempt
   being `_attempt.Call.attempt`: token, send, classify, record, 401 replay;
4. after an ambiguous or refused answer, read the payment's status (`_reconcile`);
5. build the result (`_cancelled` or `_failed`) and emit it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Final

from ._attempt import Call, Shared, final_message
from ._config import INTERACTION_HEADER, Endpoints
from ._documents import (
    DocumentCache,
    InvalidInput,
    clip_kept,
    validate_idempotency_key,
    validate_payment_id,
)
from ._errors import CancelFailed, CancelResult
from ._events import (
    DEBUG,
    INFO,
    TRACE,
    WARNING,
    CallEnded,
    CallInfo,
    CallStarted,
    CancelGaveUp,
    CancelRejected,
    CancelSucceeded,
    Reconciled,
)
from ._kinds import ErrorKind
from ._outcome import Outcome
from ._results import Attempt, Cancelled, PaymentStatus
from ._retry import RetryLoop
from ._speedups import cancel_body, new_cancelled, uuid4_pair

__all__ = ["Canceller", "path_templates"]

_RECONCILE_MIN_TIMEOUT: Final = 1.0
"""A reconciliation read gets at least this long, even when the deadline has passed."""


class Canceller:
    """
    One client's cancels.  Strictly private.

    `documents` remembers the documents validated lately (cleared by `aclose()`).
    """

    __slots__ = ("_endpoints", "_key_header", "_shared", "_templates", "documents")

    def __init__(self, shared: Shared, endpoints: Endpoints, key_header: str | None) -> None:
        self._shared = shared
        self._endpoints = endpoints
        self._key_header = key_header
        self.documents = DocumentCache()
        # The path templates telemetry reports (`url.template`): cancel, status, automatic.
        self._templates = path_templates(endpoints)

    def derive(self, shared: Shared) -> Canceller:
        """The cancels of a view of the client: *shared*, and the same document cache."""
        view = Canceller(shared, self._endpoints, self._key_header)
        view.documents = self.documents
        return view

    # -- one cancel --------------------------------------------------------------------

    def cancel(
        self,
        payment_id: str,
        consent_id: str | None,
        cancelled_by: str,
        identifier_type: str | None,
        idempotency_key: str | None,
    ) -> Coroutine[Any, Any, CancelResult]:
        """One cancel's coroutine: in a call scope only when a subscriber wants one."""
        # A plain function returning the coroutine: no await level added to the hot path.
        if self._shared.events.wants(TRACE):
            return self._scoped(
                payment_id, consent_id, cancelled_by, identifier_type, idempotency_key
            )
        return self._cancel(payment_id, consent_id, cancelled_by, identifier_type, idempotency_key)

    async def _scoped(
        self,
        payment_id: str,
        consent_id: str | None,
        cancelled_by: str,
        identifier_type: str | None,
        idempotency_key: str | None,
    ) -> CancelResult:
        """The cancel between `CallStarted` and `CallEnded` (ended even when cancelled)."""
        ids = uuid4_pair()
        info = CallInfo.of(payment_id, ids[0], None)
        events = self._shared.events
        automatic = consent_id is not None
        events.emit(
            CallStarted(
                call=info,
                name="cancel_automatic_payment" if automatic else "cancel_payment",
                url_template=self._templates[2 if automatic else 0],
                status_template=self._templates[3 if automatic else 1],
            )
        )
        exception: BaseException | None = None
        try:
            return await self._cancel(
                payment_id, consent_id, cancelled_by, identifier_type, idempotency_key, ids
            )
        except BaseException as exc:
            exception = exc
            raise
        finally:
            events.emit(CallEnded(call=info, exception=exception))

    async def _cancel(
        self,
        payment_id: str,
        consent_id: str | None,
        cancelled_by: str,
        identifier_type: str | None,
        idempotency_key: str | None,
        ids: tuple[str, str] | None = None,
    ) -> CancelResult:
        """One cancel: validate → ids and request → retry loop → reconcile → result."""
        start = self._shared.clock()
        interaction_id, generated_key = uuid4_pair() if ids is None else ids
        if self._key_header is None:
            key = None
        else:
            key = generated_key if idempotency_key is None else idempotency_key
        try:
            document, doc_type = self._validate(
                payment_id, consent_id, cancelled_by, identifier_type, idempotency_key
            )
        except InvalidInput as exc:
            return self._rejected(payment_id, consent_id, key, interaction_id, start, str(exc))

        call = Call(self._shared, payment_id, document, interaction_id)
        loop = self._shared.loop(call, start=start)
        url = self._endpoints.cancel_url(payment_id, consent_id)
        headers = self._cancel_headers(interaction_id, key)
        body = cancel_body(document, doc_type)
        outcome = await loop.run(call.attempt, loop, "POST", url, headers, body)
        history = tuple(loop.history)
        if outcome.kind is None:
            return self._cancelled(call, consent_id, key, start, history, outcome, False)

        read = outcome.refused or any(a.ambiguous for a in history)
        status = await self._reconcile(call, loop, consent_id) if read else None
        if status is not None and status.cancelled:
            return self._cancelled(call, consent_id, key, start, history, outcome, True)
        return self._failed(call, loop, consent_id, key, start, outcome, outcome.kind, read, status)

    def _validate(
        self,
        payment_id: str,
        consent_id: str | None,
        cancelled_by: str,
        identifier_type: str | None,
        idempotency_key: str | None,
    ) -> tuple[str, str]:
        """The bare document and its type; `InvalidInput` for anything unsendable."""
        validate_payment_id(payment_id)
        if consent_id is not None:
            validate_payment_id(consent_id, "consent_id")
        if idempotency_key is not None:
            validate_idempotency_key(idempotency_key)
        return self.documents.validate(cancelled_by, identifier_type)

    def _cancel_headers(self, interaction_id: str, key: str | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            INTERACTION_HEADER: interaction_id,
        }
        if key is not None:
            headers[self._key_header] = key  # type: ignore[index]  # a key implies a header
        return headers

    async def _reconcile(
        self, call: Call, loop: RetryLoop, consent_id: str | None
    ) -> PaymentStatus | None:
        """
        Read the payment's status after an ambiguous or refused cancel; None if no read could.

        A GET is safe to repeat, so the read is retried under the client's policy and
        budget, within what is left of the call's deadline (at least
        `_RECONCILE_MIN_TIMEOUT`).  It is part of the cancel, so it does not count as a
        call of its own in the budget, and its attempts stay out of the result's history.
        """
        deadline = max(loop.remaining(), _RECONCILE_MIN_TIMEOUT)
        reads = self._shared.loop(call, safe=True, counted=False, deadline=deadline)
        url = self._endpoints.status_url(call.payment_id, consent_id)
        headers = {"Accept": "application/json", INTERACTION_HEADER: call.interaction_id}
        outcome = await reads.run(call.attempt, reads, "GET", url, headers, None)
        status = None
        if outcome.kind is None and isinstance(outcome.body, dict):
            status = PaymentStatus.from_body(
                call.payment_id, outcome.body, secrets=self._shared.secrets
            )
        if self._shared.events.wants(INFO):
            failure = "" if status else f"failed ({(outcome.kind or 'no status').__str__()})"
            self._shared.events.emit(
                Reconciled(
                    call=call.info(),
                    http_status=outcome.http_status,
                    payment_status=status.status if status else None,
                    failure=failure,
                    reads=len(reads.history),
                )
            )
        return status

    # -- results -----------------------------------------------------------------------

    def _cancelled(
        self,
        call: Call,
        consent_id: str | None,
        key: str | None,
        start: float,
        history: tuple[Attempt, ...],
        outcome: Outcome,
        reconciled: bool,
    ) -> Cancelled:
        result = new_cancelled(
            payment_id=call.payment_id,
            idempotency_key=key,
            interaction_id=call.interaction_id,
            attempts=len(history),
            history=history,
            elapsed=self._shared.clock() - start,
            consent_id=consent_id,
            http_status=outcome.http_status,
            body=outcome.body,
            already_cancelled=reconciled and outcome.refused,
            reconciled=reconciled,
        )
        if self._shared.events.wants(DEBUG):
            self._shared.events.emit(CancelSucceeded(call=call.info(), result=result))
        return result

    def _failed(
        self,
        call: Call,
        loop: RetryLoop,
        consent_id: str | None,
        key: str | None,
        start: float,
        outcome: Outcome,
        kind: ErrorKind,
        read: bool,
        status: PaymentStatus | None,
    ) -> CancelFailed:
        history = tuple(loop.history)
        retry_after = outcome.retry_after
        if loop.stop_reason == "deadline" and retry_after is None:
            retry_after = loop.refused_wait
        result = CancelFailed(
            payment_id=call.payment_id,
            consent_id=consent_id,
            idempotency_key=key,
            interaction_id=call.interaction_id,
            attempts=len(history),
            history=history,
            elapsed=self._shared.clock() - start,
            kind=kind,
            http_status=outcome.http_status,
            code=outcome.code,
            message=final_message(outcome, loop),
            retryable=call.retryable(outcome),
            outcome_unknown=read and _outcome_unknown(status, history),
            payment_status=None if status is None else status.status,
            retry_after=retry_after,
            body=outcome.body,
        )
        if self._shared.events.wants(WARNING):
            self._shared.events.emit(CancelGaveUp(call=call.info(), result=result))
        return result

    def _rejected(
        self,
        payment_id: str,
        consent_id: str | None,
        key: str | None,
        interaction_id: str,
        start: float,
        message: str,
    ) -> CancelFailed:
        # An id that failed validation may be a document passed in the wrong argument, or
        # anything at all: what is kept is masked and clipped.
        result = CancelFailed(
            payment_id=clip_kept(payment_id),
            consent_id=None if consent_id is None else clip_kept(consent_id),
            idempotency_key=None if key is None else clip_kept(key),
            interaction_id=interaction_id,
            attempts=0,
            history=(),
            elapsed=self._shared.clock() - start,
            kind=ErrorKind.INVALID_REQUEST,
            http_status=None,
            code=None,
            message=message,
            retryable=False,
        )
        if self._shared.events.wants(INFO):
            self._shared.events.emit(CancelRejected(result=result))
        return result


def path_templates(endpoints: Endpoints) -> tuple[str, str, str, str]:
    """The request paths as templates, base path included: cancel, status, automatic ones."""
    base = endpoints.base.raw_path.rstrip("/")
    return (
        base + endpoints.cancel,
        base + endpoints.status,
        base + endpoints.automatic_cancel,
        base + endpoints.automatic_status,
    )


def _outcome_unknown(status: PaymentStatus | None, history: tuple[Attempt, ...]) -> bool:
    """After a status read: may the cancel still take effect without our knowing?"""
    if status is None:
        return True  # no read could tell
    # A request that timed out or lost its connection may still be running at Klavi and
    # cancel the payment after this read; only a terminal status rules that out.
    return not status.terminal and any(a.ambiguous and a.http_status is None for a in history)
