"""Environments, base URL checks and the API paths."""

from __future__ import annotations

import inspect

import pytest

from klavi_async import (
    Environment,
    KlaviClient,
)
from klavi_async._config import (
    AUTOMATIC_CANCEL_PATH,
    CANCEL_PATH,
    STATUS_PATH,
    check_base_url,
    is_loopback,
)


@pytest.mark.parametrize(
    ("environment", "value", "base_url"),
    [
        (Environment.SANDBOX, "sandbox", "https://api-sandbox.klavi.ai"),
        (Environment.TESTING, "testing", "https://api-testing.klavi.ai"),
        (Environment.PRODUCTION, "production", "https://api.klavi.ai"),
    ],
)
def test_environments(environment: Environment, value: str, base_url: str) -> None:
    assert environment.value == value
    assert environment.base_url == base_url
    assert check_base_url(environment.base_url) == base_url
    assert Environment.parse(value) is environment
    assert Environment.parse(f"  {value.upper()} ") is environment
    assert Environment.parse(value.capitalize()) is environment


def test_there_are_exactly_three_environments_and_sandbox_is_the_default() -> None:
    assert len(Environment) == 3
    parameter = inspect.signature(KlaviClient).parameters["environment"]
    assert parameter.default is Environment.SANDBOX


@pytest.mark.parametrize("name", ["prod", "", "staging", "api.klavi.ai", "sand box"])
def test_unknown_environment_names(name: str) -> None:
    with pytest.raises(ValueError, match="use one of: sandbox, testing, production") as caught:
        Environment.parse(name)
    assert repr(name) in str(caught.value)
    assert caught.value.__suppress_context__


def test_paths_follow_the_contract() -> None:
    assert CANCEL_PATH.format(payment_id="p") == "/payment/customer/v1/instant/payments/p/cancel"
    assert STATUS_PATH.format(payment_id="p") == "/payment/customer/v1/instant/payments/p/status"
    assert (
        AUTOMATIC_CANCEL_PATH.format(consent_id="c", payment_id="p")
        == "/payment/customer/v1/automatic/consents/c/payments/p/cancel"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.klavi.ai", "https://api.klavi.ai"),
        ("https://api.klavi.ai/", "https://api.klavi.ai"),
        ("https://api.klavi.ai///", "https://api.klavi.ai"),
        ("https://gateway.example.com/klavi/", "https://gateway.example.com/klavi"),
        ("https://gateway.example.com:8443/a/b", "https://gateway.example.com:8443/a/b"),
        ("  https://api.klavi.ai/  ", "https://api.klavi.ai"),
        ("HTTPS://API.Klavi.AI", "https://api.klavi.ai"),
        ("https://10.0.0.5", "https://10.0.0.5"),
        ("https://[2001:db8::1]:443/", "https://[2001:db8::1]"),
    ],
)
def test_https_urls_are_accepted_without_a_trailing_slash(url: str, expected: str) -> None:
    assert check_base_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1", "http://127.0.0.1"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.8.9.10", "http://127.8.9.10"),
        ("http://127.255.255.254:1", "http://127.255.255.254:1"),
        ("http://[::1]", "http://[::1]"),
        ("http://[::1]:8080/base/", "http://[::1]:8080/base"),
        ("http://localhost", "http://localhost"),
        ("http://LOCALHOST:9000", "http://localhost:9000"),
    ],
)
def test_plain_http_is_allowed_for_loopback_hosts(url: str, expected: str) -> None:
    assert check_base_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://api.klavi.ai",
        "http://api-sandbox.klavi.ai/",
        "http://10.0.0.1",
        "http://192.168.0.10:8080",
        "http://128.0.0.1",
        "http://126.255.255.255",
        "http://0.0.0.0",
        "http://[::2]",
        "http://[::]",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://mylocalhost",
    ],
)
def test_plain_http_elsewhere_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must use https"):
        check_base_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.klavi.ai/?env=x",
        "https://api.klavi.ai/path?x=1",
        "https://api.klavi.ai/#frag",
        "https://user@api.klavi.ai",
        "https://user:secret@api.klavi.ai",
        "https://:secret@api.klavi.ai",
        "http://user:pw@127.0.0.1",
    ],
)
def test_query_fragment_and_credentials_are_refused(url: str) -> None:
    with pytest.raises(
        ValueError, match="must not carry a query, fragment or credentials"
    ) as caught:
        check_base_url(url)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "api.klavi.ai",
        "/payment/customer",
        "",
        "   ",
        "https://",
        "ftp://api.klavi.ai",
        "file:///etc",
    ],
)
def test_non_absolute_or_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="absolute http"):
        check_base_url(url)


def test_an_invalid_port_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a valid URL"):
        check_base_url("https://api.klavi.ai:99999")


@pytest.mark.parametrize("url", [None, b"https://api.klavi.ai", 42])
def test_a_non_string_is_a_type_error(url: object) -> None:
    with pytest.raises(TypeError, match="base_url must be a str"):
        check_base_url(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("0:0:0:0:0:0:0:1", True),
        ("128.0.0.1", False),
        ("::2", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# Folded in from test_units.py.


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
