"""
`CancelWorker`: cancel requests pulled from JetStream, one shared `KlaviClient`.

The loop fetches as many messages as there are free slots (never more in flight than
`concurrency`), runs each cancel with the message's idempotency key, publishes the
record `decide()` asks for and only then acks, naks or terms.  A worker killed between
the publish and the ack leaves the message to be redelivered: the cancel is re-sent with
the same key and the record republished with the same `Nats-Msg-Id`, which the results
stream drops as a duplicate, so each request keeps exactly one record.  A message the
worker fails on, or whose record is too large to publish, ends in a dead letter: the
server redelivers without limit, so leaving it unsettled would loop for ever.

When Klavi is down (`_outage`: the last cancels all failed retryably) the loop fetches
nothing, the failed messages are held (kept in progress, their deliveries unspent) and
one of them is retried as a probe when one is due; an answer releases them all.
Settling a delivery (the record, then ack, nak or term) is `_settle.Settler`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from .. import (
    CancelRequest,
    CancelResult,
    ClientClosedError,
    KlaviClient,
    deterministic_idempotency_key,
)
from ._decide import (
    Action,
    Decision,
    Poison,
    dead_letter_id,
    dead_subject,
    decide,
    is_final,
    minimal_dead_letter,
    parse_request,
)
from ._outage import Outage
from ._settle import Settler, WorkerStats
from ._streams import REQUESTS_STREAM

__all__ = ["CancelWorker", "WorkerStats"]

logger = logging.getLogger("klavi_async.nats")

LONGEST: Final = 1e9
"""The longest duration in seconds (31 years): under the server's int64 nanoseconds."""
_FETCH_TIMEOUT = 0.5  # how long one pull waits for messages; bounds how late a stop is seen
_RETRY_PAUSE = 0.25  # after a broker error (e.g. the server is restarting)


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
    message, holds the failed ones without spending their deliveries, and probes.
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
    ) -> None:
        if not isinstance(client, KlaviClient):
            raise TypeError(f"client must be a KlaviClient, got {type(client).__name__}")
        for name, value in (("concurrency", concurrency), ("max_deliver", max_deliver)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if value < 1:
                raise ValueError(f"{name} must be >= 1")
        # The server takes durations in int64 nanoseconds: 9.2e9 s at most.
        if not LONGEST >= ack_wait > 0:
            raise ValueError(f"ack_wait must be > 0 and at most {LONGEST:g} s")
        if not retry_delay > 0:
            raise ValueError("retry_delay must be > 0 (a nak without a delay is immediate)")
        if not LONGEST >= max_retry_delay >= retry_delay:
            raise ValueError(f"max_retry_delay must be >= retry_delay and at most {LONGEST:g} s")
        if not max_age > 0:
            raise ValueError("max_age must be > 0")
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
        self._active: dict[int, list[Any]] = {}  # id(msg) -> [msg, last sign of life]
        self._outage = Outage()
        self._held: deque[Msg] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._halt = asyncio.Event()
        self._running = False
        self.stats = WorkerStats()
        self._settler = Settler(js, self.stats, ack_wait=self._ack_wait, retry_delay=retry_delay)
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
        stop = stop if stop is not None else asyncio.Event()
        tasks = self._tasks
        sub = await self._subscribe()
        heartbeat = asyncio.create_task(self._heartbeats())
        stopping = asyncio.create_task(self._stopping(stop))
        loop = asyncio.get_running_loop()
        try:
            while not stopping.done():
                outage = self._outage
                if outage.down:  # Klavi's outage: no new message, one probe at a time
                    if outage.probe_due(loop.time()):
                        await self._probe(sub)
                    else:  # until the probe (running or due) or a cancel in flight ends
                        wait = None if outage.probing else outage.next_probe - loop.time()
                        await asyncio.wait(
                            {*tasks, stopping}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                        )
                    continue
                free = self._concurrency - len(tasks)
                if free <= 0:
                    await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for msg in await self._fetch(sub, free):
                    if self._halt.is_set():  # no cancel can succeed: hand it straight back
                        await msg.nak(delay=self._retry_delay)
                        self.stats.naked += 1
                        continue
                    self._start(msg)
            while tasks:  # a probe answered now releases the held ones: they finish too
                await asyncio.wait(set(tasks))
            await self._hand_back_held()
        finally:
            for task in (*tasks, heartbeat, stopping):
                task.cancel()
            await asyncio.gather(*tasks, heartbeat, stopping, return_exceptions=True)
            for msg in self._held:  # cancelled: they come back after ack_wait
                self._active.pop(id(msg), None)
            self._held.clear()
            self.stats.held = 0
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.debug("unsubscribe failed: %s", type(exc).__name__)
            self._running = False

    def _start(self, msg: Msg, *, held: bool = False, probe: bool = False) -> None:
        task = asyncio.create_task(self._handle(msg, held=held, probe=probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, sub: JetStreamContext.PullSubscription) -> None:
        # One held message (the longest held first), or one new one if none is held.
        if self._held:
            self.stats.held -= 1
            self._start(self._held.popleft(), held=True, probe=True)
            return
        msgs = await self._fetch(sub, 1)
        if not msgs:  # nothing to probe with: try again soon
            self._outage.probing = False
            return
        self._start(msgs[0], probe=True)

    def _release(self) -> None:
        # Klavi answers again: every held message is retried now.
        while self._held:
            self.stats.held -= 1
            self._start(self._held.popleft(), held=True)

    async def _hand_back_held(self) -> None:
        # Stopping in an outage: the held messages go back to the queue for another worker.
        while self._held:
            msg = self._held.popleft()
            self.stats.held -= 1
            self._active.pop(id(msg), None)
            try:
                await msg.nak(delay=self._retry_delay)
                self.stats.naked += 1
            except nats.errors.Error as exc:  # it comes back after ack_wait anyway
                logger.debug("nak failed: %s", type(exc).__name__)

    async def _stopping(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._halt.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            name=self._durable,
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            # Unlimited on the server: the worker counts deliveries itself and ends the
            # last one with a record, which a server-side limit would skip after a crash.
            max_deliver=-1,
        )
        await self._js.add_consumer(self._stream, config)
        return await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        try:
            return await sub.fetch(batch, timeout=_FETCH_TIMEOUT)
        except TimeoutError:  # nats' own timeout errors subclass it; plain ones happen too
            return []
        except nats.errors.ConnectionClosedError:
            raise
        except nats.errors.Error as exc:
            logger.warning("fetch failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(_RETRY_PAUSE)
            return []

    async def _heartbeats(self) -> None:
        interval = self._ack_wait / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval / 2)
            now = loop.time()
            for entry in list(self._active.values()):
                msg, last = entry
                if now - last < interval:
                    continue
                entry[1] = now
                try:
                    await msg.in_progress()
                except nats.errors.Error as exc:
                    logger.debug("in_progress failed: %s", type(exc).__name__)

    async def _handle(self, msg: Msg, *, held: bool = False, probe: bool = False) -> None:
        # *held*: a message held through an outage, retried; *probe*: the one that tells
        # whether the outage is over.
        stats, outage = self.stats, self._outage
        loop = asyncio.get_running_loop()
        stats.in_flight += 1
        self._active[id(msg)] = [msg, loop.time()]
        keep = told = False
        try:
            meta = msg.metadata
            delivery = meta.num_delivered
            if delivery > 1 and not held:
                stats.redelivered += 1
            stored = meta.timestamp.timestamp()
            # The message, stably across redeliveries and apart from a message with the
            # same sequence in a stream deleted and made again: its dead letter's subject.
            ref = f"{meta.stream}:{meta.sequence.stream}:{round(stored * 1e6)}"
            age = self._age(stored)
            outcome = await self._outcome(msg.data, delivery, ref)
            if isinstance(outcome, CancelResult):
                told, failed = True, not is_final(outcome)
                change = outage.record(failed, loop.time(), ref)
                if change == "began":
                    stats.outages += 1
                    logger.warning("Klavi outage: holding the failed messages; probing")
                elif change == "ended":
                    logger.warning("Klavi answers again: retrying the held messages")
                    self._release()
                if failed and outage.down and age < self._max_age:
                    keep = True  # held: retried when Klavi answers again
                    self._held.append(msg)
                    stats.held += 1
                    return
            decision = (
                outcome
                if isinstance(outcome, Decision)
                else decide(
                    delivery, self._max_deliver, outcome, self._retry_delay, ref=ref,
                    max_retry_delay=self._max_retry_delay, age=age, max_age=self._max_age,
                )
            )  # fmt: skip
            if decision.halt:
                self._halt_on()
            await self._settler.settle(msg, decision, delivery, ref)
        except Exception:
            # A broker failure (or the client closed under us): leave the message; it
            # comes back after ack_wait.
            stats.unsettled += 1
            logger.exception("a delivery could not be handled; it will be redelivered")
        finally:
            if not keep:
                del self._active[id(msg)]
            stats.in_flight -= 1
            if probe and outage.probing:  # the probe failed, or could not tell
                outage.probe_failed(loop.time(), told=told)

    def _age(self, enqueued: float) -> float:
        """Seconds since the request was stored in the stream (wall clocks: a guess)."""
        return time.time() - enqueued

    async def _outcome(
        self, data: bytes, delivery: int, ref: str
    ) -> CancelResult | Poison | Decision:
        """The cancel's outcome (or the poison); a dead letter if the worker fails on it."""
        try:
            parsed = parse_request(data)
            return await self._cancel(parsed) if isinstance(parsed, CancelRequest) else parsed
        except ClientClosedError:
            raise  # the worker's fault, not the message's: it comes back to another worker
        except Exception as exc:
            # Failing on this message once means failing on it every time, and the server
            # redelivers without limit: end it with a dead letter rather than loop.  The
            # type only: an exception's text may hold what the message held (a document).
            name = type(exc).__name__
            logger.error("the worker failed on %s (%s): dead-lettered", ref, name)
            record = minimal_dead_letter("worker_error", delivery, ref)
            record["message"] = (
                f"the worker failed on this message ({name}); if it was a valid request, "
                "check the payment's status before enqueueing it again"
            )
            return Decision(
                Action.TERM, record=record, subject=dead_subject(ref), msg_id=dead_letter_id(ref)
            )

    async def _cancel(self, request: CancelRequest) -> CancelResult:
        key = request.idempotency_key
        if key is None:
            try:
                key = deterministic_idempotency_key(request.payment_id, request.cancelled_by)
            except ValueError:
                key = None  # the cancel reports the invalid input itself
        if request.consent_id is not None:
            return await self._client.cancel_automatic_payment(
                request.consent_id,
                request.payment_id,
                cancelled_by=request.cancelled_by,
                identifier_type=request.identifier_type,
                idempotency_key=key,
            )
        return await self._client.cancel_payment(
            request.payment_id,
            cancelled_by=request.cancelled_by,
            identifier_type=request.identifier_type,
            idempotency_key=key,
        )

    def _halt_on(self) -> None:
        self.halted = "Klavi refused the credentials: check them and restart the worker"
        if not self._halt.is_set():
            logger.error("stopping: %s", self.halted)
        self._halt.set()
