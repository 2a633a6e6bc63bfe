"""Cancelling the caller's task at every await point: prompt, leak-free, not poisoning."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from klavi_async import CancelRequest, KlaviClient, RetryPolicy

from .conftest import CPF, TOKEN, ServerFactory, no_sdk_tasks
from .fakes import CANCEL, STATUS, Reply, ScriptedKlavi

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, jitter=False)


async def cancel_when(started: Callable[[], bool], work: Awaitable[Any]) -> float:
    """Run *work* as a task, cancel it once *started()* holds; return how long it took to end."""
    task = asyncio.ensure_future(work)
    for _ in range(500):
        if started() or task.done():
            break
        await asyncio.sleep(0.005)
    assert not task.done(), "the work ended before reaching the await point"
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - began


def acquired(client: KlaviClient) -> int:
    session = client._transport.session
    if session is None or session.connector is None:
        return 0
    return len(session.connector._acquired)  # type: ignore[attr-defined]


async def check_client_is_healthy(client: KlaviClient) -> None:
    assert no_sdk_tasks()
    assert acquired(client) == 0
    follow_up = await client.cancel_payment("after", cancelled_by=CPF)
    assert follow_up.ok
    await asyncio.wait_for(client.aclose(), 2.0)
    assert no_sdk_tasks()


async def test_during_token_fetch(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    fetching = asyncio.Event()
    release = asyncio.Event()

    fetched = asyncio.Event()

    async def provider() -> str:
        fetching.set()
        await release.wait()
        fetched.set()
        return TOKEN

    client = KlaviClient(provider, base_url=base, retry=FAST)
    took = await cancel_when(fetching.is_set, client.cancel_payment("p1", cancelled_by=CPF))
    assert took < 0.5
    release.set()  # the shared fetch goes on and caches its token: the cache is not poisoned
    # The fetch outlived the cancelled caller: it was still in flight, and it ends.
    await asyncio.wait_for(fetched.wait(), 1.0)
    await check_client_is_healthy(client)
    assert client.token_fetches == 1


class SlowResolver(AbstractResolver):
    def __init__(self) -> None:
        self.resolving = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.resolving = True
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


async def test_during_connect(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    resolver = SlowResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        slow = KlaviClient(TOKEN, base_url=base.replace("127.0.0.1", "localhost"), session=session)
        took = await cancel_when(
            lambda: resolver.resolving, slow.cancel_payment("p1", cancelled_by=CPF)
        )
        assert took < 0.5
        await slow.aclose()
        assert not session.closed
    client = KlaviClient(TOKEN, base_url=base, retry=FAST)
    await check_client_is_healthy(client)


async def test_while_awaiting_the_response(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(200, delay=30))
    base = await fake.start(serve)
    client = KlaviClient(TOKEN, base_url=base, retry=FAST)
    took = await cancel_when(lambda: bool(fake.seen), client.cancel_payment("p1", cancelled_by=CPF))
    assert took < 0.5
    await check_client_is_healthy(client)


async def test_while_reading_the_body(serve: ServerFactory) -> None:
    sent_headers = asyncio.Event()

    async def cancel(request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] == "after":
            return web.json_response({})
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"status": ')
        sent_headers.set()
        await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    base = await serve(app)
    client = KlaviClient(TOKEN, base_url=base, retry=FAST)
    took = await cancel_when(sent_headers.is_set, client.cancel_payment("p1", cancelled_by=CPF))
    assert took < 0.5
    await check_client_is_healthy(client)


async def test_during_backoff(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503, headers={"Retry-After": "20"}))
    base = await fake.start(serve)
    client = KlaviClient(TOKEN, base_url=base, retry=RetryPolicy(deadline=60))
    took = await cancel_when(lambda: bool(fake.seen), client.cancel_payment("p1", cancelled_by=CPF))
    assert took < 0.5
    assert len(fake.cancels()) == 1
    await check_client_is_healthy(client)


async def test_during_the_reconciliation_read(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(409)).on(STATUS, Reply(200, delay=30))
    base = await fake.start(serve)
    client = KlaviClient(TOKEN, base_url=base, retry=FAST)
    took = await cancel_when(
        lambda: bool(fake.requests(method="GET")), client.cancel_payment("p1", cancelled_by=CPF)
    )
    assert took < 0.5
    await check_client_is_healthy(client)


async def test_the_task_consuming_cancel_many(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=30)})
    base = await fake.start(serve)
    client = KlaviClient(TOKEN, base_url=base, retry=FAST)

    async def consume() -> None:
        async for _ in client.cancel_many(
            (CancelRequest(f"p{i}", CPF) for i in range(100)), concurrency=8
        ):
            pass

    took = await cancel_when(lambda: len(fake.seen) >= 8, consume())
    assert took < 0.5
    fake.default[CANCEL] = Reply(200, {})
    await check_client_is_healthy(client)
