"""Token providers, the token cache, single flight and 401 handling."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from klavi_async import (
    AccessToken,
    CancelFailed,
    Cancelled,
    ClientClosedError,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy,
    StaticToken,
)
from klavi_async._tokens import TokenCache, TokenError

from .conftest import ACCESS_KEY, CPF, SECRET_KEY, TOKEN, LeakGuard, ServerFactory
from .fakes import AUTH, CANCEL, Reply, ScriptedKlavi

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, jitter=False)


def jwt(exp: float) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256'})}.{part({'exp': exp, 'sub': 'x'})}.c2lnbmF0dXJl"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class CountingProvider:
    """Hands out tok-1, tok-2, ... and counts calls; can be made slow or failing."""

    def __init__(self, lifetime: float | None = 300.0, delay: float = 0.0) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.delay = delay
        self.fail_with: Exception | None = None

    async def get_token(self) -> AccessToken:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        return AccessToken(f"tok-{self.calls}", expires_in=self.lifetime)


def auth_app(counter: list[int], status: int = 200, delay: float = 0.0) -> web.Application:
    async def auth(request: web.Request) -> web.Response:
        counter.append(1)
        body = await request.json()
        assert body == {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            return web.json_response({"statusCode": status, "message": "nope"}, status=status)
        return web.json_response({"accessToken": TOKEN, "expireIn": "300"})

    async def cancel(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return web.json_response({})

    app = web.Application()
    app.router.add_post(AUTH, auth)
    app.router.add_post(CANCEL, cancel)
    return app


async def test_cold_cache_makes_one_auth_call_for_200_cancels(serve: ServerFactory) -> None:
    calls: list[int] = []
    base = await serve(auth_app(calls, delay=0.05))
    credentials = ClientCredentials(ACCESS_KEY, SECRET_KEY)
    async with KlaviClient(credentials, base_url=base, max_connections=200) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(200))
        )
        assert client.token_fetches == 1
    assert all(r.ok for r in results)
    assert len(calls) == 1


async def test_rejected_keys_fail_fast_and_are_not_retryable(serve: ServerFactory) -> None:
    calls: list[int] = []
    base = await serve(auth_app(calls, status=401))
    credentials = ClientCredentials(ACCESS_KEY, SECRET_KEY)
    async with KlaviClient(credentials, base_url=base, retry=FAST) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(50))
        )
    assert len(calls) == 1  # 401 from /auth is not retried, and 50 waiters share it
    for result in results:
        assert isinstance(result, CancelFailed)
        assert result.kind is ErrorKind.AUTHENTICATION_FAILED
        assert not result.retryable
        assert result.attempts == 0
        assert "rejected the access key" in result.message
        assert SECRET_KEY not in result.message


async def test_auth_endpoint_down_is_retried_then_retryable(serve: ServerFactory) -> None:
    calls: list[int] = []
    base = await serve(auth_app(calls, status=503))
    credentials = ClientCredentials(ACCESS_KEY, SECRET_KEY)
    async with KlaviClient(credentials, base_url=base, retry=FAST) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(100))
        )
    assert len(calls) == 4  # one provider call, retried by the policy; no storm
    assert all(
        isinstance(r, CancelFailed) and r.kind is ErrorKind.AUTHENTICATION_FAILED and r.retryable
        for r in results
    )


async def test_auth_response_without_token_is_a_failure(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(AUTH, Reply(200, {"token": "x"}))
    base = await fake.start(serve)
    async with KlaviClient(ClientCredentials(ACCESS_KEY, SECRET_KEY), base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED
    assert "accessToken" in result.message
    assert not result.retryable
    assert fake.cancels() == []


async def test_auth_posts_to_the_clients_own_base_url(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(AUTH, Reply(200, {"accessToken": TOKEN, "expire": "1999999999"}))
    base = await fake.start(serve)
    async with KlaviClient(ClientCredentials(ACCESS_KEY, SECRET_KEY), base_url=base) as client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    auth, cancel = fake.seen
    assert auth.path == AUTH
    assert "Authorization" not in auth.headers
    assert cancel.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_401_refreshes_once_and_replays(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(401), Reply(200))
    base = await fake.start(serve)
    provider = CountingProvider()
    async with KlaviClient(provider, base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert provider.calls == 2
    assert [s.headers["Authorization"] for s in fake.seen] == ["Bearer tok-1", "Bearer tok-2"]
    assert [a.token_refreshed for a in result.history] == [False, True]
    assert result.history[0].kind is ErrorKind.UNAUTHORIZED


async def test_second_401_is_unauthorized(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(401, {"message": "expired"})})
    base = await fake.start(serve)
    provider = CountingProvider()
    async with KlaviClient(provider, base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.UNAUTHORIZED
    assert not result.retryable
    assert result.attempts == 2
    assert provider.calls == 2


async def test_static_token_401_is_not_replayed(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(401)})
    base = await fake.start(serve)
    async with KlaviClient(StaticToken(TOKEN), base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.UNAUTHORIZED
    assert len(fake.seen) == 1  # the same token again would be refused again


async def test_concurrent_401s_share_one_refresh(serve: ServerFactory) -> None:
    revoked: set[str] = set()

    async def cancel(request: web.Request) -> web.Response:
        if request.headers["Authorization"].removeprefix("Bearer ") in revoked:
            return web.json_response({}, status=401)
        return web.json_response({})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    base = await serve(app)
    provider = CountingProvider(delay=0.02)
    async with KlaviClient(provider, base_url=base) as client:
        assert (await client.cancel_payment("warm", cancelled_by=CPF)).ok
        revoked.add("tok-1")  # the server revokes the cached token
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(50))
        )
    assert all(r.ok for r in results)
    assert provider.calls == 2  # tok-1, then one shared refresh for all 50 replays


async def test_provider_failure_fails_waiters_once_then_next_call_retries(
    serve: ServerFactory,
) -> None:
    base = await ScriptedKlavi().start(serve)
    provider = CountingProvider(delay=0.02)
    provider.fail_with = ConnectionError("vault unreachable")
    async with KlaviClient(provider, base_url=base) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(30))
        )
        assert provider.calls == 1
        assert all(
            isinstance(r, CancelFailed)
            and r.kind is ErrorKind.AUTHENTICATION_FAILED
            and r.retryable
            and "ConnectionError" in r.message
            and "vault" not in r.message
            for r in results
        )
        provider.fail_with = None
        assert (await client.cancel_payment("again", cancelled_by=CPF)).ok
        assert provider.calls == 2


async def test_provider_raising_a_plain_error_is_not_retryable(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)

    async def broken() -> str:
        raise KeyError("KLAVI_TOKEN")

    async with KlaviClient(broken, base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED
    assert not result.retryable


async def test_async_callable_provider_and_wrong_return_type(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)

    async def provider() -> str:
        return TOKEN

    async with KlaviClient(provider, base_url=base) as client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    assert fake.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"

    async def wrong() -> object:
        return 42

    async with KlaviClient(wrong, base_url=base) as client:  # type: ignore[arg-type]
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED
    assert "int" in result.message


async def test_cache_serves_until_margin_then_refreshes_in_background() -> None:
    clock = Clock()
    provider = CountingProvider(lifetime=100.0, delay=0.01)
    cache = TokenCache(provider, clock=clock)
    assert await cache.get() == "tok-1"
    clock.now += 49.0  # margin is min(300, 100 / 2) = 50 s
    assert cache.peek() == "tok-1"
    assert provider.calls == 1
    clock.now += 2.0  # inside the advisory window: served, refresh started
    assert await cache.get() == "tok-1"
    await asyncio.sleep(0.05)
    assert provider.calls == 2
    assert await cache.get() == "tok-2"
    clock.now += 100.0  # past the mandatory margin: callers wait for a fresh token
    assert cache.peek() is None
    assert await cache.get() == "tok-3"
    await cache.aclose()


async def test_failed_background_refresh_is_not_repeated_every_call() -> None:
    clock = Clock()
    provider = CountingProvider(lifetime=100.0)
    cache = TokenCache(provider, clock=clock)
    await cache.get()
    provider.fail_with = TokenError("auth down", retryable=True)
    clock.now += 60.0
    for _ in range(20):
        assert await cache.get() == "tok-1"
        await asyncio.sleep(0)
    assert provider.calls == 2  # one background attempt, then a pause
    clock.now += 10.0
    assert await cache.get() == "tok-1"
    await asyncio.sleep(0)
    assert provider.calls == 3
    await cache.aclose()


async def test_lifetime_from_jwt_exp_or_expires_at() -> None:
    clock = Clock()
    wall = time.time()
    token = jwt(wall + 100)

    async def from_jwt() -> str:
        return token

    cache = TokenCache(_callable(from_jwt), clock=clock, wall=lambda: wall)
    await cache.get()
    clock.now += 49.0
    assert cache.peek() == token
    assert cache._refresh_at == pytest.approx(50.0 + 50.0)

    at = datetime.now(UTC) + timedelta(seconds=1000)

    async def absolute() -> AccessToken:
        return AccessToken("opaque", expires_at=at)

    cache = TokenCache(_callable(absolute), clock=clock)
    await cache.get()
    assert cache._expires_at - clock.now == pytest.approx(990, abs=2)


async def test_unknown_lifetime_uses_a_short_default() -> None:
    clock = Clock()

    async def opaque() -> str:
        return "opaque-token"

    cache = TokenCache(_callable(opaque), clock=clock)
    await cache.get()
    assert cache._expires_at - clock.now == pytest.approx(54.0)  # 60 s minus 10 %


async def test_invalidate_drops_only_the_cached_token() -> None:
    provider = CountingProvider()
    cache = TokenCache(provider)
    await cache.get()
    cache.invalidate("some-older-token")
    assert cache.peek() == "tok-1"
    cache.invalidate("tok-1")
    assert cache.peek() is None
    assert await cache.get() == "tok-2"


async def test_caller_cancelled_during_fetch_does_not_poison_the_cache() -> None:
    provider = CountingProvider(delay=0.05)
    cache = TokenCache(provider)
    waiter = asyncio.create_task(cache.get())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await cache.get() == "tok-1"  # the shared fetch went on and cached its token
    assert provider.calls == 1


async def test_aclose_cancels_a_fetch_in_flight() -> None:
    provider = CountingProvider(delay=10.0)
    cache = TokenCache(provider)
    waiter = asyncio.create_task(cache.get())
    await asyncio.sleep(0.01)
    assert cache.refreshing
    await cache.aclose()
    assert not cache.refreshing  # cancelled (the provider would take 10 s), and forgotten
    # Nobody cancelled the waiter: the client closed under it, and it says so.
    with pytest.raises(ClientClosedError, match="closed while a call waited for a token"):
        await waiter


async def test_token_fetch_failure_is_logged_without_secrets(leak_guard: LeakGuard) -> None:
    provider = CountingProvider()
    provider.fail_with = TokenError(
        "Klavi rejected the access key (HTTP 401: nope)", retryable=False
    )
    cache = TokenCache(provider)
    with pytest.raises(TokenError):
        await cache.get()
    (record,) = [r for r in leak_guard.records if getattr(r, "klavi_event", "") == "token_failed"]
    assert "rejected" in record.getMessage()


class _callable:
    def __init__(self, fn: object) -> None:
        self.fn = fn

    async def get_token(self) -> AccessToken | str:
        return await self.fn()  # type: ignore[operator, no-any-return]


async def test_a_hanging_provider_cannot_outlive_the_deadline(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    never = asyncio.Event()

    async def provider() -> str:
        await never.wait()
        return TOKEN

    policy = RetryPolicy(deadline=0.3)
    async with KlaviClient(provider, base_url=base, retry=policy) as client:
        started = time.monotonic()
        result = await client.cancel_payment("p1", cancelled_by=CPF)
        took = time.monotonic() - started
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED
    assert result.retryable
    assert "deadline" in result.message
    assert took < 3.0  # the deadline (0.3 s) bounds it, with room for a busy machine


async def test_an_auth_body_cut_short_is_retryable(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(AUTH, Reply(200, body=b""))
    base = await fake.start(serve)
    async with KlaviClient(ClientCredentials(ACCESS_KEY, SECRET_KEY), base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED
    assert result.retryable
