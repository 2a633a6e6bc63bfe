"""
Reading what the workers concluded: the records and dead letters in `KLAVI_CANCEL_RESULTS`.

`read_results()` reads them with an ephemeral pull consumer (no acks, in memory, deleted
when the reading ends; the server drops it on its own if the reader dies), up to what
the stream held when it started, or with *follow* until told to stop (a new consumer
taking over from the last message read if the server restarts).  `result_line()`
is the JSON line `klavi-async results` writes for one, and `ResultsSummary` counts them
by outcome.  A record is on `klavi.cancel.results.<key>` (or, from an older worker, on
`klavi.cancel.results` itself), a dead letter on `klavi.cancel.dead[.<message>]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from typing import Any, Final

import nats.errors
import nats.js.errors
from attrs import define, field, frozen
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .._documents import clip_kept
from ._decide import DEAD_SUBJECT, RESULTS_SUBJECT, is_final_record
from ._streams import RESULTS_STREAM

__all__ = ["OUTCOMES", "RESULT_FILTERS", "ResultsSummary", "StoredMessage", "read_results"]

logger = logging.getLogger("klavi_async.nats")

RESULT_FILTERS: Final = (RESULTS_SUBJECT, f"{RESULTS_SUBJECT}.>", DEAD_SUBJECT, f"{DEAD_SUBJECT}.>")
"""What the reader asks for: records and dead letters, on their own subjects or the roots."""
OUTCOMES: Final = (
    "cancelled",
    "already_cancelled",
    "failed",
    "not_final",
    "outcome_unknown",
    "dead_letter",
    "unreadable",
)
_LABELS: Final = {name: name.replace("_", " ") for name in OUTCOMES[:-2]} | {
    "dead_letter": "dead letters",
    "unreadable": "unreadable",
}
_BATCH: Final = 256
_FETCH_WAIT: Final = 1.0  # seconds one pull waits for new messages
_INACTIVE: Final = 60.0  # the server deletes the consumer after this long unused
_RETRY_PAUSE: Final = 0.25  # following: the first pause after a broker error, doubling
_MAX_RETRY_PAUSE: Final = 5.0
_RAW_LIMIT: Final = 1000  # characters kept of a message that is not JSON


@frozen
class StoredMessage:
    """One message of the results stream, as stored."""

    subject: str
    seq: int
    """Its sequence in the stream."""
    time: datetime | None
    """When the server stored it."""
    data: bytes


async def read_results(
    js: JetStreamContext,
    *,
    follow: bool = False,
    stop: asyncio.Event | None = None,
    patience: float = 30.0,
) -> AsyncGenerator[StoredMessage, None]:
    """
    Yield the records and dead letters in `KLAVI_CANCEL_RESULTS`, oldest first.

    Without *follow* it ends after the last message the stream held when it started
    (at once if it held none).  A broker error (a cluster electing the stream's leader
    after a node died, a server restarting) is retried, reading on from the message
    after the last one yielded, until errors have lasted *patience* seconds in a row:
    then the last one is raised.  On a cluster it reads on until the stream's leader
    has nothing more (a consumer on a replica catching up sees fewer messages than were
    stored), and a stream without a leader is asked again, not taken for an empty one.
    With *follow* it goes on with the new ones, and retries for ever.  Either way it
    ends when *stop* is set.  Use it with `contextlib.aclosing()`, so the consumer is
    deleted however the reading ends.
    """
    if patience < 0 or math.isnan(patience):
        raise ValueError(f"patience must be 0 or more seconds, got {patience!r}")
    loop = asyncio.get_running_loop()
    failing_since: float | None = None
    last: int | None = None
    start, pause = 1, _RETRY_PAUSE
    while stop is None or not stop.is_set():
        try:
            if last is None and not follow:
                info = await js.stream_info(RESULTS_STREAM)
                if info.cluster is not None and not info.cluster.leader:
                    raise ClusterNotReady("the stream has no leader")  # an empty state, not its own
                if info.state.messages == 0:
                    return
                last = info.state.last_seq
            async with _consumer(js, start) as sub:
                async for message in _pull(js, sub, start, last, stop):
                    start, pause, failing_since = message.seq + 1, _RETRY_PAUSE, None
                    yield message
            return
        except (nats.errors.Error, TimeoutError) as exc:
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            if not follow and now - failing_since >= patience:
                raise
            name = type(exc).__name__
            logger.warning("reading the results failed (%s); reading again from %d", name, start)
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
            pause = min(pause * 2, _MAX_RETRY_PAUSE)


@contextlib.asynccontextmanager
async def _consumer(
    js: JetStreamContext, start: int
) -> AsyncIterator[JetStreamContext.PullSubscription]:
    """An ephemeral consumer of the records from sequence *start*, deleted afterwards."""
    config = ConsumerConfig(
        filter_subjects=list(RESULT_FILTERS),
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=_INACTIVE,
        mem_storage=True,
        num_replicas=1,
    )
    consumer = await js.add_consumer(RESULTS_STREAM, config)
    try:
        sub = await js.pull_subscribe_bind(consumer=consumer.name, stream=RESULTS_STREAM)
        try:
            yield sub
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await js.delete_consumer(RESULTS_STREAM, consumer.name)


class ClusterNotReady(nats.errors.Error):
    """The cluster cannot tell yet (no leader; a replica catching up): read again."""


async def _pull(
    js: JetStreamContext,
    sub: JetStreamContext.PullSubscription,
    start: int,
    last: int | None,
    stop: asyncio.Event | None,
) -> AsyncGenerator[StoredMessage, None]:
    """The consumer's messages (from *start*) up to *last* (None: for ever), until *stop*."""
    after = start - 1  # the last sequence yielded, or the one before the first asked for
    while stop is None or not stop.is_set():
        msgs = await _fetch(sub, stop)
        if not msgs:
            # Nothing came: is anything left (or, following, is the consumer still there)?
            pending = (await sub.consumer_info()).num_pending
            if last is not None and not pending:
                await _check_the_end(js, after, last)
                return  # what was there was deleted meanwhile (replaced, expired)
            continue
        for msg in msgs:
            meta = msg.metadata
            seq = meta.sequence.stream
            if last is not None and seq > last:
                return  # stored after the start: not asked for
            yield StoredMessage(msg.subject, seq, meta.timestamp, msg.data)
            after = seq
            if last is not None and (seq >= last or meta.num_pending == 0):
                if seq < last:
                    await _check_the_end(js, seq, last)
                return
            if stop is not None:  # a signal is handled on a turn of the loop: give it one
                await asyncio.sleep(0)
                if stop.is_set():
                    return


