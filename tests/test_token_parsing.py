"""Token values and parsing: auth responses, JWT expiry, reprs and provider coercion."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from klavi_async import (
    AccessToken,
    ClientCredentials,
    StaticToken,
    TokenProvider,
)
from klavi_async._auth import parse_auth_response
from klavi_async._tokens import as_provider, jwt_expiry

from .conftest import SECRET_KEY, TOKEN

EXPIRY = datetime(2030, 1, 1, tzinfo=UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: object, *, raw_payload: bytes | None = None) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode() if raw_payload is None else raw_payload)
    return f"{header}.{payload}.{b64url(b'signature')}"


# -- parse_auth_response ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expire_in", "seconds"),
    [
        (3600, 3600.0),
        (59.5, 59.5),
        (0, 0.0),
        ("3600", 3600.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("1e3", 1000.0),
    ],
)
def test_expire_in_as_a_number_or_numeric_string(expire_in: object, seconds: float) -> None:
    access = parse_auth_response({"accessToken": TOKEN, "expireIn": expire_in})
    assert access == AccessToken(TOKEN, expires_in=seconds)
    assert type(access.expires_in) is float


@pytest.mark.parametrize(
    "expire_in", ["soon", "", "nan", "inf", "-inf", True, None, [60], {"s": 1}]
)
def test_unusable_expire_in_is_ignored(expire_in: object) -> None:
    access = parse_auth_response({"accessToken": TOKEN, "expireIn": expire_in})
    assert access == AccessToken(TOKEN)
    assert access.expires_in is None
    assert access.expires_at is None


def test_expire_in_wins_over_expire() -> None:
    body = {"accessToken": TOKEN, "expireIn": 30, "expire": "2030-01-01T00:00:00Z"}
    assert parse_auth_response(body) == AccessToken(TOKEN, expires_in=30.0)


def test_unusable_expire_in_falls_back_to_expire() -> None:
    body = {"accessToken": TOKEN, "expireIn": "later", "expire": "2030-01-01T00:00:00Z"}
    assert parse_auth_response(body) == AccessToken(TOKEN, expires_at=EXPIRY)


@pytest.mark.parametrize(
    ("expire", "expected"),
    [
        ("2030-01-01T00:00:00Z", EXPIRY),
        ("2030-01-01T00:00:00z", EXPIRY),
        ("2030-01-01T00:00:00.000Z", EXPIRY),
        ("2030-01-01T00:00:00+00:00", EXPIRY),
        ("2030-01-01T03:00:00+03:00", EXPIRY),
        ("2029-12-31T21:00:00-03:00", EXPIRY),
        ("2030-01-01T00:00:00", EXPIRY),  # naive: read as UTC
        ("2030-01-01 00:00:00", EXPIRY),
        (" 2030-01-01T00:00:00Z ", EXPIRY),
        (1893456000, EXPIRY),  # epoch seconds
        (1893456000.0, EXPIRY),
        ("1893456000", EXPIRY),
        (1893456000000, EXPIRY),  # epoch milliseconds
        ("1893456000000", EXPIRY),
        ("tomorrow", None),
        ("", None),
        ("2030-13-01T00:00:00Z", None),
        (1e20, None),  # beyond any datetime
        (-1e20, None),
        ("nan", None),
        (True, None),
        (None, None),
        ({"at": 1}, None),
    ],
)
def test_expire_as_iso_time_or_epoch(expire: object, expected: datetime | None) -> None:
    access = parse_auth_response({"accessToken": TOKEN, "expire": expire})
    assert access.expires_in is None
    assert access.expires_at == expected
    if expected is not None:
        assert access.expires_at is not None
        assert access.expires_at.utcoffset() is not None  # always aware


def test_offsets_are_kept_as_given() -> None:
    access = parse_auth_response({"accessToken": TOKEN, "expire": "2030-01-01T03:00:00+03:00"})
    assert access.expires_at is not None
    assert access.expires_at.tzinfo == timezone(timedelta(hours=3))


def test_the_token_is_stripped() -> None:
    assert parse_auth_response({"accessToken": f"  {TOKEN}\t"}).token == TOKEN


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"accessToken": ""},
        {"accessToken": "   "},
        {"accessToken": None},
        {"accessToken": 123},
        {"access_token": TOKEN},
        {"token": TOKEN},
    ],
)
def test_a_missing_token_is_a_value_error(body: object) -> None:
    with pytest.raises(ValueError, match=r"^the auth response has no accessToken$"):
        parse_auth_response(body)


@pytest.mark.parametrize("body", [None, [], [TOKEN], TOKEN, 42, b"{}"])
def test_a_body_that_is_not_an_object_is_a_value_error(body: object) -> None:
    with pytest.raises(ValueError, match=r"^the auth response is not a JSON object$"):
        parse_auth_response(body)


@pytest.mark.parametrize("token", [f"{TOKEN}\r\nX-Injected: 1", f"{TOKEN}\x00", f"a\n{TOKEN}"])
def test_an_unusable_token_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(
        ValueError, match=r"^the auth response's accessToken is not a usable token$"
    ) as caught:
        parse_auth_response({"accessToken": token, "expireIn": 60})
    assert TOKEN not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@given(st.dictionaries(st.sampled_from(["accessToken", "expireIn", "expire", "x"]), st.text()))
def test_parse_auth_response_gives_a_token_or_a_value_error_without_it(
    body: dict[str, str],
) -> None:
    if "accessToken" in body:
        body["accessToken"] = "SECRET-" + body["accessToken"]
    try:
        access = parse_auth_response(body)
    except ValueError as exc:
        assert "SECRET-" not in str(exc)
        assert "SECRET-" not in repr(exc)
    else:
        assert access.token == body["accessToken"].strip()
        assert "SECRET-" not in repr(access)


# -- jwt_expiry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"sub": "client", "exp": 1893456000}, 1893456000.0),
        ({"exp": 1893456000.5}, 1893456000.5),
        ({"exp": 0}, 0.0),
        ({"exp": "1893456000"}, None),
        ({"exp": True}, None),
        ({"exp": None}, None),
        ({"exp": [1]}, None),
        ({"iat": 1}, None),
        ([1893456000], None),
        ("exp", None),
    ],
)
def test_jwt_expiry(claims: object, expected: float | None) -> None:
    assert jwt_expiry(jwt(claims)) == expected


@pytest.mark.parametrize("pad", ["", "x", "xx", "xxx"])
def test_jwt_expiry_handles_every_padding_length(pad: str) -> None:
    token = jwt({"exp": 1893456000, "pad": pad})
    assert "=" not in token
    assert jwt_expiry(token) == 1893456000.0


@pytest.mark.parametrize(
    "token",
    [
        TOKEN,
        "",
        "a.b",
        "a.b.c.d",
        "..",
        "header.!!!.sig",
        "header.%%%%.sig",
        jwt(None, raw_payload=b"not json"),
        jwt(None, raw_payload=b"\xff\xfe\xfd"),
        jwt(None, raw_payload=b"{" * 5000),
        jwt(None, raw_payload=b'{"exp": NaN}'),
        jwt(None, raw_payload=b'{"exp": Infinity}'),
        jwt(None, raw_payload=b'{"exp": 1e400}'),
        jwt({"exp": 1, "filler": "x" * 7000}),  # payload longer than 8192 characters
    ],
)
def test_jwt_expiry_of_non_jwts_and_malformed_payloads_is_none(token: str) -> None:
    assert jwt_expiry(token) is None


@given(st.text(max_size=200))
def test_jwt_expiry_never_raises(token: str) -> None:
    exp = jwt_expiry(token)
    assert exp is None or math.isfinite(exp)


# -- values and reprs ---------------------------------------------------------------------------


def test_access_token_fields_and_repr() -> None:
    access = AccessToken(TOKEN, expires_in=60.0)
    assert access.token == TOKEN
    assert TOKEN not in repr(access)
    assert repr(access) == "AccessToken(expires_in=60.0, expires_at=None)"
    at = AccessToken(TOKEN, expires_at=EXPIRY)
    assert TOKEN not in repr(at)
    assert "2030" in repr(at)


def test_static_token_repr() -> None:
    static = StaticToken(TOKEN)
    assert TOKEN not in repr(static)
    assert TOKEN not in str(static)
    assert repr(static) == "StaticToken()"


async def test_static_token_never_expires() -> None:
    assert await StaticToken(TOKEN).get_token() == AccessToken(TOKEN, expires_in=math.inf)


def test_client_credentials_repr_hides_the_secret_and_most_of_the_access_key() -> None:
    credentials = ClientCredentials("ak-test-0001", SECRET_KEY)
    shown = repr(credentials)
    assert SECRET_KEY not in shown
    assert "sk-" not in shown
    assert "ak-test-0001" not in shown
    assert "access_key=ak-t..." in shown
    assert credentials.path == "/payment/customer/v1/auth"
    assert "access_key=***" in repr(ClientCredentials("short", SECRET_KEY))
    assert "short" not in repr(ClientCredentials("short", SECRET_KEY))


@pytest.mark.parametrize(
    "factory", [AccessToken, StaticToken, lambda v: ClientCredentials("ak", v)]
)
@pytest.mark.parametrize(
    "value", ["", "   ", f"{TOKEN}\n", f"{TOKEN}\r", f"{TOKEN}\x00", 123, None]
)
def test_unusable_tokens_and_keys_are_refused_without_showing_them(
    factory: object, value: object
) -> None:
    with pytest.raises(ValueError, match=r"^a token must") as caught:
        factory(value)  # type: ignore[operator]
    assert TOKEN not in str(caught.value)


# -- as_provider --------------------------------------------------------------------------------


def test_a_string_becomes_a_static_token() -> None:
    provider = as_provider(TOKEN)
    assert provider == StaticToken(TOKEN)


def test_static_tokens_and_credentials_are_taken_as_they_are() -> None:
    static = StaticToken(TOKEN)
    credentials = ClientCredentials("ak-test-0001", SECRET_KEY)
    assert as_provider(static) is static
    assert as_provider(credentials) is credentials


async def test_an_object_with_async_get_token_is_taken_as_it_is() -> None:
    class Vault:
        async def get_token(self) -> str:
            return TOKEN

    vault = Vault()
    assert isinstance(vault, TokenProvider)
    provider = as_provider(vault)
    assert provider is vault
    assert isinstance(provider, TokenProvider)
    assert await provider.get_token() == TOKEN


async def test_an_async_callable_is_wrapped() -> None:
    calls: list[None] = []

    async def fetch_token() -> AccessToken:
        calls.append(None)
        return AccessToken(TOKEN, expires_in=5.0)

    provider = as_provider(fetch_token)
    assert isinstance(provider, TokenProvider)
    assert await provider.get_token() == AccessToken(TOKEN, expires_in=5.0)
    assert len(calls) == 1  # called with no arguments, once per get_token
    assert "fetch_token" in repr(provider)
    assert TOKEN not in repr(provider)


async def test_an_async_callable_object_is_wrapped() -> None:
    class Fetcher:
        async def __call__(self) -> str:
            return TOKEN

    provider = as_provider(Fetcher())
    assert await provider.get_token() == TOKEN  # type: ignore[union-attr]
    assert repr(provider) == "<token callable Fetcher>"


@pytest.mark.parametrize(
    "value", [None, 42, 4.2, b"token-bytes", ["tok"], {"token": "t"}, object()]
)
def test_anything_else_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=f"got {type(value).__name__}$"):
        as_provider(value)


# Folded in from test_units.py.


def make_jwt(claims: object) -> str:
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


def test_jwt_expiry_of_odd_tokens() -> None:
    assert jwt_expiry(make_jwt({"exp": 1893456000})) == 1893456000.0
    assert jwt_expiry(make_jwt({"sub": "x"})) is None
    assert jwt_expiry(make_jwt({"exp": "tomorrow"})) is None
    assert jwt_expiry(make_jwt([1, 2])) is None
    assert jwt_expiry("not-a-make_jwt") is None
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
