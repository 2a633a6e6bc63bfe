"""
Crash safety with real processes: two `klavi-async worker`s, one SIGKILLed mid-batch.

The emulator is served by the test process; the workers reach it and the nats-server
over loopback.  Whatever the kill interrupted (a cancel in flight, a record published but
not acked), every request ends with exactly one record and no payment is cancelled twice.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from klavi_async import CancelRequest
from klavi_async.nats import RESULTS_SUBJECT, enqueue, ensure_streams
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .conftest import NatsServer
from .helpers import at_least, queue_empty, records, start_logged_worker, stored, until

REQUESTS = 1000


@pytest.mark.slow
async def test_a_sigkilled_worker_loses_nothing_and_cancels_nothing_twice(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    faults = {"latency": 0.2, "503": 0.03, "reset_after": 0.02}
    async with KlaviEmulator(fault_rates=faults, latency=0.05, seed=2026) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(REQUESTS)]
        assert await enqueue(js, requests) == REQUESTS
        victim_log, survivor_log = tmp_path / "victim.log", tmp_path / "survivor.log"
        victim = await start_logged_worker(nats_server.url, emu, ack_wait=2, log=victim_log)
        survivor = await start_logged_worker(nats_server.url, emu, ack_wait=2, log=survivor_log)
        try:
            await until(lambda: at_least(js, REQUESTS // 3), timeout=60)
            victim.send_signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL
            killed_at = await stored(js)
            await until(lambda: at_least(js, REQUESTS), timeout=60)
            await until(lambda: queue_empty(js), timeout=30)
            survivor.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(survivor.wait(), timeout=30)
        finally:
            for process in (victim, survivor):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        survivor_text = survivor_log.read_text()
        assert code == 0, survivor_text[-2000:]

        found = await records(js, RESULTS_SUBJECT)
        per_payment = Counter(record["payment_id"] for record, _ in found)
        assert per_payment == Counter(r.payment_id for r in requests)
        assert await stored(js) == REQUESTS
        assert all(record["ok"] for record, _ in found)
        assert max(emu.effects.values()) == 1
        effects = Counter(r.payment_id for r in emu.records("cancel") if r.effect)
        assert set(effects.values()) == {1}
        assert len(effects) == REQUESTS

        final = re.findall(r"stopped; .*duplicates dropped (\d+)", survivor_text)
        assert final, survivor_text[-2000:]
        redelivered = sum(1 for record, _ in found if record["deliveries"] > 1)
        figures = {
            "requests": REQUESTS,
            "kills": 1,
            "records when killed": killed_at,
            "records with a redelivery": redelivered,
            "duplicates dropped by the survivor": int(final[-1]),
            "records": len(found),
            "cancel requests sent": len(emu.records("cancel")),
            "double cancels": sum(1 for n in emu.effects.values() if n > 1),
        }
        sys.stderr.write(f"crash test figures: {figures}\n")
        assert 0 < killed_at < REQUESTS


@pytest.mark.slow
async def test_a_worker_frozen_past_ack_wait_and_the_duplicate_window_adds_no_record(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    # SIGSTOP one worker with cancels in flight for longer than ack_wait (2 s) and the
    # duplicate window (2 s, as an operator might set it): the other finishes them; the
    # frozen one, resumed, publishes records for the same requests.  The results stream
    # keeps one per request whatever the window (before: 23 doubles in 3,000).
    requests_ = 400
    faults = {"latency": 0.3}
    async with KlaviEmulator(fault_rates=faults, latency=0.3, seed=7) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(requests_)]
        victim_log, survivor_log = tmp_path / "victim.log", tmp_path / "survivor.log"
        victim = await start_logged_worker(nats_server.url, emu, ack_wait=2, log=victim_log)
        survivor = await start_logged_worker(nats_server.url, emu, ack_wait=2, log=survivor_log)
        try:
            await until(lambda: _consumer_bound(js), timeout=30)
            await ensure_streams(js, duplicate_window=2.0)  # after the workers started
            assert await enqueue(js, requests) == requests_
            await until(lambda: at_least(js, requests_ // 4), timeout=60)
            victim.send_signal(signal.SIGSTOP)
            frozen_at = len(emu.records("cancel"))
            # Past ack_wait and the window: the survivor takes the victim's deliveries.
            await asyncio.sleep(2.0 + 2.0 + 2.0)  # the freeze itself: its length is the point
            await until(lambda: at_least(js, requests_), timeout=60)
            victim.send_signal(signal.SIGCONT)
            for process in (victim, survivor):
                process.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(p.wait(), timeout=30) for p in (victim, survivor)]
        finally:
            for process in (victim, survivor):
                if process.returncode is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    await process.wait()
        victim_text = victim_log.read_text()
        assert codes == [0, 0], victim_text[-2000:]
        found = await records(js, RESULTS_SUBJECT)
        per_payment = Counter(record["payment_id"] for record, _ in found)
        assert per_payment == Counter(r.payment_id for r in requests)
        assert await stored(js) == requests_
        assert max(emu.effects.values()) == 1
        # The victim did come back with records to publish: the server refused them.
        final = re.findall(r"stopped; .*duplicates dropped (\d+)", victim_text)
        assert final and int(final[-1]) > 0, victim_text[-2000:]
        assert frozen_at > 0


async def _consumer_bound(js: JetStreamContext) -> bool:
    try:
        info = await js.consumer_info("KLAVI_CANCEL", "klavi-cancel")
    except NotFoundError:  # no worker got that far yet
        return False
    return (info.num_waiting or 0) >= 2  # both workers are pulling