async def _check_the_end(js: JetStreamContext, after: int, last: int) -> None:
    """
    Raise `ClusterNotReady` if the stream's leader holds a message after *after*, up to
    *last*, that the consumer did not count: a consumer on a replica still catching up
    (its node just restarted) sees fewer messages than were stored.
    """
    try:
        msg = await js.get_msg(RESULTS_STREAM, seq=after + 1, subject=">", next=True)
    except nats.js.errors.NotFoundError:
        return  # nothing after: the end
    if msg.seq is not None and msg.seq <= last:
        raise ClusterNotReady(f"the stream holds {msg.seq}, its consumer said no more")


async def _fetch(sub: JetStreamContext.PullSubscription, stop: asyncio.Event | None) -> list[Msg]:
    """The next messages; none after `_FETCH_WAIT` without any, or once *stop* is set."""
    fetching = asyncio.ensure_future(sub.fetch(_BATCH, timeout=_FETCH_WAIT))
    waiters: set[asyncio.Future[Any]] = {fetching}
    if stop is not None:
        waiters.add(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.wait(waiters)
    if fetching.cancelled():
        return []  # stopped
    try:
        return fetching.result()
    except TimeoutError:  # nothing new
        return []


def result_line(message: StoredMessage) -> dict[str, Any]:
    """
    The JSON line for *message*: `subject`, `seq`, `time`, `outcome` and `record` (the
    record as published).  A message that is not JSON has `outcome` `"unreadable"`,
    `record` null, and `raw`: its text, clipped, with any CPF/CNPJ masked.
    """
    line: dict[str, Any] = {
        "subject": message.subject,
        "seq": message.seq,
        "time": message.time.isoformat() if message.time is not None else None,
    }
    try:
        record = json.loads(message.data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        text = message.data.decode("utf-8", "replace")
        line.update(outcome="unreadable", record=None, raw=clip_kept(text, _RAW_LIMIT))
        return line
    line.update(outcome=outcome(message.subject, record), record=record)
    return line


def outcome(subject: str, record: object) -> str:
    """What one record says happened: one of `OUTCOMES`."""
    if not isinstance(record, dict):
        return "unreadable"
    if subject == DEAD_SUBJECT or subject.startswith(DEAD_SUBJECT + "."):
        return "dead_letter"
    if record.get("ok") is True:
        return "already_cancelled" if record.get("already_cancelled") is True else "cancelled"
    if record.get("outcome_unknown") is True:
        return "outcome_unknown"
    return "failed" if is_final_record(record) else "not_final"


@define
class ResultsSummary:
    """The counts `klavi-async results` prints: by outcome, and what is behind them."""

    outcomes: Counter[str] = field(factory=Counter)
    failed: Counter[str] = field(factory=Counter)
    """Final failures by `kind`."""
    not_final: Counter[str] = field(factory=Counter)
    """Failures a later delivery or a new enqueue may still settle, by `kind`."""
    dead: Counter[str] = field(factory=Counter)
    """Dead letters by `reason`."""

    def add(self, line: dict[str, Any]) -> None:
        """Count one line of `result_line()`."""
        found = line["outcome"]
        self.outcomes[found] += 1
        record = line["record"]
        if found == "failed":
            self.failed[str(record.get("kind"))] += 1
        elif found == "not_final":
            self.not_final[str(record.get("kind"))] += 1
        elif found == "dead_letter":
            self.dead[str(record.get("reason"))] += 1

    def lines(self) -> list[str]:
        """The summary: the counts by outcome on one line, then each breakdown there is."""
        total = sum(self.outcomes.values())
        counts = ", ".join(f"{_LABELS[name]} {self.outcomes[name]}" for name in OUTCOMES)
        lines = [f"{total} message{'' if total == 1 else 's'}: {counts}"]
        for title, counter in (
            ("failed by kind", self.failed),
            ("not final by kind", self.not_final),
            ("dead letters by reason", self.dead),
        ):
            if counter:
                found = ", ".join(f"{key} {n}" for key, n in sorted(counter.items()))
                lines.append(f"{title}: {found}")
        return lines
