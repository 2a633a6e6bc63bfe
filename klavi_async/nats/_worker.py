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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final, Literal

import nats.errors
import nats.js.errors
from attrs import define
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
    DEAD_SUBJECT,
    Action,
    Decision,
    dead_letter_id,
    decide,
    minimal_dead_letter,
    parse_request,
)
from ._streams import MSG_ID, REQUESTS_STREAM

__all__ = ["CancelWorker", "WorkerStats"]

logger = logging.getLogger("klavi_async.nats")

_FETCH_TIMEOUT = 0.5  # how long one pull waits for messages; bounds how late a stop is seen
_RETRY_PAUSE = 0.25  # after a broker error (e.g. the server is restarting)
_TOO_LARGE_CODE: Final = 10054  # JetStream: "message size exceeds maximum allowed"

_Published = Literal["stored", "failed", "too_large"]


@define
class WorkerStats:
    """What a worker did so far; read it for progress lines and monitoring."""

    done: int = 0
    """Requests with their record published on `klavi.cancel.results`, then acked or termed."""
    ok: int = 0
    """Of those, the cancelled ones."""
    in_flight: int = 0
    """Messages being worked on now."""
    naked: int = 0
    """Deliveries handed back for a later retry."""
    dead: int = 0
    """Dead letters published on `klavi.cancel.dead`."""
    redelivered: int = 0
    """Deliveries that were not a message's first."""
    duplicates: int = 0
    """Record publishes the server dropped as already stored (a crash's leftovers)."""
    unsettled: int = 0
    """Deliveries left to come back after `ack_wait` (a record could not be published)."""

    def line(self) -> str:
        """One progress line, e.g. `done 10 (ok 9), in flight 3, naked 1, dead 0`."""
        return (
            f"done {self.done} (ok {self.ok}), in flight {self.in_flight}, "
            f"naked {self.naked}, dead {self.dead}, redelivered {self.redelivered}, "
            f"duplicates dropped {self.duplicates}"
        )


