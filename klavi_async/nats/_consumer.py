"""
The worker's durable pull consumer, kept alive: pulled from, and made again when gone;
and the heartbeats of the deliveries it works on (`InProgress`).

Messages are pulled as the JetStream protocol has it, without nats-py's `fetch()`
(which spends two tasks and a timer on every message): a pull request asks for as many
messages as the worker has free slots, the server sends them to this consumer's inbox,
and the inbox's callback puts them in a queue (`take()` empties it) and wakes the
worker.  Pulls are counted (`_credit`: asked for, not yet delivered or ended), so a
worker never asks for more than its free slots; a pull ends delivered, or with a 408
naming the messages it will not send; one not heard of past its expiry (a reconnect,
a leader change) is written off.

A pull fails for a moment while the server restarts or a cluster elects a leader, and
for good once the consumer is gone: an operator deleted its stream (and an `enqueue`
may have made the stream again, without the consumer).  After a failed pull `Consumer`
asks the server whether the consumer is there, and creates it again (with the requests
stream, as a start does) when it is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from ._decide import LONGEST
from ._streams import REQUESTS_STREAM, ensure_streams

__all__ = ["Bell", "Consumer", "InProgress", "hand_back", "unsubscribe"]

logger = logging.getLogger("klavi_async.nats")

FETCH_TIMEOUT: Final = 0.5  # how long one pull waits for messages; bounds how late a stop is seen
RETRY_PAUSE: Final = 0.25  # after a broker error (e.g. the server is restarting)
LOST_AFTER: Final = 1.0  # past its expiry, a pull not heard of is looked into
_PULL_ENDED: Final = frozenset({"404", "408"})  # no messages now; the pull expired
_STATUS: Final = "Status"
_PENDING: Final = "Nats-Pending-Messages"  # what an ended pull will not send


def _nothing() -> None:
    return None


class Bell:
    """
    What one loop waits on (`wait`) until anyone `ring`s: a message came, a cancel ended,
    a stop.  A ring while nobody waits is kept: the next wait returns at once.
    """

    __slots__ = ("_rung", "_waiter")

    def __init__(self) -> None:
        self._rung = False
        self._waiter: asyncio.Future[None] | None = None

    def reset(self) -> None:
        """Forget a ring nobody waited for."""
        self._rung = False

    def ring(self, *_: object) -> None:
        self._rung = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until a ring, or *timeout* seconds (at most `LONGEST`)."""
        if not self._rung:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(min(timeout, LONGEST), self.ring)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._rung = False


