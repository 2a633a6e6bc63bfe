"""`enqueue()` counts each answer on its own and sends again what the broker did not answer."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import PubAck

from klavi_async import CancelRequest
from klavi_async.nats import enqueue, publish_requests
from klavi_async.nats._streams import MSG_ID

from ..conftest import CPF


class FlakyStream:
    """A stream that stores by `Nats-Msg-Id` and fails the publishes it is told to."""

    def __init__(self, fail: dict[str, list[Exception]], *, gone: bool = False) -> None:
        self.fail = fail  # payment id in the body -> errors to raise first, in order
        self.stored: dict[str, bytes] = {}
        self.sent = 0
        self.gone = gone  # the stream was deleted: `stream_info` says NotFound
        self.asked = 0

    async def stream_info(self, name: str) -> object:
        self.asked += 1
        if self.gone:
            raise nats.js.errors.NotFoundError(code=404, err_code=10059, description="not found")
        return object()

    async def publish(self, subject: str, body: bytes, headers: Any = None) -> PubAck:
        self.sent += 1
        for payment, errors in self.fail.items():
            if payment.encode() in body and errors:
                raise errors.pop(0)
        key = (headers or {}).get(MSG_ID) or f"no-id-{self.sent}"
        duplicate = key in self.stored
        self.stored.setdefault(key, body)
        return PubAck(stream="KLAVI_CANCEL", seq=len(self.stored), duplicate=duplicate)


def requests(n: int) -> list[CancelRequest]:
    return [CancelRequest(f"pay-{i:03}", CPF) for i in range(n)]


async def test_a_failed_publish_does_not_hide_the_others_answers() -> None:
    # One publish of the first window fails for good: its 255 others were stored, and
    # are counted; the enqueue stops there (the next window is not sent).
    js = FlakyStream({"pay-007": [nats.errors.MaxPayloadError()]})
    stored: list[str] = []
    with pytest.raises(nats.errors.MaxPayloadError):
        await publish_requests(js, requests(300), on_stored=lambda r: stored.append(r.payment_id))  # type: ignore[arg-type]
    assert len(stored) == len(js.stored) == 255  # before: 0 counted, 255 stored
    assert "pay-007" not in stored


async def test_a_publish_the_broker_did_not_answer_is_sent_again() -> None:
    # `js.publish` raises NoStreamResponseError for no responders (a stream without a
    # leader, as while a cluster elects one): missing it failed a CI run's enqueue.
    unanswered = [
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.NoStreamResponseError(),
    ]
    electing = nats.js.errors.ServiceUnavailableError(  # as nats-py raises a 503 with it
        code=503, err_code=10008, description="unavailable"
    )
    js = FlakyStream({"pay-001": unanswered, "pay-002": [electing]})
    assert await enqueue(js, requests(5)) == 5  # type: ignore[arg-type]
    assert js.sent == 5 + 4


async def test_a_stream_that_is_gone_fails_the_enqueue_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "No response from stream" is also what a deleted stream answers: no election will
    # bring it back, so it is not sent again for `patience` seconds.
    js = FlakyStream({"pay-001": [nats.js.errors.NoStreamResponseError()]}, gone=True)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await enqueue(js, requests(3))  # type: ignore[arg-type]
    assert js.asked == 1 and js.sent == 3
    assert "sending again" not in caplog.text


async def test_a_stream_electing_its_leader_is_asked_about_once_per_request() -> None:
    electing = {f"pay-{i:03}": [nats.js.errors.NoStreamResponseError()] * 3 for i in range(4)}
    js = FlakyStream(electing)
    assert await enqueue(js, requests(6)) == 6  # type: ignore[arg-type]
    assert js.asked == 4 and js.sent == 6 + 4 * 3


async def test_why_a_publish_is_sent_again_is_said_once_per_enqueue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeouts = {f"pay-{i:03}": [nats.errors.TimeoutError()] * 3 for i in range(50)}
    js = FlakyStream(timeouts)
    assert await enqueue(js, requests(50)) == 50  # type: ignore[arg-type]
    assert js.sent == 50 * 4
    said = [r for r in caplog.records if "sending again" in r.getMessage()]
    assert len(said) == 1 and "TimeoutError" in said[0].getMessage()


async def test_without_an_id_a_copy_would_be_a_second_request_so_none_is_sent() -> None:
    # A key a header cannot hold is sent without a Nats-Msg-Id.
    js = FlakyStream({"pay-x": [nats.errors.TimeoutError()]})
    with pytest.raises(nats.errors.TimeoutError):
        await enqueue(js, [CancelRequest("pay-x", CPF, idempotency_key="a\r\nX: y")])  # type: ignore[arg-type]
    assert js.sent == 1 and not js.stored


async def test_patience_bounds_the_sending_again() -> None:
    js = FlakyStream({"pay-001": [nats.errors.TimeoutError() for _ in range(100)]})
    with pytest.raises(nats.errors.TimeoutError):
        await enqueue(js, requests(3), patience=0)  # type: ignore[arg-type]
    assert len(js.stored) == 2
    with pytest.raises(ValueError, match="patience"):
        await enqueue(js, requests(1), patience=float("nan"))  # type: ignore[arg-type]
    other = nats.js.errors.APIError(code=400, err_code=10077, description="maximum messages")
    js = FlakyStream({"pay-000": [other]})
    with pytest.raises(nats.js.errors.APIError):  # not a broker's pause: not sent again
        await enqueue(js, requests(1))  # type: ignore[arg-type]
    assert js.sent == 1
