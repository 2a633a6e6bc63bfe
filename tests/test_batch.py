"""cancel_many: bounded concurrency, one result per input, lazy input, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from klavi_async import (
    CancelFailed,
    CancelRequest,
    ClientClosedError,
    ErrorKind,
    KlaviClient,
    RetryPolicy,
    _batch,
)

from .conftest import CNPJ, CPF, TOKEN, ServerFactory, no_sdk_tasks
from .fakes import CANCEL, Reply, ScriptedKlavi

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, jitter=False)


def client_for(base: str, **kwargs: object) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    return KlaviClient(TOKEN, base_url=base, **kwargs)  # type: ignore[arg-type]


def no_other_tasks() -> bool:
    return no_sdk_tasks()


async def test_one_result_per_input_including_invalid(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.005)})
    base = await fake.start(serve)
    requests = [CancelRequest(f"p{i}", CPF if i % 2 else CNPJ) for i in range(40)]
    requests += [
        CancelRequest("bad id!", CPF),
        CancelRequest("p-bad-doc", "529.982.247-26"),
        CancelRequest("p-bad-type", CPF, identifier_type="CNPJ"),
        CancelRequest("p-bad-key", CPF, idempotency_key=" spaced "),
    ]
    async with client_for(base) as client:
        results = [r async for r in client.cancel_many(requests, concurrency=8)]
    assert Counter(r.payment_id for r in results) == Counter(r.payment_id for r in requests)
    invalid = [r for r in results if isinstance(r, CancelFailed)]
    assert {r.payment_id for r in invalid} == {"bad id!", "p-bad-doc", "p-bad-type", "p-bad-key"}
    assert all(r.kind is ErrorKind.INVALID_REQUEST and r.attempts == 0 for r in invalid)
    assert len(fake.cancels()) == 40
    assert fake.max_in_flight <= 8
    assert no_other_tasks()


async def test_results_come_in_completion_order(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(200, delay=0.2), Reply(200, delay=0.01))
    base = await fake.start(serve)
    async with client_for(base) as client:
        order = [
            r.payment_id
            async for r in client.cancel_many(
                [CancelRequest("slow", CPF), CancelRequest("fast", CPF)], concurrency=2
            )
        ]
    assert order == ["fast", "slow"]


async def test_async_input_is_pulled_lazily(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.01)})
    base = await fake.start(serve)
    pulled = 0

    async def source() -> AsyncIterator[CancelRequest]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield CancelRequest(f"p{i}", CPF)

    async with client_for(base) as client:
        batch = client.cancel_many(source(), concurrency=4)
        first = await anext(batch)
        assert first.ok
        assert pulled <= 2 * 4 + 1  # in flight plus not taken: twice concurrency
        await batch.aclose()
    assert pulled <= 2 * 4 + 2
    assert no_other_tasks()


async def test_one_at_a_time_sends_nothing_after_the_result_that_stops_the_loop(
    serve: ServerFactory,
) -> None:
    # concurrency=1 keeps one slot: the next cancel waits for the result to be taken, so
    # "stop at the first failure" sends nothing more (with two slots p1 reached Klavi).
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {})})
    fake.on(CANCEL, Reply(422, {"errors": [{"code": "NAO_INFORMADO"}]}))
    base = await fake.start(serve)
    seen = []
    async with client_for(base) as client:
        batch = client.cancel_many([CancelRequest(f"p{i}", CPF) for i in range(5)], concurrency=1)
        async with contextlib.aclosing(batch) as results:
            async for result in results:
                seen.append(result.payment_id)
                await asyncio.sleep(0.05)  # the caller records it somewhere first
                if not result.ok:
                    break
    assert seen == ["p0"]
    assert [s.path.rsplit("/", 2)[1] for s in fake.cancels()] == ["p0"]
    assert no_other_tasks()


async def test_a_consumer_that_stops_taking_results_stops_the_batch(
    serve: ServerFactory,
) -> None:
    # At most `concurrency` requests in flight; in flight plus results not taken (the one
    # the consumer holds included, until it asks for the next) at most twice that: a
    # consumer that takes one result and stops holds the batch at 2C requests.
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.02)})
    base = await fake.start(serve)
    async with client_for(base) as client:
        batch = client.cancel_many((CancelRequest(f"p{i}", CPF) for i in range(100)), concurrency=3)
        assert (await anext(batch)).ok
        async with asyncio.timeout(10):
            while len(fake.cancels()) < 2 * 3:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # fifteen round trips: none more is sent
        assert len(fake.cancels()) == 2 * 3
        assert fake.max_in_flight <= 3
        taken = [(await anext(batch)).payment_id for _ in range(2 * 3)]
        assert len(set(taken)) == 6  # the waiting results, each once, then one more
        await batch.aclose()
    assert no_other_tasks()


async def test_aclose_cancels_work_in_flight_and_leaves_no_task(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=1.0)})
    fake.on(CANCEL, Reply(200, {}))
    base = await fake.start(serve)
    async with client_for(base) as client:
        batch = client.cancel_many((CancelRequest(f"p{i}", CPF) for i in range(100)), concurrency=5)
        first = await anext(batch)
        assert first.ok
        while len(fake.seen) < 5:
            await asyncio.sleep(0.005)
        await batch.aclose()
        assert no_other_tasks()
        assert (await client.cancel_payment("after", cancelled_by=CPF)).payment_id == "after"


async def test_breaking_out_with_aclosing_cleans_up(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.01)})
    base = await fake.start(serve)
    seen = 0
    async with client_for(base) as client:
        async with contextlib.aclosing(
            client.cancel_many([CancelRequest(f"p{i}", CPF) for i in range(50)], concurrency=10)
        ) as batch:
            async for _ in batch:
                seen += 1
                if seen == 3:
                    break
        assert no_other_tasks()
    assert seen == 3


async def test_breaking_out_without_aclosing_cleans_up_when_dropped(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.05)})
    base = await fake.start(serve)
    async with client_for(base) as client:
        async for _ in client.cancel_many(
            [CancelRequest(f"p{i}", CPF) for i in range(50)], concurrency=10
        ):
            break
        for _ in range(50):  # the loop's async-generator finaliser runs aclose() soon
            if no_other_tasks():
                break
            await asyncio.sleep(0.01)
        assert no_other_tasks()


async def test_client_aclose_cancels_a_running_batch(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=1.0)})
    base = await fake.start(serve)
    client = client_for(base)
    batch = client.cancel_many([CancelRequest(f"p{i}", CPF) for i in range(20)], concurrency=4)
    consumer = asyncio.create_task(anext(batch))
    while len(fake.seen) < 4:
        await asyncio.sleep(0.005)
    await client.aclose()
    with pytest.raises(ClientClosedError, match="closed while cancel_many"):
        await consumer
    await batch.aclose()
    assert no_other_tasks()


async def test_input_errors_surface_after_in_flight_results(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.01)})
    base = await fake.start(serve)

    async def source() -> AsyncIterator[CancelRequest]:
        yield CancelRequest("p1", CPF)
        yield CancelRequest("p2", CPF)
        raise OSError("input file vanished")

    got: list[str] = []
    async with client_for(base) as client:
        with pytest.raises(OSError, match="vanished"):
            async for result in client.cancel_many(source(), concurrency=4):
                got.append(result.payment_id)
    assert sorted(got) == ["p1", "p2"]
    assert no_other_tasks()


async def test_wrong_item_type_is_misuse(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    async with client_for(base) as client:
        with pytest.raises(TypeError, match="CancelRequest"):
            async for _ in client.cancel_many([CancelRequest("p1", CPF), ("p2", CPF)]):  # type: ignore[list-item]
                pass
        with pytest.raises(TypeError):
            async for _ in client.cancel_many(42):  # type: ignore[arg-type]
                pass
        with pytest.raises(ValueError, match="concurrency"):
            client.cancel_many([], concurrency=0)
        with pytest.raises(TypeError, match="concurrency"):
            client.cancel_many([], concurrency="8")  # type: ignore[arg-type]
    assert no_other_tasks()


async def test_batch_shares_token_cache_and_budget(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return TOKEN

    async with KlaviClient(provider, base_url=base, retry=FAST) as client:
        results = [
            r
            async for r in client.cancel_many(
                [CancelRequest(f"p{i}", CPF) for i in range(200)], concurrency=50
            )
        ]
        stats = client.retry_budget.stats()
    assert calls == 1
    assert len(results) == 200
    assert stats.total_first_attempts == 200
    assert len(fake.cancels()) <= 200 + 0.2 * 200 + 100


async def test_empty_input_yields_nothing(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    async with client_for(base) as client:
        assert [r async for r in client.cancel_many([])] == []


async def test_automatic_requests_route_by_consent(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with client_for(base) as client:
        results = [
            r
            async for r in client.cancel_many(
                [CancelRequest("p1", CPF, consent_id="c1"), CancelRequest("p2", CPF)]
            )
        ]
    assert all(r.ok for r in results)
    assert sorted(s.path for s in fake.seen) == [
        "/payment/customer/v1/automatic/consents/c1/payments/p1/cancel",
        "/payment/customer/v1/instant/payments/p2/cancel",
    ]


async def test_a_sync_generator_input_is_closed_with_the_batch(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.01)})
    base = await fake.start(serve)
    closed = False

    def source() -> Iterator[CancelRequest]:
        nonlocal closed
        try:
            for i in range(1000):
                yield CancelRequest(f"p{i}", CPF)
        finally:
            closed = True

    async with client_for(base) as client:
        batch = client.cancel_many(source(), concurrency=4)
        assert (await anext(batch)).ok
        await batch.aclose()
    assert closed
    assert no_other_tasks()


async def test_a_source_that_suspends_serves_one_worker_at_a_time(serve: ServerFactory) -> None:
    """Workers queue behind a suspended anext(); every item is pulled and cancelled once."""
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {})})
    base = await fake.start(serve)
    inside = 0
    most_inside = 0

    async def source() -> AsyncIterator[CancelRequest]:
        nonlocal inside, most_inside
        for i in range(60):
            inside += 1
            most_inside = max(most_inside, inside)
            await asyncio.sleep(0.001 if i % 3 else 0)  # suspends inside anext()
            inside -= 1
            yield CancelRequest(f"p{i}", CPF)

    async with client_for(base) as client:
        ids = [r.payment_id async for r in client.cancel_many(source(), concurrency=16)]
    assert sorted(ids) == sorted(f"p{i}" for i in range(60))
    assert most_inside == 1
    assert Counter(s.path.split("/")[-2] for s in fake.cancels()) == Counter(ids)
    assert no_other_tasks()


async def test_closing_while_workers_wait_for_a_suspended_source(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {})})
    base = await fake.start(serve)
    release = asyncio.Event()
    pulled = 0

    async def source() -> AsyncIterator[CancelRequest]:
        nonlocal pulled
        yield CancelRequest("first", CPF)
        await release.wait()  # every other worker now waits behind this anext()
        pulled += 1
        yield CancelRequest("never", CPF)

    async with client_for(base) as client:
        batch = client.cancel_many(source(), concurrency=8)
        first = await anext(batch)
        assert first.payment_id == "first"
        await asyncio.sleep(0.01)
        await batch.aclose()
        assert no_other_tasks()
        assert pulled == 0
        release.set()
        assert (await client.cancel_payment("after", cancelled_by=CPF)).ok


async def test_a_suspending_source_hands_each_turn_to_one_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each finished pull wakes one waiting worker, not all of them (no thundering herd)."""

    async def source() -> AsyncIterator[CancelRequest]:
        for i in range(200):
            await asyncio.sleep(0)  # suspends inside every anext()
            yield CancelRequest(f"p{i}", CPF)

    pulls = _batch._Input(source())
    loop = asyncio.get_running_loop()
    created = 0
    create_future = loop.create_future

    def counting() -> asyncio.Future[Any]:
        nonlocal created
        created += 1
        return create_future()

    monkeypatch.setattr(loop, "create_future", counting)

    async def worker() -> list[str]:
        taken = []
        while (item := await pulls.next()) is not None:
            taken.append(item.payment_id)
        return taken

    taken = await asyncio.gather(*(worker() for _ in range(64)))
    assert sorted(i for part in taken for i in part) == sorted(f"p{i}" for i in range(200))
    # At most one wait per pull per worker; waking every waiter would create ~64 per pull.
    assert created <= 200 + 64
