"""
A Klavi outage against a worker: the pure rules (`Outage`), then the worker at its
defaults on virtual time against an in-process JetStream (tests/nats/fakejs.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js import JetStreamContext

from klavi_async import CancelRequest, KlaviClient, RetryBudget, RetryPolicy
from klavi_async._errors import ErrorKind
from klavi_async._transport import Response, TransportFailure
from klavi_async.nats import RESULTS_SUBJECT, CancelWorker, _worker as worker_module, enqueue
from klavi_async.nats._outage import (
    FIRST_PROBE,
    LONGEST_PROBE,
    RECENT,
    RECENT_SPAN,
    THRESHOLD,
    Outage,
)
from klavi_async.testing import KlaviEmulator, RandomFaults

from ..conftest import CPF
from ..fakes import Sent, json_response, mock_client
from ..ratesim import VirtualLoop, run
from .fakejs import FakeJetStream
from .helpers import emulator_client, queue_empty, records, wait_for_records

# -- the rules -----------------------------------------------------------------------------


def test_an_outage_is_threshold_messages_failing_in_a_row_and_ends_on_an_answer() -> None:
    outage = Outage()
    for n in range(THRESHOLD - 1):
        assert outage.record(True, 0.0, n) is None
    assert outage.record(False, 0.0, "ok") is None  # one answer among failures: no outage
    assert [outage.record(True, 10.0, n) for n in range(THRESHOLD)][-1] == "began"
    assert outage.down and outage.next_probe == 10.0 + FIRST_PROBE
    assert outage.record(True, 10.5, 99) is None  # failures while down change nothing
    assert outage.record(False, 11.0, 99) == "ended"
    assert not outage.down and outage.next_probe == math.inf


def test_one_message_failing_again_and_again_is_no_outage() -> None:
    outage = Outage()
    assert all(outage.record(True, float(t), "bad") is None for t in range(100))
    assert not outage.down
    # Four others failing with it still make five different messages: an outage.
    assert [outage.record(True, 100.0, n) for n in range(THRESHOLD - 1)][-1] == "began"


def test_probes_come_one_at_a_time_at_doubling_intervals_up_to_the_longest() -> None:
    outage = Outage()
    for n in range(THRESHOLD):
        outage.record(True, 0.0, n)
    assert not outage.probe_due(FIRST_PROBE - 0.01)
    times = []
    now = FIRST_PROBE
    for _ in range(8):
        assert outage.probe_due(now)
        assert not outage.probe_due(now)  # one probe at a time
        times.append(now)
        outage.probe_failed(now)
        now = outage.next_probe
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [2.0, 4.0, 8.0, 16.0, LONGEST_PROBE, LONGEST_PROBE, LONGEST_PROBE]
    # A probe that could not tell (a poison message) is followed by another at once.
    assert outage.probe_due(now)
    outage.probe_failed(now, told=False)
    assert outage.probe_due(now)


def test_a_probe_failing_after_the_outage_ended_schedules_nothing() -> None:
    outage = Outage()
    outage.probe_failed(5.0)
    assert not outage.down and outage.next_probe == math.inf


def test_klavi_is_healthy_while_it_answers_half_the_messages_or_fails_only_one() -> None:
    outage = Outage()
    assert outage.healthy(0.0)  # nothing asked yet
    for _ in range(20):
        outage.record(True, 0.0, "bad")  # one message, again and again: its own problem
    assert outage.healthy(0.0) and not outage.down
    outage.record(True, 0.0, "other")
    assert not outage.healthy(0.0)  # two failing, none answered
    for n in range(2):
        outage.record(False, 0.0, f"ok-{n}")
    assert outage.healthy(0.0)  # answered as many as failed
    # What is older than RECENT_SPAN says nothing: the answers before a slow outage
    # must not make its failures look like the messages' own.
    for n in range(2):
        outage.record(True, RECENT_SPAN + 1.0, f"late-{n}")
    assert not outage.healthy(RECENT_SPAN + 1.0)


def test_after_an_outage_klavi_is_trusted_once_it_answers_most() -> None:
    outage = Outage()
    for n in range(THRESHOLD):
        outage.record(True, 0.0, n)
    assert outage.record(False, 5.0, "probe") == "ended"
    assert not outage.healthy(5.0)  # one answer after an outage is not trust
    for n in range(RECENT // 2 - 1):
        assert not outage.healthy(5.0)
        outage.record(False, 5.0, f"ok-{n}")
    assert outage.healthy(5.0)


def test_begin_takes_klavi_as_down_at_once() -> None:
    outage = Outage()
    outage.begin(3.0)
    assert outage.down and outage.next_probe == 3.0 + FIRST_PROBE


# -- the worker, on virtual time ------------------------------------------------------------


def requests(n: int) -> list[CancelRequest]:
    return [CancelRequest(f"pay-{i:04d}", CPF) for i in range(n)]


class Klavi:
    """Cancels answered 503 until `up_at` (virtual seconds), then cancelled."""

    def __init__(self, loop: asyncio.AbstractEventLoop, up_at: float) -> None:
        self.loop, self.up_at = loop, up_at
        self.sent: list[tuple[float, str]] = []

    def __call__(self, sent: Sent) -> Response:
        now = self.loop.time()
        self.sent.append((now, sent.url.rsplit("/", 2)[-2]))
        if now < self.up_at:
            return json_response(503)
        return json_response(200, {"status": "CANCELED"})


def failing(bad: set[str]) -> Callable[[Sent], Response]:
    """A Klavi that answers 503 to the cancels of the payments in *bad*, cancels the rest."""

    def klavi(sent: Sent) -> Response:
        if sent.url.rsplit("/", 2)[-2] in bad:
            return json_response(503)
        return json_response(200, {"status": "CANCELED"})

    return klavi


async def work(
    loop: VirtualLoop,
    js: FakeJetStream,
    client: KlaviClient,
    worker: CancelWorker,
    until: float,
    fed: asyncio.Task[None] | None = None,
) -> None:
    """Run *worker* until every request is settled (and *fed* has queued them all)."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    while loop.time() < until and not (
        (fed is None or fed.done()) and len(js.settled) == len(js.stored)
    ):
        await asyncio.sleep(1.0)
    stop.set()
    await task
    await client.aclose()


