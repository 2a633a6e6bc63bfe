"""cancel_many hardening: misuse after good items, workers started only as input arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator
from typing import Any

import pytest

from klavi_async import CancelRequest, KlaviClient, RetryPolicy

from .conftest import CPF, TOKEN, ServerFactory, no_sdk_tasks
from .fakes import CANCEL, Reply, ScriptedKlavi

FAST = RetryPolicy(initial_backoff=0, jitter=False)


def client_for(base: str) -> KlaviClient:
    return KlaviClient(TOKEN, base_url=base, retry=FAST)


class TaskCounter:
    """A task factory that counts the batch worker tasks created and how many are alive."""

    def __init__(self) -> None:
        self.created = 0
        self.alive = 0
        self.max_alive = 0

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        code = getattr(coro, "cr_code", None)
        if code is None or not code.co_filename.endswith("_batch.py"):
            return task  # the loopback server's own tasks
        self.created += 1
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, _: object) -> None:
        self.alive -= 1


async def test_a_wrong_item_after_good_ones_delivers_their_results_first(
    serve: ServerFactory,
) -> None:
    """The five cancels already applied server-side come back before the TypeError."""
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.05)})
    base = await fake.start(serve)
    items: list[Any] = [CancelRequest(f"p{i}", CPF) for i in range(5)]
    items.append(("p5", CPF))
    items.append(CancelRequest("p6", CPF))
    got: list[str] = []
    async with client_for(base) as client:
        with pytest.raises(TypeError, match="CancelRequest items, got tuple"):
            async for result in client.cancel_many(items, concurrency=8):
                got.append(result.payment_id)
                assert result.ok
    assert sorted(got) == [f"p{i}" for i in range(5)]
    assert len(fake.cancels()) == 5  # nothing after the wrong item was taken
    assert no_sdk_tasks()


async def test_a_request_with_non_string_fields_after_good_ones_delivers_them_first(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.05)})
    base = await fake.start(serve)

    async def source() -> AsyncIterator[CancelRequest]:
        for i in range(3):
            yield CancelRequest(f"p{i}", CPF)
        yield CancelRequest("p3", 52998224725)  # type: ignore[arg-type]

    got: list[str] = []
    async with client_for(base) as client:
        with pytest.raises(TypeError):
            async for result in client.cancel_many(source(), concurrency=8):
                got.append(result.payment_id)
    assert sorted(got) == ["p0", "p1", "p2"]
    assert len(fake.cancels()) == 3
    assert no_sdk_tasks()


async def test_a_huge_concurrency_over_one_item_starts_two_workers(serve: ServerFactory) -> None:
    """Workers start as input arrives: the items pulled plus one, not one per slot."""
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {})})
    base = await fake.start(serve)
    async with client_for(base) as client:
        await client.cancel_request(CancelRequest("warm", CPF))  # token, connection, pool
        counter = TaskCounter()
        loop = asyncio.get_running_loop()
        loop.set_task_factory(counter)
        try:
            results = [
                r async for r in client.cancel_many([CancelRequest("p1", CPF)], concurrency=200_000)
            ]
        finally:
            loop.set_task_factory(None)
    assert [r.ok for r in results] == [True]
    assert 1 <= counter.created <= 2
    assert counter.max_alive <= 2
    assert no_sdk_tasks()


async def test_workers_grow_with_the_input_up_to_concurrency(serve: ServerFactory) -> None:
    """A slow input keeps the task count at items pulled + 1; a fast one reaches the cap."""
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.05)})
    base = await fake.start(serve)
    pulled = 0

    async def trickle() -> AsyncIterator[CancelRequest]:
        nonlocal pulled
        for i in range(3):
            pulled += 1
            yield CancelRequest(f"t{i}", CPF)
            await asyncio.sleep(0.01)

    async with client_for(base) as client:
        await client.cancel_request(CancelRequest("warm", CPF))
        counter = TaskCounter()
        loop = asyncio.get_running_loop()
        loop.set_task_factory(counter)
        try:
            trickled = [r async for r in client.cancel_many(trickle(), concurrency=10_000)]
        finally:
            loop.set_task_factory(None)
        assert len(trickled) == 3
        # Tasks from the batch: at most one worker per item pulled, plus one.
        assert 1 <= counter.created <= pulled + 1
        many = [CancelRequest(f"m{i}", CPF) for i in range(40)]
        results = [r async for r in client.cancel_many(many, concurrency=8)]
    assert len(results) == 40 and all(r.ok for r in results)
    assert fake.max_in_flight == 8  # the workers did grow to the full concurrency
    assert no_sdk_tasks()


async def test_closing_a_batch_while_workers_grow_leaves_no_task(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.5)})
    base = await fake.start(serve)
    async with client_for(base) as client:
        batch = client.cancel_many(
            (CancelRequest(f"p{i}", CPF) for i in range(100)), concurrency=50
        )
        first = asyncio.ensure_future(anext(batch))
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await batch.aclose()
    assert no_sdk_tasks()
