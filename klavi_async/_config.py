"""
Where the client talks to: environments, base URL checks and defaults.

`https` is required except for loopback hosts (127.0.0.0/8, ::1, localhost), checked
when the client is built, so a bearer token never travels in clear text by accident.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import ssl as _ssl
from typing import Any, Final

from yarl import URL

from ._budget import RetryBudget
from ._ratelimit import RateLimit
from ._retry import RetryPolicy
from ._speedups import PathURLs
from ._tokens import ClientCredentials, StaticToken

__all__ = [
    "AUTOMATIC_CANCEL_PATH",
    "CANCEL_PATH",
    "AUTOMATIC_STATUS_PATH",
    "STATUS_PATH",
    "INTERACTION_HEADER",
    "Endpoints",
    "Environment",
    "check_base_url",
    "check_call_args",
    "check_client_config",
    "client_settings",
    "client_kwargs_from_env",
    "check_int",
    "check_number",
    "check_optional_type",
    "check_path",
    "is_loopback",
]

INTERACTION_HEADER: Final = "x-fapi-interaction-id"
"""The correlation id sent on every request (a UUID4 per call); Klavi echoes it."""
CANCEL_PATH: Final = "/payment/customer/v1/instant/payments/{payment_id}/cancel"
STATUS_PATH: Final = "/payment/customer/v1/instant/payments/{payment_id}/status"
AUTOMATIC_CANCEL_PATH: Final = (
    "/payment/customer/v1/automatic/consents/{consent_id}/payments/{payment_id}/cancel"
)
AUTOMATIC_STATUS_PATH: Final = (
    "/payment/customer/v1/automatic/consents/{consent_id}/payments/{payment_id}/status"
)


class Environment(enum.Enum):
    """Klavi's hosts.  The value is the name `KLAVI_ENVIRONMENT` accepts."""

    SANDBOX = "sandbox"
    TESTING = "testing"
    PRODUCTION = "production"

    @property
    def base_url(self) -> str:
        """The environment's base URL, e.g. `https://api-sandbox.klavi.ai`."""
        return _HOSTS[self]

    @classmethod
    def parse(cls, name: str) -> Environment:
        """`Environment` from a name such as `"sandbox"` (any case); ValueError otherwise."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            names = ", ".join(e.value for e in cls)
            raise ValueError(f"unknown Klavi environment {name!r}; use one of: {names}") from None


_HOSTS: Final = {
    Environment.SANDBOX: "https://api-sandbox.klavi.ai",
    Environment.TESTING: "https://api-testing.klavi.ai",
    Environment.PRODUCTION: "https://api.klavi.ai",
}


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    """
    Validate *base_url* and return it without a trailing slash.

    Raises `ValueError` for anything but an absolute `https` URL, or `http` to a loopback
    host; a query, fragment or user info is refused too.
    """
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a str, got {type(base_url).__name__}")
    try:
        url = URL(base_url.strip())
    except ValueError as exc:
        raise ValueError(f"base_url is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
    if url.scheme == "http" and not is_loopback(url.host):
        raise ValueError(
            f"base_url must use https (plain http is allowed only for loopback hosts), "
            f"got {url.host!r}"
        )
    if url.query_string or url.fragment or url.user or url.password:
        raise ValueError("base_url must not carry a query, fragment or credentials")
    return str(url).rstrip("/")


class Endpoints:
    """
    The URLs one client sends to, built from the parsed base.  Strictly private.

    Request URLs are built with `with_path` on the parsed base URL: parsing a whole URL
    string per call costs several times more.  The ids given are validated already: only
    ASCII letters, digits and '-', which a URL path carries as they are.
    """

    __slots__ = (
        "_base_path",
        "_urls",
        "automatic_cancel",
        "automatic_status",
        "base",
        "cancel",
        "status",
    )

    def __init__(
        self,
        base_url: str,
        cancel: str,
        status: str,
        automatic_cancel: str,
        automatic_status: str,
    ) -> None:
        self.base = URL(base_url, encoded=True)
        self._base_path = self.base.raw_path.rstrip("/")
        self._urls = PathURLs(self.base)  # `with_path(..., encoded=True)`, made fast
        self.cancel = cancel
        self.status = status
        self.automatic_cancel = automatic_cancel
        self.automatic_status = automatic_status

    def cancel_url(self, payment_id: str, consent_id: str | None) -> URL:
        """The cancel URL of an instant (or, with *consent_id*, an automatic) payment."""
        if consent_id is None:
            path = self.cancel.format(payment_id=payment_id)
        else:
            path = self.automatic_cancel.format(consent_id=consent_id, payment_id=payment_id)
        return self._urls(self._base_path + path)

    def status_url(self, payment_id: str, consent_id: str | None) -> URL:
        """The status URL of an instant (or, with *consent_id*, an automatic) payment."""
        if consent_id is None:
            path = self.status.format(payment_id=payment_id)
        else:
            path = self.automatic_status.format(consent_id=consent_id, payment_id=payment_id)
        return self._urls(self._base_path + path)


# Construction checks: a misconfigured client fails when built, with the argument's name.


def check_optional_type(name: str, value: object, expected: type) -> None:
    """*value* must be None or an instance of *expected* (`TypeError`)."""
    if value is not None and not isinstance(value, expected):
        raise TypeError(f"{name} must be a {expected.__name__}, got {type(value).__name__}")


def check_number(name: str, value: object) -> None:
    """*value* must be a number > 0 that a float holds, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if isinstance(value, int) and value > 1e300:  # float() of a 400-digit int overflows
        raise ValueError(f"{name} is too large")