def test_a_ten_minute_outage_at_the_defaults_abandons_nothing_and_probes_gently() -> None:
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(300))
        klavi = Klavi(loop, up_at=600.0)
        client, _ = mock_client(klavi, retry=RetryPolicy())
        worker = CancelWorker(client, js)  # type: ignore[arg-type]  # the fake stream
        await work(loop, js, client, worker, until=3600.0)
        seen.update(js=js, klavi=klavi, stats=worker.stats, end=loop.time())

    run(main)
    js, klavi, stats = seen["js"], seen["klavi"], seen["stats"]
    # Nothing abandoned: every request cancelled, one ok record each, none given up.
    assert Counter(js.settled.values()) == {"ack": 300}
    subjects = Counter(subject.rsplit(".", 1)[0] for subject, _ in js.records)
    assert subjects == {RESULTS_SUBJECT: 300}
    assert all(record["ok"] for _, record in js.records)
    assert len({record["payment_id"] for _, record in js.records}) == 300
    # The outage cost no message more than the one delivery it had failed on before it
    # was recognised.
    assert js.max_delivered <= 2
    assert stats.outages == 1 and stats.held == 0
    # Once recognised, one probe (one cancel: its first request, and a retry when the
    # budget's reserve allows one) at intervals doubling to 30 s: from the second minute
    # on, at most one per 30 s.
    late = [t for t, _ in klavi.sent if 60.0 <= t < 600.0]
    probes = [t for t, before in zip(late, [-math.inf, *late], strict=False) if t - before > 5.0]
    assert len(probes) <= (600.0 - 60.0) / LONGEST_PROBE + 1, probes
    assert len(late) <= 2 * len(probes)
    # In all, the cancels in flight when it began ran their own retries (as far as the
    # retry budget let them), then probes only: under one request per message.
    failed = [t for t, _ in klavi.sent if t < 600.0]
    assert len(failed) < 300
    assert seen["end"] <= 600.0 + LONGEST_PROBE + 10.0  # done within a probe of the end


