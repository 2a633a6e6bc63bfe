"""
A stream an operator deletes under running workers: the worker makes again what it
needs (its consumer, the requests stream, the results stream), as a start makes them,
says so on stderr, and the requests queued after it are cancelled and recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError

from klavi_async import CancelRequest
from klavi_async.nats import (
    REQUESTS_STREAM,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    CancelWorker,
    enqueue,
    ensure_streams,
)
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .conftest import NatsServer
from .helpers import emulator_client, records, wait_for_records
from .test_operator import start_worker, stop_worker
from .test_poison import running


async def eventually(look: Callable[[], Awaitable[object]], failure: str) -> None:
    """Until *look* finds what it asks the server for (no `NotFoundError`), 30 s at most."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            await look()
            return
        except NotFoundError:
            assert time.monotonic() < deadline, failure
            await asyncio.sleep(0.05)


async def wait_until_exists(js: JetStreamContext, stream: str) -> None:
    await eventually(lambda: js.stream_info(stream), f"{stream} was never made again")


async def consuming(js: JetStreamContext) -> None:
    """Until the worker's consumer is there (the worker has started)."""
    await eventually(
        lambda: js.consumer_info(REQUESTS_STREAM, "klavi-cancel"), "the worker never started"
    )


def batch(emu: KlaviEmulator, n: int) -> list[CancelRequest]:
    return [CancelRequest(emu.add_payment(), CPF) for _ in range(n)]


async def test_a_deleted_requests_stream_is_made_again_with_the_consumer(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=2.0, retry_delay=0.1)
        async with running(worker):
            await enqueue(js, batch(emu, 10))
            await wait_for_records(js, 10)
            await js.delete_stream(REQUESTS_STREAM)  # the operator; nobody makes it again
            await wait_until_exists(js, REQUESTS_STREAM)  # the worker did
            later = batch(emu, 10)
            assert await enqueue(js, later) == 10
            await wait_for_records(js, 20)
    found = await records(js, RESULTS_SUBJECT)
    assert len(found) == 20 and all(record["ok"] for record, _ in found)
    assert all(emu.effects[request.payment_id] == 1 for request in later)


async def test_an_enqueue_into_a_deleted_stream_fails_at_once(js: JetStreamContext) -> None:
    # The server answers "no response from stream" as it does while a cluster elects a
    # leader; enqueue asks whether the stream is there before sending again for 30 s.
    await js.delete_stream(REQUESTS_STREAM)
    started = time.monotonic()
    with pytest.raises(NoStreamResponseError):
        await enqueue(js, [CancelRequest("pay-1", CPF)], patience=30)
    assert time.monotonic() - started < 15  # not the 30 s of patience (it was ~30 s)


async def test_a_requests_stream_made_again_by_an_enqueue_gets_the_consumer_back(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=2.0, retry_delay=0.1)
        async with running(worker):
            await consuming(js)
            await js.delete_stream(REQUESTS_STREAM)
            await ensure_streams(js)  # what `klavi-async enqueue` does first
            assert await enqueue(js, batch(emu, 10)) == 10
            await wait_for_records(js, 10)
    assert worker.stats.done == 10 and worker.stats.ok == 10


async def test_a_deleted_results_stream_is_made_again_and_the_records_go_on(
    js: JetStreamContext,
) -> None:
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=5.0, retry_delay=0.1)
        async with running(worker):
            await enqueue(js, batch(emu, 10))
            await wait_for_records(js, 10)
            await js.delete_stream(RESULTS_STREAM)  # the records so far go with it
            later = batch(emu, 10)
            await enqueue(js, later)
            await wait_until_exists(js, RESULTS_STREAM)  # by the worker, to record them
            await wait_for_records(js, 10)
    found = await records(js, RESULTS_SUBJECT)
    assert {record["payment_id"] for record, _ in found} == {r.payment_id for r in later}
    assert worker.stats.unsettled == 0 and worker.stats.done == 20


async def test_a_requests_stream_deleted_as_a_worker_starts_is_made_again(
    js: JetStreamContext,
) -> None:
    await js.delete_stream(REQUESTS_STREAM)  # after the start's ensure_streams
    async with KlaviEmulator() as emu, emulator_client(emu) as client:
        worker = CancelWorker(client, js, ack_wait=2.0, retry_delay=0.1)
        async with running(worker):
            await consuming(js)
            assert await enqueue(js, batch(emu, 3)) == 3
            await wait_for_records(js, 3)


async def test_the_worker_command_says_what_it_made_again(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    # The library's warnings reach the operator: the command shows them on stderr.
    process, lines = await start_worker(nats_server.url)
    await consuming(js)
    await js.delete_stream(REQUESTS_STREAM)
    await wait_until_exists(js, REQUESTS_STREAM)
    output = await stop_worker(process, lines)
    assert "klavi-async: worker: the consumer klavi-cancel of KLAVI_CANCEL is gone" in output, (
        output
    )
