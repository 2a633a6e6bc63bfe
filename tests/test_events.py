"""
`_events` and `_logging`: what the cancel path tells its subscribers, and what it costs.

Events are built only for a subscriber that wants their level; they never carry the
token or a full document; logging is one subscriber among others.
"""

from __future__ import annotations

import logging
from typing import Any

from klavi_async import CancelFailed, RetryBudget
from klavi_async._events import (
    DEBUG,
    INFO,
    WARNING,
    AttemptEnded,
    BudgetRefused,
    CallInfo,
    CancelGaveUp,
    CancelRejected,
    CancelSucceeded,
    Events,
    RateLimitWait,
    RetryScheduled,
    StatusEnded,
    TokenRefreshed,
    subscribed,
)
from klavi_async._logging import LogSubscriber, default_events

from .conftest import CPF, CPF_BARE, TOKEN
from .fakes import Sent, json_response, mock_client


class Recorder:
    """A subscriber that keeps what it gets, from *level* up, and the levels it was asked."""

    def __init__(self, level: int = DEBUG) -> None:
        self.level = level
        self.events: list[Any] = []
        self.asked: set[int] = set()

    def wants(self, level: int) -> bool:
        self.asked.add(level)
        return level >= self.level

    def __call__(self, event: Any) -> None:
        self.events.append(event)


def test_call_info_masks_the_document_and_clips_the_id() -> None:
    info = CallInfo.of(CPF, "iid", CPF_BARE)  # a CPF passed as the payment id, too
    assert info.document == "***.982.247-**"
    assert CPF not in info.payment_id and CPF_BARE not in repr(info)


def test_one_subscriber_is_asked_directly_and_logging_asks_the_logger() -> None:
    recorder = Recorder()
    assert Events((recorder,)).wants == recorder.wants  # no loop in between: the hot path
    assert LogSubscriber().wants == logging.getLogger("klavi_async").isEnabledFor
    events = Events((Recorder(WARNING), recorder))
    assert events.wants(DEBUG)  # the second one wants it
    assert not Events((Recorder(WARNING), Recorder(WARNING))).wants(INFO)  # neither does
    events.subscribe(Recorder())
    assert len(events.subscribers) == 3


def test_a_new_client_starts_with_logging_and_the_subscribed_ones() -> None:
    recorder = Recorder()
    with subscribed(recorder):
        subscribers = default_events().subscribers
    assert isinstance(subscribers[0], LogSubscriber)
    assert recorder in subscribers
    assert recorder not in default_events().subscribers  # gone after the block


async def test_a_failed_cancel_emits_its_story_in_order() -> None:
    recorder = Recorder()
    budget = RetryBudget(ratio=0, min_per_second=0)  # the first retry is refused
    with subscribed(recorder):
        client, _ = mock_client(lambda sent: json_response(429), retry_budget=budget)
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    kinds = [type(e) for e in recorder.events]
    assert kinds == [TokenRefreshed, AttemptEnded, BudgetRefused, CancelGaveUp]
    _, attempt, refused, gave_up = recorder.events
    assert attempt.attempt is result.history[0] and attempt.method == "POST"
    assert refused.attempt == 1
    assert gave_up.result is result and gave_up.call.document == "***.982.247-**"


async def test_retries_and_successes_are_emitted() -> None:
    answers = iter([503, 200])
    recorder = Recorder()
    with subscribed(recorder):
        client, _ = mock_client(lambda sent: json_response(next(answers)))
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    kinds = [type(e) for e in recorder.events]
    assert kinds == [TokenRefreshed, AttemptEnded, RetryScheduled, AttemptEnded, CancelSucceeded]
    assert recorder.events[2].http_status == 503 and recorder.events[2].delay == 0.0
    assert recorder.events[-1].result is result


async def test_nothing_is_built_below_the_level_anyone_wants() -> None:
    logger = logging.getLogger("klavi_async")
    old = logger.level
    logger.setLevel(logging.ERROR)  # logging wants nothing here
    recorder = Recorder(WARNING)
    try:
        with subscribed(recorder):
            client, _ = mock_client(lambda sent: json_response(404))
        async with client:
            await client.cancel_payment("pay-1", cancelled_by=CPF)
    finally:
        logger.setLevel(old)
    assert DEBUG in recorder.asked  # asked before building an attempt event ...
    assert [type(e) for e in recorder.events] == [CancelGaveUp]  # ... and none was built


async def test_invalid_input_and_status_reads_are_emitted() -> None:
    recorder = Recorder()

    def handler(sent: Sent) -> Any:
        return json_response(200, {"status": "PAYMENT_PENDING"})

    with subscribed(recorder):
        client, _ = mock_client(handler)
    async with client:
        rejected = await client.cancel_payment("pay-1", cancelled_by="123")
        status = await client.get_payment_status("pay-1")
    assert isinstance(rejected, CancelFailed)
    rejected_event = next(e for e in recorder.events if isinstance(e, CancelRejected))
    assert rejected_event.result is rejected
    ended = next(e for e in recorder.events if isinstance(e, StatusEnded))
    assert ended.status is status and ended.error is None


async def test_events_never_carry_the_token_or_the_document() -> None:
    recorder = Recorder()
    answers = iter([401, 500, 200])

    def handler(sent: Sent) -> Any:
        return json_response(next(answers), {"echo": CPF_BARE})

    tokens = iter([TOKEN, TOKEN + "-2"])

    async def provider() -> str:
        return next(tokens)

    with subscribed(recorder):
        client, _ = mock_client(handler, provider)
    async with client:
        assert (await client.cancel_payment("pay-1", cancelled_by=CPF)).ok
    texts = [repr(e) for e in recorder.events if not isinstance(e, CancelSucceeded)]
    texts += [repr(e.call) for e in recorder.events if hasattr(e, "call")]
    assert texts
    assert not [t for t in texts if TOKEN in t or CPF_BARE in t or CPF in t]


def test_the_rate_limit_wait_has_its_place() -> None:
    event = RateLimitWait(call=CallInfo.of("pay-1", "iid", None), delay=0.25)
    assert event.level == DEBUG and event.level < INFO
    assert LogSubscriber()(event) is None  # no log line for it (yet): nothing happens
