"""
The worker's durable pull consumer, kept alive: fetched from, and made again when gone;
and the heartbeats of the deliveries it works on (`InProgress`).

A fetch fails for a moment while the server restarts, and for good once the consumer is
gone: an operator deleted its stream (and an `enqueue` may have made the stream again,
without the consumer).  After a failed fetch `Consumer` asks the server whether the
consumer is there, and creates it again (with the requests stream, as a start does)
when it is not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from ._streams import REQUESTS_STREAM, ensure_streams

__all__ = ["Consumer", "InProgress"]

logger = logging.getLogger("klavi_async.nats")

FETCH_TIMEOUT: Final = 0.5  # how long one pull waits for messages; bounds how late a stop is seen
RETRY_PAUSE: Final = 0.25  # after a broker error (e.g. the server is restarting)


class Consumer:
    """One worker's durable consumer *durable* on *stream*.  Strictly private."""

    __slots__ = ("_ack_wait", "_durable", "_js", "_stream", "_sub")

    def __init__(self, js: JetStreamContext, stream: str, durable: str, ack_wait: float) -> None:
        self._js, self._stream, self._durable, self._ack_wait = js, stream, durable, ack_wait
        self._sub: JetStreamContext.PullSubscription | None = None

    async def open(self) -> None:
        """Create or update the consumer and bind to it; errors propagate."""
        try:
            self._sub = await self._subscribe()
        except nats.js.errors.NotFoundError:
            if self._stream != REQUESTS_STREAM:
                raise
            await ensure_streams(self._js)  # deleted since the start made it
            self._sub = await self._subscribe()

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await _unsubscribe(sub)

    async def fetch(self, batch: int) -> list[Msg]:
        """Up to *batch* messages within `FETCH_TIMEOUT`; none after a broker error."""
        if self._sub is None:
            raise RuntimeError("Consumer.fetch() before open()")
        try:
            return await self._sub.fetch(batch, timeout=FETCH_TIMEOUT)
        except TimeoutError:  # nats' own timeout errors subclass it; plain ones happen too
            return []
        except nats.errors.ConnectionClosedError:
            raise
        except nats.errors.Error as exc:
            logger.warning("fetch failed (%s); retrying", type(exc).__name__)
            await self._again_if_gone()
            await asyncio.sleep(RETRY_PAUSE)
            return []

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

    async def _again_if_gone(self) -> None:
        try:
            await self._js.consumer_info(self._stream, self._durable)
            return  # still there: a passing failure
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, TimeoutError):
            return  # the server is not answering: the next fetch tells
        logger.warning(
            "the consumer %s of %s is gone (its stream deleted?): creating it again",
            self._durable,
            self._stream,
        )
        try:
            if self._stream == REQUESTS_STREAM:
                await ensure_streams(self._js)  # what a start creates; nothing changed
            sub = await self._subscribe()
        except Exception as exc:  # e.g. a stream of another name that is not there
            logger.warning("could not create the consumer (%s); retrying", type(exc).__name__)
            return
        old, self._sub = self._sub, sub
        if old is not None:
            await _unsubscribe(old)


async def _unsubscribe(sub: JetStreamContext.PullSubscription) -> None:
    try:
        await sub.unsubscribe()
    except nats.errors.Error as exc:
        logger.debug("unsubscribe failed: %s", type(exc).__name__)


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