class Consumer:
    """
    One worker's durable consumer *durable* on *stream*.  *arrived* is called when
    messages come (or a pull fails), *in_progress* told of each message as it arrives.
    Strictly private.
    """

    __slots__ = (
        "_ack_wait", "_arrived", "_bell", "_box", "_credit", "_durable", "_failed",
        "_in_progress", "_inbox", "_js", "_lost_at", "_next", "_ready", "_seen", "_stream",
    )  # fmt: skip

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        ack_wait: float,
        *,
        arrived: Callable[[], None] = _nothing,
        in_progress: InProgress | None = None,
    ) -> None:
        self._js, self._stream, self._durable, self._ack_wait = js, stream, durable, ack_wait
        self._arrived, self._in_progress = arrived, in_progress
        # nats-py names the API prefix (a domain's too) only on the context itself.
        prefix = getattr(js, "_prefix", "$JS.API")
        self._next = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._box: Subscription | None = None
        self._inbox = ""
        self._ready: deque[Msg] = deque()
        self._credit = 0  # messages pulled for and neither delivered nor ended
        self._lost_at = 0.0  # when every pull sent so far has expired (the loop's time)
        self._seen = False  # whether the server is known to hold every pull sent so far
        self._failed: str | None = None  # a pull's failure, to be looked into
        self._bell = Bell()  # what fetch() and hand_back() wait on

    async def open(self) -> None:
        """Create or update the consumer and subscribe its inbox; errors propagate."""
        try:
            await self._create()
        except nats.js.errors.NotFoundError:
            if self._stream != REQUESTS_STREAM:
                raise
            await ensure_streams(self._js)  # deleted since the start made it
            await self._create()
        nc = self._js._nc
        self._inbox = nc.new_inbox()  # a new one: a pull of an earlier run answers nothing here
        self._credit, self._failed, self._seen = 0, None, False
        self._box = await nc.subscribe(self._inbox, cb=self._receive)

    async def close(self) -> None:
        box, self._box = self._box, None
        await unsubscribe(box)

    @property
    def ready(self) -> int:
        """Messages delivered and not taken yet."""
        return len(self._ready)

    def take(self, limit: int) -> list[Msg]:
        """Up to *limit* of the delivered messages, oldest first; no wait."""
        ready = self._ready
        if len(ready) <= limit:
            taken = list(ready)
            ready.clear()
            return taken
        return [ready.popleft() for _ in range(limit)]

    async def pull(self, slots: int) -> None:
        """Ask for messages up to *slots*, counting what is delivered or asked for already."""
        if self._box is None:
            raise RuntimeError("Consumer.pull() before open()")
        if self._js._nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if self._failed is not None:
            await self._recover()
        loop = asyncio.get_running_loop()
        if self._credit and loop.time() > self._lost_at and not await self._written_off():
            return  # pulls the server may yet serve: no more until they are accounted for
        batch = slots - len(self._ready) - self._credit
        nc = self._js._nc
        if batch <= 0 or not nc.is_connected:  # a pull buffered meanwhile is served later
            return
        expires = int(FETCH_TIMEOUT * 1e9)
        request = json.dumps({"batch": batch, "expires": expires}).encode()
        try:
            await nc.publish(self._next, request, reply=self._inbox)
        except nats.errors.ConnectionClosedError:
            raise
        except nats.errors.Error as exc:  # e.g. reconnecting with a full buffer
            logger.warning("pull failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(RETRY_PAUSE)
            return
        self._credit += batch
        self._lost_at = loop.time() + FETCH_TIMEOUT + LOST_AFTER
        self._seen = False

    async def fetch(self, batch: int) -> list[Msg]:
        """Up to *batch* messages within `FETCH_TIMEOUT`; none after a broker error."""
        if not self._ready:
            self._bell.reset()  # what came before this fetch is not what it waits for
            await self.pull(batch)
            if not self._ready and self._failed is None:
                await self._bell.wait(FETCH_TIMEOUT)
        return self.take(batch)

    async def hand_back(self, in_progress: InProgress, delay: float | None) -> int:
        """
        Nak every message delivered and not taken, once the pulls sent have ended (or
        are written off): a stopping worker leaves none to wait out `ack_wait`.  Returns
        how many.
        """
        # Until the server says the last pull ended (its 408): a message naked while a
        # pull of ours is still open would come straight back to it, and be lost here.
        loop = asyncio.get_running_loop()
        self._bell.reset()
        while self._credit and self._failed is None and self._box is not None:
            left = self._lost_at - loop.time()
            if left > 0:
                await self._bell.wait(left)
            elif not await self._written_off() and not self._seen:
                break  # the server does not answer: what it holds comes back after ack_wait
        return await hand_back(self.take(len(self._ready)), in_progress, delay)

    async def _written_off(self) -> bool:
        """
        Past the expiry of every pull sent and no word of their end: whether they are
        gone.  Only once the server is known to have them all (it answered a request
        sent after them) and that long again has passed: a pull held up in a frozen
        server's socket, or in nats-py's buffer through a reconnect, reaches the server
        late and is served then.  False: wait (no answer yet, or the pulls are young).
        """
        if self._seen:
            self._credit = 0  # seen, expired, unheard of: gone
            return True
        try:  # not nc.flush(): a PING timed out breaks nats-py's reading when its PONG comes
            await self._js.consumer_info(self._stream, self._durable, timeout=LOST_AFTER)
        except nats.js.errors.NotFoundError:
            pass  # the consumer is gone, and its pulls with it
        except nats.errors.ConnectionClosedError:
            raise
        except (nats.errors.Error, TimeoutError):
            return False  # not answering: its pulls stand
        self._seen = True
        self._lost_at = asyncio.get_running_loop().time() + FETCH_TIMEOUT
        return False

    def _wake(self) -> None:
        self._bell.ring()
        self._arrived()

    async def _receive(self, msg: Msg) -> None:
        # The inbox's callback, run by nats-py's task for the subscription.
        headers = msg.headers or {}
        if not msg.reply:  # not a delivery (each has its $JS.ACK... subject): a status?
            status = headers.get(_STATUS)
            if status is None:
                return  # neither: something published to our inbox by someone else
        else:
            status = None  # a header named Status is the publisher's, not the server's
        if status is None:
            self._credit = max(0, self._credit - 1)
            self._ready.append(msg)
            if self._in_progress is not None:
                self._in_progress.add(msg, asyncio.get_running_loop().time())
            self._wake()
            return
        if status == "100":  # a heartbeat: never asked for
            return
        pending = headers.get(_PENDING)
        if pending is not None and pending.isdigit():
            self._credit = max(0, self._credit - int(pending))
        else:
            self._credit = 0  # how much ended is not said: ask again
        if status not in _PULL_ENDED and not headers.get("Description", "").startswith(
            ("Leadership Change", "Server Shutdown")
        ):
            self._failed = f"{status} {headers.get('Description', '')}".strip()
        self._wake()  # a pull ended: the worker may ask again

    async def _recover(self) -> None:
        why, self._failed = self._failed, None
        logger.warning("pull failed (%s); retrying", why)
        await self._again_if_gone()
        await asyncio.sleep(RETRY_PAUSE)

    async def _create(self) -> None:
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

    async def _again_if_gone(self) -> None:
        try:
            await self._js.consumer_info(self._stream, self._durable)
            return  # still there: a passing failure
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, TimeoutError):
            return  # the server is not answering: the next pull tells
        logger.warning(
            "the consumer %s of %s is gone (its stream deleted?): creating it again",
            self._durable,
            self._stream,
        )
        try:
            if self._stream == REQUESTS_STREAM:
                await ensure_streams(self._js)  # what a start creates; nothing changed
            await self._create()
        except Exception as exc:  # e.g. a stream of another name that is not there
            logger.warning("could not create the consumer (%s); retrying", type(exc).__name__)


