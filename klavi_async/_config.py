"""
Where the client talks to: environments, base URL checks and defaults.

`https` is required except for loopback hosts (127.0.0.0/8, ::1, localhost), checked
when the client is built, so a bearer token never travels in clear text by accident.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Final

from yarl import URL

__all__ = [
    "AUTOMATIC_CANCEL_PATH",
    "CANCEL_PATH",
    "AUTOMATIC_STATUS_PATH",
    "STATUS_PATH",
    "Environment",
    "check_base_url",
    "is_loopback",
]

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
