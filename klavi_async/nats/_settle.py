"""
Settling one delivery: publish the record `decide()` asked for, then ack, nak or term.

Only a stored record is followed by an ack or a term: a record that could not be
published leaves the message unsettled, to come back after `ack_wait` (its cancel is
re-sent with the same key, and the record republished).  Each request's record has its
own subject, and the server keeps one: a record is published only onto an empty subject
(`Nats-Expected-Last-Subject-Sequence: 0`), so a worker frozen past `ack_wait` and any
duplicate window cannot add a second one; a final record replaces a non-final one (by
its sequence), never the other way round.  A results stream deleted under a running
worker is created again, as a start creates it.  A record too large for the server ends the
message with a minimal dead letter instead: it never will fit, and the server redelivers
without limit.

A record's first publish is the cheap one (`_first`): a plain publish whose answer comes
to one inbox for all of them, read with the C JSON scanner; nats-py's `js.publish` costs
a request inbox, a timer task and a parsed `PubAck` per record.  One timer (`_expire`)
watches every first publish's answer, not one each.  Anything but a clean "stored" (an
error, no answer, no stream) goes to the careful `publish`, which starts over with the
same id: the server drops the repeat or tells what stands.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

import nats.errors
import nats.js.errors
from attrs import define
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from .._speedups import parse_json
from ._consumer import unsubscribe
from ._decide import (
    DEAD_SUBJECT,
    Action,
    Decision,
    dead_letter_id,
    dead_subject,
    is_final_record,
    minimal_dead_letter,
)
from ._streams import MSG_ID, RESULTS_STREAM, ensure_streams

__all__ = ["Settler", "WorkerStats"]

logger = logging.getLogger("klavi_async.nats")

_TOO_LARGE_CODE: Final = 10054  # JetStream: "message size exceeds maximum allowed"
_WRONG_LAST_CODE: Final = 10071  # JetStream: "wrong last sequence" (the subject holds one)
EXPECTED_LAST: Final = "Nats-Expected-Last-Subject-Sequence"
_FIRST_ANSWER: Final = 5.0  # seconds a first publish waits for its answer (nats-py's own)
# asyncio runs a timer up to one clock tick before its time (15.6 ms on Windows): a wait
# due within this is over, else `_expire` would set itself again for the same instant.
_EARLY: Final = 0.02


def _make_encoder() -> Callable[[dict[str, Any]], bytes]:
    """
    `json.dumps(record, separators=(",", ":")).encode()`, for a record (a flat dict of
    JSON values, never circular).  `JSONEncoder.encode` builds its C encoder again on
    every call; this one is built once (without the circular check, which a flat dict
    does not need).  The plain encoder where the C one is missing.
    """
    plain = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)  # typeshed leaves it out
    if make is None:  # pragma: no cover - CPython has it
        return lambda record: plain.encode(record).encode()
    ascii_ = json.encoder.encode_basestring_ascii
    # markers (no circular check), default, encoder, indent, key separator, item
    # separator, sort_keys, skipkeys, allow_nan: what `plain` would pass it.
    chunks = make(None, plain.default, ascii_, None, ":", ",", False, False, True)
    return lambda record: "".join(chunks(record, 0)).encode()


encode_record: Final = _make_encoder()

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
    held: int = 0
    """Messages held through a Klavi outage now, to be retried when it ends."""
    outages: int = 0
    """Klavi outages recognised (the worker's recent cancels all failed retryably)."""

    def line(self) -> str:
        """One progress line, e.g. `done 10 (ok 9), in flight 3, naked 1, dead 0`."""
        return (
            f"done {self.done} (ok {self.ok}), in flight {self.in_flight}, "
            f"naked {self.naked}, dead {self.dead}, redelivered {self.redelivered}, "
            f"duplicates dropped {self.duplicates}"
            + (f", Klavi outages {self.outages} (held now {self.held})" if self.outages else "")
            + (f", left to come back {self.unsettled}" if self.unsettled else "")
        )


class Settler:
    """A worker's settling of deliveries: its stream context, counters and timings."""

    __slots__ = (
        "_ack_wait", "_answers", "_box", "_js", "_remaking", "_retry_delay", "_sent",
        "_waiting", "_watch", "stats",
    )  # fmt: skip

    def __init__(
        self, js: JetStreamContext, stats: WorkerStats, *, ack_wait: float, retry_delay: float
    ) -> None:
        self._js, self.stats = js, stats
        self._ack_wait, self._retry_delay = ack_wait, retry_delay
        self._remaking = asyncio.Lock()  # one worker's publishes remake a stream once
        self._box: Subscription | None = None  # the first publishes' answers, once open
        self._answers = ""  # their inbox prefix
        self._sent = 0  # first publishes so far: each answer's token
        # By token, oldest first, each with when it stops waiting for its answer.
        self._waiting: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self._watch: asyncio.TimerHandle | None = None  # `_expire`, while any wait

    async def open(self) -> None:
        """Subscribe the inbox of the first publishes' answers (else every one is careful)."""
        nc = self._js._nc
        self._answers = nc.new_inbox()
        self._box = await nc.subscribe(self._answers + ".*", cb=self._answer)

    async def close(self) -> None:
        box, self._box = self._box, None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        # Its timer is gone: a first publish still waiting has its answer now (none), so
        # it goes on to the careful publish, as it would have at its own deadline.
        waiting, self._waiting = self._waiting, {}
        for waiter, _ in waiting.values():
            if not waiter.done():
                waiter.set_result(b"")
        await unsubscribe(box)

    async def _answer(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject[len(self._answers) + 1 :], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(msg.data)

    def _expire(self) -> None:
        # The one timer of the first publishes: every answer not come by its time is
        # none (b"", not JSON).  They wait alike, so the oldest first: it stops at the
        # first one still in time, and comes back for it.
        self._watch = None
        waiting, now = self._waiting, asyncio.get_running_loop().time()
        while waiting:
            token = next(iter(waiting))
            waiter, until = waiting[token]
            if until > now + _EARLY:
                self._watch = asyncio.get_running_loop().call_at(until, self._expire)
                return
            del waiting[token]
            if not waiter.done():
                waiter.set_result(b"")

    async def _first(self, subject: str, msg_id: str, body: bytes) -> bool:
        """Publish *body* once onto an empty *subject*; whether it is stored now."""
        self._sent += 1
        token = str(self._sent)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes] = loop.create_future()
        until = loop.time() + min(_FIRST_ANSWER, self._ack_wait / 3)
        self._waiting[token] = (waiter, until)
        if self._watch is None:
            self._watch = loop.call_at(until, self._expire)
        headers = {MSG_ID: msg_id, EXPECTED_LAST: "0"}
        try:
            await self._js._nc.publish(
                subject, body, reply=f"{self._answers}.{token}", headers=headers
            )
            answer = parse_json(await waiter)  # None: not JSON (or no answer in time)
        except nats.errors.Error:
            return False  # refused, too large: the careful publish tells
        finally:
            self._waiting.pop(token, None)
        if not isinstance(answer, dict) or "error" in answer or "seq" not in answer:
            return False  # e.g. a 503 without a body (no stream): the careful publish tells
        if answer.get("duplicate") is True:
            self.stats.duplicates += 1
        return True

    async def settle(self, msg: Msg, decision: Decision, delivery: int, ref: str) -> None:
        """Publish the decision's record (if any), then ack, nak or term the delivery."""
        stats = self.stats
        record, subject, msg_id = decision.record, decision.subject, decision.msg_id
        if record is not None and subject and msg_id:
            body = encode_record(record)
            first = self._box is not None and await self._first(subject, msg_id, body)
            published = "stored" if first else await self.publish(subject, msg_id, record)
            if published == "too_large":
                # It never will fit: end the message with a dead letter that does.
                logger.warning("the record of %s is too large to publish: dead-lettered", ref)
                record = minimal_dead_letter("record_too_large", delivery, ref)
                subject, msg_id = dead_subject(ref), dead_letter_id(ref)
                decision = Decision(Action.TERM, record=record, subject=subject, msg_id=msg_id)
                published = await self.publish(subject, msg_id, record)
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
        if subject is not None and subject.startswith(DEAD_SUBJECT + "."):
            stats.dead += 1
        else:
            stats.done += 1
            if record is not None and record.get("ok") is True:
                stats.ok += 1

    async def publish(self, subject: str, msg_id: str, record: dict[str, Any]) -> _Published:
        """
        Publish *record* as the only one on *subject*, retrying through a reconnect
        within ack_wait.  A record already there stands ("stored": nothing to add),
        unless it is not final and this one is: then this one replaces it.
        """
        body = encode_record(record)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ack_wait
        pause, expected = 0.1, 0  # the subject's last sequence we accept: 0, none
        while True:
            headers = {MSG_ID: msg_id, EXPECTED_LAST: str(expected)}
            try:
                ack = await self._js.publish(subject, body, headers=headers)
            except nats.errors.MaxPayloadError:
                return "too_large"  # over the server's max_payload: no retry can help
            except nats.js.errors.NoStreamResponseError:
                # No stream takes the subject: the results stream was deleted.  Made
                # again as a start makes it (a record kept is worth more than its
                # absence); records stored before are gone with it.
                if loop.time() + pause > deadline:
                    logger.warning(
                        "could not publish a record (no answer from the results stream: "
                        "a cluster electing its leader, or the stream deleted)"
                    )
                    return "failed"
                await self._remake_streams()
            except nats.js.errors.APIError as exc:
                if exc.err_code == _TOO_LARGE_CODE:  # over the stream's max_msg_size
                    return "too_large"
                if exc.err_code == _WRONG_LAST_CODE and loop.time() < deadline:
                    standing = await self._standing(subject)
                    if standing is not None and (standing[1] or not is_final_record(record)):
                        self.stats.duplicates += 1  # recorded before (another worker, a crash)
                        return "stored"
                    expected = 0 if standing is None else standing[0]
                    continue  # replace the non-final record (or fill the emptied subject)
                if loop.time() + pause > deadline:
                    logger.warning("could not publish a record (%s)", type(exc).__name__)
                    return "failed"
            except (nats.errors.Error, TimeoutError) as exc:
                if loop.time() + pause > deadline:
                    logger.warning("could not publish a record (%s)", type(exc).__name__)
                    return "failed"
            else:
                if ack.duplicate:
                    self.stats.duplicates += 1
                return "stored"
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _remake_streams(self) -> None:
        async with self._remaking:
            try:
                await self._js.stream_info(RESULTS_STREAM)
                return  # another publish made it again meanwhile
            except nats.js.errors.NotFoundError:
                pass
            except (nats.errors.Error, TimeoutError):
                return  # the server is not answering: the publish is retried
            logger.warning("the stream %s was deleted: creating it again", RESULTS_STREAM)
            try:
                await ensure_streams(self._js)
            except Exception as exc:  # e.g. refused by the account's limits: retried
                logger.warning("could not create %s (%s)", RESULTS_STREAM, type(exc).__name__)

    async def _standing(self, subject: str) -> tuple[int, bool] | None:
        """The sequence of the record on *subject*, and whether it is final; None: none."""
        try:
            msg = await self._js.get_last_msg(RESULTS_STREAM, subject)
        except nats.js.errors.NotFoundError:
            return None
        try:
            record = json.loads(msg.data or b"")
        except ValueError:
            record = None  # not a record of ours: a final one replaces it
        final = isinstance(record, dict) and is_final_record(record)
        return msg.seq or 0, final
