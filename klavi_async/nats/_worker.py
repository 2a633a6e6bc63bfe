"""
`CancelWorker`: cancel requests pulled from JetStream, one shared `KlaviClient`.

The loop starts a cancel for each message its consumer pulled for a free slot (never
more in flight than `concurrency`), then sleeps until a message comes, a cancel ends or
a stop.  Each cancel is sent with the message's idempotency key, and its record (what
`decide()` asks for) published before the ack, nak or term: a worker killed between the
two leaves the message to be redelivered, the cancel re-sent with the same key and the
record dropped by the results stream as a duplicate, so each request keeps exactly one
record.  A message the worker fails on, or whose record is too large, ends in a dead
letter: the server redelivers without limit.

When Klavi is down (`_outage`: the last cancels all failed retryably) the loop takes
nothing new, holds the failed messages (in progress, their deliveries unspent), and
probes, a held message and a new one in turn; an answer releases them all.  A failure
while Klavi is not clearly up (just after an outage, or failing as many as it answers)
waits: Klavi answering most again says it was the message's own (a delivery spent), an
outage that it was Klavi's (held); with nothing else in flight to tell, it is retried
now and then.  A held or waiting request past `max_age` ends at once.  Pulling is
`_consumer.Consumer`'s; settling a delivery (record, then ack, nak or term) `_settle`'s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from .. import CancelResult, KlaviClient
from ._consumer import FETCH_TIMEOUT, Bell, Consumer, InProgress, hand_back
from ._decide import LONGEST, Decision, Poison, check_schedule, check_settings, decide, is_final
from ._lanes import Lanes
from ._outage import FIRST_PROBE, LONGEST_PROBE, THRESHOLD, Outage
from ._request import Failed, cancel_message, delivery_of
from ._settle import Settler, WorkerStats
from ._sharedlimit import SharedLimit
from ._streams import REQUESTS_STREAM

__all__ = ["LONGEST", "CancelWorker", "WorkerStats"]

logger = logging.getLogger("klavi_async.nats")


class CancelWorker:
    """
    Consume `KLAVI_CANCEL` with a durable pull consumer and cancel each request.

    *client* is shared by every message (one token cache, retry budget and rate limiter);
    the caller opens and closes it, and the NATS connection behind *js*.  The durable
    consumer is created or updated with *ack_wait* (seconds before an unacknowledged
    delivery comes back; long cancels send `in_progress()` every third of it).  The
    server redelivers without limit and the worker itself enforces *max_deliver*, so a
    worker killed on the last delivery still leaves the message to another.  A failed
    cancel comes back after *retry_delay* doubling with each delivery, at most
    *max_retry_delay*; a request enqueued more than *max_age* seconds ago is given up
    with its non-final record.  In a Klavi outage (see `_outage`) the worker takes no new
    message, holds the failed ones without spending their deliveries, and probes.  With
    *shared_limit*, workers of one account share its rate limit (`_sharedlimit`).
    """

    def __init__(
        self,
        client: KlaviClient,
        js: JetStreamContext,
        *,
        stream: str = REQUESTS_STREAM,
        durable: str = "klavi-cancel",
        concurrency: int = 32,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
        retry_delay: float = 5.0,
        max_retry_delay: float = 300.0,
        max_age: float = 86400.0,
        shared_limit: bool = True,
    ) -> None:
        if not isinstance(client, KlaviClient):
            raise TypeError(f"client must be a KlaviClient, got {type(client).__name__}")
        check_settings(concurrency, max_deliver, ack_wait)
        check_schedule(retry_delay, max_retry_delay, max_age)
        self._client = client
        self._js = js
        self._stream = stream
        self._durable = durable
        self._concurrency = concurrency
        self._ack_wait = float(ack_wait)
        self._max_deliver = max_deliver
        self._retry_delay = float(retry_delay)
        self._max_retry_delay = float(max_retry_delay)
        self._max_age = float(max_age)
        self._in_progress = InProgress(self._ack_wait)
        self._outage = Outage()
        self._held: deque[Failed] = deque()  # through an outage, longest held first
        self._tainted: set[str] = set()  # held in an outage, not settled since
        self._pending: list[Failed] = []  # failed when Klavi was not clearly up: waiting
        self._retry_at, self._retry_interval = math.inf, FIRST_PROBE  # of a waiting one
        self._fresh_turn = False  # the next probe is a new message (when there is one)
        self._halt = asyncio.Event()
        self._bell = Bell()  # rung when a message comes, a cancel ends, or a stop
        self._lanes = Lanes(self._bell.ring)  # runs each message's coroutine
        self._consumer = Consumer(
            js,
            stream,
            durable,
            self._ack_wait,
            arrived=self._bell.ring,
            in_progress=self._in_progress,
        )
        self._running = False
        self.stats = WorkerStats()
        self._settler = Settler(js, self.stats, ack_wait=self._ack_wait, retry_delay=retry_delay)
        self._sharing = SharedLimit(js, client, enabled=shared_limit)
        self.halted: str | None = None
        """Why the worker stopped on its own (refused credentials), or None."""

    def __repr__(self) -> str:
        return (
            f"CancelWorker(stream={self._stream!r}, durable={self._durable!r}, "
            f"concurrency={self._concurrency}, {self.stats.line()})"
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """
        Work until *stop* is set, then drain and return.

        Draining takes no new messages; the cancels in flight finish and their messages
        are acked, naked or termed.  Also returns (after draining) when Klavi refused
        the credentials: see `halted`.  Cancelling the task stops at once; the messages
        in flight come back to another worker after `ack_wait`.
        """
        if self._running:
            raise RuntimeError("this CancelWorker is already running")
        self._running = True
        self._outage, self._tainted = Outage(), set()  # a run says nothing of the next
        stop = stop if stop is not None else asyncio.Event()
        lanes, consumer = self._lanes, self._consumer
        heartbeat = asyncio.create_task(self._in_progress.run())
        stopping = asyncio.create_task(self._stopping(stop))
        stopping.add_done_callback(self._bell.ring)
        loop = asyncio.get_running_loop()
        try:
            await consumer.open()
            await self._settler.open()
            await self._sharing.start()
            while not stopping.done():
                outage = self._outage
                if outage.down:  # Klavi's outage: no new message, one probe at a time
                    self._give_up_aged()
                    if outage.probe_due(loop.time()):
                        await self._probe()
                    else:  # until the probe (running or due), a cancel ends or one ages out
                        oldest = max((self._age(e.stored) for e in self._held), default=0)
                        due = self._max_age - oldest
                        wait = due if outage.probing else min(due, outage.next_probe - loop.time())
                        await self._bell.wait(wait)
                    continue
                halted = self._halt.is_set()  # no cancel can succeed: the stop is coming
                started = [] if halted else consumer.take(self._concurrency - lanes.busy)
                for msg in started:
                    self._start(msg)
                if not halted:
                    await consumer.pull(self._concurrency - lanes.busy)
                if self._pending:
                    self._give_up_aged()
                    if not started and not lanes.busy and loop.time() >= self._retry_at:
                        # No other cancel will tell whether Klavi is up: retry one of the
                        # waiting ones, as a probe would (while new messages still come).
                        self._start(self._pending.pop(0).msg, held=True, retry=True)
                await self._bell.wait(FETCH_TIMEOUT)
            while lanes.busy:  # a probe answered now releases the held ones: they finish too
                await self._bell.wait(math.inf)
            await self._hand_back_held()
            delay = self._retry_delay if self._halt.is_set() else None
            self.stats.naked += await consumer.hand_back(self._in_progress, delay)
        finally:
            await lanes.close()
            for task in (heartbeat, stopping):
                task.cancel()
            await asyncio.gather(heartbeat, stopping, return_exceptions=True)
            consumer.take(consumer.ready)  # these, held and waiting ones come back after ack_wait
            self._in_progress.clear()
            self._held.clear()
            self._pending.clear()
            self.stats.held = 0
            await consumer.close()
            await self._settler.close()
            await self._sharing.stop()
            self._running = False

    def _start(
        self, msg: Msg, *, held: bool = False, probe: bool = False, retry: bool = False
    ) -> None:
        self._lanes.run(self._handle(msg, held=held, probe=probe, retry=retry))

    async def _probe(self) -> None:
        # A held message (the longest held first) and a new one in turn: held messages
        # Klavi fails for their own sake (a few bad payments) must not keep an outage
        # going while the others would be cancelled.  The queue hands out first the
        # messages naked before the outage was seen: they are retried (and held) along
        # the way, and the first message new to the queue is the probe.
        fresh, self._fresh_turn = self._fresh_turn or not self._held, not self._fresh_turn
        for _ in range(THRESHOLD if fresh else 0):
            msgs = await self._consumer.fetch(1)
            if not msgs:
                break
            if msgs[0].metadata.num_delivered == 1:
                self._start(msgs[0], probe=True)
                return
            self._start(msgs[0])
        if self._held:
            self.stats.held -= 1
            self._start(self._held.popleft().msg, held=True, probe=True)
        else:  # nothing to probe with: try again soon
            self._outage.probing = False

    def _release(self) -> None:
        # Klavi answers again: every held message is retried now.
        while self._held:
            self.stats.held -= 1
            self._start(self._held.popleft().msg, held=True)

    def _hold(self, entry: Failed) -> None:
        self._held.append(entry)
        self._tainted.add(entry.ref)
        self.stats.held += 1

    def _outage_began(self) -> None:
        self.stats.outages += 1
        logger.warning("Klavi outage: holding the failed messages; probing")
        self._hold_pending()

    def _hold_pending(self) -> None:
        # An outage again: the released messages that failed since were its, not theirs.
        pending, self._pending = self._pending, []
        for entry in pending:
            self._hold(entry)

    def _charge_pending(self) -> None:
        # Klavi answered another message: the released ones that failed since failed
        # for their own sake, and the failure counts as one of their deliveries.
        pending, self._pending = self._pending, []
        for entry in pending:
            self._later(entry, entry.outcome)

    def _give_up_aged(self) -> None:
        # A held or waiting request past max_age is given up now, not at its next try.
        for entries in (self._held, self._pending):
            for entry in [e for e in entries if self._age(e.stored) >= self._max_age]:
                entries.remove(entry)
                self._later(entry, entry.outcome)
        self.stats.held = len(self._held)

    def _later(self, entry: Failed, outcome: CancelResult) -> None:
        self._lanes.run(self._conclude_now(entry, outcome))

    async def _conclude_now(self, entry: Failed, outcome: CancelResult) -> None:
        try:  # its record, then ack, nak (a retry later) or term
            decision = self._decide(outcome, entry.delivery, entry.ref, entry.stored)
            await self._settle(entry.msg, decision, entry.delivery, entry.ref)
        except Exception:
            self.stats.unsettled += 1
            logger.exception("a delivery could not be handled; it will be redelivered")
        finally:
            self._in_progress.discard(entry.msg)
            self._tainted.discard(entry.ref)

    async def _hand_back_held(self) -> None:
        # Stopping in an outage: the held messages go back to the queue for another worker.
        self._hold_pending()
        held, self.stats.held = [entry.msg for entry in self._held], 0
        self._held.clear()
        self.stats.naked += await hand_back(held, self._in_progress, self._retry_delay)

    async def _stopping(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._halt.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _handle(
        self, msg: Msg, *, held: bool = False, probe: bool = False, retry: bool = False
    ) -> None:
        # *held*: a message held (or waiting), retried; *probe*: the one that tells
        # whether the outage is over; *retry*: a waiting one retried when no other cancel
        # tells whether Klavi is up.
        stats, outage = self.stats, self._outage
        loop = asyncio.get_running_loop()
        stats.in_flight += 1
        self._in_progress.add(msg, loop.time())
        keep, told, ref = False, False, ""
        try:
            delivery, ref, stored = delivery_of(msg)
            if delivery > 1 and not held:
                stats.redelivered += 1
            outcome = await cancel_message(self._client, msg.data, delivery, ref)
            if isinstance(outcome, CancelResult):
                told = True
                decision = self._after_cancel(msg, outcome, delivery, ref, stored, retry=retry)
                keep = decision is None
            else:
                decision = self._decide(outcome, delivery, ref, stored)
            if decision is not None:
                await self._settle(msg, decision, delivery, ref)
        except Exception:
            # A broker failure (or the client closed under us): leave the message; it
            # comes back after ack_wait.
            stats.unsettled += 1
            logger.exception("a delivery could not be handled; it will be redelivered")
        finally:
            if not keep:
                self._in_progress.discard(msg)
                self._tainted.discard(ref)
            stats.in_flight -= 1
            if probe and outage.probing:  # the probe failed, or could not tell
                outage.probe_failed(loop.time(), told=told)

    def _after_cancel(
        self, msg: Msg, outcome: CancelResult, delivery: int, ref: str, stored: float, *,
        retry: bool,
    ) -> Decision | None:  # fmt: skip
        """
        What a cancel's result means for the outage watch, then for its message: held
        (Klavi is down), waiting (Klavi's fault or its own? what follows tells), or
        settled now.  Returns what to settle it with, or None: it is kept for later.
        """
        outage = self._outage
        loop = asyncio.get_running_loop()
        failed = not is_final(outcome)
        # A message held through an outage that fails again says nothing of
        # Klavi (it may be why the outage was seen): it never makes one.
        tainted = failed and ref in self._tainted
        # A retry of a waiting message says nothing of Klavi's health: timed by
        # its own schedule, it would sample a Klavi that lets one cancel a
        # second through as one that answers half.
        change = None if tainted or retry else outage.record(failed, loop.time(), ref)
        if retry:  # the next retry at once after an answer, later after a failure
            self._retry_interval = (
                min(2 * self._retry_interval, LONGEST_PROBE) if failed else FIRST_PROBE
            )
            self._retry_at = loop.time() + (self._retry_interval if failed else 0.0)
        if change == "began":
            self._outage_began()
        elif change == "ended":
            logger.warning("Klavi answers again: retrying the held messages")
            self._release()
        if not failed:
            if self._pending and not retry and outage.healthy(loop.time()):
                self._charge_pending()
        elif outage.down and self._age(stored) < self._max_age:
            self._hold(Failed(msg, outcome, delivery, ref, stored))  # retried when Klavi answers
            return None
        elif not (outage.down or outage.healthy(loop.time(), shown=tainted)):
            # Klavi fails as many as it answers (just after an outage, too; for
            # a message held through it, it must have answered one since): its
            # own failure, or Klavi's?  What follows tells: an outage holds it
            # (`_hold_pending`); Klavi healthy again charges it a delivery
            # (`_charge_pending`).
            if not self._pending and not retry:  # the first waiting: retried soon
                self._retry_at = loop.time() + FIRST_PROBE
                self._retry_interval = FIRST_PROBE
            self._pending.append(Failed(msg, outcome, delivery, ref, stored))
            if sum(e.ref not in self._tainted for e in self._pending) >= THRESHOLD:
                outage.begin(loop.time())
                self._outage_began()
            return None
        return self._decide(outcome, delivery, ref, stored)

    def _decide(
        self, outcome: CancelResult | Poison | Decision, delivery: int, ref: str, stored: float
    ) -> Decision:
        """`decide()` with this worker's settings (a `Decision` already made stands)."""
        if isinstance(outcome, Decision):
            return outcome
        return decide(
            delivery, self._max_deliver, outcome, self._retry_delay, ref=ref,
            max_retry_delay=self._max_retry_delay, age=self._age(stored),
            max_age=self._max_age,
        )  # fmt: skip

    async def _settle(self, msg: Msg, decision: Decision, delivery: int, ref: str) -> None:
        if decision.halt:
            self._halt_on()
        await self._settler.settle(msg, decision, delivery, ref)

    def _age(self, enqueued: float) -> float:
        """Seconds since the request was stored in the stream (wall clocks: a guess)."""
        return time.time() - enqueued

    def _halt_on(self) -> None:
        self.halted = "Klavi refused the credentials: check them and restart the worker"
        if not self._halt.is_set():
            logger.error("stopping: %s", self.halted)
        self._halt.set()
