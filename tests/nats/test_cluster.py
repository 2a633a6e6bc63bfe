"""
A three-node JetStream cluster: R3 streams, two `klavi-async worker` processes given all
three URLs, and the leader of one stream SIGKILLed a third of the way through 1,000
requests (restarted later).  Every request ends with exactly one ok record, no payment is
cancelled twice, none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck

from klavi_async import CancelRequest
from klavi_async.nats import (
    REQUESTS_STREAM,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    connect,
    enqueue,
    ensure_streams,
    read_results,
)
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .cluster import NatsCluster
from .helpers import start_logged_worker
from .test_cli import run

REQUESTS = 1000


@pytest.fixture
def cluster(tmp_path: Path, quiet_fleet_ports: None) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster")
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def cluster_js(cluster: NatsCluster) -> AsyncIterator[JetStreamContext]:
    nc: NATS = await connect(cluster.url)
    try:
        js = nc.jetstream(timeout=2.0)
        await ensure_streams(js, replicas=3)
        # An R3 stream just made may have no leader yet, and once it has one the node
        # this client talks to may not have heard: a publish is then answered "no
        # response from stream" (enqueue sends it again, as the tests' `store` does).
        async with asyncio.timeout(30):
            for stream in (REQUESTS_STREAM, RESULTS_STREAM):
                await leader(js, stream)
        yield js
    finally:
        await nc.close()


async def patiently(call: Callable[[], Awaitable[int]]) -> int:
    """*call* retried while the cluster elects a leader (a request times out meanwhile)."""
    while True:
        try:
            return await call()
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.1)


async def store(js: JetStreamContext, subject: str, data: bytes) -> PubAck:
    """
    *data* published, again while the node this client talks to has not heard of the
    stream's leader: a stream's leader may be elected before its interest reaches every
    node, and the publish is then answered "no responders" (nothing stored).
    """
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(nats.js.errors.NoStreamResponseError):
                return await js.publish(subject, data)
            await asyncio.sleep(0.1)


async def count(js: JetStreamContext, stream: str) -> int:
    return await patiently(lambda: _messages(js, stream))


async def _messages(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def leader(js: JetStreamContext, stream: str) -> str:
    async def name() -> str:
        info = await js.stream_info(stream)
        assert info.cluster is not None and info.cluster.leader, info
        return info.cluster.leader

    while True:
        with contextlib.suppress(nats.errors.Error, TimeoutError, AssertionError):
            return await name()
        await asyncio.sleep(0.1)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


class Progress:
    """The records stored, sampled: the longest stretch in which none was added."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.last = (time.monotonic(), -1)
        self.longest_stall = 0.0

    async def at_least(self, wanted: int) -> bool:
        now, stored = time.monotonic(), await count(self.js, RESULTS_STREAM)
        if stored != self.last[1]:
            self.longest_stall = max(self.longest_stall, now - self.last[0])
            self.last = (now, stored)
        return stored >= wanted


