"""
Two `klavi-async worker` processes sharing a rate-limited Klavi through a real
nats-server: one joins a worker already at the limit, then the first stops.  The
figures (each one's part, the fleet's goodput) are the simulation's and the benchmark's
to hold; here, what must hold on any machine: they hear each other, a stop is heard,
every request ends with one ok record and nothing is cancelled twice.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from klavi_async import CancelRequest
from klavi_async.nats import RESULTS_SUBJECT, enqueue
from klavi_async.testing import KlaviEmulator

from ..conftest import CPF
from .conftest import NatsServer
from .helpers import at_least, queue_empty, records, start_logged_worker, until

REQUESTS = 1200


def shared_by(log: Path) -> list[int]:
    """The fleet sizes a worker's progress lines showed, in order."""
    return [int(n) for n in re.findall(r"rate limit shared by (\d+)", log.read_text())]


@pytest.mark.slow
async def test_a_joiner_and_a_leaver_are_heard_and_nothing_is_lost(
    nats_server: NatsServer, js: JetStreamContext, tmp_path: Path
) -> None:
    async with KlaviEmulator(tps_limit=100) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(REQUESTS)]
        assert await enqueue(js, requests) == REQUESTS
        first_log, joiner_log = tmp_path / "first.log", tmp_path / "joiner.log"
        first = await start_logged_worker(nats_server.url, emu, first_log, ack_wait=10)
        joiner = None
        try:
            # The first at the limit: a few hundred cancelled, the window full.
            await until(lambda: at_least(js, 250), timeout=60)
            joiner = await start_logged_worker(nats_server.url, emu, joiner_log, ack_wait=10)

            async def both_hear_two() -> bool:
                return 2 in shared_by(first_log) and 2 in shared_by(joiner_log)

            await until(both_hear_two, timeout=30)
            first.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(first.wait(), timeout=30) == 0

            async def joiner_alone_again() -> bool:
                sizes = shared_by(joiner_log)
                return 2 in sizes and sizes[-1] == 1

            await until(joiner_alone_again, timeout=30)  # the stop deleted its report
            await until(lambda: at_least(js, REQUESTS), timeout=90)
            await until(lambda: queue_empty(js), timeout=30)
            joiner.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(joiner.wait(), timeout=30) == 0
        finally:
            for process in (first, joiner):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
        logs = first_log.read_text() + joiner_log.read_text()
        assert "adapts alone" not in logs
        found = await records(js, RESULTS_SUBJECT)
        assert Counter(r["payment_id"] for r, _ in found) == Counter(r.payment_id for r in requests)
        assert all(record["ok"] for record, _ in found)  # none ended RATE_LIMITED
        assert max(emu.effects.values()) == 1
        cancels = emu.records("cancel")
        refused = sum(1 for r in cancels if r.status == 429)
        assert refused / len(cancels) <= 0.15, (refused, len(cancels))
