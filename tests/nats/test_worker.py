"""`CancelWorker`, `enqueue` and `ensure_streams` against a real nats-server and the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from klavi_async import (
    CancelRequest,
    ClientCredentials,
    KlaviClient,
    RetryPolicy,
    deterministic_idempotency_key,
)
from klavi_async.nats import (
    DEAD_SUBJECT,
    REQUESTS_STREAM,
    REQUESTS_SUBJECT,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    CancelWorker,
    connect,
    enqueue,
    ensure_streams,
    request_message,
)
from klavi_async.testing import Fault, KlaviEmulator

from ..conftest import CPF, CPF_BARE, LeakGuard, no_sdk_tasks
from .conftest import NatsServer
from .helpers import emulator_client, queue_empty, records, silent_server, stored, wait_for_records

# Not a valid CPF (wrong check digits): the client rejects it before the network.
BAD_CPF = "529.982.247-26"


@contextlib.asynccontextmanager
async def running(*workers: CancelWorker) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)) for worker in workers]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


def payments(emu: KlaviEmulator, count: int) -> list[CancelRequest]:
    return [CancelRequest(emu.add_payment(), CPF) for _ in range(count)]


async def test_ensure_streams_creates_and_updates(js: JetStreamContext) -> None:
    requests = await js.stream_info(REQUESTS_STREAM)
    assert requests.config.retention is not None
    assert requests.config.retention == "workqueue"
    assert requests.config.storage is not None
    assert requests.config.storage == "file"
    assert requests.config.subjects == [REQUESTS_SUBJECT]
    results = await js.stream_info(RESULTS_STREAM)
    assert results.config.retention is not None
    assert results.config.retention == "limits"
    assert set(results.config.subjects or []) == {f"{RESULTS_SUBJECT}.>", f"{DEAD_SUBJECT}.>"}
    assert results.config.max_msgs_per_subject == 1
    assert results.config.duplicate_window == 120.0
    await ensure_streams(js, duplicate_window=300.0)
    assert (await js.stream_info(RESULTS_STREAM)).config.duplicate_window == 300.0
    with pytest.raises(ValueError, match="duplicate_window"):
        await ensure_streams(js, duplicate_window=0)


async def test_two_workers_cancel_every_request_once(js: JetStreamContext) -> None:
    async with KlaviEmulator() as emu:
        requests = payments(emu, 200)
        assert await enqueue(js, requests) == 200
        async with (
            emulator_client(emu) as one,
            emulator_client(emu) as two,
        ):
            first = CancelWorker(one, js, concurrency=8)
            second = CancelWorker(two, js, concurrency=8)
            async with running(first, second):
                await wait_for_records(js, 200)
        found = await records(js, RESULTS_SUBJECT)
        assert Counter(r["payment_id"] for r, _ in found) == Counter(r.payment_id for r in requests)
        assert all(r["ok"] for r, _ in found)
        assert all(emu.effects[r.payment_id] == 1 for r in requests)
        assert first.stats.done + second.stats.done == 200
        assert first.stats.done > 0
        assert second.stats.done > 0
        assert first.stats.in_flight == second.stats.in_flight == 0
        # Every cancel carried the deterministic key of its request.
        keys = {deterministic_idempotency_key(r.payment_id, CPF) for r in requests}
        assert {rec.idempotency_key for rec in emu.records("cancel")} == keys
        assert await queue_empty(js)
    assert no_sdk_tasks()


async def test_reenqueueing_the_same_requests_is_deduplicated(js: JetStreamContext) -> None:
    async with KlaviEmulator() as emu:
        requests = payments(emu, 30)
        requests.append(CancelRequest(emu.add_payment(), CPF, idempotency_key="caller-key-1"))
        assert await enqueue(js, requests) == 31
        dropped: list[CancelRequest] = []
        assert await enqueue(js, requests, on_duplicate=dropped.append) == 0
        assert dropped == requests
        assert await stored(js, REQUESTS_STREAM) == 31
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js)
            async with running(worker):
                await wait_for_records(js, 31)
        assert len(await records(js, RESULTS_SUBJECT)) == 31
        assert sum(emu.effects.values()) == 31
        assert len(emu.records("cancel")) == 31


async def test_request_message_carries_the_key_and_validates_types() -> None:
    body, headers = request_message(CancelRequest("pay-1", CPF))
    key = deterministic_idempotency_key("pay-1", CPF)
    assert headers == {"Nats-Msg-Id": key}
    assert json.loads(body) == {"payment_id": "pay-1", "cancelled_by": CPF, "idempotency_key": key}
    # A key that is not a valid header value never becomes one (the worker rejects it).
    _, headers = request_message(CancelRequest("pay-1", CPF, idempotency_key="a\r\nX: y"))
    assert headers == {}
    _, headers = request_message(CancelRequest("bad id!", CPF))
    assert headers == {}
    with pytest.raises(TypeError, match="CancelRequest"):
        request_message(("pay-1", CPF))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancelled_by"):
        request_message(CancelRequest("pay-1", 52998224725))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="consent_id"):
        request_message(CancelRequest("pay-1", CPF, consent_id=7))  # type: ignore[arg-type]


async def test_enqueue_publishes_what_came_before_a_bad_item(js: JetStreamContext) -> None:
    items: list[object] = [CancelRequest("pay-1", CPF), "not a request", CancelRequest("p2", CPF)]
    with pytest.raises(TypeError):
        await enqueue(js, items)  # type: ignore[arg-type]
    assert await stored(js, REQUESTS_STREAM) == 1


async def test_poison_messages_become_one_dead_letter_each(
    js: JetStreamContext, leak_guard: LeakGuard
) -> None:
    async with KlaviEmulator() as emu:
        leak_guard.add(BAD_CPF, "52998224726")
        await js.publish(REQUESTS_SUBJECT, b'{"payment_id": "p-1", "cancelled_by": ')
        await js.publish(REQUESTS_SUBJECT, json.dumps({"payment_id": "p-2"}).encode())
        await enqueue(js, [CancelRequest(emu.add_payment(), BAD_CPF)])
        await js.publish(REQUESTS_SUBJECT, b'"just a string"')
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js, retry_delay=0.1)
            async with running(worker):
                await wait_for_records(js, 4)
                await asyncio.sleep(0.3)  # a message that came back would show now
        dead = await records(js, DEAD_SUBJECT)
        assert sorted(r["reason"] for r, _ in dead) == [
            "bad_json",
            "invalid_request",
            "missing_field",
            "not_an_object",
        ]
        assert await records(js, RESULTS_SUBJECT) == []
        for record, raw in dead:
            assert record["deliveries"] == 1
            for secret in (BAD_CPF, "52998224726", CPF, CPF_BARE):
                assert secret.encode() not in raw
        assert worker.stats.dead == 4
        assert worker.stats.done == 0
        assert emu.records("cancel") == []
        assert await queue_empty(js)


async def test_a_503_is_naked_with_a_delay_and_ends_ok_with_one_record(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [503, 503, 503])
        await enqueue(js, [CancelRequest(payment_id, CPF)])
        async with emulator_client(emu, retry=RetryPolicy.disabled()) as client:
            worker = CancelWorker(client, js, retry_delay=0.3)
            async with running(worker):
                await wait_for_records(js, 1)
        [(record, _)] = await records(js, RESULTS_SUBJECT)
        assert record["ok"] is True
        assert record["deliveries"] == 4
        assert worker.stats.naked == 3
        assert worker.stats.redelivered == 3
        assert emu.effects[payment_id] == 1
        times = [r.time for r in emu.records("cancel")]
        assert len(times) == 4
        # Each redelivery waited for the nak's delay: none came back at once.
        assert all(later - earlier >= 0.25 for earlier, later in itertools.pairwise(times))


async def test_the_last_delivery_publishes_the_failure_and_terminates(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [503, 503, 503, 503])
        await enqueue(js, [CancelRequest(payment_id, CPF)])
        async with emulator_client(emu, retry=RetryPolicy.disabled()) as client:
            worker = CancelWorker(client, js, max_deliver=2, retry_delay=0.05)
            async with running(worker):
                await wait_for_records(js, 1)
                await asyncio.sleep(0.3)
        [(record, _)] = await records(js, RESULTS_SUBJECT)
        assert record["ok"] is False
        assert record["kind"] == "server_error"
        assert record["retryable"] is True
        assert record["deliveries"] == 2
        assert len(emu.records("cancel")) == 2
        assert worker.stats.done == 1
        assert await queue_empty(js)


async def test_a_record_already_published_before_a_crash_is_not_stored_twice(
    js: JetStreamContext,
) -> None:
    # A worker that died between publishing the record and acking leaves both behind.
    async with KlaviEmulator() as emu:
        request = CancelRequest(emu.add_payment(), CPF)
        await enqueue(js, [request])
        key = deterministic_idempotency_key(request.payment_id, CPF)
        earlier = json.dumps({"payment_id": request.payment_id, "ok": True}).encode()
        await js.publish(f"{RESULTS_SUBJECT}.{key}", earlier, headers={"Nats-Msg-Id": key})
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js)
            async with running(worker):
                while not await queue_empty(js):
                    await asyncio.sleep(0.02)
        assert [raw for _, raw in await records(js, RESULTS_SUBJECT)] == [earlier]
        assert worker.stats.duplicates == 1
        assert worker.stats.done == 1


@pytest.mark.slow
async def test_a_long_cancel_sends_in_progress_and_is_not_redelivered(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.latency(3.5)])  # over two ack_waits
        await enqueue(js, [CancelRequest(payment_id, CPF)])
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js, ack_wait=1.5, concurrency=4)
            async with running(worker):
                await wait_for_records(js, 1)
                await asyncio.sleep(1.6)  # past ack_wait again: nothing may come back
        [(record, _)] = await records(js, RESULTS_SUBJECT)
        assert record["deliveries"] == 1
        assert worker.stats.redelivered == 0
        assert len(emu.records("cancel")) == 1


async def test_refused_credentials_halt_the_worker_and_keep_the_message(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu:
        await enqueue(js, [CancelRequest(emu.add_payment(), CPF)])
        wrong = ClientCredentials(emu.access_key, "not-the-secret")
        async with KlaviClient(wrong, base_url=emu.url) as client:
            worker = CancelWorker(client, js, retry_delay=0.1)
            await asyncio.wait_for(worker.run(), timeout=10)
        assert worker.halted is not None
        assert "credentials" in worker.halted
        assert worker.stats.naked >= 1
        assert emu.auth_calls == 1  # later deliveries were handed back, not tried
        assert await stored(js) == 0
        assert await stored(js, REQUESTS_STREAM) == 1
        assert emu.records("cancel") == []


@pytest.mark.slow
async def test_a_server_restart_mid_batch_loses_nothing(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    async with KlaviEmulator(fault_rates={"latency": 0.3}, latency=0.02, seed=7) as emu:
        requests = payments(emu, 300)
        await enqueue(js, requests)
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js, concurrency=16, ack_wait=2.0)
            async with running(worker):
                while worker.stats.done < 100:
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(nats_server.restart)
                restarted_at = worker.stats.done
                await wait_for_records(js, 300, timeout=60)
                # Acks lost in the restart: those messages come back after ack_wait, are
                # cancelled again with the same key, and their records are dropped.
                async with asyncio.timeout(30):
                    while not await queue_empty(js):
                        await asyncio.sleep(0.05)
        assert restarted_at < 300
        assert await stored(js) == 300
        found = await records(js, RESULTS_SUBJECT)
        assert Counter(r["payment_id"] for r, _ in found) == Counter(r.payment_id for r in requests)
        assert all(r["ok"] for r, _ in found)
        assert max(emu.effects.values()) == 1
        assert all(emu.effects[r.payment_id] == 1 for r in requests)


def test_worker_arguments_are_checked() -> None:
    client = KlaviClient("token", base_url="http://127.0.0.1:1")
    js = object()
    for kwargs, error in (
        ({"concurrency": 0}, ValueError),
        ({"concurrency": 2.5}, TypeError),
        ({"max_deliver": True}, TypeError),
        ({"ack_wait": 0}, ValueError),
        ({"retry_delay": 0}, ValueError),
    ):
        with pytest.raises(error):
            CancelWorker(client, js, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="KlaviClient"):
        CancelWorker(object(), js)  # type: ignore[arg-type]
    worker = CancelWorker(client, js)  # type: ignore[arg-type]
    assert "concurrency=32" in repr(worker)
    assert "done 0" in repr(worker)


async def test_connect_to_nothing_fails_fast_and_leaves_nothing() -> None:
    from .conftest import quiet_port  # nothing listens there

    # Refused: at once (not after first_timeout).
    with pytest.raises(ConnectionRefusedError):
        await connect(f"nats://127.0.0.1:{quiet_port()}", first_timeout=30)
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    # Accepted, then silence (not a NATS server): after first_timeout.
    async with silent_server() as port:
        with pytest.raises(TimeoutError):
            await connect(f"nats://127.0.0.1:{port}", first_timeout=0.5)
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
