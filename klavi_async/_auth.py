"""
Auth for one call: the credentials exchange, the token wait and the 401 replay rule.

Strictly private.  Providers and the cache live in `_tokens`; this module decides how a
call uses them:

- `CredentialsProvider` exchanges `ClientCredentials` for a token at `/auth`, through
  the client's own attempt machinery (session, retry policy, budget), handed in as a
  `send` coroutine function, so this module imports nothing above it;
- `OwnToken` is one call's own token, for single-use credentials;
- `wait_for_token()` waits for a token no longer than the call's deadline allows;
- `replays()` says whether a 401 earns one replay with a fresh token;
- `auth_failure()` turns a provider's exception into the call's outcome.
"""

from __future__ import annotations

import asyncio
import html
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from yarl import URL

from ._errors import ClientClosedError
from ._kinds import (
    AUTH_REJECTED_STATUSES,
    RETRYABLE_KINDS,
    ErrorKind,
    attempt_retryable,
    provider_error_retryable,
)
from ._outcome import Outcome
from ._tokens import (
    MAX_MANDATORY_MARGIN,
    AccessToken,
    Bearer,
    ClientCredentials,
    TokenCache,
    TokenError,
)
from ._values import number_or_none

__all__ = [
    "CredentialsProvider",
    "OwnToken",
    "auth_failure",
    "parse_auth_response",
    "replays",
    "scrub_echo",
    "wait_for_token",
]

_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}

Send = Callable[[URL, dict[str, str], bytes], Awaitable[Outcome]]
"""POST one unauthorised request under the client's retry policy: `send(url, headers, body)`."""


class _KeysBody(bytes):
    """
    The credentials exchange's body: bytes whose repr and str never show them.

    Every frame of the send holds it (error reporters capture locals, and a call
    cancelled while it fetches its own token carries those frames).
    """

    def __repr__(self) -> str:
        return "<auth request body ***>"

    __str__ = __repr__


def scrub_echo(raw: bytes, secrets: tuple[str, ...]) -> bytes:
    """
    *raw* with every echo of *secrets* (as sent, or JSON-escaped) replaced by `***`.

    Done on the bytes, before any message is cleaned or clipped: a key cut at the clip's
    edge, or with white space that cleaning would fold, cannot slip through in part.
    """
    for secret in secrets:
        for form in _echo_forms(secret):
            if form and form in raw:
                raw = raw.replace(form, b"***")
    return raw


def _echo_forms(secret: str) -> set[bytes]:
    """The ways a server may write *secret* back: as sent, JSON, URL, form or HTML escaped."""
    texts = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        html.escape(secret),
    }
    forms = {text.encode() for text in texts}
    forms.add(secret.encode("latin-1", errors="replace"))
    return forms


class CredentialsProvider:
    """`ClientCredentials` bound to one client's URL and attempt machinery."""

    __slots__ = ("_credentials", "_retry_statuses", "_send", "_url")

    def __init__(
        self,
        credentials: ClientCredentials,
        base_url: str,
        send: Send,
        retry_statuses: frozenset[int],
    ) -> None:
        self._credentials = credentials
        self._url = URL(base_url + credentials.path, encoded=False)
        self._send = send
        self._retry_statuses = retry_statuses

    async def get_token(self) -> AccessToken:
        """POST the keys; the token, or a `TokenError` that says whether to try again."""
        credentials = self._credentials
        body = _KeysBody(
            json.dumps(
                {"accessKey": credentials.access_key, "secretKey": credentials.secret_key}
            ).encode()
        )
        outcome = await self._send(self._url, {**_JSON_HEADERS}, body)
        return self._token(outcome)

    def _token(self, outcome: Outcome) -> AccessToken:
        if outcome.kind is None:
            try:
                return parse_auth_response(outcome.body)
            except ValueError as exc:
                # A 200 whose body could not be read at all (cut short, empty) may just have
                # been unlucky; one that says something other than a token will say it again.
                raise TokenError(str(exc), retryable=outcome.body is None) from None
        message = outcome.message
        for secret in (self._credentials.secret_key, self._credentials.access_key):
            message = message.replace(secret, "***")
        if outcome.http_status in AUTH_REJECTED_STATUSES:
            raise TokenError(
                f"Klavi rejected the access key (HTTP {outcome.http_status}: {message})",
                retryable=False,
            )
        retryable = outcome.kind in RETRYABLE_KINDS or attempt_retryable(
            outcome.kind, outcome.http_status, outcome.refused, self._retry_statuses
        )
        raise TokenError(
            f"the auth endpoint failed ({outcome.kind.value}: {message})", retryable=retryable
        )


