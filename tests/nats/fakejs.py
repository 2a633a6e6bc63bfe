"""
An in-process JetStream for `CancelWorker` on virtual time: one work-queue stream, one
pull consumer, the results stream's de-duplication, and the server's redelivery rules
(`ack_wait` renewed by `in_progress()`, a delayed `nak()`, `term()`).

Only what the worker uses; a real nats-server covers the wire (tests/nats/conftest.py).
This one lets an outage of ten minutes run in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from types import SimpleNamespace
from typing import Any

from attrs import define, field
from nats.js.errors import BadRequestError, NotFoundError

from klavi_async.nats import REQUESTS_STREAM, request_message


@define
class _Sequence:
    stream: int


@define
class _Metadata:
    num_delivered: int
    stream: str
    sequence: _Sequence
    timestamp: datetime.datetime


@define(eq=False)
class FakeMsg:
    """One delivery of a stored message."""

    js: FakeJetStream
    seq: int
    data: bytes
    metadata: _Metadata

    headers = None
    reply = "$JS.ACK.fake"  # a delivery has its ack subject; a status none

    async def ack(self) -> None:
        self.js.settle(self, "ack")

    async def term(self) -> None:
        self.js.settle(self, "term")

    async def nak(self, delay: float | None = None) -> None:
        self.js.settle(self, "nak", delay or 0.0)

    async def in_progress(self) -> None:
        self.js.renew(self)


@define
class _Stored:
    data: bytes
    stored_at: datetime.datetime
    delivered: int = 0
    available_at: float = 0.0
    deadline: float | None = None
    """While delivered and unsettled: when it comes back (ack_wait)."""
    delivery: FakeMsg | None = None


@define
class _Ack:
    duplicate: bool


@define
class FakeJetStream:
    """The stream context, its pull subscription and the results, all in one."""

    loop: asyncio.AbstractEventLoop
    ack_wait: float = 30.0
    stored: dict[int, _Stored] = field(factory=dict)
    settled: dict[int, str] = field(factory=dict)
    """Sequence -> "ack" or "term": how each message left the queue."""
    settled_at: dict[int, float] = field(factory=dict)
    """Sequence -> when it left the queue (the loop's time)."""
    naks: int = 0
    records: list[tuple[str, dict[str, Any]]] = field(factory=list)
    _ids: set[str] = field(factory=set)
    _last: dict[str, int] = field(factory=dict)
    _changed: asyncio.Event = field(factory=asyncio.Event)
    _pulls: list[list[Any]] = field(factory=list)  # [batch left, expires at, deliver]
    _server: asyncio.Task[None] | None = None
    inboxes: int = 0
    subscribers: dict[str, Any] = field(factory=dict)  # inbox (prefix) -> callback

    def enqueue(self, requests: list[Any], *, age: float = 0.0) -> None:
        """Store the requests, enqueued *age* seconds ago by the wall clock."""
        when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age)
        for request in requests:
            body, _ = request_message(request)
            self.stored[len(self.stored) + 1] = _Stored(body, when)
        self._changed.set()

    @property
    def max_delivered(self) -> int:
        return max((entry.delivered for entry in self.stored.values()), default=0)

    # -- what CancelWorker calls -------------------------------------------------------

    async def add_consumer(self, stream: str, config: Any) -> None:
        assert stream == REQUESTS_STREAM
        self.ack_wait = config.ack_wait

    async def consumer_info(self, stream: str, durable: str, timeout: float = 5.0) -> Any:
        return SimpleNamespace(num_waiting=len(self._pulls))

    @property
    def _nc(self) -> _FakeConnection:
        return _FakeConnection(self)

    def pull(self, batch: int, expires: float, deliver: Any) -> None:
        """A pull request: up to *batch* messages to *deliver* until *expires* (loop time)."""
        self._pulls.append([batch, self.loop.time() + expires, deliver])
        if self._server is None or self._server.done():
            self._server = self.loop.create_task(self._serve())
        self._changed.set()

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.cancel()

    async def _serve(self) -> None:
        # Deliver to the waiting pulls in order; end an expired one with a 408 naming
        # what it will not send, as nats-server does.
        while self._pulls:
            now = self.loop.time()
            pull = self._pulls[0]
            ready = [seq for seq in self.stored if self._available(seq, now)][: pull[0]]
            for seq in ready:
                pull[0] -= 1
                await pull[2](self._deliver(seq, now))
            if pull[0] == 0:
                self._pulls.pop(0)
                continue
            if pull[1] <= now:
                self._pulls.pop(0)
                headers = {"Status": "408", "Nats-Pending-Messages": str(pull[0])}
                await pull[2](SimpleNamespace(headers=headers, data=b"", reply=""))
                continue
            self._changed.clear()
            wake = min([pull[1], *self._next_times(now)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(wake - now, 0.0))

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> _Ack:
        # The results stream: one record per subject, and the expected-sequence check
        # before the duplicate window's, as nats-server does.
        last = self._last.get(subject, 0)
        expected = headers.get("Nats-Expected-Last-Subject-Sequence")
        if expected is not None and int(expected) != last:
            raise BadRequestError(code=400, err_code=10071, description="wrong last sequence")
        msg_id = headers["Nats-Msg-Id"]
        if msg_id in self._ids:
            return _Ack(duplicate=True)
        self._ids.add(msg_id)
        self.records.append((subject, json.loads(body)))
        self._last[subject] = len(self.records)
        return _Ack(duplicate=False)

    async def get_last_msg(self, stream: str, subject: str) -> SimpleNamespace:
        if subject not in self._last:
            raise NotFoundError
        seq = self._last[subject]
        return SimpleNamespace(seq=seq, data=json.dumps(self.records[seq - 1][1]).encode())

    # -- the server's side -------------------------------------------------------------

    def _available(self, seq: int, now: float) -> bool:
        entry = self.stored[seq]
        if seq in self.settled or entry.available_at > now:
            return False
        return entry.deadline is None or entry.deadline <= now

    def _next_times(self, now: float) -> list[float]:
        times = []
        for seq, entry in self.stored.items():
            if seq in self.settled:
                continue
            times.append(entry.deadline if entry.deadline is not None else entry.available_at)
        return [t for t in times if t > now]

    def _deliver(self, seq: int, now: float) -> FakeMsg:
        entry = self.stored[seq]
        entry.delivered += 1
        entry.deadline = now + self.ack_wait
        metadata = _Metadata(entry.delivered, REQUESTS_STREAM, _Sequence(seq), entry.stored_at)
        entry.delivery = FakeMsg(self, seq, entry.data, metadata)
        return entry.delivery

    def _current(self, msg: FakeMsg) -> _Stored | None:
        entry = self.stored[msg.seq]
        # A delivery that timed out (ack_wait) and went to someone else settles nothing.
        return entry if entry.delivery is msg and msg.seq not in self.settled else None

    def settle(self, msg: FakeMsg, how: str, delay: float = 0.0) -> None:
        entry = self._current(msg)
        if entry is None:
            return
        entry.deadline, entry.delivery = None, None
        if how == "nak":
            self.naks += 1
            entry.available_at = self.loop.time() + delay
        else:
            self.settled[msg.seq] = how
            self.settled_at[msg.seq] = self.loop.time()
        self._changed.set()

    def renew(self, msg: FakeMsg) -> None:
        entry = self._current(msg)
        if entry is not None:
            entry.deadline = self.loop.time() + self.ack_wait


@define
class _FakeConnection:
    """
    The connection under the fake context: the worker's inboxes, its pull requests, and
    the records it publishes with a reply inbox (answered as the results stream would).
    """

    js: FakeJetStream

    is_closed = False
    is_connected = True

    async def flush(self, timeout: int) -> None:
        return None

    def new_inbox(self) -> str:
        self.js.inboxes += 1
        return f"_INBOX.fake{self.js.inboxes}"

    async def subscribe(self, subject: str, cb: Any) -> _FakeSubscription:
        self.js.subscribers[subject.removesuffix(".*")] = cb
        return _FakeSubscription(self.js, subject)

    async def publish(
        self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None = None
    ) -> None:
        deliver = self.js.subscribers[reply.rsplit(".", 1)[0] if headers else reply]
        if headers is None:  # a pull request
            assert subject == f"$JS.API.CONSUMER.MSG.NEXT.{REQUESTS_STREAM}.klavi-cancel"
            request = json.loads(payload)
            self.js.pull(request["batch"], request["expires"] / 1e9, deliver)
            return
        try:
            ack = await self.js.publish(subject, payload, headers)
            answer: dict[str, Any] = {"stream": "R", "seq": 1, "duplicate": ack.duplicate}
        except BadRequestError as exc:
            answer = {"error": {"code": 400, "err_code": exc.err_code}}
        await deliver(SimpleNamespace(subject=reply, data=json.dumps(answer).encode()))


@define
class _FakeSubscription:
    js: FakeJetStream
    subject: str

    async def unsubscribe(self) -> None:
        self.js.subscribers.pop(self.subject.removesuffix(".*"), None)
        if not self.subject.endswith(".*"):
            self.js.stop_serving()
