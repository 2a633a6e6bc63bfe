"""
The worker's hot-path shortcuts against what they stand for: the delivery read from the
ack subject as nats-py's `metadata` reads it, the record encoder as `json.dumps`, and the
one timer of the first publishes as a timer each.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from nats.aio.msg import Msg

from klavi_async import CancelRequest
from klavi_async.nats import CancelWorker
from klavi_async.nats._request import delivery_of
from klavi_async.nats._settle import Settler, WorkerStats, encode_record

from ..conftest import CPF
from ..fakes import json_response, mock_client
from ..ratesim import VirtualLoop, run
from .fakejs import FakeJetStream, _Stored

REPLIES = [
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
    "$JS.ACK.KLAVI_CANCEL.klavi-cancel.1.42.7.1796515233470585123.0",
    "$JS.ACK.KLAVI_CANCEL.klavi-cancel.3.1.1.1796515233470585500.12",
    "$JS.ACK.S.c.1.9007199254740993.2.1796515233999999999.0",
    # v2: with a domain and an account hash, and a random token after the pending count
    "$JS.ACK._.ACCHASH.KLAVI_CANCEL.klavi-cancel.2.42.7.1796515233470585499.0",
    "$JS.ACK.hub.ACCHASH.KLAVI_CANCEL.klavi-cancel.10.5.5.1700000000000000500.3.xyz",
    "$JS.ACK.KLAVI_CANCEL.klavi-cancel.1.42.7.0.0",  # the epoch itself
]


def _reference(msg: Msg) -> tuple[int, str, float]:
    # What the worker read before: nats-py's metadata.
    meta = msg.metadata
    stored = meta.timestamp.timestamp()
    return meta.num_delivered, f"{meta.stream}:{meta.sequence.stream}:{round(stored * 1e6)}", stored


@pytest.mark.parametrize("reply", REPLIES)
def test_the_delivery_is_read_as_nats_py_reads_it(reply: str) -> None:
    assert delivery_of(Msg(None, reply=reply)) == _reference(Msg(None, reply=reply))  # type: ignore[arg-type]


def test_the_stored_time_is_the_same_to_the_microsecond_for_any_nanoseconds() -> None:
    # Half-way nanoseconds round as datetime rounds them; floats of the same ns match.
    for ns in range(1796515233470584000, 1796515233470588000, 37):
        reply = f"$JS.ACK.S.c.1.5.5.{ns}.0"
        assert delivery_of(Msg(None, reply=reply)) == _reference(Msg(None, reply=reply))  # type: ignore[arg-type]


def test_a_reply_of_another_shape_goes_to_the_metadata() -> None:
    meta = SimpleNamespace(
        num_delivered=4,
        stream="S",
        sequence=SimpleNamespace(stream=9),
        timestamp=SimpleNamespace(timestamp=lambda: 12.5),
    )
    for reply in ("$JS.ACK.fake", "other.subject.of.nine.tokens.a.b.c"):
        msg = SimpleNamespace(reply=reply, metadata=meta)
        assert delivery_of(msg) == (4, "S:9:12500000", 12.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "record",
    [
        {"payment_id": "p", "ok": True, "kind": None, "elapsed": 0.001234, "attempts": 2},
        {"message": 'quote " backslash \\ é \u2028 \x00', "retry_after": 1e-7, "n": -0.0},
        {"nested": {"a": [1, 2.5, None, True]}, "big": 10**30},
        {},
    ],
)
def test_records_are_encoded_as_json_dumps_encodes_them(record: dict[str, Any]) -> None:
    assert encode_record(record) == json.dumps(record, separators=(",", ":")).encode()


def test_encoding_something_not_json_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_record({"x": object()})


class _Broker:
    """A connection whose publishes go nowhere: the test answers them itself."""

    def __init__(self) -> None:
        self.replies: list[str] = []

    async def publish(self, subject: str, body: bytes, **kwargs: Any) -> None:
        self.replies.append(kwargs["reply"])


async def test_one_timer_ends_every_first_publish_left_unanswered_each_in_its_time() -> None:
    broker = _Broker()
    js = SimpleNamespace(_nc=broker)
    settler = Settler(js, WorkerStats(), ack_wait=1.5, retry_delay=0.1)  # type: ignore[arg-type]
    settler._box, settler._answers = object(), "_INBOX.test"  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}

    async def first(name: str) -> bool:
        try:
            return await settler._first(f"klavi.cancel.results.{name}", name, b"{}")
        finally:
            ended[name] = loop.time()

    start = loop.time()
    one = asyncio.create_task(first("one"))
    await asyncio.sleep(0.1)
    two = asyncio.create_task(first("two"))
    three = asyncio.create_task(first("three"))
    await asyncio.sleep(0.05)
    assert len(broker.replies) == 3
    assert isinstance(settler._watch, asyncio.TimerHandle)  # one timer for the three
    # "three" is answered (stored): it ends at once, whatever the timer.
    answer = json.dumps({"stream": "R", "seq": 5}).encode()
    await settler._answer(SimpleNamespace(subject=broker.replies[2], data=answer))  # type: ignore[arg-type]
    assert await three is True
    assert "one" not in ended  # the timer has not come yet
    # The others get no answer: each ends ack_wait / 3 (0.5 s) after its own publish,
    # not when the first one's time is up.
    assert await one is False and await two is False
    assert ended["one"] - start >= 0.5
    assert ended["two"] - start >= 0.6
    assert settler._waiting == {} and settler._watch is None
    # An answer after the end is dropped: nobody waits for it any more.
    await settler._answer(SimpleNamespace(subject=broker.replies[0], data=answer))  # type: ignore[arg-type]
    assert not settler._waiting


async def test_closing_stops_the_timer() -> None:
    js = SimpleNamespace(_nc=_Broker())
    settler = Settler(js, WorkerStats(), ack_wait=30.0, retry_delay=0.1)  # type: ignore[arg-type]
    settler._box, settler._answers = object(), "_INBOX.test"  # type: ignore[assignment]
    task = asyncio.create_task(settler._first("klavi.cancel.results.x", "x", b"{}"))
    await asyncio.sleep(0)
    watch = settler._watch
    assert watch is not None
    settler._box = None
    await settler.close()
    assert watch.cancelled() and settler._watch is None
    # The first publish still waiting is told "no answer", not left waiting for ever.
    assert await asyncio.wait_for(task, timeout=5.0) is False
    assert settler._waiting == {}


def requests(n: int) -> list[CancelRequest]:
    return [CancelRequest(f"pay-{i:04d}", CPF) for i in range(n)]


async def work_until_settled(
    worker: CancelWorker, js: FakeJetStream, loop: VirtualLoop, settled: int
) -> None:
    """Run *worker* until *settled* messages are (a minute of virtual time at most)."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    while len(js.settled) < settled and loop.time() < 60.0:
        await asyncio.sleep(1.0)
    stop.set()
    await task


