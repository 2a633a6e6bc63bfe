"""
The worker's pulls through broker faults: a restart and a freeze (SIGSTOP) longer than
a pull's life never make a worker hold more than its free slots, a clean stop after them
leaves nothing to wait out `ack_wait`, and a message is told from a status by its reply
subject.  Found by an attack on the pull accounting; real nats-server processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from nats.js import JetStreamContext

from klavi_async import CancelRequest
from klavi_async.nats import REQUESTS_SUBJECT, CancelWorker, enqueue, request_message
from klavi_async.nats._consumer import FETCH_TIMEOUT, Consumer, InProgress
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .conftest import NatsServer
from .helpers import emulator_client, stranded, wait_for_records
from .test_consumer import handed_back, opened
from .test_worker import running

OUTAGE = 4.0  # seconds: past a pull's life (FETCH_TIMEOUT) and its write-off (LOST_AFTER)


@contextlib.contextmanager
def frozen(nats_server: NatsServer) -> Iterator[None]:
    assert nats_server.process is not None
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)


async def outage(nats_server: NatsServer, kind: str, during: Any) -> None:
    """Stop (then start) or freeze (then thaw) the server while *during* runs."""
    if kind == "restart":
        await asyncio.to_thread(nats_server.stop)
        await during
        await asyncio.to_thread(nats_server.start)
    else:
        with frozen(nats_server):
            await during


async def loop_pulls(consumer: Consumer, slots: int, seconds: float) -> None:
    """What the worker's loop does with *slots* free: pull, wait, again."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await consumer.pull(slots)
        await asyncio.sleep(FETCH_TIMEOUT)


@pytest.mark.parametrize("kind", ["restart", "sigstop"])
async def test_pulls_through_an_outage_never_bring_more_than_the_free_slots(
    nats_server: NatsServer, js: JetStreamContext, kind: str
) -> None:
    # Before: a pull written off by the worker's clock alone was still in nats-py's
    # buffer (restart) or the frozen server's socket (SIGSTOP), and served afterwards:
    # 20 messages for 4 free slots.
    await enqueue(js, [CancelRequest(f"pay-{n}", CPF) for n in range(200)])
    consumer = await opened(js, in_progress=InProgress(30.0))
    try:
        await consumer.pull(4)
        while consumer.ready < 4:
            await asyncio.sleep(0.01)
        assert len(consumer.take(4)) == 4  # started and ended: 4 slots free again
        await outage(nats_server, kind, loop_pulls(consumer, 4, OUTAGE))
        await loop_pulls(consumer, 4, 3.0)  # none taken: count what comes
        assert consumer.ready == 4
    finally:
        await consumer.close()


async def test_a_clean_stop_after_a_restart_hands_back_everything(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    in_progress = InProgress(30.0)
    consumer = await opened(js, in_progress=in_progress)
    try:
        await outage(nats_server, "restart", loop_pulls(consumer, 4, OUTAGE))
        await loop_pulls(consumer, 4, 1.0)
        await enqueue(js, [CancelRequest(f"late-{n}", CPF) for n in range(4)])
        while consumer.ready < 4:
            await consumer.pull(4)
            await asyncio.sleep(0.01)
        assert await consumer.hand_back(in_progress, None) == 4
        await asyncio.sleep(0.2)
        assert consumer.ready == 0  # none came back to a pull of ours
    finally:
        await consumer.close()
    await handed_back(js, 4, again=4)


@pytest.mark.parametrize("kind", ["restart", "sigstop"])
async def test_a_worker_through_an_outage_holds_no_more_than_its_concurrency(
    nats_server: NatsServer, js: JetStreamContext, kind: str
) -> None:
    async with KlaviEmulator(latency=0.2) as emu, emulator_client(emu) as client:
        await enqueue(js, [CancelRequest(emu.add_payment(), CPF) for _ in range(200)])
        worker = CancelWorker(client, js, concurrency=4, ack_wait=2.0, retry_delay=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, worker._consumer.ready + worker.stats.in_flight)
                await asyncio.sleep(0.005)

        watching = asyncio.create_task(watch())
        try:
            while worker.stats.done < 8:
                await asyncio.sleep(0.01)
            await outage(nats_server, kind, asyncio.sleep(OUTAGE))
            await asyncio.sleep(2)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            watching.cancel()
    assert most <= 4  # in flight, and pulled for the free slots: never more than concurrency


async def test_a_clean_stop_after_a_restart_leaves_nothing_to_wait_out_ack_wait(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, concurrency=2, ack_wait=30.0)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.5)  # idle: pulling for its 2 free slots
        await outage(nats_server, "restart", asyncio.sleep(OUTAGE))
        await enqueue(js, [CancelRequest(emu.add_payment(), CPF) for _ in range(6)])
        while worker._consumer.ready == 0 and worker.stats.in_flight == 0:
            await asyncio.sleep(0)
        stop.set()  # a clean stop while pulls may be open
        await asyncio.wait_for(task, 30)
    assert await stranded(js) == 0  # every one could be had again at once


@pytest.mark.parametrize("status", ["200", "408"])
async def test_a_request_with_a_header_named_status_gets_its_record(
    js: JetStreamContext, status: str
) -> None:
    # A producer other than enqueue() (or a proxy) adds a header named Status: it was
    # taken for the server's status, and the message redelivered for ever.
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        body, headers = request_message(CancelRequest(emu.add_payment(), CPF))
        await js.publish(REQUESTS_SUBJECT, body, headers={**headers, "Status": status})
        worker = CancelWorker(client, js, concurrency=4, ack_wait=1.0)
        async with running(worker):
            await wait_for_records(js, 1, timeout=6)
        assert worker.stats.done == 1 and worker.stats.ok == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Status": "408", "Nats-Pending-Messages": "-1"},
        {"Status": "408", "Nats-Pending-Messages": "99999999999999999999"},
        {"Status": "408", "Nats-Pending-Messages": "abc"},
        {"Status": "409"},
        {"Status": "503"},
        {"Status": "100", "Nats-Pending-Messages": "4"},
        {"Status": "abc", "Description": ""},
    ],
)
async def test_odd_status_messages_do_not_stop_the_pulls(
    js: JetStreamContext, headers: dict[str, str]
) -> None:
    consumer = await opened(js, in_progress=InProgress(30.0))
    try:
        await consumer.pull(4)
        await js._nc.publish(consumer._inbox, b"", headers=headers)
        await js._nc.publish(consumer._inbox, b"junk", headers=headers)
        await js._nc.flush()
        await enqueue(js, [CancelRequest(f"pay-{n}", CPF) for n in range(20)])
        got: list[Any] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while len(got) < 8 and loop.time() < end:
            got += await consumer.fetch(4)
        assert len(got) >= 8, f"pulls stalled: {len(got)}"
        assert consumer.ready <= 4
    finally:
        await consumer.close()