def test_one_payment_klavi_keeps_failing_is_given_up_alone_without_an_outage() -> None:
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(20))

        def klavi(sent: Sent) -> Response:
            if "pay-0007" in sent.url:
                return json_response(503)
            return json_response(200, {"status": "CANCELED"})

        client, _ = mock_client(klavi, retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(client, js, concurrency=1, retry_delay=1.0)  # type: ignore[arg-type]
        await work(loop, js, client, worker, until=3600.0)
        seen.update(js=js, stats=worker.stats, end=loop.time())

    run(main)
    js, stats = seen["js"], seen["stats"]
    assert stats.outages == 0
    assert Counter(js.settled.values()) == {"ack": 19, "term": 1}
    [bad] = [record for _, record in js.records if not record["ok"]]
    assert bad["payment_id"] == "pay-0007" and bad["deliveries"] == 10
    # Its ten deliveries, 1 s doubling to 256 s apart: given up in about 17 minutes.
    assert seen["end"] < 1100.0


def wall_clock_follows(loop: VirtualLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's wall clock (a message's age) moves with the virtual one."""
    start = time.time()
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(time=lambda: start + loop.time()))


def test_a_request_held_past_max_age_is_given_up_with_its_non_final_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        wall_clock_follows(loop, monkeypatch)
        js = FakeJetStream(loop)
        js.enqueue(requests(8), age=3500.0)  # an hour old, give or take
        client, _ = mock_client(Klavi(loop, up_at=math.inf), retry=RetryPolicy())
        worker = CancelWorker(client, js, concurrency=8, max_age=3600.0)  # type: ignore[arg-type]
        await work(loop, js, client, worker, until=2000.0)
        seen.update(js=js)

    run(main)
    js = seen["js"]
    assert Counter(js.settled.values()) == {"term": 8}
    assert len(js.records) == 8
    assert not any(record["ok"] for _, record in js.records)
    assert all(record["kind"] == "server_error" for _, record in js.records)


def test_held_requests_past_max_age_are_given_up_together_not_one_per_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by an attack: only the probed message was checked, so thirty held requests
    # aged out one per probe, 30 s apart: fifteen minutes for the last.
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        wall_clock_follows(loop, monkeypatch)
        js = FakeJetStream(loop)
        js.enqueue(requests(30), age=3000.0)
        client, _ = mock_client(Klavi(loop, up_at=math.inf), retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(client, js, concurrency=30, max_age=3300.0)  # type: ignore[arg-type]
        await work(loop, js, client, worker, until=2000.0)
        seen.update(js=js, end=loop.time())

    run(main)
    js = seen["js"]
    assert Counter(js.settled.values()) == {"term": 30}
    assert not any(record["ok"] for _, record in js.records)
    # All at max_age (300 s in), within a second or two (a probe's interval later: 330 s).
    assert max(js.settled_at.values()) <= 300.0 + 2.0, sorted(js.settled_at.values())
    assert seen["end"] <= 310.0


def test_a_klavi_that_lets_one_cancel_through_now_and_then_spends_no_delivery() -> None:
    # Found by an attack: Klavi failing every cancel but one a second.  Each probe that
    # got through released every held message at once, they failed before the outage
    # was recognised again and were naked: 18 of 60 requests given up at max_deliver=5.
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(60))
        passed = [-math.inf]

        def klavi(sent: Sent) -> Response:
            if loop.time() - passed[0] >= 1.0:
                passed[0] = loop.time()
                return json_response(200, {"status": "CANCELED"})
            return json_response(503)

        client, _ = mock_client(klavi, retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(client, js, max_deliver=5, retry_delay=0.2)  # type: ignore[arg-type]
        await work(loop, js, client, worker, until=3600.0)
        seen.update(js=js, stats=worker.stats)

    run(main)
    js, stats = seen["js"], seen["stats"]
    assert Counter(js.settled.values()) == {"ack": 60}
    assert stats.outages >= 1
    assert all(record["ok"] for _, record in js.records) and len(js.records) == 60
    assert js.max_delivered < 5


def test_a_few_payments_klavi_always_fails_do_not_hold_up_the_others() -> None:
    # Found by an attack: five payments Klavi fails for their own sake, first in the
    # queue, made an outage; every probe retried one of them, so it never ended and no
    # other request was cancelled until max_age (a day).
    seen: dict[str, Any] = {}
    bad = {f"pay-{i:04d}" for i in range(THRESHOLD)}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(100))
        enqueued_at = dict.fromkeys(range(1, 101), 0.0)

        async def more() -> None:  # the day goes on: five more requests every 10 s
            for n in range(100, 400, 5):
                await asyncio.sleep(10.0)
                js.enqueue([CancelRequest(f"pay-{i:04d}", CPF) for i in range(n, n + 5)])
                enqueued_at.update(dict.fromkeys(range(n + 1, n + 6), loop.time()))

        client, _ = mock_client(failing(bad), retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(  # type: ignore[arg-type]  # the fake stream
            client, js, concurrency=THRESHOLD, max_deliver=4, retry_delay=1.0
        )
        await work(loop, js, client, worker, until=3600.0, fed=asyncio.create_task(more()))
        seen.update(js=js, end=loop.time(), enqueued_at=enqueued_at)

    run(main)
    js, enqueued_at = seen["js"], seen["enqueued_at"]
    assert Counter(js.settled.values()) == {"ack": 395, "term": THRESHOLD}
    given_up = {record["payment_id"] for _, record in js.records if not record["ok"]}
    assert given_up == bad
    assert all(record["deliveries"] == 4 for _, record in js.records if not record["ok"])
    # The bad ones made an outage now and then, but every other request was cancelled
    # within seconds of being queued (the slowest waited out a probe), and the bad
    # ones were given up on their schedule, while requests still came, not at max_age.
    waits = [js.settled_at[s] - enqueued_at[s] for s, how in js.settled.items() if how == "ack"]
    assert max(waits) < 40.0, sorted(waits)[-5:]
    given_up_at = [js.settled_at[seq] for seq, how in js.settled.items() if how == "term"]
    assert max(given_up_at) < 300.0, given_up_at


def test_a_slow_outage_at_concurrency_one_spends_no_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by an attack: Klavi timing out for 300 s, each failed cancel taking its
    # whole timeout schedule, one at a time: the worker never saw five different
    # messages fail, the answers from before the outage still counted for Klavi, and a
    # request was given up at max_deliver=5.
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        wall_clock_follows(loop, monkeypatch)
        js = FakeJetStream(loop)
        js.enqueue(requests(20))

        async def klavi(sent: Sent) -> Response | TransportFailure:
            if 10.0 <= loop.time() < 310.0:
                await asyncio.sleep(sent.timeout)
                return TransportFailure(ErrorKind.TIMEOUT, "no response", sent=True)
            return json_response(200, {"status": "CANCELED"})

        async def more() -> None:  # two new requests a second
            for n in range(20, 720, 2):
                await asyncio.sleep(1.0)
                js.enqueue([CancelRequest(f"pay-{i:04d}", CPF) for i in (n, n + 1)])

        client, _ = mock_client(
            klavi, retry=RetryPolicy(max_attempts=4), timeout=10.0, clock=loop.time,
            retry_budget=RetryBudget(clock=loop.time),
        )  # fmt: skip
        worker = CancelWorker(  # type: ignore[arg-type]  # the fake stream
            client, js, concurrency=1, max_deliver=5, retry_delay=0.2
        )
        await work(loop, js, client, worker, until=3600.0, fed=asyncio.create_task(more()))
        seen.update(js=js)

    run(main)
    js = seen["js"]
    assert Counter(js.settled.values()) == {"ack": 720}
    assert js.max_delivered < 5


def test_a_few_bad_payments_among_sparse_requests_end_on_their_schedule() -> None:
    # Found by an attack: with a request every 20 s, the bad payments released after
    # each (false) outage waited for Klavi to look healthy, found nothing else in
    # flight, made an outage again, and were held until max_age (a day).
    seen: dict[str, Any] = {}
    bad = {f"pay-{i:04d}" for i in range(THRESHOLD)}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(THRESHOLD))

        async def more() -> None:
            for n in range(THRESHOLD, THRESHOLD + 60):
                await asyncio.sleep(20.0)
                js.enqueue([CancelRequest(f"pay-{n:04d}", CPF)])

        client, _ = mock_client(failing(bad), retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(  # type: ignore[arg-type]  # the fake stream
            client, js, concurrency=THRESHOLD, max_deliver=4, retry_delay=1.0
        )
        await work(loop, js, client, worker, until=3600.0, fed=asyncio.create_task(more()))
        seen.update(js=js)

    run(main)
    js = seen["js"]
    assert Counter(js.settled.values()) == {"ack": 60, "term": THRESHOLD}
    given_up_at = [js.settled_at[seq] for seq, how in js.settled.items() if how == "term"]
    assert max(given_up_at) < 1300.0  # while requests still came, not at max_age


def test_a_stop_during_an_outage_hands_the_held_messages_back() -> None:
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(20))
        client, _ = mock_client(Klavi(loop, up_at=math.inf), retry=RetryPolicy())
        worker = CancelWorker(client, js, concurrency=20)  # type: ignore[arg-type]
        await work(loop, js, client, worker, until=30.0)
        seen.update(js=js, stats=worker.stats)

    run(main)
    js, stats = seen["js"], seen["stats"]
    assert js.settled == {} and js.records == []  # nothing given up, nothing recorded
    assert stats.held == 0 and stats.outages == 1
    # The THRESHOLD failures were naked, and came back to be fetched by the probes that
    # take a new message in turn; held, then handed back with the others: no message
    # failed more than twice (its first delivery and one probe), none was given up.
    assert js.naks >= 20 and js.max_delivered <= 2
    assert all(entry.delivery is None for entry in js.stored.values())


def test_a_second_run_starts_without_the_first_runs_outage() -> None:
    # Found by an attack: the outage and the held messages' names outlived a stop.
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(20))
        klavi = Klavi(loop, up_at=30.0)
        client, _ = mock_client(klavi, retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(client, js, concurrency=20, retry_delay=1.0)  # type: ignore[arg-type]
        stop = asyncio.Event()
        first = asyncio.create_task(worker.run(stop))
        while not worker._outage.down:
            await asyncio.sleep(0.1)
        stop.set()
        await first
        await asyncio.sleep(30.0 - loop.time())  # Klavi is back
        stop = asyncio.Event()
        second = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0)
        seen.update(down_at_start=worker._outage.down)
        while len(js.settled) < 20:
            await asyncio.sleep(1.0)
        stop.set()
        await second
        await client.aclose()
        seen.update(js=js)

    run(main)
    assert Counter(seen["js"].settled.values()) == {"ack": 20}
    assert seen["down_at_start"] is False


def test_a_stop_while_a_probe_succeeds_lets_the_released_messages_finish() -> None:
    # Found by an attack: the drain waited only for the tasks running when it began, so
    # the held messages a late probe released were cancelled mid-request.
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(20))

        async def klavi(sent: Sent) -> Response:
            if loop.time() < 5.0:
                return json_response(503)
            await asyncio.sleep(2.0)  # back, and slow: the probe is in flight at the stop
            return json_response(200, {"status": "CANCELED"})

        client, _ = mock_client(klavi, retry=RetryPolicy(max_attempts=1))
        worker = CancelWorker(client, js, concurrency=20)  # type: ignore[arg-type]
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        while not (worker.stats.outages and worker._outage.probing and loop.time() > 5.0):
            await asyncio.sleep(0.1)
        stop.set()
        await task
        await client.aclose()
        seen.update(js=js, stats=worker.stats)

    run(main)
    js, stats = seen["js"], seen["stats"]
    # Every held message was cancelled and acked; only the ones naked before the outage
    # was recognised (never fetched again after the stop) are left in the queue.
    assert stats.held == 0 and stats.unsettled == 0
    assert all(entry.delivery is None for entry in js.stored.values())
    assert Counter(js.settled.values())["ack"] == stats.done == len(js.records)
    assert stats.done + js.naks >= 20


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 1.0, 1e10])
def test_bad_max_retry_delay_is_refused(bad: float) -> None:
    client, _ = mock_client(lambda sent: json_response(200, {"status": "CANCELED"}))
    with pytest.raises(ValueError, match="max_retry_delay"):
        CancelWorker(client, object(), max_retry_delay=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_max_age_is_refused(bad: float) -> None:
    client, _ = mock_client(lambda sent: json_response(200, {"status": "CANCELED"}))
    with pytest.raises(ValueError, match="max_age"):
        CancelWorker(client, object(), max_age=bad)  # type: ignore[arg-type]


# -- the worker against a real nats-server and the emulator --------------------------------


async def test_an_outage_longer_than_the_schedule_abandons_nothing(js: JetStreamContext) -> None:
    # Klavi answers 503 for 8 s; with max_deliver=5 and retry_delay=0.2 the schedule is
    # over in about 6 s, and every request used to end with a non-final record.
    async with KlaviEmulator() as emu:
        requests_ = [CancelRequest(emu.add_payment(), CPF) for _ in range(200)]
        emu.random_faults = RandomFaults({"503": 1.0}, seed=1)
        assert await enqueue(js, requests_) == 200
        async with emulator_client(emu, retry=RetryPolicy()) as client:
            worker = CancelWorker(client, js, max_deliver=5, retry_delay=0.2)
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            try:
                await wait_until(lambda: worker.stats.outages == 1)
                began = asyncio.get_running_loop().time()
                # The cancels in flight when it was recognised end (held), retries and all.
                await wait_until(lambda: worker.stats.in_flight == 0)
                held = len(emu.records("cancel"))
                await asyncio.sleep(8.0)  # the outage itself: its length is the point
                during = len(emu.records("cancel"))
                probes = (asyncio.get_running_loop().time() - began) // 1 + 1
                emu.random_faults = RandomFaults({}, seed=1)
                await wait_for_records(js, 200, timeout=60.0)
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=30)
        found = await records(js, RESULTS_SUBJECT)
        assert len(found) == 200
        assert all(record["ok"] for record, _ in found)
        assert {record["payment_id"] for record, _ in found} == {r.payment_id for r in requests_}
        assert all(emu.effects[r.payment_id] == 1 for r in requests_)
        assert await queue_empty(js)
        # At most 2 requests per message while Klavi was down, and once the outage was
        # recognised only probes: about one per doubling interval.
        assert during <= 2 * 200
        # Probes at +1, +3, +7, +15 s...: at most log2 of the outage's length, a retry
        # each; and once each, the (at most THRESHOLD - 1) messages naked before the
        # outage was recognised, which new probes fetch first and try at once.
        bound = 2 * (math.log2(probes + 1) + THRESHOLD - 1)
        assert during - held <= bound, (during, held)
        assert worker.stats.held == 0


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--retry-delay", "10", "--max-retry-delay", "5"], "must be >= --retry-delay (10)"),
        (["--max-age", "0"], "--max-age"),
        (["--max-retry-delay", "nan"], "--max-retry-delay"),
        (["--retry-delay", "inf"], "--retry-delay"),
        (["--retry-delay", "1e10", "--max-retry-delay", "1e10"], "in (0, 1e9]"),
        (["--ack-wait", "soon"], "not a number of seconds"),
    ],
)
def test_worker_schedule_usage_errors(options: list[str], message: str) -> None:
    cli = str(Path(sys.executable).parent / "klavi-async")
    result = subprocess.run(
        [cli, "worker", "--nats-url", "nats://127.0.0.1:1", *options],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_an_ack_wait_past_the_servers_durations_is_refused() -> None:
    client, _ = mock_client(lambda sent: json_response(200, {"status": "CANCELED"}))
    with pytest.raises(ValueError, match="ack_wait"):
        CancelWorker(client, object(), ack_wait=1e10)  # type: ignore[arg-type]