async def unsubscribe(box: Subscription | None) -> None:
    """Unsubscribe *box* (if any); a broker error is only logged: the box is gone anyway."""
    if box is None:
        return
    try:
        await box.unsubscribe()
    except nats.errors.Error as exc:
        logger.debug("unsubscribe failed: %s", type(exc).__name__)


async def hand_back(msgs: list[Msg], in_progress: InProgress, delay: float | None) -> int:
    """Nak *msgs* (after *delay*, or at once), no longer in progress; how many went back."""
    naked = 0
    for msg in msgs:
        in_progress.discard(msg)
        try:
            await msg.nak(delay=delay)
            naked += 1
        except nats.errors.Error as exc:  # it comes back after ack_wait anyway
            logger.debug("nak failed: %s", type(exc).__name__)
    return naked


class InProgress:
    """
    The deliveries a worker works on (held ones too), each told to the server as in
    progress every third of `ack_wait`, so none comes back to another worker meanwhile.
    A message handled again (a held one retried) keeps its time: when the server last
    heard of it.  Strictly private.
    """

    __slots__ = ("_active", "_interval")

    def __init__(self, ack_wait: float) -> None:
        self._interval = ack_wait / 3
        self._active: dict[int, list[Any]] = {}  # id(msg) -> [msg, last sign of life]

    def add(self, msg: Msg, now: float) -> None:
        self._active.setdefault(id(msg), [msg, now])

    def discard(self, msg: Msg) -> None:
        self._active.pop(id(msg), None)

    def clear(self) -> None:
        self._active.clear()

    async def run(self) -> None:
        """Send the heartbeats, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval / 2)
            now = loop.time()
            for entry in list(self._active.values()):
                msg, last = entry
                if now - last < self._interval:
                    continue
                entry[1] = now
                try:
                    await msg.in_progress()
                except nats.errors.Error as exc:
                    logger.debug("in_progress failed: %s", type(exc).__name__)
