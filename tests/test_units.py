"""The pure parts: outcome mapping, Retry-After, budget, policy, token parsing, errors, config."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given, strategies as st
from multidict import CIMultiDict

from klavi_async import (
    AccessToken,
    Attempt,
    CancelFailed,
    Cancelled,
    CancelRequest,
    ClientCredentials,
    Environment,
    ErrorKind,
    KlaviError,
    NotCancellableError,
    PaymentStatus,
    RetryBudget,
    RetryPolicy,
    StaticToken,
)
from klavi_async._config import check_base_url
from klavi_async._errors import error_class
from klavi_async._outcome import (
    MAX_HINT_SECONDS,
    classify_response,
    parse_error_body,
    parse_retry_after,
    transport_outcome,
)
from klavi_async._tokens import as_provider, jwt_expiry, parse_auth_response

from .conftest import CPF, CPF_BARE, SECRET_KEY, TOKEN

H = CIMultiDict[str]


def classify(status: int, body: object = b"", **headers: str) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_response(status, CIMultiDict(headers), raw)


# -- outcome mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "ambiguous"),
    [
        (200, None, False),
        (201, None, False),
        (204, None, False),
        (307, ErrorKind.UNEXPECTED_RESPONSE, False),
        (400, ErrorKind.BAD_REQUEST, False),
        (401, ErrorKind.UNAUTHORIZED, False),
        (403, ErrorKind.FORBIDDEN, False),
        (404, ErrorKind.NOT_FOUND, False),
        (405, ErrorKind.UNEXPECTED_RESPONSE, False),
        (408, ErrorKind.TIMEOUT, False),
        (409, ErrorKind.CONFLICT, False),
        (410, ErrorKind.NOT_FOUND, False),
        (416, ErrorKind.NOT_CANCELLABLE, False),
        (422, ErrorKind.BAD_REQUEST, False),
        (429, ErrorKind.RATE_LIMITED, False),
        (500, ErrorKind.SERVER_ERROR, True),
        (501, ErrorKind.SERVER_ERROR, False),
        (502, ErrorKind.SERVER_ERROR, True),
        (503, ErrorKind.SERVER_ERROR, False),
        (504, ErrorKind.SERVER_ERROR, True),
        (529, ErrorKind.RATE_LIMITED, False),
        (599, ErrorKind.SERVER_ERROR, True),
    ],
)
def test_status_map(status: int, kind: ErrorKind | None, ambiguous: bool) -> None:
    outcome = classify(status)
    assert outcome.kind is kind  # type: ignore[attr-defined]
    assert outcome.ambiguous is ambiguous  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"statusCode": 416, "error": "Business", "message": "nope"}, None, "nope"),
        ({"statusCode": "4101", "message": "qr"}, "4101", "qr"),
        (
            {"errors": [{"code": "PARAMETRO_INVALIDO", "title": "T", "detail": "D"}], "meta": {}},
            "PARAMETRO_INVALIDO",
            "D",
        ),
        ({"error": {"code": "X1", "title": "Title only"}}, "X1", "Title only"),
        ({"error": "FORBIDDEN_SCOPE"}, "FORBIDDEN_SCOPE", "FORBIDDEN_SCOPE"),
        ({"code": 77, "detail": "why"}, "77", "why"),
        (
            b"<html><head><title>502 Bad &amp; Gateway</title></head></html>",
            None,
            "502 Bad & Gateway",
        ),
        (b"plain <b>text</b>", None, "plain text"),
        (b"", None, ""),
        (b"{broken", None, "{broken"),
        ([1, 2], None, ""),
        (b"\xff\xfe\x00bad", None, "\ufffd\ufffd bad"),
    ],
)
def test_error_body_shapes(body: object, code: str | None, message: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    _, parsed_code, parsed_message = parse_error_body(raw, status=416)
    assert parsed_code == code
    assert parsed_message == message


def test_refusal_code_wins_over_status_but_not_in_free_text() -> None:
    refusal = {"errors": [{"code": "X"}, {"code": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"}]}
    assert classify(200, refusal).kind is ErrorKind.NOT_CANCELLABLE  # type: ignore[attr-defined]
    assert classify(422, refusal).kind is ErrorKind.NOT_CANCELLABLE  # type: ignore[attr-defined]
    mention = {"note": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO appears in prose"}
    outcome = classify(200, mention)
    assert outcome.kind is None  # type: ignore[attr-defined]
    assert outcome.body == mention  # type: ignore[attr-defined]
    conflict = classify(422, {"errors": [{"code": "ERRO_IDEMPOTENCIA"}]})
    assert conflict.kind is ErrorKind.CONFLICT  # type: ignore[attr-defined]


def test_messages_are_scrubbed_clipped_and_request_ids_read() -> None:
    outcome = classify(
        400, {"message": f"bad cancelledBy {CPF_BARE} " + "x" * 500}, **{"x-request-id": "req-1"}
    )
    assert CPF_BARE not in outcome.message  # type: ignore[attr-defined]
    assert len(outcome.message) == 300  # type: ignore[attr-defined]
    assert outcome.request_id == "req-1"  # type: ignore[attr-defined]
    empty = classify(418)
    assert empty.message == "HTTP 418 I'm a Teapot"  # type: ignore[attr-defined]
    assert classify(299).kind is None  # type: ignore[attr-defined]
    assert classify(600).message == "HTTP 600 unknown status"  # type: ignore[attr-defined]
    assert transport_outcome(ErrorKind.TIMEOUT, sent=True, message="m").ambiguous


@given(
    st.integers(100, 599),
    st.binary(max_size=300),
    st.dictionaries(
        st.sampled_from(["retry-after", "retry-after-ms", "x-request-id", "content-type"]),
        st.text(max_size=40),
    ),
)
def test_classify_never_raises(status: int, raw: bytes, headers: dict[str, str]) -> None:
    outcome = classify_response(status, CIMultiDict(headers), raw)
    assert outcome.http_status == status
    assert outcome.retry_after is None or 0 <= outcome.retry_after <= MAX_HINT_SECONDS


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "junk", "Retry-After": "3"}, 3.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30"}, 30.0),
        ({"Retry-After": "99999999999"}, MAX_HINT_SECONDS),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "1" * 40}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(CIMultiDict(headers), now=now) == expected


@given(st.text(max_size=60), st.text(max_size=20))
def test_retry_after_never_raises(value: str, ms: str) -> None:
    for headers in ({"retry-after": value}, {"retry-after-ms": ms}):
        try:
            result = parse_retry_after(CIMultiDict(headers))
        except ValueError:  # header values with line breaks can't even be built
            continue
        assert result is None or 0 <= result <= MAX_HINT_SECONDS


# -- budget -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_budget_arithmetic_and_sliding_window() -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)
    for _ in range(300):
        budget.record_attempt()
    granted = sum(budget.try_acquire() for _ in range(500))
    assert granted == 160  # 0.2 * 300 + 10/s * 10 s
    stats = budget.stats()
    assert (stats.first_attempts, stats.retries, stats.total_rejected) == (300, 160, 340)
    assert stats.available == 0
    clock.now += 5.0
    assert not budget.try_acquire()  # still inside the window
    clock.now += 5.5
    assert budget.stats().first_attempts == 0  # everything slid out
    assert budget.try_acquire()
    clock.now += 100.0
    assert budget.stats().retries == 0
    assert budget.stats().total_retries == 161
    budget.reset()
    assert budget.stats().total_first_attempts == 0


def test_budget_partial_slide() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0, clock=clock)
    budget.record_attempt()
    clock.now += 5.0
    budget.record_attempt()
    clock.now += 5.5  # the first bucket expired, the second not yet
    assert budget.stats().first_attempts == 1


def test_unlimited_budget_and_validation() -> None:
    budget = RetryBudget.unlimited()
    assert budget.is_unlimited
    assert all(budget.try_acquire() for _ in range(1000))
    assert math.isinf(budget.stats().available)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-1)
    with pytest.raises(ValueError, match="window"):
        RetryBudget(window=0)


# -- retry policy -------------------------------------------------------------------------------


def test_policy_defaults_match_the_contract() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (4, 0.5, 8.0)
    assert (policy.multiplier, policy.jitter, policy.deadline) == (2.0, True, 30.0)
    assert policy.max_retry_after == 60.0
    assert policy.retry_statuses == frozenset({408, 429, 500, 502, 503, 504, 529})
    assert RetryPolicy.disabled().max_attempts == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": True}, TypeError),
        ({"max_attempts": 2.5}, TypeError),
        ({"initial_backoff": -1}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"deadline": 0}, ValueError),
        ({"retry_statuses": "503"}, TypeError),
        ({"retry_statuses": {700}}, ValueError),
        ({"retry_statuses": {True}}, ValueError),
    ],
)
def test_policy_validation(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_backoff_sequence_and_jitter() -> None:
    policy = RetryPolicy(jitter=False)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.backoff(10_000) == 8.0
    jittered = RetryPolicy()
    assert jittered.backoff(3, rng=lambda: 0.0) == 1.0
    assert jittered.backoff(3, rng=lambda: 0.999999) == pytest.approx(2.0, rel=1e-5)


# -- tokens -----------------------------------------------------------------------------------


def jwt(claims: object) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    ("body", "expires_in", "expires_at"),
    [
        ({"accessToken": TOKEN, "expireIn": 300}, 300.0, None),
        ({"accessToken": TOKEN, "expireIn": " 1800 "}, 1800.0, None),
        (
            {"accessToken": TOKEN, "expireIn": "soon", "expire": "2030-01-01T00:00:00Z"},
            None,
            datetime(2030, 1, 1, tzinfo=UTC),
        ),
        (
            {"accessToken": TOKEN, "expire": "2030-01-01T03:00:00+03:00"},
            None,
            datetime(2030, 1, 1, tzinfo=UTC),
        ),
        (
            {"accessToken": TOKEN, "expire": "2030-01-01T00:00:00"},
            None,
            datetime(2030, 1, 1, tzinfo=UTC),
        ),
        ({"accessToken": TOKEN, "expire": 1893456000}, None, datetime(2030, 1, 1, tzinfo=UTC)),
        ({"accessToken": TOKEN, "expire": 1893456000000}, None, datetime(2030, 1, 1, tzinfo=UTC)),
        ({"accessToken": TOKEN, "expire": "garbage"}, None, None),
        ({"accessToken": TOKEN, "expire": 1e300}, None, None),
    ],
)
def test_auth_response_parsing(
    body: dict[str, object], expires_in: float | None, expires_at: datetime | None
) -> None:
    token = parse_auth_response(body)
    assert token.token == TOKEN
    assert token.expires_in == expires_in
    assert token.expires_at == expires_at


@pytest.mark.parametrize(
    "body", [None, [], {"accessToken": ""}, {"token": TOKEN}, {"accessToken": "a\nb"}]
)
def test_unusable_auth_responses(body: object) -> None:
    with pytest.raises(ValueError, match=r"accessToken|JSON object") as caught:
        parse_auth_response(body)
    assert TOKEN not in str(caught.value)


def test_jwt_expiry() -> None:
    assert jwt_expiry(jwt({"exp": 1893456000})) == 1893456000.0
    assert jwt_expiry(jwt({"sub": "x"})) is None
    assert jwt_expiry(jwt({"exp": "tomorrow"})) is None
    assert jwt_expiry(jwt([1, 2])) is None
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.%%%.c") is None
    assert jwt_expiry("a." + "A" * 9000 + ".c") is None


def test_provider_reprs_and_coercion() -> None:
    assert TOKEN not in repr(StaticToken(TOKEN))
    assert TOKEN not in repr(AccessToken(TOKEN, expires_in=5))
    credentials = ClientCredentials("ak-0123456789", SECRET_KEY)
    assert SECRET_KEY not in repr(credentials)
    assert "ak-0..." in repr(credentials)
    assert "***" in repr(ClientCredentials("short", SECRET_KEY))
    assert isinstance(as_provider(TOKEN), StaticToken)
    assert as_provider(credentials) is credentials

    class Provider:
        async def get_token(self) -> str:
            return TOKEN

    provider = Provider()
    assert as_provider(provider) is provider

    async def fetch() -> str:
        return TOKEN

    assert "fetch" in repr(as_provider(fetch))
    with pytest.raises(TypeError):
        as_provider(3.5)


# -- errors and results -----------------------------------------------------------------------


def failed(**overrides: object) -> CancelFailed:
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
    result = failed()
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


def test_cancel_request_repr_masks_the_document() -> None:
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


# -- config ------------------------------------------------------------------------------------


def test_environments_and_base_urls() -> None:
    assert Environment.parse(" Testing ") is Environment.TESTING
    assert Environment.SANDBOX.base_url == "https://api-sandbox.klavi.ai"
    with pytest.raises(ValueError, match="sandbox, testing, production"):
        Environment.parse("staging")
    assert check_base_url("https://gw.example.com/klavi/") == "https://gw.example.com/klavi"
    assert check_base_url("http://app.localhost:8000") == "http://app.localhost:8000"
    for bad in ("https://u:p@host", "https://host/?q=1", "https://host/#f", "http://[::2]"):
        with pytest.raises(ValueError, match="base_url"):
            check_base_url(bad)
    with pytest.raises(TypeError):
        check_base_url(b"https://host")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"accessToken": st.text(max_size=40)},
            optional={"expireIn": json_values, "expire": json_values},
        ),
    )
)
def test_auth_parsing_gives_a_token_or_a_value_error(body: object) -> None:
    try:
        token = parse_auth_response(body)
    except ValueError as exc:
        assert "accessToken" in str(exc) or "JSON object" in str(exc)
    else:
        assert token.token.strip()
        assert token.expires_in is None or not math.isnan(token.expires_in)


@given(st.text(max_size=120))
def test_payment_id_validation_fuzz(text: str) -> None:
    from klavi_async._documents import InvalidInput, validate_payment_id

    try:
        assert validate_payment_id(text) == text
    except InvalidInput as exc:
        assert "payment_id" in str(exc)
    else:
        assert 1 <= len(text) <= 100
        assert text.isascii()


def test_a_plain_function_is_refused_as_a_provider_at_construction() -> None:
    def not_async() -> str:
        return TOKEN

    with pytest.raises(TypeError, match="async"):
        as_provider(not_async)
    with pytest.raises(TypeError, match="async"):
        as_provider(lambda: TOKEN)

    class AsyncCallable:
        async def __call__(self) -> str:
            return TOKEN

    assert as_provider(AsyncCallable()) is not None


def test_zero_backoff_stays_zero_for_huge_retry_numbers() -> None:
    assert RetryPolicy(initial_backoff=0, jitter=False).backoff(5000) == 0.0


async def test_a_document_passed_as_payment_id_is_not_echoed() -> None:
    from klavi_async import KlaviClient

    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as client:
        result = await client.cancel_payment(CPF, cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.INVALID_REQUEST
    assert CPF not in repr(result)
    assert result.payment_id == "***.982.247-**"
