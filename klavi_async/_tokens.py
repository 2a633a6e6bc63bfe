"""
Token providers and the token cache in front of them.

A provider produces bearer tokens; the cache decides when to ask it.  The cache:

- serves the cached token while it is fresh (checked on a monotonic clock, on demand:
  no background timer);
- inside the refresh margin (`min(300 s, lifetime / 2)` before expiry) it starts one
  refresh in the background and keeps serving the still-valid token;
- past that (the last `min(10 s, lifetime / 10)`), callers wait for the refresh;
- runs at most one provider call at a time, however many callers wait (single flight);
  a failure fails the callers waiting on it, once, and the next call tries again;
- on a 401, `invalidate(token)` drops the token only if it is still the cached one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from attrs import field, frozen

from ._errors import ClientClosedError
from ._events import WARNING, Events, TokenFailed, TokenRefreshed
from ._logging import default_events

__all__ = [
    "AccessToken",
    "Bearer",
    "ClientCredentials",
    "StaticToken",
    "TokenCache",
    "TokenError",
    "TokenProvider",
    "as_provider",
    "jwt_expiry",
]

DEFAULT_LIFETIME = 60.0
"""Seconds a token is trusted when neither the provider nor the JWT says otherwise."""
MAX_REFRESH_MARGIN = 300.0
MAX_MANDATORY_MARGIN = 10.0
ADVISORY_RETRY_DELAY = 5.0
"""After a failed background refresh, wait this long before trying another one."""


def _non_empty(_: object, __: object, value: str) -> None:
    given: object = value
    if not isinstance(given, str) or not value.strip():
        raise ValueError("a token must be a non-empty string")
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("a token must not contain line breaks or NUL characters")


@frozen
class AccessToken:
    """
    A bearer token and how long it lives.

    Give `expires_in` (seconds from now) or `expires_at` (an aware datetime); with
    neither, the JWT's `exp` claim is used, else a short default lifetime (60 s).
    """

    token: str = field(repr=False, validator=_non_empty)
    expires_in: float | None = None
    expires_at: datetime | None = None


@runtime_checkable
class TokenProvider(Protocol):
    """Anything with `async get_token()` returning a token string or an `AccessToken`."""

    async def get_token(self) -> AccessToken | str:
        """Produce a token; raise on failure (the cancel then ends AUTHENTICATION_FAILED)."""
        ...


@frozen
class StaticToken:
    """A fixed token that never expires by itself (a 401 still ends the call UNAUTHORIZED)."""

    token: str = field(repr=False, validator=_non_empty)

    async def get_token(self) -> AccessToken:
        """Return the token with an infinite lifetime."""
        return AccessToken(self.token, expires_in=math.inf)


def _show_key(key: str) -> str:
    return f"{key[:4]}..." if len(key) > 8 else "***"


def _bool(_: object, attribute: Any, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, got {type(value).__name__}")


@frozen
class ClientCredentials:
    """
    Klavi's access key and secret key, exchanged for tokens at `{base}/payment/customer/v1/auth`.

    The client that receives it posts to its own base URL over its own session, through
    its retry policy and budget.  The secret key never appears in a repr, log or message.

    With *single_use*, each call (a cancel with its retries and its status read) fetches a
    token of its own and never shares it: for an account whose tokens serve one payment
    initiation.  The fetches of concurrent calls run concurrently.
    """

    access_key: str = field(repr=_show_key, validator=_non_empty)
    secret_key: str = field(repr=False, validator=_non_empty)
    single_use: bool = field(default=False, validator=_bool)
    path: str = field(default="/payment/customer/v1/auth", kw_only=True)


class Bearer:
    """
    A token as the cache hands it out: its repr and str never show it.  Strictly private.

    The cache's fetch task returns one (asyncio's debug mode prints a task's result), and
    callers keep it in their frames instead of the bare string (error reporters capture
    locals).  `header` is the `Authorization` value the transport sends; `raw` the token's
    bytes, for scrubbing an echo from a response.  Equal to another `Bearer` or to the
    token string with the same value.
    """

    __slots__ = ("header", "raw", "value")

    def __init__(self, value: str) -> None:
        self.value = value
        self.header = f"Bearer {value}"
        self.raw = value.encode()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Bearer):
            return other.value == self.value
        if isinstance(other, str):
            return other == self.value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return "<token ***>"

    __str__ = __repr__


def _refusal(token: str) -> str | None:
    """Why *token* cannot go in an `Authorization` header, or None when it can."""
    if token.isascii() and token.isprintable():
        return None
    return "the token provider returned a token holding control or non-ASCII characters"


class TokenError(Exception):
    """
    A provider could not produce a token.  Strictly private.

    `retryable` is True when the auth endpoint failed transiently (5xx, timeout), False
    when it rejected the keys or answered nonsense.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class _CallableProvider:
    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], Awaitable[AccessToken | str]]) -> None:
        self._fn = fn

    async def get_token(self) -> AccessToken | str:
        return await self._fn()

    def __repr__(self) -> str:
        return f"<token callable {getattr(self._fn, '__qualname__', type(self._fn).__name__)}>"