def check_int(name: str, value: object) -> None:
    """*value* must be an int >= 1, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def check_path(name: str, path: object, fields: tuple[str, ...]) -> None:
    """*path* must be an absolute path template naming each of *fields* in braces."""
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
        raise ValueError(f"{name} must be a path starting with '/', with no query or fragment")
    for field_name in fields:
        if "{" + field_name + "}" not in path:
            raise ValueError(f"{name} must contain {{{field_name}}}")


_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE: Final = frozenset({"", "0", "false", "f", "no", "n", "off"})


def single_use_from_env() -> bool:
    """`KLAVI_SINGLE_USE_TOKENS`: 1/true/yes/on or 0/false/no/off (unset: off)."""
    value = os.environ.get("KLAVI_SINGLE_USE_TOKENS", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("KLAVI_SINGLE_USE_TOKENS must be 1 or 0 (true/false, yes/no, on/off)")


def client_kwargs_from_env(
    kwargs: dict[str, Any], *, single_use: bool | None = None
) -> dict[str, Any]:
    """
    `KlaviClient.from_env()`'s arguments: *kwargs* completed from the environment.

    *single_use* (None: `KLAVI_SINGLE_USE_TOKENS`) asks for a token per call, which only
    access keys can give.
    """
    kwargs = dict(kwargs)
    if "token_provider" not in kwargs:
        access = os.environ.get("KLAVI_ACCESS_KEY", "").strip()
        secret = os.environ.get("KLAVI_SECRET_KEY", "").strip()
        token = os.environ.get("KLAVI_TOKEN", "").strip()
        if single_use is None:
            single_use = single_use_from_env()
        if single_use and not (access and secret):
            raise ValueError(
                "single-use tokens need KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY: "
                "a fixed KLAVI_TOKEN cannot be renewed for each payment"
            )
        if access and secret:
            kwargs["token_provider"] = ClientCredentials(access, secret, single_use=single_use)
        elif token:
            kwargs["token_provider"] = StaticToken(token)
        elif access or secret:
            raise ValueError("set both KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY (or KLAVI_TOKEN)")
        else:
            raise ValueError(
                "no Klavi credentials: set KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY, or KLAVI_TOKEN"
            )
    if "base_url" not in kwargs and os.environ.get("KLAVI_BASE_URL", "").strip():
        kwargs["base_url"] = os.environ["KLAVI_BASE_URL"].strip()
    if "environment" not in kwargs and os.environ.get("KLAVI_ENVIRONMENT", "").strip():
        kwargs["environment"] = Environment.parse(os.environ["KLAVI_ENVIRONMENT"])
    return kwargs


def check_client_config(
    environment: object,
    base_url: str | None,
    retry: object,
    retry_budget: object,
    timeout: object,
    max_connections: object,
    max_response_size: object,
    idempotency_header: object,
    ssl: object,
    paths: tuple[object, object, object, object],
) -> str:
    """The constructor's checks, in order; the checked base URL.  Misconfiguration fails here."""
    if not isinstance(environment, Environment):
        raise TypeError(f"environment must be an Environment, got {environment!r}")
    checked = check_base_url(environment.base_url if base_url is None else base_url)
    check_optional_type("retry", retry, RetryPolicy)
    check_optional_type("retry_budget", retry_budget, RetryBudget)
    check_number("timeout", timeout)
    check_int("max_connections", max_connections)
    check_int("max_response_size", max_response_size)
    header: object = idempotency_header
    if header is not None and (not isinstance(header, str) or not header.strip()):
        raise ValueError("idempotency_header must be a header name or None")
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext | bool):
        raise TypeError("ssl must be an ssl.SSLContext, a bool or None")
    cancel_path, status_path, automatic_cancel_path, automatic_status_path = paths
    for name, path, fields in (
        ("cancel_path", cancel_path, ("payment_id",)),
        ("status_path", status_path, ("payment_id",)),
        ("automatic_cancel_path", automatic_cancel_path, ("consent_id", "payment_id")),
        ("automatic_status_path", automatic_status_path, ("consent_id", "payment_id")),
    ):
        check_path(name, path, fields)
    return checked


def client_settings(
    retry: RetryPolicy | None, budget: RetryBudget | None, rate_limit: RateLimit | float | None
) -> tuple[RetryPolicy, RetryBudget, RateLimit | None]:
    """What every call of a client shares, defaults filled in; a bad *rate_limit* raises."""
    return (
        retry if retry is not None else RetryPolicy(),
        budget if budget is not None else RetryBudget(),
        RateLimit.coerce(rate_limit),
    )


def check_call_args(
    payment_id: object,
    cancelled_by: object,
    identifier_type: object,
    idempotency_key: object,
    consent_id: object,
) -> None:
    """Raise `TypeError` naming the first argument of a call that is not a str."""
    if (
        type(payment_id) is str
        and type(cancelled_by) is str
        and (identifier_type is None or type(identifier_type) is str)
        and (idempotency_key is None or type(idempotency_key) is str)
        and (consent_id is None or type(consent_id) is str)
    ):
        return  # the common case in one expression; the loop below names the culprit
    for name, value, optional in (
        ("payment_id", payment_id, False),
        ("cancelled_by", cancelled_by, False),
        ("identifier_type", identifier_type, True),
        ("idempotency_key", idempotency_key, True),
        ("consent_id", consent_id, True),
    ):
        if not isinstance(value, str) and not (optional and value is None):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
