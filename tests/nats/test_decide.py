"""`decide()` and `parse_request()`: the broker-agnostic rules, no server needed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from klavi_async import CancelFailed, Cancelled, CancelRequest, ErrorKind
from klavi_async._rows import FIELDS, parse_row
from klavi_async.nats import (
    DEAD_SUBJECT,
    RESULTS_SUBJECT,
    Action,
    Poison,
    decide,
    parse_request,
    request_message,
)
from klavi_async.nats._decide import _as_enqueued

from ..conftest import CPF, CPF_BARE

BATCH_LINE_FIELDS = {
    "payment_id", "ok", "kind", "retryable", "http_status", "code", "message",
    "idempotency_key", "attempts", "already_cancelled", "reconciled", "outcome_unknown",
    "payment_status",
}  # fmt: skip


def cancelled(**kwargs: object) -> Cancelled:
    values: dict[str, object] = {
        "payment_id": "pay-1",
        "idempotency_key": "kc1-abc",
        "interaction_id": "iid",
        "attempts": 1,
        "history": (),
        "elapsed": 0.01,
        "http_status": 200,
    }
    values.update(kwargs)
    return Cancelled(**values)  # type: ignore[arg-type]


def failed(kind: ErrorKind, **kwargs: object) -> CancelFailed:
    values: dict[str, object] = {
        "payment_id": "pay-1",
        "idempotency_key": "kc1-abc",
        "interaction_id": "iid",
        "attempts": 1,
        "history": (),
        "elapsed": 0.01,
        "kind": kind,
        "http_status": None,
        "code": None,
        "message": "boom",
        "retryable": kind in {ErrorKind.SERVER_ERROR, ErrorKind.TIMEOUT, ErrorKind.RATE_LIMITED},
    }
    values.update(kwargs)
    return CancelFailed(**values)  # type: ignore[arg-type]


def test_ok_publishes_the_record_with_the_key_then_acks() -> None:
    decision = decide(1, 10, cancelled(), 5.0, ref="S:1")
    assert decision.action is Action.ACK
    assert decision.subject == f"{RESULTS_SUBJECT}.kc1-abc"  # one subject per request
    assert decision.msg_id == "kc1-abc"
    assert decision.record is not None
    assert decision.record.keys() >= BATCH_LINE_FIELDS
    assert decision.record["ok"] is True
    assert decision.record["deliveries"] == 1
    assert decision.delay is None
    assert not decision.halt


def test_final_failure_publishes_and_acks() -> None:
    result = failed(ErrorKind.NOT_CANCELLABLE, http_status=416, payment_status="PAYMENT_COMPLETED")
    decision = decide(3, 10, result, 5.0, ref="S:1")
    assert decision.action is Action.ACK
    assert decision.record is not None
    assert decision.record["kind"] == "not_cancellable"
    assert decision.record["payment_status"] == "PAYMENT_COMPLETED"
    assert decision.record["deliveries"] == 3


def test_retryable_failure_naks_with_retry_delay_and_publishes_nothing() -> None:
    decision = decide(1, 10, failed(ErrorKind.SERVER_ERROR, http_status=503), 5.0, ref="S:1")
    assert decision.action is Action.NAK
    assert decision.delay == 5.0
    assert decision.record is None
    assert decision.subject is None


def test_a_longer_retry_after_wins_over_the_delay() -> None:
    result = failed(ErrorKind.RATE_LIMITED, http_status=429, retry_after=12.5)
    assert decide(2, 10, result, 5.0, ref="S:1").delay == 12.5
    # A shorter one does not shorten the backoff; a zero hint is not a delay at all.
    for hint in (0.0, 7.0):
        result = failed(ErrorKind.RATE_LIMITED, http_status=429, retry_after=hint)
        assert decide(2, 10, result, 5.0, ref="S:1").delay == 10.0


def test_the_delay_doubles_with_each_delivery_up_to_max_retry_delay() -> None:
    result = failed(ErrorKind.SERVER_ERROR, http_status=503)
    delays = [decide(n, 100, result, 5.0, ref="S:1").delay for n in range(1, 10)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert decide(10**6, 10**7, result, 5.0, ref="S:1").delay == 300.0  # no overflow
    assert decide(3, 10, result, 0.2, ref="S:1", max_retry_delay=0.5).delay == 0.5
    # A day-long Retry-After is capped too: the message is retried within the cap.
    result = failed(ErrorKind.RATE_LIMITED, http_status=429, retry_after=86400.0)
    assert decide(1, 10, result, 5.0, ref="S:1").delay == 300.0


def test_a_request_older_than_max_age_is_given_up_with_its_non_final_record() -> None:
    result = failed(ErrorKind.SERVER_ERROR, http_status=503)
    young = decide(1, 10, result, 5.0, ref="S:1", age=86399.0)
    assert young.action is Action.NAK
    old = decide(1, 10, result, 5.0, ref="S:1", age=86400.0)
    assert old.action is Action.TERM
    assert old.subject == f"{RESULTS_SUBJECT}.kc1-abc"
    assert old.record is not None and old.record["ok"] is False
    assert old.msg_id == "kc1-abc:unsettled:S:1"
    # An age nobody can know (NaN from a broken clock) gives nothing up.
    assert decide(1, 10, result, 5.0, ref="S:1", age=float("nan")).action is Action.NAK
    # A final outcome is recorded whatever the age.
    assert decide(1, 10, cancelled(), 5.0, ref="S:1", age=10**9).action is Action.ACK


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retry_delay": 1.0}, "max_retry_delay must be >= retry_delay"),
        ({"max_retry_delay": float("nan")}, "max_retry_delay"),
        ({"max_age": 0.0}, "max_age must be > 0"),
        ({"max_age": float("nan")}, "max_age must be > 0"),
    ],
)
def test_bad_schedules_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(1, 10, cancelled(), 5.0, ref="S:1", **options)


def test_outcome_unknown_is_not_final_even_when_not_retryable() -> None:
    result = failed(ErrorKind.CONFLICT, http_status=409, retryable=False, outcome_unknown=True)
    decision = decide(1, 10, result, 1.0, ref="S:1")
    assert decision.action is Action.NAK
    assert decision.delay == 1.0


def test_last_delivery_publishes_the_non_final_record_and_terminates() -> None:
    result = failed(ErrorKind.TIMEOUT, retry_after=3.0)
    decision = decide(10, 10, result, 5.0, ref="S:1")
    assert decision.action is Action.TERM
    # The request's own subject: a later final record replaces it there.
    assert decision.subject == f"{RESULTS_SUBJECT}.kc1-abc"
    assert decision.msg_id == "kc1-abc:unsettled:S:1"
    assert decision.record is not None
    assert decision.record["ok"] is False
    assert decision.record["retryable"] is True
    assert decision.record["deliveries"] == 10
    # Past the limit too (a worker died on the last delivery and it came back).
    assert decide(11, 10, result, 5.0, ref="S:1").action is Action.TERM


def test_a_result_without_key_is_deduplicated_by_the_message_ref() -> None:
    decision = decide(1, 10, cancelled(idempotency_key=None), 5.0, ref="KLAVI_CANCEL:7")
    assert decision.msg_id == "result-KLAVI_CANCEL:7"
    assert decision.subject == f"{RESULTS_SUBJECT}.KLAVI_CANCEL-7"


@pytest.mark.parametrize(
    "key", ["a.b", "a*b", ">", "key with spaces", "x" * 101, "ção", "\udcff", "..."]
)
def test_a_key_that_cannot_be_a_subject_token_is_hashed(key: str) -> None:
    decision = decide(1, 10, cancelled(idempotency_key=key), 5.0, ref="S:1")
    assert decision.subject is not None
    root, token = decision.subject.rsplit(".", 1)
    assert root == RESULTS_SUBJECT
    assert token.startswith("sha256-") and len(token) == 7 + 64
    other = decide(1, 10, cancelled(idempotency_key=key + "!"), 5.0, ref="S:1")
    assert other.subject != decision.subject


def test_invalid_request_is_a_dead_letter_and_terminates() -> None:
    result = failed(
        ErrorKind.INVALID_REQUEST,
        message="cancelled_by: not a valid CPF (***.456.789-**)",
        attempts=0,
    )
    decision = decide(1, 10, result, 5.0, ref="KLAVI_CANCEL:3")
    assert decision.action is Action.TERM
    assert decision.subject == f"{DEAD_SUBJECT}.KLAVI_CANCEL-3"
    assert decision.msg_id == "dead-KLAVI_CANCEL:3"
    assert decision.record is not None
    assert decision.record["reason"] == "invalid_request"
    assert decision.record["source"] == "KLAVI_CANCEL:3"
    assert decision.record["payment_id"] == "pay-1"


def test_poison_is_a_dead_letter_whatever_the_delivery() -> None:
    poison = Poison("bad_json", "the message is not valid JSON")
    for delivery in (1, 5, 99):
        decision = decide(delivery, 3, poison, 5.0, ref="S:9")
        assert decision.action is Action.TERM
        assert decision.subject == f"{DEAD_SUBJECT}.S-9"
        assert decision.record is not None
        assert decision.record["deliveries"] == delivery


def test_refused_credentials_nak_and_halt_without_a_record() -> None:
    result = failed(ErrorKind.AUTHENTICATION_FAILED, retryable=False)
    decision = decide(10, 10, result, 2.0, ref="S:1")
    assert decision.action is Action.NAK
    assert decision.halt
    assert decision.delay == 2.0
    assert decision.record is None
    # A transient /auth failure is an ordinary retryable failure.
    transient = failed(ErrorKind.AUTHENTICATION_FAILED, retryable=True)
    assert not decide(1, 10, transient, 2.0, ref="S:1").halt


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 10, 1.0), "delivery_count"), ((1, 0, 1.0), "max_deliver"), ((1, 1, 0.0), "retry_delay")],
)
def test_bad_arguments(args: tuple[int, int, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(args[0], args[1], cancelled(), args[2], ref="S:1")


def test_parse_request_follows_the_batch_row_rules() -> None:
    body = {
        "payment_id": " pay-1 ",
        "cancelled_by": CPF,
        "identifier_type": "CPF",
        "idempotency_key": "k-1",
        "consent_id": "",
    }
    request = parse_request(json.dumps(body).encode())
    assert request == CancelRequest("pay-1", CPF, identifier_type="CPF", idempotency_key="k-1")
    # A number is not an id: the message is poison, as the row is invalid in a batch.
    numeric = parse_request(json.dumps({"payment_id": 12345, "cancelled_by": CPF_BARE}).encode())
    assert isinstance(numeric, Poison) and numeric.reason == "bad_field"
    assert numeric.message == (
        "in the message, payment_id must be a JSON string, not a number: put it in quotes"
    )
    document = parse_request(json.dumps({"payment_id": "p", "cancelled_by": 52998224725}).encode())
    assert isinstance(document, Poison) and "cancelled_by must be a JSON string" in document.message
    assert "52998224725" not in document.message
    camel = parse_request(
        json.dumps({"payment_id": "p", "cancelled_by": CPF, "consentId": "c"}).encode()
    )
    assert isinstance(camel, Poison) and camel.reason == "bad_field"
    assert "unknown field consentId (consent_id?)" in camel.message
    # Another word, not a slip of the keyboard: ignored as any other field.
    for other in ("content_id", "consented", "payment", "paymentDate", "cancelledAt"):
        body = {"payment_id": "p", "cancelled_by": CPF, other: "x"}
        assert isinstance(parse_request(json.dumps(body).encode()), CancelRequest), other


_VALUES = st.one_of(
    st.none(),
    st.sampled_from(["", " ", "p-1", " p-1 ", CPF, CPF_BARE, "\u00a0x\t", "CPF"]),
    st.text(max_size=8),
    st.integers(),
    st.booleans(),
    st.lists(st.text(max_size=2), max_size=2),
)
_NAMES = st.sampled_from([*FIELDS, "consentId", "note", "payment", "Payment_Id"])


@given(st.dictionaries(_NAMES, _VALUES, max_size=7))
def test_the_enqueued_shape_shortcut_gives_what_the_row_rules_give(body: dict[str, object]) -> None:
    # `_as_enqueued` skips the row rules for the common message; where it answers, the
    # answer is the rules' own; where it does not, `parse_request` asks the rules.
    fast = _as_enqueued(body)
    if fast is not None:
        assert fast == parse_row(0, body).request
    parsed = parse_request(json.dumps(body).encode())
    expected = parse_row(0, body).request
    assert parsed == expected if expected is not None else isinstance(parsed, Poison)


def test_the_shortcut_answers_for_what_enqueue_writes() -> None:
    request = CancelRequest(" pay-1", CPF, idempotency_key="k", consent_id="c-1")
    assert _as_enqueued(json.loads(request_message(request)[0])) == CancelRequest(
        "pay-1", CPF, idempotency_key="k", consent_id="c-1"
    )
    assert _as_enqueued({"payment_id": "p", "cancelled_by": CPF, "note": "x"}) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps({"payment_id": "p"}).encode(), "missing_field"),
        (json.dumps({"cancelled_by": CPF}).encode(), "missing_field"),
    ],
)
def test_parse_request_poison(data: bytes, reason: str) -> None:
    poison = parse_request(data)
    assert isinstance(poison, Poison)
    assert poison.reason == reason
    assert CPF not in poison.message
    assert CPF_BARE not in poison.message


def test_poison_keeps_what_identifies_the_message_but_no_document() -> None:
    data = json.dumps({"payment_id": "x" * 300, "idempotency_key": "k-9", "note": CPF})
    poison = parse_request(data.encode())
    assert isinstance(poison, Poison)
    assert poison.message == "the message is missing cancelled_by"
    assert poison.payment_id == "x" * 100 + "…(clipped)"
    assert poison.idempotency_key == "k-9"
    record = decide(1, 10, poison, 1.0, ref="S:1").record
    assert CPF not in json.dumps(record)
