"""
`KlaviClient.with_options(retry=, timeout=)`: per-call options on what the client shares.

A web request's cancel with a short deadline beside a worker's with the defaults, in one
process, over one session, token cache, retry budget and rate limiter.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from contextlib import aclosing

import attrs
import pytest
from aiohttp import web

from klavi_async import (
    CancelFailed,
    CancelRequest,
    ClientClosedError,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy,
)

from .conftest import CPF, ServerFactory
from .fakes import AUTH, CANCEL, Reply, ScriptedKlavi

TOKEN = "tok-with-options"
FAST = RetryPolicy(initial_backoff=0, max_backoff=0, jitter=False)


async def test_a_short_deadline_for_one_call_beside_the_clients_own(
    serve: ServerFactory,
) -> None:
    # Klavi takes 0.6 s: the web request's view gives up after 0.2 s while the
    # worker's call, made on the client itself, waits for the answer.
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.6)})
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, timeout=5.0) as klavi:
        web_request = klavi.with_options(
            retry=RetryPolicy(max_attempts=1, deadline=0.2), timeout=0.2
        )
        quick, patient = await asyncio.gather(
            web_request.cancel_payment("p-web", cancelled_by=CPF),
            klavi.cancel_payment("p-worker", cancelled_by=CPF),
        )
        assert web_request.retry_policy.deadline == 0.2
        assert klavi.retry_policy.deadline == 30.0
    assert isinstance(quick, CancelFailed) and quick.kind is ErrorKind.TIMEOUT
    assert quick.attempts == 1
    assert patient.ok


async def test_a_views_retry_policy_is_its_own(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=attrs.evolve(FAST, max_attempts=3)) as klavi:
        once = await klavi.with_options(retry=attrs.evolve(FAST, max_attempts=1)).cancel_payment(
            "p1", cancelled_by=CPF
        )
        thrice = await klavi.cancel_payment("p2", cancelled_by=CPF)
    assert once.attempts == 1 and thrice.attempts == 3
    assert isinstance(once, CancelFailed) and once.kind is ErrorKind.SERVER_ERROR


async def test_a_view_shares_the_pool_tokens_budget_and_limiter(serve: ServerFactory) -> None:
    ports: list[int] = []

    def note_port(request: web.Request) -> Reply:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ports.append(peer[1] if peer else -1)
        return Reply(429, {}, headers={"Retry-After": "0"}) if len(ports) == 2 else Reply(200, {})

    fake = ScriptedKlavi()
    fake.on(AUTH, *[Reply(200, {"accessToken": "tok-1", "expireIn": 300})] * 5)
    fake.on(CANCEL, *[note_port] * 5)
    base = await fake.start(serve)
    credentials = ClientCredentials("access-key-1234", "secret-key-5678")
    async with KlaviClient(credentials, base_url=base, retry=FAST, max_connections=1) as klavi:
        view = klavi.with_options(timeout=3.0)
        assert (await klavi.cancel_payment("p1", cancelled_by=CPF)).ok
        assert (await view.cancel_payment("p2", cancelled_by=CPF)).ok  # 429, then 200
        assert view.retry_budget is klavi.retry_budget
        assert view.token_fetches == klavi.token_fetches == 1
        stats, view_stats = klavi.rate_limit_stats(), view.rate_limit_stats()
        assert stats is not None and stats.throttle_events == 1 and view_stats == stats
    assert len(fake.requests(AUTH)) == 1
    assert len(set(ports)) == 1  # one pooled connection served both


async def test_closing_the_client_closes_its_views_and_closing_a_view_nothing(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {})})
    base = await fake.start(serve)
    klavi = KlaviClient(TOKEN, base_url=base, retry=FAST)
    async with klavi.with_options(timeout=2.0) as view:
        assert (await view.cancel_payment("p1", cancelled_by=CPF)).ok
    assert view.closed is False and klavi.closed is False
    assert (await klavi.cancel_payment("p2", cancelled_by=CPF)).ok
    await klavi.aclose()
    assert view.closed
    with pytest.raises(ClientClosedError):
        await view.cancel_payment("p3", cancelled_by=CPF)
    with pytest.raises(ClientClosedError):
        klavi.with_options(timeout=1.0)
    assert "view timeout=2" in repr(view) and "state=closed" in repr(view)


async def test_closing_the_client_stops_a_views_batch(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=30)})
    base = await fake.start(serve)
    klavi = KlaviClient(TOKEN, base_url=base, retry=FAST)
    view = klavi.with_options(timeout=60.0)
    requests = [CancelRequest(f"p{i}", CPF) for i in range(4)]

    async def drain() -> list[object]:
        async with aclosing(view.cancel_many(requests, concurrency=4)) as results:
            return [r async for r in results]

    batch = asyncio.create_task(drain())
    while len(fake.cancels()) < 4:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(klavi.aclose(), 10)
    with pytest.raises((asyncio.CancelledError, ClientClosedError)):
        await asyncio.wait_for(batch, 10)


async def test_views_are_cheap_and_collected() -> None:
    klavi = KlaviClient(TOKEN, base_url="http://127.0.0.1:9")
    view = klavi.with_options(timeout=1.0)
    ref = weakref.ref(view)
    for _ in range(1000):
        klavi.with_options(timeout=1.0)
    del view
    gc.collect()
    assert ref() is None
    await klavi.aclose()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy"),
        ({"timeout": 0}, ValueError, "timeout must be > 0"),
        ({"timeout": float("nan")}, ValueError, "timeout must be > 0"),
        ({"timeout": True}, TypeError, "timeout must be a number"),
        ({"timeout": "3"}, TypeError, "timeout must be a number"),
    ],
)
async def test_bad_options_are_refused(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as klavi:
        with pytest.raises(error, match=message):
            klavi.with_options(**kwargs)  # type: ignore[arg-type]


async def test_a_view_of_a_view_is_closed_with_the_client(serve: ServerFactory) -> None:
    # Registered with the view it came from, a grandchild stayed open after aclose().
    base = await ScriptedKlavi(default={CANCEL: Reply(200, {})}).start(serve)
    klavi = KlaviClient(TOKEN, base_url=base, retry=FAST)
    grandchild = klavi.with_options(timeout=3.0).with_options(timeout=2.0)
    assert (await grandchild.cancel_payment("p1", cancelled_by=CPF)).ok
    await klavi.aclose()
    assert grandchild.closed
    with pytest.raises(ClientClosedError):
        await grandchild.cancel_payment("p2", cancelled_by=CPF)


async def test_a_timeout_no_float_can_hold_is_refused() -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as klavi:
        with pytest.raises(ValueError, match="timeout is too large"):
            klavi.with_options(timeout=10**400)
    with pytest.raises(ValueError, match="timeout is too large"):
        KlaviClient(TOKEN, timeout=10**400)
