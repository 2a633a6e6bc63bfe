"""
The worker's pulls (`_consumer.Consumer`) and its records' first publish (`Settler._first`):
what the server answers, what is counted, what is handed back on a stop.

Against a real nats-server, with the server's status messages made by hand where the
server cannot be made to send them on cue.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from klavi_async import CancelRequest
from klavi_async.nats import REQUESTS_STREAM, RESULTS_SUBJECT, CancelWorker, enqueue
from klavi_async.nats._consumer import FETCH_TIMEOUT, Consumer, InProgress
from klavi_async.nats._decide import Action, Decision
from klavi_async.nats._settle import Settler, WorkerStats
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .helpers import emulator_client, records, wait_for_records


def status(code: str, description: str = "", pending: str | None = None) -> Any:
    headers = {"Status": code}
    if description:
        headers["Description"] = description
    if pending is not None:
        headers["Nats-Pending-Messages"] = pending
    return SimpleNamespace(headers=headers, data=b"", subject="_INBOX.x", reply="")


async def waiting(js: JetStreamContext, count: int) -> None:
    """Until the server holds *count* pull requests (it registers them asynchronously)."""
    for _ in range(500):
        if (await js.consumer_info(REQUESTS_STREAM, "klavi-cancel")).num_waiting == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never held {count} pulls")


async def handed_back(js: JetStreamContext, count: int, *, again: int) -> None:
    """Of *count* messages now delivered, *again* were handed back: at once, not after ack_wait."""
    sub = await js.pull_subscribe_bind(durable="klavi-cancel", stream=REQUESTS_STREAM)
    try:
        msgs: list[Any] = []
        while len(msgs) < count:
            msgs += await sub.fetch(count - len(msgs), timeout=5)
        assert sum(msg.metadata.num_delivered == 2 for msg in msgs) == again
    finally:
        await sub.unsubscribe()


async def opened(js: JetStreamContext, **kwargs: Any) -> Consumer:
    consumer = Consumer(js, REQUESTS_STREAM, "klavi-cancel", 30.0, **kwargs)
    await consumer.open()
    return consumer


async def test_a_pull_asks_only_for_the_free_slots_it_has_not_asked_for(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pulls that outlive a busy machine's enqueue: one expired meanwhile is asked again.
    monkeypatch.setattr("klavi_async.nats._consumer.FETCH_TIMEOUT", 5.0)
    consumer = await opened(js)
    try:
        await consumer.pull(8)
        await consumer.pull(8)  # the first pull's 8 are still to come: nothing more
        await consumer.pull(10)  # two more
        await waiting(js, 2)
        await enqueue(js, [CancelRequest(f"pay-{n}", CPF) for n in range(20)])
        taken: list[Any] = []
        while len(taken) < 10:  # ten slots, those taken busy: as the worker asks
            # (The messages may still be on their way to the consumer's inbox: a fetch
            # of more than the free slots would rightly ask for more.)
            taken += await consumer.fetch(10 - len(taken))
        await asyncio.sleep(0.1)  # one more delivery would show by now
        assert len(taken) == 10  # never more than asked for
        assert consumer.ready == 0
    finally:
        await consumer.close()


async def test_the_end_of_a_pull_is_counted_from_what_the_server_says(
    js: JetStreamContext,
) -> None:
    arrived: list[int] = []
    consumer = await opened(js, arrived=lambda: arrived.append(1))
    try:
        await consumer.pull(10)
        await consumer._receive(status("100", "Idle Heartbeat"))  # not asked for: nothing
        assert consumer._credit == 10 and not arrived
        await consumer._receive(status("408", "Request Timeout", pending="6"))
        assert consumer._credit == 4 and arrived  # the worker may ask again
        await consumer._receive(status("409", "Leadership Change", pending="4"))
        assert consumer._credit == 0 and consumer._failed is None  # ask again, no error
        await consumer.pull(3)
        await consumer._receive(status("408", "Request Timeout"))  # how many is not said
        assert consumer._credit == 0
        await consumer._receive(status("409", "Consumer Deleted"))
        assert consumer._failed == "409 Consumer Deleted"
        # The next pull looks into it first: the consumer is there, so it just pulls.
        await consumer.pull(2)
        assert consumer._failed is None and consumer._credit == 2
    finally:
        await consumer.close()


async def test_pulls_lost_unheard_of_are_written_off_once_the_server_has_seen_them(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull that ends on its own (its 408) before the checks below would end it: long.
    monkeypatch.setattr("klavi_async.nats._consumer.FETCH_TIMEOUT", 5.0)
    consumer = await opened(js)
    try:
        await consumer.pull(5)
        assert consumer._credit == 5
        # Past its expiry and unheard of (a reconnect or a leader change drops a pull
        # without a word): first the server is asked, which tells it holds every pull
        # sent; no pull meanwhile, in case one reaches it late and is served then.
        loop = asyncio.get_running_loop()
        consumer._lost_at = loop.time() - 0.01
        await consumer.pull(5)
        assert consumer._credit == 5 and consumer._seen
        await waiting(js, 1)
        # A pull's life later, what is still counted is gone: pulled for again.
        consumer._lost_at = loop.time() - 0.01
        await consumer.pull(5)
        assert consumer._credit == 5 and not consumer._seen
    finally:
        await consumer.close()


async def test_a_pull_before_open_is_a_bug() -> None:
    consumer = Consumer(SimpleNamespace(), REQUESTS_STREAM, "klavi-cancel", 30.0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="before open"):
        await consumer.pull(1)


async def test_a_stopping_worker_hands_back_what_it_pulled_and_did_not_start(
    js: JetStreamContext,
) -> None:
    # Messages delivered for free slots, not started when the stop came: naked at once
    # (no delay), so they go to another worker now rather than after ack_wait.
    in_progress = InProgress(30.0)
    consumer = await opened(js, in_progress=in_progress)
    try:
        await enqueue(js, [CancelRequest(f"pay-{n}", CPF) for n in range(5)])
        await consumer.pull(3)
        while consumer.ready < 3:
            await asyncio.sleep(0.01)
        assert len(in_progress._active) == 3  # told as in progress from their arrival
        assert await consumer.hand_back(in_progress, None) == 3
        assert not in_progress._active
        await handed_back(js, 5, again=3)
    finally:
        await consumer.close()


async def test_hand_back_waits_out_the_pulls_still_open(js: JetStreamContext) -> None:
    consumer = await opened(js, in_progress=InProgress(30.0))
    try:
        await consumer.pull(4)  # nothing queued: the pull waits on the server
        loop = asyncio.get_running_loop()
        start = loop.time()
        handing = asyncio.create_task(consumer.hand_back(InProgress(30.0), None))
        await enqueue(js, [CancelRequest("pay-late", CPF)])  # delivered to the open pull
        assert await handing == 1  # it came in time and went back
        # ... once the server ended the pull (else the nak would go straight back to it)
        assert consumer._credit == 0
        assert loop.time() - start < FETCH_TIMEOUT + 5
        await handed_back(js, 1, again=1)
    finally:
        await consumer.close()


async def test_a_worker_stopped_mid_queue_leaves_nothing_to_wait_out(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator(latency=0.05) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(60)]
        await enqueue(js, requests)
        async with emulator_client(emu) as client:
            worker = CancelWorker(client, js, concurrency=8)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await wait_for_records(js, 8)
            stop.set()
            await asyncio.wait_for(task, 30)
            naked = worker.stats.naked
            # Another worker finishes the rest long before ack_wait (30 s) would pass.
            rest = CancelWorker(client, js, concurrency=8, ack_wait=30.0)
            stop = asyncio.Event()
            task = asyncio.create_task(rest.run(stop))
            await wait_for_records(js, 60, timeout=20)
            stop.set()
            await asyncio.wait_for(task, 30)
    assert worker.stats.done + rest.stats.done == 60
    assert naked == rest.stats.redelivered  # the handed back, and no other, came back
    assert len(await records(js, RESULTS_SUBJECT)) == 60


async def test_the_first_publish_falls_back_to_the_careful_one(js: JetStreamContext) -> None:
    stats = WorkerStats()
    settler = Settler(js, stats, ack_wait=3.0, retry_delay=0.1)
    await settler.open()
    try:
        subject, record = f"{RESULTS_SUBJECT}.kc1-first", {"payment_id": "p", "ok": True}
        body = json.dumps(record).encode()
        assert await settler._first(subject, "id-1", body) is True
        assert await settler._first(subject, "id-1", body) is False  # the subject holds one
        assert await settler._first("nowhere.at.all", "id-2", body) is False  # no stream
        # No answer in time (here: none subscribed to hear it) ends in the careful publish.
        await settler._box.unsubscribe()  # type: ignore[union-attr]
        settler_timeout = Settler(js, stats, ack_wait=0.3, retry_delay=0.1)
        settler_timeout._box, settler_timeout._answers = settler._box, "_INBOX.nobody"
        assert await settler_timeout._first(f"{subject}-2", "id-3", body) is False
        assert not settler_timeout._waiting
        # settle() with a record already there: the careful publish says it stands.
        msg = SimpleNamespace(ack=_noop, term=_noop, nak=_noop)
        decision = Decision(Action.ACK, record=record, subject=subject, msg_id="id-1")
        await Settler(js, stats, ack_wait=3.0, retry_delay=0.1).settle(msg, decision, 1, "r")  # type: ignore[arg-type]
        assert stats.done == 1 and stats.duplicates == 1
    finally:
        settler._box = None


async def _noop(*args: Any, **kwargs: Any) -> None:
    return None


async def test_the_consumer_config_is_unchanged(js: JetStreamContext) -> None:
    consumer = await opened(js)
    await consumer.close()
    config: ConsumerConfig = (await js.consumer_info(REQUESTS_STREAM, "klavi-cancel")).config
    assert config.max_deliver == -1 and config.ack_wait == 30.0


async def test_a_worker_runs_again_after_a_stop_and_after_a_failed_start(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, concurrency=4)
        for batch in range(2):
            await enqueue(js, [CancelRequest(emu.add_payment(), CPF) for _ in range(6)])
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            await wait_for_records(js, 6 * (batch + 1))
            stop.set()
            await asyncio.wait_for(task, 30)
        assert worker.stats.done == 12
        nowhere = CancelWorker(client, js, stream="NO_SUCH_STREAM")
        for _ in range(2):  # the same error again, not "already running"
            with pytest.raises(nats.js.errors.NotFoundError):
                await nowhere.run(asyncio.Event())