class CancelWorker:
    """
    Consume `KLAVI_CANCEL` with a durable pull consumer and cancel each request.

    *client* is shared by every message (one token cache, retry budget and rate limiter);
    the caller opens and closes it, and the NATS connection behind *js*.  The durable
    consumer is created or updated with *ack_wait* (seconds before an unacknowledged
    delivery comes back; long cancels send `in_progress()` every third of it).  The
    server redelivers without limit and the worker itself enforces *max_deliver*, so a
    worker killed on the last delivery still leaves the message to another.
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
    ) -> None:
        if not isinstance(client, KlaviClient):
            raise TypeError(f"client must be a KlaviClient, got {type(client).__name__}")
        for name, value in (("concurrency", concurrency), ("max_deliver", max_deliver)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if value < 1:
                raise ValueError(f"{name} must be >= 1")
        if not ack_wait > 0:
            raise ValueError("ack_wait must be > 0")
        if not retry_delay > 0:
            raise ValueError("retry_delay must be > 0 (a nak without a delay is immediate)")
        self._client = client
        self._js = js
        self._stream = stream
        self._durable = durable
        self._concurrency = concurrency
        self._ack_wait = float(ack_wait)
        self._max_deliver = max_deliver
        self._retry_delay = float(retry_delay)
        self._active: dict[int, list[Any]] = {}  # id(msg) -> [msg, last sign of life]
        self._halt = asyncio.Event()
        self._running = False
        self.stats = WorkerStats()
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
        tasks: set[asyncio.Task[None]] = set()
        sub = await self._subscribe()
        heartbeat = asyncio.create_task(self._heartbeats())
        stopping = asyncio.create_task(self._stopping(stop))
        try:
            while not stopping.done():
                free = self._concurrency - len(tasks)
                if free <= 0:
                    await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for msg in await self._fetch(sub, free):
                    if self._halt.is_set():  # no cancel can succeed: hand it straight back
                        await msg.nak(delay=self._retry_delay)
                        self.stats.naked += 1
                        continue
                    task = asyncio.create_task(self._handle(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
        finally:
            for task in (*tasks, heartbeat, stopping):
                task.cancel()
            await asyncio.gather(*tasks, heartbeat, stopping, return_exceptions=True)
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                logger.debug("unsubscribe failed: %s", type(exc).__name__)
            self._running = False

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
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for entry in list(self._active.values()):
                msg, last = entry
                if now - last < interval:
                    continue
                entry[1] = now
                try:
                    await msg.in_progress()
                except nats.errors.Error as exc:
                    logger.debug("in_progress failed: %s", type(exc).__name__)

    async def _handle(self, msg: Msg) -> None:
        stats = self.stats
        stats.in_flight += 1
        self._active[id(msg)] = [msg, time.monotonic()]
        try:
            meta = msg.metadata
            delivery = meta.num_delivered
            if delivery > 1:
                stats.redelivered += 1
            ref = f"{meta.stream}:{meta.sequence.stream}"
            decision = await self._decision(msg.data, delivery, ref)
            await self._settle(msg, decision, delivery, ref)
        except Exception:
            # A broker failure (or the client closed under us): leave the message; it
            # comes back after ack_wait.
            stats.unsettled += 1
            logger.exception("a delivery could not be handled; it will be redelivered")
        finally:
            del self._active[id(msg)]
            stats.in_flight -= 1

    async def _decision(self, data: bytes, delivery: int, ref: str) -> Decision:
        """What `decide()` says for this delivery; a dead letter if the worker fails on it."""
        try:
            parsed = parse_request(data)
            outcome = await self._cancel(parsed) if isinstance(parsed, CancelRequest) else parsed
            return decide(delivery, self._max_deliver, outcome, self._retry_delay, ref=ref)
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
                Action.TERM, record=record, subject=DEAD_SUBJECT, msg_id=dead_letter_id(ref)
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

    async def _settle(self, msg: Msg, decision: Decision, delivery: int, ref: str) -> None:
        stats = self.stats
        if decision.halt:
            self.halted = "Klavi refused the credentials: check them and restart the worker"
            if not self._halt.is_set():
                logger.error("stopping: %s", self.halted)
            self._halt.set()
        record, subject, msg_id = decision.record, decision.subject, decision.msg_id
        if record is not None and subject and msg_id:
            published = await self._publish(subject, msg_id, record)
            if published == "too_large":
                # It never will fit: end the message with a dead letter that does.
                logger.warning("the record of %s is too large to publish: dead-lettered", ref)
                record = minimal_dead_letter("record_too_large", delivery, ref)
                subject, msg_id = DEAD_SUBJECT, dead_letter_id(ref)
                decision = Decision(Action.TERM, record=record, subject=subject, msg_id=msg_id)
                published = await self._publish(subject, msg_id, record)
            if published != "stored":
                stats.unsettled += 1
                return  # no record, no ack: the message comes back after ack_wait
        if decision.action is Action.NAK:
            await msg.nak(delay=decision.delay or self._retry_delay)
            stats.naked += 1
            return
        if decision.action is Action.ACK:
            await msg.ack()
        else:
            await msg.term()
        if subject == DEAD_SUBJECT:
            stats.dead += 1
        else:
            stats.done += 1
            if record is not None and record.get("ok") is True:
                stats.ok += 1

    async def _publish(self, subject: str, msg_id: str, record: dict[str, Any]) -> _Published:
        """Publish a record, retrying through a reconnect within ack_wait."""
        body = json.dumps(record, separators=(",", ":")).encode()
        deadline = time.monotonic() + self._ack_wait
        pause = 0.1
        while True:
            try:
                ack = await self._js.publish(subject, body, headers={MSG_ID: msg_id})
            except nats.errors.MaxPayloadError:
                return "too_large"  # over the server's max_payload: no retry can help
            except nats.js.errors.APIError as exc:
                if exc.err_code == _TOO_LARGE_CODE:  # over the stream's max_msg_size
                    return "too_large"
                if time.monotonic() + pause > deadline:
                    logger.warning("could not publish a record (%s)", type(exc).__name__)
                    return "failed"
            except (nats.errors.Error, TimeoutError) as exc:
                if time.monotonic() + pause > deadline:
                    logger.warning("could not publish a record (%s)", type(exc).__name__)
                    return "failed"
            else:
                if ack.duplicate:
                    self.stats.duplicates += 1
                return "stored"
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