class OwnToken:
    """
    One call's own token, for single-use credentials.  Strictly private.

    The same `peek`/`get`/`invalidate` as `TokenCache`, for one call alone: fetched on
    first use from the client's provider (`TokenCache.produce`, cached nowhere else), in
    the call's own task, so concurrent calls fetch concurrently and a cancelled call
    cancels its fetch.  Dropped after a 401, or when it is about to expire.
    """

    __slots__ = ("_cache", "_clock", "_expires_at", "_token")

    def __init__(self, cache: TokenCache, clock: Callable[[], float]) -> None:
        self._cache = cache
        self._clock = clock
        self._token: Bearer | None = None
        self._expires_at = 0.0

    def peek(self) -> Bearer | None:
        """This call's token while it may still be used; None otherwise."""
        if self._token is not None and self._clock() >= self._expires_at:
            self._token = None
        return self._token

    async def get(self) -> Bearer:
        """This call's token, fetching a new one when it has none."""
        token = self.peek()
        if token is None:
            try:
                token, lifetime = await self._cache.produce()
            except ClientClosedError:
                raise  # the client closed under the fetch: nothing to warn about
            except Exception as exc:
                self._cache.failed(exc)
                raise
            self._token = token
            self._expires_at = self._clock() + lifetime - min(MAX_MANDATORY_MARGIN, lifetime / 10)
        return token

    def invalidate(self, token: Bearer) -> None:
        """Drop *token* if it is still this call's (after a 401)."""
        if self._token == token:
            self._token = None


async def wait_for_token(
    tokens: TokenCache | OwnToken, remaining: float, deadline: float
) -> Bearer:
    """
    A token from the cache (or the call's own), waiting at most *remaining* seconds
    (the call's time left).

    Only this caller stops waiting: a shared fetch goes on for the others.
    """
    try:
        return await asyncio.wait_for(tokens.get(), max(remaining, 0.001))
    except TimeoutError:
        raise TokenError(
            f"the token provider gave no token within the call's deadline ({deadline:g} s)",
            retryable=True,
        ) from None


def replays(token: Bearer | None, outcome: Outcome, replayed: bool) -> bool:
    """Whether a 401 earns the one replay with a fresh token (never for `/auth` itself)."""
    return token is not None and outcome.kind is ErrorKind.UNAUTHORIZED and not replayed


def auth_failure(exc: Exception) -> tuple[Outcome, bool]:
    """The outcome of a call whose token could not be had, and whether it is retryable."""
    if isinstance(exc, TokenError):
        message, retryable = exc.message, exc.retryable
    else:
        message = f"the token provider raised {type(exc).__name__}"
        retryable = provider_error_retryable(exc)
    return Outcome(ErrorKind.AUTHENTICATION_FAILED, None, message=message), retryable


def _parse_expire(value: object) -> datetime | None:
    number = number_or_none(value)
    if number is not None:
        if number > 1e11:  # epoch milliseconds
            number /= 1000.0
        try:
            return datetime.fromtimestamp(number, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return None


def parse_auth_response(body: Any) -> AccessToken:
    """
    Read Klavi's auth response: `accessToken` plus `expireIn` or `expire`.

    `expireIn` is seconds (a number or a numeric string); `expire` an ISO time or epoch
    seconds (or milliseconds).  Raises `ValueError` when no usable token is present; the
    message never holds the token.
    """
    if not isinstance(body, dict):
        raise ValueError("the auth response is not a JSON object")
    token = body.get("accessToken")
    if not isinstance(token, str) or not token.strip():
        raise ValueError("the auth response has no accessToken")
    try:
        expire_in = number_or_none(body.get("expireIn"))
        if expire_in is not None:
            return AccessToken(token.strip(), expires_in=expire_in)
        return AccessToken(token.strip(), expires_at=_parse_expire(body.get("expire")))
    except ValueError:
        raise ValueError("the auth response's accessToken is not a usable token") from None
