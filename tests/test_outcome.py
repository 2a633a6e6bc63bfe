"""classify_response and parse_retry_after: every status, every body shape, every hint form."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, strategies as st
from multidict import CIMultiDict

from klavi_async import (
    ErrorKind,
)
from klavi_async._outcome import (
    MAX_HINT_SECONDS,
    REFUSAL_CODE,
    Outcome,
    classify_response,
    parse_error_body,
    parse_retry_after,
    transport_outcome,
)
from klavi_async._speedups import parse_json

from .conftest import CPF, CPF_BARE

CNPJ = "11.222.333/0001-81"


def classify(
    status: int, body: object = b"", *, document: str | None = None, **headers: str
) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_response(status, CIMultiDict(headers), raw, document=document)


# -- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "ambiguous"),
    [
        (200, None, False),
        (201, None, False),
        (204, None, False),
        (301, ErrorKind.UNEXPECTED_RESPONSE, False),
        (302, ErrorKind.UNEXPECTED_RESPONSE, False),
        (304, ErrorKind.UNEXPECTED_RESPONSE, False),
        (307, ErrorKind.UNEXPECTED_RESPONSE, False),
        (100, ErrorKind.UNEXPECTED_RESPONSE, False),
        (400, ErrorKind.BAD_REQUEST, False),
        (422, ErrorKind.BAD_REQUEST, False),
        (401, ErrorKind.UNAUTHORIZED, False),
        (403, ErrorKind.FORBIDDEN, False),
        (404, ErrorKind.NOT_FOUND, False),
        (409, ErrorKind.CONFLICT, False),
        (416, ErrorKind.NOT_CANCELLABLE, False),
        (429, ErrorKind.RATE_LIMITED, False),
        (500, ErrorKind.SERVER_ERROR, True),
        (502, ErrorKind.SERVER_ERROR, True),
        (504, ErrorKind.SERVER_ERROR, True),
        (503, ErrorKind.SERVER_ERROR, False),
        (529, ErrorKind.RATE_LIMITED, False),
        (405, ErrorKind.UNEXPECTED_RESPONSE, False),
        (418, ErrorKind.UNEXPECTED_RESPONSE, False),
    ],
)
def test_every_status_of_the_contract(status: int, kind: ErrorKind | None, ambiguous: bool) -> None:
    outcome = classify(status)
    assert outcome.kind is kind
    assert outcome.http_status == status
    assert outcome.ambiguous is ambiguous
    assert outcome.refused is (kind in (ErrorKind.CONFLICT, ErrorKind.NOT_CANCELLABLE))
    if kind is None:
        assert outcome.code is None
        assert outcome.message == ""
        assert outcome.retry_after is None


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest.mark.parametrize(
    "body",
    [b"", b"<html><title>OK</title></html>", b"{not json", b"\xff\xfe", b"null", b"[1]"],
)
def test_a_2xx_is_success_whatever_its_body(status: int, body: bytes) -> None:
    outcome = classify(status, body, **{"Retry-After": "5"})
    assert outcome.kind is None
    assert outcome.http_status == status
    assert outcome.body == parse_json(body)
    assert outcome.retry_after is None


def test_a_2xx_json_body_is_parsed() -> None:
    body = {"id": "pay-1", "status": "CANCELED"}
    assert classify(200, body).body == body
    assert classify(201, {"ok": True}).body == {"ok": True}


# -- refusal and idempotency codes ---------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 400, 403, 404, 409, 416, 422, 429, 500, 503])
@pytest.mark.parametrize(
    "body",
    [
        {"errors": [{"code": REFUSAL_CODE, "title": "T", "detail": "D"}], "meta": {}},
        {"errors": [{"code": "OTHER", "detail": "D"}, {"code": REFUSAL_CODE}]},
        {"error": {"code": REFUSAL_CODE, "detail": "D"}},
        {"statusCode": 416, "error": REFUSAL_CODE, "message": "D"},
        {"code": REFUSAL_CODE},
        {"errorCode": REFUSAL_CODE, "message": "D"},
    ],
)
def test_the_refusal_code_makes_any_status_not_cancellable(status: int, body: object) -> None:
    outcome = classify(status, body)
    assert outcome.kind is ErrorKind.NOT_CANCELLABLE
    assert outcome.code == REFUSAL_CODE
    assert outcome.refused
    assert outcome.http_status == status


@pytest.mark.parametrize(
    "body",
    [
        {"message": f"{REFUSAL_CODE} is what we would say if we refused"},
        {"note": REFUSAL_CODE},
        {"code": "OK", "detail": REFUSAL_CODE},
        {"errors": [{"detail": REFUSAL_CODE}]},
        {"items": [{"code": REFUSAL_CODE}]},  # nested elsewhere: not the body's code
        [REFUSAL_CODE],
        REFUSAL_CODE,
    ],
)
def test_a_200_that_merely_mentions_the_refusal_code_is_a_success(body: object) -> None:
    outcome = classify(200, body)
    assert outcome.kind is None
    assert outcome.body == body


def test_a_200_html_page_mentioning_the_refusal_code_is_a_success() -> None:
    page = f"<html><title>{REFUSAL_CODE}</title><p>{REFUSAL_CODE}</p></html>".encode()
    outcome = classify(200, page)
    assert outcome.kind is None
    assert outcome.body is None


def test_a_mention_in_an_error_body_does_not_make_it_a_refusal() -> None:
    outcome = classify(400, {"code": "PARAMETRO_INVALIDO", "message": f"not {REFUSAL_CODE}"})
    assert outcome.kind is ErrorKind.BAD_REQUEST
    assert outcome.code == "PARAMETRO_INVALIDO"


@pytest.mark.parametrize("status", [400, 409, 422, 500])
@pytest.mark.parametrize(
    "body",
    [
        {"errors": [{"code": "ERRO_IDEMPOTENCIA", "detail": "key reused"}]},
        {"error": {"code": "ERRO_IDEMPOTENCIA"}},
        {"code": "ERRO_IDEMPOTENCIA"},
    ],
)
def test_the_idempotency_error_code_is_a_conflict(status: int, body: object) -> None:
    outcome = classify(status, body)
    assert outcome.kind is ErrorKind.CONFLICT
    assert outcome.code == "ERRO_IDEMPOTENCIA"
    assert outcome.refused


# -- body shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        # {statusCode, error, message}: a statusCode equal to the status is not a code
        ({"statusCode": 416, "error": "Business Error", "message": "nope"}, None, "nope"),
        ({"statusCode": "416", "error": "Business Error", "message": "nope"}, None, "nope"),
        ({"statusCode": 4101, "error": "Business Error", "message": "qr"}, "4101", "qr"),
        (
            {"statusCode": 416, "error": "SALDO_INSUFICIENTE", "message": "m"},
            "SALDO_INSUFICIENTE",
            "m",
        ),
        ({"statusCode": 416, "error": "Not a code"}, None, "Not a code"),
        # {errors: [{code, title, detail}], meta}
        (
            {"errors": [{"code": "PARAMETRO_INVALIDO", "title": "T", "detail": "D"}], "meta": {}},
            "PARAMETRO_INVALIDO",
            "D",
        ),
        ({"errors": [{"code": "X", "title": "Title only"}]}, "X", "Title only"),
        ({"errors": [{"code": "A", "detail": "first"}, {"code": "B"}]}, "A", "first"),
        ({"errors": [], "message": "fallback"}, None, "fallback"),
        ({"errors": ["text"], "message": "fallback"}, None, "fallback"),
        # {error: {code, title, detail}}
        ({"error": {"code": "E1", "title": "T", "detail": "D"}}, "E1", "D"),
        ({"error": {"code": "E1", "message": "M", "title": "T"}}, "E1", "M"),
        ({"error": {"code": "E1", "title": "T"}}, "E1", "T"),
        ({"error": {}, "message": "outer"}, None, "outer"),
        # other flat shapes
        ({"error": "FORBIDDEN_SCOPE"}, "FORBIDDEN_SCOPE", "FORBIDDEN_SCOPE"),
        ({"code": 77, "detail": "why"}, "77", "why"),
        ({"code": "  ", "title": "  padded  "}, None, "padded"),
        ({"code": True, "message": 12.5}, None, "12.5"),
        ({"code": ["x"], "message": {"nested": 1}}, None, ""),
        ({}, None, ""),
    ],
)
def test_error_body_shapes(body: object, code: str | None, message: str) -> None:
    raw = json.dumps(body).encode()
    parsed, parsed_code, parsed_message = parse_error_body(raw, status=416)
    assert parsed == body
    assert parsed_code == code
    assert parsed_message == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"<html><head><title>502 Bad Gateway</title></head><body>x</body></html>",
            "502 Bad Gateway",
        ),
        (b"<TITLE lang='en'>\n  Erro &amp; falha\n</TITLE>", "Erro & falha"),
        (b"<html><body><h1>Service</h1> <p>Unavailable</p></body></html>", "Service Unavailable"),
        (b"plain <b>text</b>", "plain text"),
        (b"{broken json", "{broken json"),
        (b"line one\r\n\tline two\x00", "line one line two"),
        (b"\xff\xfe\x00bad", "\ufffd\ufffd bad"),
        (b"", ""),
        (b"   ", ""),
    ],
)
def test_non_json_bodies(raw: bytes, message: str) -> None:
    assert parse_error_body(raw) == (None, None, message)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"just a string"', b"42", b"true", b"false"])
def test_json_that_is_not_an_object_gives_no_code_and_no_message(raw: bytes) -> None:
    body, code, message = parse_error_body(raw)
    assert body == json.loads(raw)
    assert code is None
    assert message == ""
    outcome = classify(503, raw)
    assert outcome.body == json.loads(raw)
    assert outcome.message == "HTTP 503 Service Unavailable"


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"<html><title>Gateway</title></html>",
        b"{oops",
        b"[" * 50_000,
        b"\x80\x81\x82",
        b'{"errors": [null]}',
        b'{"error": ["x"]}',
    ],
)
def test_odd_error_bodies_never_crash_and_keep_the_status_kind(status: int, raw: bytes) -> None:
    outcome = classify(status, raw)
    assert outcome.kind is (ErrorKind.BAD_REQUEST if status == 400 else ErrorKind.SERVER_ERROR)
    assert outcome.message
    assert len(outcome.message) <= 300


def test_an_empty_error_body_gets_the_reason_phrase() -> None:
    assert classify(503).message == "HTTP 503 Service Unavailable"
    assert classify(418).message == "HTTP 418 I'm a Teapot"
    assert classify(599).message == "HTTP 599 unknown status"
    assert classify(404, {"errors": []}).message == "HTTP 404 Not Found"


# -- scrubbing, clipping, request ids ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"message": f"cancelledBy {CPF_BARE} does not match the payer"},
        {"errors": [{"code": "X", "detail": f"documento {CPF} invalido"}]},
        {"error": {"code": "X", "detail": f"cnpj {CNPJ}"}},
        f"<html><title>bad document {CPF_BARE}</title></html>".encode(),
        f"bad document {CPF}".encode(),
    ],
)
def test_messages_are_scrubbed_of_documents(body: object) -> None:
    outcome = classify(400, body)
    assert CPF_BARE not in outcome.message
    assert CPF not in outcome.message
    assert CNPJ not in outcome.message
    assert "***.982.247-**" in outcome.message or "**.222.333/0001-**" in outcome.message


def test_a_document_glued_to_letters_is_scrubbed() -> None:
    body = {"message": f"cpf{CPF_BARE}x rejected"}
    assert classify(400, body).message == "cpf***.982.247-**x rejected"


def test_the_known_document_is_scrubbed_even_where_the_pattern_cannot_see_it() -> None:
    body = {"message": f"ref 1{CPF_BARE}0 rejected"}
    assert CPF_BARE in classify(400, body).message  # inside a run of digits: no document
    outcome = classify(400, body, document=CPF_BARE)
    assert outcome.message == "ref 1***.982.247-**0 rejected"


def test_a_code_echoing_the_document_is_scrubbed() -> None:
    outcome = classify(400, {"code": f"DOC_{CPF}", "message": "m"})
    assert outcome.code == "DOC_***.982.247-**"
    known = classify(400, {"errorCode": f"X{CPF_BARE}"}, document=CPF_BARE)
    assert known.code == "X***.982.247-**"


def test_messages_are_clipped_after_scrubbing() -> None:
    outcome = classify(400, {"message": "x" * 290 + f" {CPF_BARE} " + "y" * 5000})
    assert len(outcome.message) == 300
    assert outcome.message.endswith("...")
    assert outcome.message.startswith("x" * 290 + " ***.98")
    assert "52998" not in outcome.message
    assert len(classify(400, {"message": "z" * 300}).message) == 300
    assert classify(400, {"message": "z" * 300}).message == "z" * 300


def test_codes_are_clipped_even_when_masking_lengthens_them() -> None:
    code = classify(400, {"code": "C" * 500}).code
    assert code is not None
    assert len(code) == 100
    assert code.endswith("...")
    echoed = classify(400, {"code": "C" * 87 + "-" + CPF_BARE}).code  # 99 chars, then masked
    assert echoed == "C" * 87 + "-***.982.2..."


def test_control_characters_and_runs_of_spaces_are_cleaned() -> None:
    outcome = classify(400, {"message": "a\n\nb\t\tc\x1b[31m  d"})
    assert outcome.message == "a b c [31m d"


@pytest.mark.parametrize("status", [200, 400, 503])
def test_request_ids(status: int) -> None:
    both = {"X-Fapi-Interaction-Id": "fapi-1", "X-Request-Id": "req-1"}
    assert classify(status, **both).request_id == "fapi-1"
    assert classify(status, **{"x-request-id": "req-1"}).request_id == "req-1"
    assert classify(status, **{"X-FAPI-INTERACTION-ID": "fapi-2"}).request_id == "fapi-2"
    assert classify(status, **{"x-fapi-interaction-id": "", "x-request-id": "r"}).request_id == "r"
    assert classify(status).request_id is None


def test_error_outcomes_carry_the_retry_after_hint() -> None:
    assert classify(429, **{"Retry-After": "7"}).retry_after == 7.0
    assert classify(503, **{"retry-after-ms": "1500"}).retry_after == 1.5
    assert classify(500).retry_after is None


def test_transport_outcomes_and_repr() -> None:
    sent = transport_outcome(ErrorKind.TIMEOUT, sent=True, message="read timeout")
    assert (sent.kind, sent.http_status, sent.ambiguous, sent.message) == (
        ErrorKind.TIMEOUT,
        None,
        True,
        "read timeout",
    )
    assert not transport_outcome(ErrorKind.NETWORK, sent=False, message="refused").ambiguous
    outcome = classify(400, {"message": "m", "payer": CPF_BARE})
    assert outcome.body == {"message": "m", "payer": CPF_BARE}
    assert CPF_BARE not in repr(outcome)  # the body is left out of the repr
    assert "BAD_REQUEST" in repr(outcome)


# -- Retry-After ---------------------------------------------------------------------------------

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": " 12 "}, 12.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "junk", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "-5", "Retry-After": "3"}, 3.0),
        ({"retry-after-ms": "junk"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 09:28:30 +0200"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 -0000"}, 30.0),  # naive: read as GMT
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),  # in the past
        ({"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_HINT_SECONDS),
        ({"Retry-After": "99999999999"}, MAX_HINT_SECONDS),
        ({"Retry-After": "86400.5"}, MAX_HINT_SECONDS),
        ({"retry-after-ms": "99999999999999"}, MAX_HINT_SECONDS),
        ({"Retry-After": "9" * 32}, MAX_HINT_SECONDS),
        ({"Retry-After": "9" * 33}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "+3"}, None),
        ({"Retry-After": "1e3"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "NaN"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "Infinity"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "0\x1f"}, None),  # a control character float() refuses
        ({"Retry-After": "\x1c3"}, None),
        ({"Retry-After": "\u0663"}, None),  # ٣: a digit to float(), not to HTTP
        ({"Retry-After": "\t3 "}, 3.0),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "Wed, 32 Oct 2015 07:28:30 GMT"}, None),
        ({"Retry-After": "Wed, 21 Foo 2015 07:28:30 GMT"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(CIMultiDict(headers), now=NOW) == expected


def test_an_http_date_is_measured_from_the_wall_clock_by_default() -> None:
    future = datetime.now(UTC).timestamp() + 3600
    header = datetime.fromtimestamp(future, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    hint = parse_retry_after(CIMultiDict({"Retry-After": header}))
    assert hint is not None
    assert 3500 < hint <= 3600


# -- properties ----------------------------------------------------------------------------------

header_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["5", "1.5", "-1", "nan", "inf", "1e999", "Wed, 21 Oct 2015 07:28:30 GMT"]),
    st.floats().map(str),
    st.integers().map(str),
)


@given(
    st.integers(100, 599),
    st.one_of(
        st.binary(max_size=400),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["errors", "error", "code", "statusCode", "message", "detail"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "retry-after",
                "retry-after-ms",
                "x-request-id",
                "x-fapi-interaction-id",
                "content-type",
            ]
        ),
        header_values,
    ),
)
def test_classify_response_never_raises(status: int, raw: bytes, headers: dict[str, str]) -> None:
    outcome = classify_response(status, CIMultiDict(headers), raw, document=CPF_BARE)
    assert outcome.http_status == status
    if 200 <= status < 300 and REFUSAL_CODE.encode() not in raw:
        assert outcome.kind is None
    if not 200 <= status < 300:
        assert outcome.kind is not None
        assert 0 < len(outcome.message) <= 300
        assert CPF_BARE not in outcome.message
        assert outcome.retry_after is None or 0 <= outcome.retry_after <= MAX_HINT_SECONDS
    if outcome.code is not None:
        assert len(outcome.code) <= 100


@given(header_values, header_values, st.floats(0, 4e9))
def test_parse_retry_after_never_raises(value: str, ms: str, now: float) -> None:
    for headers in (
        {"retry-after": value},
        {"retry-after-ms": ms},
        {"retry-after": value, "retry-after-ms": ms},
    ):
        hint = parse_retry_after(CIMultiDict(headers), now=now)
        assert hint is None or (math.isfinite(hint) and 0 <= hint <= MAX_HINT_SECONDS)


# Folded in from test_units.py.


def classify_raw(status: int, body: object = b"", **headers: str) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_response(status, CIMultiDict(headers), raw)


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
    outcome = classify_raw(status)
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
def test_error_body_shapes_of_each_form(body: object, code: str | None, message: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    _, parsed_code, parsed_message = parse_error_body(raw, status=416)
    assert parsed_code == code
    assert parsed_message == message


def test_refusal_code_wins_over_status_but_not_in_free_text() -> None:
    refusal = {"errors": [{"code": "X"}, {"code": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"}]}
    assert classify_raw(200, refusal).kind is ErrorKind.NOT_CANCELLABLE  # type: ignore[attr-defined]
    assert classify_raw(422, refusal).kind is ErrorKind.NOT_CANCELLABLE  # type: ignore[attr-defined]
    mention = {"note": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO appears in prose"}
    outcome = classify_raw(200, mention)
    assert outcome.kind is None  # type: ignore[attr-defined]
    assert outcome.body == mention  # type: ignore[attr-defined]
    conflict = classify_raw(422, {"errors": [{"code": "ERRO_IDEMPOTENCIA"}]})
    assert conflict.kind is ErrorKind.CONFLICT  # type: ignore[attr-defined]


def test_messages_are_scrubbed_clipped_and_request_ids_read() -> None:
    outcome = classify_raw(
        400, {"message": f"bad cancelledBy {CPF_BARE} " + "x" * 500}, **{"x-request-id": "req-1"}
    )
    assert CPF_BARE not in outcome.message  # type: ignore[attr-defined]
    assert len(outcome.message) == 300  # type: ignore[attr-defined]
    assert outcome.request_id == "req-1"  # type: ignore[attr-defined]
    empty = classify_raw(418)
    assert empty.message == "HTTP 418 I'm a Teapot"  # type: ignore[attr-defined]
    assert classify_raw(299).kind is None  # type: ignore[attr-defined]
    assert classify_raw(600).message == "HTTP 600 unknown status"  # type: ignore[attr-defined]
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
        ({"Retry-After": "0\x1f"}, None),  # a control character float() refuses
        ({"Retry-After": "\x1c3"}, None),
        ({"Retry-After": "\u0663"}, None),  # ٣: a digit to float(), not to HTTP
        ({"Retry-After": "\t3 "}, 3.0),
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