@pytest.mark.slow
@pytest.mark.parametrize("stream", [REQUESTS_STREAM, RESULTS_STREAM])
async def test_a_stream_leader_killed_loses_nothing_and_cancels_nothing_twice(
    cluster: NatsCluster, cluster_js: JetStreamContext, tmp_path: Path, stream: str
) -> None:
    js = cluster_js
    faults = {"latency": 0.1, "503": 0.03}
    async with KlaviEmulator(fault_rates=faults, latency=0.05, seed=21) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(REQUESTS)]
        assert await enqueue(js, requests) == REQUESTS
        logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
        workers = [await start_logged_worker(cluster.url, emu, log, ack_wait=5) for log in logs]
        try:
            await until(lambda: _at_least(js, REQUESTS // 3), timeout=120)
            victim = await leader(js, stream)
            records_then = await count(js, RESULTS_STREAM)
            killed_at = time.monotonic()
            cluster.kill(victim)
            progress = Progress(js)
            await until(lambda: progress.at_least(2 * REQUESTS // 3), timeout=120)
            cluster.restart(victim)
            await until(lambda: progress.at_least(REQUESTS), timeout=120)
            await until(lambda: _queue_empty(js), timeout=60)
            finished = time.monotonic() - killed_at
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(w.wait(), timeout=60) for w in workers]
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        texts = [log.read_text() for log in logs]
        assert codes == [0, 0], [text[-2000:] for text in texts]

        # Read as `klavi-async results` reads them: a consumer on the restarted node may
        # still be catching up, and a short fetch timeout there once missed one.
        async with contextlib.aclosing(read_results(js)) as reading:
            found = [(json.loads(m.data), m.data) async for m in reading]
        per_payment = Counter(record["payment_id"] for record, _ in found)
        assert per_payment == Counter(r.payment_id for r in requests)  # one each, none lost
        assert await count(js, RESULTS_STREAM) == REQUESTS
        assert all(record["ok"] for record, _ in found)
        assert max(emu.effects.values()) == 1  # no payment cancelled twice
        effects = Counter(r.payment_id for r in emu.records("cancel") if r.effect)
        assert len(effects) == REQUESTS
        new_leader = await leader(js, stream)
        sys.stderr.write(
            f"cluster crash figures ({stream}'s leader {victim} killed, now {new_leader}): "
            f"records when killed {records_then}, all {REQUESTS} done "
            f"{finished:.1f} s after the kill, the longest pause in records "
            f"{progress.longest_stall:.1f} s, "
            f"records with a redelivery {sum(r['deliveries'] > 1 for r, _ in found)}, "
            f"cancel requests {len(emu.records('cancel'))}\n"
        )
        assert 0 < records_then < REQUESTS


async def _at_least(js: JetStreamContext, wanted: int) -> bool:
    return await count(js, RESULTS_STREAM) >= wanted


async def _queue_empty(js: JetStreamContext) -> bool:
    return await count(js, REQUESTS_STREAM) == 0


@pytest.mark.slow
async def test_records_are_read_whole_while_the_results_leader_is_elected(
    cluster: NatsCluster, cluster_js: JetStreamContext
) -> None:
    js = cluster_js
    stored = 2000
    acks = [
        await store(js, f"{RESULTS_SUBJECT}.kc-{n}", json.dumps({"n": n}).encode())
        for n in range(stored)
    ]
    assert [ack.seq for ack in acks] == list(range(1, stored + 1))
    victim = await leader(js, RESULTS_STREAM)
    seen: list[int] = []
    async with contextlib.aclosing(read_results(js)) as reading:
        async for message in reading:
            seen.append(message.seq)
            assert json.loads(message.data) == {"n": message.seq - 1}
            if len(seen) == stored // 4:
                cluster.kill(victim)  # between two pulls: the next one meets the election
    assert seen == list(range(1, stored + 1))  # each once, in order, none lost
    assert await leader(js, RESULTS_STREAM) != victim
    cluster.restart(victim)


def test_streams_of_one_replica_on_a_cluster_are_said(cluster: NatsCluster, tmp_path: Path) -> None:
    rows = tmp_path / "cancels.jsonl"
    rows.write_text(json.dumps({"payment_id": "pay-1", "cancelled_by": CPF}) + "\n")
    first = run("enqueue", str(rows), "--nats-url", cluster.url)  # creates R1 streams
    assert first.returncode == 0, first.stderr
    for stream in (REQUESTS_STREAM, RESULTS_STREAM):
        assert (
            f"klavi-async: enqueue: {stream} has 1 replica on the cluster klavi: it stops "
            "when its node does; for money run `klavi-async streams --replicas 3`"
        ) in first.stderr
    changed = run("streams", "--nats-url", cluster.url, "--replicas", "3")
    assert changed.returncode == 0, changed.stderr
    again = run("enqueue", str(rows), "--nats-url", cluster.url)
    assert again.returncode == 0, again.stderr
    assert "replica" not in again.stderr
