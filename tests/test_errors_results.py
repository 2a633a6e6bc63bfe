"""ErrorKind, the exception tree, result objects, records and PaymentStatus."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from multidict import CIMultiDict

import klavi_async
from klavi_async import (
    APIStatusError,
    Attempt,
    AuthenticationFailedError,
    BadRequestError,
    CancelFailed,
    Cancelled,
    CancelRequest,
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
    PaymentStatus,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnexpectedResponseError,
)
from klavi_async._errors import error_class
from klavi_async._outcome import (
    classify_response,
)

from .conftest import CPF, CPF_BARE

CNPJ = "11.222.333/0001-81"

CONTRACT_KINDS = {
    "INVALID_REQUEST",
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "NOT_CANCELLABLE",
    "RATE_LIMITED",
    "SERVER_ERROR",
    "TIMEOUT",
    "NETWORK",
    "AUTHENTICATION_FAILED",
    "UNEXPECTED_RESPONSE",
}
NEVER_RETRYABLE = {
    ErrorKind.INVALID_REQUEST,
    ErrorKind.BAD_REQUEST,
    ErrorKind.UNAUTHORIZED,
    ErrorKind.FORBIDDEN,
    ErrorKind.NOT_FOUND,
    ErrorKind.CONFLICT,
    ErrorKind.NOT_CANCELLABLE,
    ErrorKind.UNEXPECTED_RESPONSE,
}
ALWAYS_RETRYABLE = {
    ErrorKind.RATE_LIMITED,
    ErrorKind.SERVER_ERROR,
    ErrorKind.TIMEOUT,
    ErrorKind.NETWORK,
}
EXCEPTIONS = {
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


def failed(**overrides: Any) -> CancelFailed:
    fields: dict[str, Any] = {
        "payment_id": "pay-1",
        "idempotency_key": "key-1",
        "interaction_id": "0b6f2b3e-1c1d-4f5e-9a8b-7c6d5e4f3a2b",
        "attempts": 3,
        "history": (
            Attempt(number=1, http_status=503, kind=ErrorKind.SERVER_ERROR, delay=0.5),
            Attempt(number=2, http_status=503, kind=ErrorKind.SERVER_ERROR, delay=1.0),
            Attempt(number=3, http_status=503, kind=ErrorKind.SERVER_ERROR, retry_after=2.0),
        ),
        "elapsed": 1.23456789,
        "kind": ErrorKind.SERVER_ERROR,
        "http_status": 503,
        "code": "INDISPONIVEL",
        "message": "service unavailable",
        "retryable": True,
        "retry_after": 2.0,
        "payment_status": "PAYMENT_PENDING",
        "body": {"errors": [{"code": "INDISPONIVEL"}]},
    }
    fields.update(overrides)
    return CancelFailed(**fields)


def cancelled(**overrides: Any) -> Cancelled:
    fields: dict[str, Any] = {
        "payment_id": "pay-1",
        "idempotency_key": "key-1",
        "interaction_id": "0b6f2b3e-1c1d-4f5e-9a8b-7c6d5e4f3a2b",
        "attempts": 1,
        "history": (Attempt(number=1, http_status=200, kind=None),),
        "elapsed": 0.0123456789,
        "http_status": 200,
        "body": {"status": "CANCELED"},
    }
    fields.update(overrides)
    return Cancelled(**fields)


# -- ErrorKind ----------------------------------------------------------------------------------


def test_error_kind_members_are_the_contract_and_values_are_lowercase_names() -> None:
    assert {kind.name for kind in ErrorKind} == CONTRACT_KINDS
    for kind in ErrorKind:
        assert kind.value == kind.name.lower()
        assert str(kind) == kind.value
        assert ErrorKind(kind.value) is kind


def test_retryable_by_kind() -> None:
    assert {kind for kind in ErrorKind if kind.retryable} == ALWAYS_RETRYABLE
    assert NEVER_RETRYABLE | ALWAYS_RETRYABLE | {ErrorKind.AUTHENTICATION_FAILED} == set(ErrorKind)
    assert not ErrorKind.AUTHENTICATION_FAILED.retryable  # decided per failure, not by kind


# -- the exception tree -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_error_class_for_every_kind(kind: ErrorKind) -> None:
    cls = error_class(kind)
    assert cls is EXCEPTIONS[kind]
    assert cls.kind is kind
    assert issubclass(cls, KlaviError)
    assert getattr(klavi_async, cls.__name__) is cls  # exported


def test_the_shape_of_the_tree() -> None:
    api = {BadRequestError, UnauthorizedError, ForbiddenError, NotFoundError, ConflictError}
    api |= {NotCancellableError, RateLimitedError, ServerError, UnexpectedResponseError}
    assert {cls for cls in EXCEPTIONS.values() if issubclass(cls, APIStatusError)} == api
    assert {cls for cls in EXCEPTIONS.values() if issubclass(cls, TransportError)} == {
        KlaviTimeoutError,
        NetworkError,
    }
    assert issubclass(KlaviTimeoutError, TimeoutError)
    assert issubclass(NetworkError, ConnectionError)
    assert issubclass(ClientClosedError, RuntimeError)
    assert not issubclass(ClientClosedError, KlaviError)


def test_klavi_error_defaults_and_description() -> None:
    error = KlaviError("something odd")
    assert error.kind is ErrorKind.UNEXPECTED_RESPONSE
    assert error.retryable is False
    assert str(error) == "unexpected_response: something odd"
    assert error.result is None
    timeout = KlaviTimeoutError("no answer")
    assert timeout.retryable is True
    assert str(timeout) == "timeout: no answer"
    detailed = ServerError(
        "down",
        payment_id="pay-9",
        http_status=503,
        code="X1",
        payment_status="PAYMENT_PENDING",
        outcome_unknown=True,
        retryable=False,
    )
    assert str(detailed) == (
        "server_error: down (payment pay-9, HTTP 503, code X1, status PAYMENT_PENDING, "
        "outcome unknown)"
    )
    assert detailed.retryable is False  # an explicit value wins over the kind's
    assert KlaviError("m", kind=ErrorKind.NOT_FOUND).kind is ErrorKind.NOT_FOUND


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_from_result_copies_every_field(kind: ErrorKind) -> None:
    result = failed(kind=kind, retryable=False, outcome_unknown=True)
    error = KlaviError.from_result(result)
    assert type(error) is EXCEPTIONS[kind]
    assert error.kind is kind
    assert error.result is result
    assert (error.message, error.payment_id, error.http_status, error.code) == (
        "service unavailable",
        "pay-1",
        503,
        "INDISPONIVEL",
    )
    assert error.retryable is False  # the result's, not the kind's
    assert (error.retry_after, error.outcome_unknown, error.payment_status) == (
        2.0,
        True,
        "PAYMENT_PENDING",
    )
    assert error.body is result.body
    assert str(error).startswith(f"{kind.value}: service unavailable (payment pay-1, HTTP 503")


@pytest.mark.parametrize(
    "body",
    [
        {"message": f"cancelledBy {CPF_BARE} is not the payer"},
        {"errors": [{"code": "DOC", "detail": f"documento {CPF} / {CNPJ} recusado"}]},
    ],
)
def test_errors_built_from_a_server_answer_never_show_the_document(body: object) -> None:
    """End to end through the pure modules: body -> outcome -> result -> exception."""
    outcome = classify_response(400, CIMultiDict(), json.dumps(body).encode())
    result = failed(
        kind=outcome.kind, http_status=400, code=outcome.code, message=outcome.message, body=body
    )
    error = KlaviError.from_result(result)
    for text in (str(error), repr(error), error.message, repr(result), str(error.args)):
        assert CPF_BARE not in text
        assert CPF not in text
        assert CNPJ not in text


# -- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_unwrap_raises_the_matching_subclass(kind: ErrorKind) -> None:
    result = failed(kind=kind)
    with pytest.raises(EXCEPTIONS[kind]) as caught:
        result.unwrap()
    assert caught.value.result is result
    assert caught.value.kind is kind


def test_cancelled_unwrap_returns_itself_and_ok_flags() -> None:
    result = cancelled()
    assert result.unwrap() is result
    assert result.ok is True
    assert failed().ok is False


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (cancelled(), "http_status"),
        (failed(), "kind"),
        (CancelRequest("pay-1", CPF), "payment_id"),
        (Attempt(number=1, http_status=200, kind=None), "delay"),
        (PaymentStatus(payment_id="p", status="CANCELED"), "status"),
    ],
)
def test_values_are_frozen(value: object, field: str) -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(value, field, None)


def test_cancelled_record() -> None:
    record = cancelled(reconciled=True, already_cancelled=True, http_status=416).to_record()
    assert record == {
        "payment_id": "pay-1",
        "ok": True,
        "kind": None,
        "retryable": False,
        "http_status": 416,
        "code": None,
        "message": None,
        "idempotency_key": "key-1",
        "interaction_id": "0b6f2b3e-1c1d-4f5e-9a8b-7c6d5e4f3a2b",
        "consent_id": None,
        "attempts": 1,
        "already_cancelled": True,
        "reconciled": True,
        "outcome_unknown": False,
        "payment_status": "CANCELED",
        "retry_after": None,
        "elapsed": 0.012346,
    }
    assert json.loads(json.dumps(record)) == record
    plain = cancelled().to_record()
    assert (plain["payment_status"], plain["reconciled"], plain["already_cancelled"]) == (
        None,
        False,
        False,
    )


def test_failed_record() -> None:
    record = failed(consent_id="consent-7", outcome_unknown=True).to_record()
    assert record == {
        "payment_id": "pay-1",
        "ok": False,
        "kind": "server_error",
        "retryable": True,
        "http_status": 503,
        "code": "INDISPONIVEL",
        "message": "service unavailable",
        "idempotency_key": "key-1",
        "interaction_id": "0b6f2b3e-1c1d-4f5e-9a8b-7c6d5e4f3a2b",
        "consent_id": "consent-7",
        "attempts": 3,
        "already_cancelled": False,
        "reconciled": False,
        "outcome_unknown": True,
        "payment_status": "PAYMENT_PENDING",
        "retry_after": 2.0,
        "elapsed": 1.234568,
    }
    assert json.loads(json.dumps(record)) == record


def test_result_reprs_leave_the_body_out() -> None:
    body = {"payer": CPF_BARE}
    for result in (cancelled(body=body), failed(body=body)):
        assert result.body is body
        assert CPF_BARE not in repr(result)
        assert "body" not in repr(result)
    assert CPF_BARE not in repr(PaymentStatus(payment_id="p", status="X", body=body))


def test_result_defaults() -> None:
    result = cancelled()
    assert (result.already_cancelled, result.reconciled, result.consent_id) == (False, False, None)
    minimal = CancelFailed(
        payment_id="p",
        idempotency_key=None,
        interaction_id="i",
        attempts=0,
        history=(),
        elapsed=0.0,
        kind=ErrorKind.INVALID_REQUEST,
        http_status=None,
        code=None,
        message="m",
        retryable=False,
    )
    assert (minimal.outcome_unknown, minimal.payment_status, minimal.retry_after) == (
        False,
        None,
        None,
    )
    assert minimal.body is None


def test_attempt_defaults() -> None:
    attempt = Attempt(number=1, http_status=None, kind=ErrorKind.TIMEOUT)
    assert (attempt.code, attempt.ambiguous, attempt.duration, attempt.delay) == (
        None,
        False,
        0.0,
        None,
    )
    assert (attempt.retry_after, attempt.request_id, attempt.token_refreshed) == (None, None, False)
    with pytest.raises(TypeError):
        Attempt(1, 200, None)  # type: ignore[call-arg]


# -- CancelRequest ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "masked"),
    [(CPF, "***.982.247-**"), (CPF_BARE, "***.982.247-**"), (CNPJ, "**.222.333/0001-**")],
)
def test_cancel_request_repr_masks_the_document(document: str, masked: str) -> None:
    request = CancelRequest("pay-1", document, "CPF", "key-1")
    shown = repr(request)
    assert document not in shown
    assert CPF_BARE not in shown
    assert masked in shown
    assert request.cancelled_by == document  # the value itself is kept as given


def test_cancel_request_fields() -> None:
    request = CancelRequest("pay-1", CPF)
    assert (request.identifier_type, request.idempotency_key, request.consent_id) == (
        None,
        None,
        None,
    )
    assert CancelRequest("pay-1", CPF, consent_id="c-1").consent_id == "c-1"
    with pytest.raises(TypeError):
        CancelRequest("pay-1", CPF, None, None, "c-1")  # type: ignore[call-arg]
    assert CancelRequest("pay-1", CPF) == CancelRequest("pay-1", CPF)
    assert CancelRequest("not valid!", "nonsense").payment_id == "not valid!"  # no validation


# -- PaymentStatus ------------------------------------------------------------------------------


def test_payment_status_from_a_full_body() -> None:
    body = {
        "id": "pay-1",
        "clientRequestId": "req-1",
        "amount": "10.50",
        "currency": "BRL",
        "status": "CANCELED",
        "statusReason": {"code": "CANCELADO_PENDENCIA", "message": "cancelled by the payer"},
        "statusUpdateAt": "2026-07-01T12:00:00Z",
    }
    status = PaymentStatus.from_body("ignored", body)
    assert status == PaymentStatus(
        payment_id="pay-1",
        status="CANCELED",
        client_request_id="req-1",
        amount="10.50",
        currency="BRL",
        status_reason_code="CANCELADO_PENDENCIA",
        status_reason_message="cancelled by the payer",
        status_update_at="2026-07-01T12:00:00Z",
        body=body,
    )
    assert status is not None
    assert status.body is body
    assert status.cancelled
    assert status.terminal


@pytest.mark.parametrize(
    "body", [{}, {"status": None}, {"status": ""}, {"status": "   "}, {"status": 3}, {"status": {}}]
)
def test_payment_status_without_a_usable_status_is_none(body: dict[str, Any]) -> None:
    assert PaymentStatus.from_body("pay-1", body) is None


def test_payment_status_keeps_unknown_statuses() -> None:
    status = PaymentStatus.from_body("pay-1", {"status": " SOMETHING_NEW "})
    assert status is not None
    assert status.status == "SOMETHING_NEW"
    assert status.payment_id == "pay-1"  # the requested id when the body has none
    assert not status.cancelled
    assert not status.terminal
    assert status.status_reason_code is None
    assert status.status_reason_message is None


def test_payment_status_field_types_are_lenient() -> None:
    body = {
        "id": 42,
        "status": "PAYMENT_PENDING",
        "amount": 10.5,
        "currency": True,
        "clientRequestId": {"x": 1},
        "statusReason": "not an object",
    }
    status = PaymentStatus.from_body("pay-1", body)
    assert status is not None
    assert (status.payment_id, status.amount, status.currency, status.client_request_id) == (
        "42",
        "10.5",
        None,
        None,
    )
    assert (status.status_reason_code, status.status_reason_message) == (None, None)
    empty_id = PaymentStatus.from_body("pay-1", {"id": "", "status": "X"})
    assert empty_id is not None
    assert empty_id.payment_id == "pay-1"


def test_payment_status_reason_message_is_scrubbed() -> None:
    body = {
        "status": "PAYMENT_REJECTED",
        "statusReason": {"code": 7, "message": f"CPF {CPF} bloqueado"},
    }
    status = PaymentStatus.from_body("pay-1", body)
    assert status is not None
    assert status.status_reason_code == "7"
    assert status.status_reason_message == "CPF ***.982.247-** bloqueado"
    assert CPF not in repr(status)


@pytest.mark.parametrize(
    ("value", "cancelled_", "terminal"),
    [
        ("CANCELED", True, True),
        ("CANCELLED", True, True),
        ("canceled", True, True),
        ("PAYMENT_COMPLETED", False, True),
        ("PAYMENT_REJECTED", False, True),
        ("CONSENT_REJECTED", False, True),
        ("CONSENT_REVOKED", False, True),
        ("ERROR", False, True),
        ("EXPIRED", False, True),
        ("PAYMENT_PENDING", False, False),
        ("PAYMENT_SCHEDULED", False, False),
        ("CANCELING", False, False),
    ],
)
def test_cancelled_and_terminal(value: str, cancelled_: bool, terminal: bool) -> None:
    status = PaymentStatus(payment_id="p", status=value)
    assert status.cancelled is cancelled_
    assert status.terminal is terminal


# Folded in from test_units.py.


def failed_result(**overrides: object) -> CancelFailed:
    fields: dict[str, object] = {
        "payment_id": "p1",
        "idempotency_key": "k",
        "interaction_id": "i",
        "attempts": 1,
        "history": (Attempt(number=1, http_status=416, kind=ErrorKind.NOT_CANCELLABLE),),
        "elapsed": 0.1,
        "kind": ErrorKind.NOT_CANCELLABLE,
        "http_status": 416,
        "code": "4101",
        "message": "refused",
        "retryable": False,
        "payment_status": "PAYMENT_COMPLETED",
    }
    fields.update(overrides)
    return CancelFailed(**fields)  # type: ignore[arg-type]


def test_kinds_and_their_exceptions() -> None:
    assert {k.value for k in ErrorKind} == {k.name.lower() for k in ErrorKind}
    retryable = {k for k in ErrorKind if k.retryable}
    assert retryable == {
        ErrorKind.RATE_LIMITED,
        ErrorKind.SERVER_ERROR,
        ErrorKind.TIMEOUT,
        ErrorKind.NETWORK,
    }
    for kind in ErrorKind:
        assert error_class(kind).kind is kind
        assert issubclass(error_class(kind), KlaviError)
    assert issubclass(error_class(ErrorKind.TIMEOUT), TimeoutError)
    assert issubclass(error_class(ErrorKind.NETWORK), ConnectionError)


def test_unwrap_and_records() -> None:
    result = failed_result()
    with pytest.raises(NotCancellableError) as caught:
        result.unwrap()
    error = caught.value
    assert (error.payment_id, error.http_status, error.code) == ("p1", 416, "4101")
    assert error.result is result
    assert str(error) == (
        "not_cancellable: refused (payment p1, HTTP 416, code 4101, status PAYMENT_COMPLETED)"
    )
    assert "outcome unknown" in str(KlaviError("m", outcome_unknown=True))
    record = result.to_record()
    assert record["kind"] == "not_cancellable"
    assert record["ok"] is False
    assert json.dumps(record)
    ok = Cancelled(
        payment_id="p1",
        idempotency_key="k",
        interaction_id="i",
        attempts=1,
        history=(),
        elapsed=0.1,
        http_status=200,
        body={"cancelledBy": CPF_BARE},
    )
    assert ok.unwrap() is ok
    assert ok.ok and not result.ok
    assert CPF_BARE not in repr(ok)
    assert ok.to_record()["ok"] is True
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ok.attempts = 2  # type: ignore[misc]


def test_cancel_request_repr_masks_a_formatted_document() -> None:
    request = CancelRequest("p1", CPF)
    assert CPF not in repr(request) and CPF_BARE not in repr(request)
    assert "***.982.247-**" in repr(request)


def test_payment_status_from_body() -> None:
    body = {
        "id": "p1",
        "status": "SOMETHING_NEW",
        "amount": 12.5,
        "statusReason": {"code": "NAO_INFORMADO", "message": f"by {CPF_BARE}"},
        "clientRequestId": True,
    }
    status = PaymentStatus.from_body("p0", body)
    assert status is not None
    assert status.status == "SOMETHING_NEW"
    assert status.amount == "12.5"
    assert status.client_request_id is None
    assert CPF_BARE not in (status.status_reason_message or "")
    assert not status.cancelled
    assert PaymentStatus.from_body("p0", {"status": " "}) is None
    assert PaymentStatus.from_body("p0", {"status": "CANCELLED", "statusReason": []}) is not None