def as_provider(value: object) -> TokenProvider | ClientCredentials:
    """Accept a provider, `ClientCredentials`, a token string or an async callable."""
    if isinstance(value, ClientCredentials | StaticToken):
        return value
    if isinstance(value, str):
        return StaticToken(value)
    if isinstance(value, TokenProvider):
        return value
    # An object whose __call__ is `async def` counts too (what tenacity and httpx accept).
    dunder_call = type(value).__call__ if callable(value) else None
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(dunder_call):
        return _CallableProvider(value)  # type: ignore[arg-type]
    if callable(value):
        raise TypeError(
            "token_provider must be an async callable (async def) taking no arguments; "
            f"{getattr(value, '__qualname__', type(value).__name__)} is not async"
        )
    raise TypeError(
        "token_provider must be a TokenProvider, ClientCredentials, a token string "
        f"or an async callable, got {type(value).__name__}"
    )


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim (epoch seconds) of a JWT, or None if it is not a JWT with one."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None


def _accept(produced: object) -> tuple[AccessToken | None, str]:
    """The provider's answer as an `AccessToken`, or None and why it is refused."""
    if isinstance(produced, str):
        try:
            access = AccessToken(produced)
        except ValueError as exc:  # a message of ours, without the token
            return None, f"the token provider returned an unusable token: {exc}"
    elif isinstance(produced, AccessToken):
        access = produced
    else:
        return None, (
            f"the token provider returned {type(produced).__name__}, not a str or AccessToken"
        )
    refusal = _refusal(access.token)
    if refusal is not None:
        return None, refusal
    return access, ""


class TokenCache:
    """
    The cache in front of one provider, shared by every call of one client.  Strictly private.

    `fetches` counts provider calls; `refreshing` says whether one is in flight.  Not
    thread-safe: one cache per event loop.
    """

    __slots__ = (
        "_advisory_after",
        "_clock",
        "_events",
        "_expires_at",
        "_inflight",
        "_provider",
        "_refresh_at",
        "_token",
        "_wall",
        "fetches",
    )

    def __init__(
        self,
        provider: TokenProvider,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        events: Events | None = None,
    ) -> None:
        self._provider = provider
        self._events = default_events() if events is None else events
        self._clock = clock
        self._wall = wall
        self._token: Bearer | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._advisory_after = 0.0
        self._inflight: asyncio.Task[Bearer] | None = None
        self.fetches = 0

    @property
    def refreshing(self) -> bool:
        """True while a provider call is in flight."""
        return self._inflight is not None

    def peek(self) -> Bearer | None:
        """The cached token if it may still be used, without waiting; None otherwise."""
        token = self._token
        if token is None:
            return None
        now = self._clock()
        if now < self._refresh_at:
            return token
        if now < self._expires_at:
            if self._inflight is None and now >= self._advisory_after:
                self._start()
            return token
        return None

    async def get(self) -> Bearer:
        """A usable token, fetching one (single flight) when needed."""
        token = self.peek()
        if token is not None:
            return token
        task = self._inflight or self._start()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # aclose() cancelled the fetch; nobody cancelled this caller.
                raise ClientClosedError(
                    "the client was closed while a call waited for a token"
                ) from None
            raise

    def invalidate(self, token: Bearer) -> None:
        """Drop *token* if it is still the cached one (after a 401)."""
        if self._token == token:
            self._token = None

    async def aclose(self) -> None:
        """Cancel a fetch in flight and wait for it to end."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start(self) -> asyncio.Task[Bearer]:
        task = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight = task
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Bearer]) -> None:
        if self._inflight is task:
            self._inflight = None
        if task.cancelled():
            return
        error = task.exception()  # also marks it retrieved when nobody waited
        if error is not None and not isinstance(error, ClientClosedError):
            self._advisory_after = self._clock() + ADVISORY_RETRY_DELAY
            self.failed(error)

    async def _fetch(self) -> Bearer:
        token, lifetime = await self.produce()
        now = self._clock()
        self._token = token
        self._refresh_at = now + lifetime - min(MAX_REFRESH_MARGIN, lifetime / 2)
        self._expires_at = now + lifetime - min(MAX_MANDATORY_MARGIN, lifetime / 10)
        self._advisory_after = 0.0
        return token

    async def produce(self) -> tuple[Bearer, float]:
        """One provider call, cached nowhere: the token and its lifetime in seconds."""
        self.fetches += 1
        try:
            produced = await self._provider.get_token()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled (aclose(), a deadline)
            # Nobody cancelled us: the provider let a CancelledError of its own escape.
            raise TokenError("the token provider raised CancelledError", retryable=True) from None
        access, refusal = _accept(produced)
        del produced  # the bare token, when it was a string: not a local past this point
        if access is None:
            raise TokenError(refusal, retryable=False)
        lifetime = self._lifetime(access)
        if self._events.wants(TokenRefreshed.level):
            self._events.emit(TokenRefreshed(lifetime=lifetime))
        return Bearer(access.token), lifetime

    def failed(self, error: BaseException) -> None:
        """Report a failed fetch (a warning event)."""
        if self._events.wants(WARNING):
            message = error.message if isinstance(error, TokenError) else type(error).__name__
            self._events.emit(TokenFailed(message=message))

    def _lifetime(self, access: AccessToken) -> float:
        if access.expires_in is not None:
            lifetime = access.expires_in
        else:
            expiry = access.expires_at.timestamp() if access.expires_at else None
            if expiry is None:
                expiry = jwt_expiry(access.token)
            lifetime = DEFAULT_LIFETIME if expiry is None else expiry - self._wall()
        if math.isnan(lifetime):
            return DEFAULT_LIFETIME
        return max(lifetime, 1.0)