def test_a_poison_message_is_dead_lettered_whatever_the_retry_delay() -> None:
    # A poison message's decision takes the worker's own schedule: before, decide()'s
    # default max_retry_delay (300 s) refused a retry_delay above it, and the message
    # was left unsettled, to come back for ever.
    seen: dict[str, Any] = {}

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        js.enqueue(requests(1))
        js.stored[2] = _Stored(b"not json", js.stored[1].stored_at)
        client, _ = mock_client(lambda sent: json_response(200, {}))
        worker = CancelWorker(client, js, retry_delay=400.0, max_retry_delay=600.0)  # type: ignore[arg-type]
        await work_until_settled(worker, js, loop, 2)
        await client.aclose()
        seen.update(js=js, stats=worker.stats)

    run(main)
    js, stats = seen["js"], seen["stats"]
    assert js.settled == {1: "ack", 2: "term"}
    assert stats.dead == 1 and stats.unsettled == 0
    assert [record["reason"] for subject, record in js.records if "dead" in subject] == ["bad_json"]


@pytest.mark.parametrize("where", ["class", "instance"])
def test_a_client_whose_cancel_methods_are_replaced_has_them_called(where: str) -> None:
    # The worker's short cut (the coroutine cancel_many runs) is for KlaviClient's own
    # methods: a subclass that audits or refuses, or a test's stub, is called as before.
    calls: list[tuple[Any, ...]] = []
    sent: list[Any] = []
    seen: dict[str, Any] = {}

    async def stub(*args: Any, **kwargs: Any) -> Any:
        calls.append((*args[-1:], kwargs["idempotency_key"]))
        raise RuntimeError("refused by the subclass")

    async def main(loop: VirtualLoop) -> None:
        js = FakeJetStream(loop)
        automatic = CancelRequest("pay-0002", CPF, consent_id="c-1")
        js.enqueue([CancelRequest("pay-0001", CPF), automatic])

        def answer(request: Any) -> Any:
            sent.append(request)
            return json_response(200, {})

        client, _ = mock_client(answer)
        target: Any = type(client) if where == "class" else client
        with (
            mock.patch.object(target, "cancel_payment", stub),
            mock.patch.object(target, "cancel_automatic_payment", stub),
        ):
            await work_until_settled(CancelWorker(client, js), js, loop, 2)  # type: ignore[arg-type]
        await client.aclose()
        seen.update(js=js)

    run(main)
    assert len(calls) == 2 and all(key for _, key in calls)  # with the deterministic key
    assert sent == []  # nothing reached Klavi past the stub
    assert seen["js"].settled == {1: "term", 2: "term"}  # dead-lettered: the worker failed on it
