"""The retry loop as seen from the wire: what is retried, waits, deadline, budget."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import pytest

from klavi_async import (
    CancelFailed,
    Cancelled,
    ErrorKind,
    KlaviClient,
    RetryBudget,
    RetryPolicy,
)

from .conftest import CPF, TOKEN, ServerFactory
from .fakes import CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, jitter=False)


class FakeTime:
    """A monotonic clock that only moves when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def client_for(base: str, **kwargs: object) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    return KlaviClient(TOKEN, base_url=base, **kwargs)  # type: ignore[arg-type]


async def test_retries_reuse_key_interaction_id_and_body_bytes(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503), Reply(502, body=b"<html>bad</html>"), Reply(200))
    fake.on(STATUS, status_reply("PAYMENT_PENDING"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.attempts == 3
    assert [a.http_status for a in result.history] == [503, 502, 200]
    assert [a.number for a in result.history] == [1, 2, 3]
    cancels = fake.cancels()
    assert len({s.headers["x-idempotency-key"] for s in cancels}) == 1
    assert len({s.headers["x-fapi-interaction-id"] for s in cancels}) == 1
    assert len({s.body for s in cancels}) == 1
    assert cancels[0].headers["x-idempotency-key"] == result.idempotency_key


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 529])
async def test_retry_statuses_are_retried_until_attempts_run_out(
    serve: ServerFactory, status: int
) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(status), STATUS: status_reply("PAYMENT_PENDING")})
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.attempts == 4
    assert len(fake.cancels()) == 4
    assert result.http_status == status
    assert result.retryable
    assert "after 4 attempts" in result.message
    expected = {
        408: ErrorKind.TIMEOUT,
        429: ErrorKind.RATE_LIMITED,
        529: ErrorKind.RATE_LIMITED,
    }.get(status, ErrorKind.SERVER_ERROR)
    assert result.kind is expected


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.BAD_REQUEST),
        (401, ErrorKind.UNAUTHORIZED),
        (403, ErrorKind.FORBIDDEN),
        (404, ErrorKind.NOT_FOUND),
        (409, ErrorKind.CONFLICT),
        (416, ErrorKind.NOT_CANCELLABLE),
        (422, ErrorKind.BAD_REQUEST),
    ],
)
async def test_client_errors_are_not_retried(
    serve: ServerFactory, status: int, kind: ErrorKind
) -> None:
    fake = ScriptedKlavi(
        default={CANCEL: Reply(status, {"message": "no"}), STATUS: status_reply("PAYMENT_PENDING")}
    )
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is kind
    assert not result.retryable
    assert len(fake.cancels()) == 1


async def test_refusal_code_is_not_cancellable_whatever_the_status(serve: ServerFactory) -> None:
    body = {"errors": [{"code": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "title": "t", "detail": "d"}]}
    fake = ScriptedKlavi(
        default={CANCEL: Reply(500, body), STATUS: status_reply("PAYMENT_COMPLETED")}
    )
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NOT_CANCELLABLE
    assert result.code == "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"
    assert result.payment_status == "PAYMENT_COMPLETED"
    assert len(fake.cancels()) == 1


@pytest.mark.slow
async def test_retry_after_one_second_is_waited_for_real(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(429, headers={"Retry-After": "1"}), Reply(200))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok
    first, second = fake.cancels()
    assert second.time - first.time >= 1.0
    assert result.history[0].retry_after == 1.0
    assert result.history[0].delay == 1.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "2500", "Retry-After": "9"}, 2.5),
        ({"Retry-After": "120"}, 60.0),  # capped by max_retry_after
        ({"Retry-After": "garbage"}, 0.001),  # falls back to backoff
        ({"Retry-After": "-5"}, 0.001),
    ],
)
async def test_wait_is_max_of_backoff_and_retry_after_capped(
    serve: ServerFactory, headers: dict[str, str], expected: float
) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503, headers=headers), Reply(200))
    base = await fake.start(serve)
    fake_time = FakeTime()
    policy = RetryPolicy(initial_backoff=0.001, jitter=False, deadline=1000.0)
    async with client_for(
        base, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep
    ) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok
    assert fake_time.sleeps == [pytest.approx(expected)]


async def test_retry_after_http_date(serve: ServerFactory) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake = ScriptedKlavi().on(CANCEL, Reply(503, headers={"Retry-After": when}), Reply(200))
    base = await fake.start(serve)
    fake_time = FakeTime()
    async with client_for(base, clock=fake_time.clock, sleep=fake_time.sleep) as client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    (slept,) = fake_time.sleeps
    assert 28.0 <= slept <= 30.0


async def test_wait_past_deadline_is_not_slept(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(429, headers={"Retry-After": "45"})})
    base = await fake.start(serve)
    fake_time = FakeTime()
    async with client_for(
        base, retry=RetryPolicy(deadline=30.0), clock=fake_time.clock, sleep=fake_time.sleep
    ) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert fake_time.sleeps == []
    assert result.kind is ErrorKind.RATE_LIMITED
    assert result.retry_after == 45.0
    assert result.attempts == 1
    assert "deadline" in result.message


async def test_deadline_cut_without_hint_reports_the_planned_wait(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    fake_time = FakeTime()
    policy = RetryPolicy(max_attempts=10, initial_backoff=4.0, jitter=False, deadline=10.0)
    async with client_for(
        base, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep
    ) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert fake_time.sleeps == [4.0]  # 4 s fits; the next 8 s would end at 12 s > 10 s
    assert result.retry_after == 8.0
    assert result.attempts == 2


async def test_hundred_attempts_with_one_second_deadline_returns_in_time(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    policy = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.2, deadline=1.0)
    async with client_for(base, retry=policy, retry_budget=RetryBudget.unlimited()) as client:
        started = time.monotonic()
        result = await client.cancel_payment("p1", cancelled_by=CPF)
        took = time.monotonic() - started
    assert isinstance(result, CancelFailed)
    # 100 attempts would take 20 s; the deadline stops them (room left for a busy machine)
    assert took < 1.0 + 2.0
    assert result.elapsed < 1.0 + 2.0
    assert 3 <= result.attempts < 100


async def test_attempt_timeout_is_clamped_to_the_deadline(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(
        default={CANCEL: Reply(200, delay=5.0), STATUS: status_reply("PAYMENT_PENDING")}
    )
    base = await fake.start(serve)
    policy = RetryPolicy(deadline=0.3)
    async with client_for(base, retry=policy, timeout=10.0) as client:
        started = time.monotonic()
        result = await client.cancel_payment("p1", cancelled_by=CPF)
        took = time.monotonic() - started
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.TIMEOUT
    # one 0.3 s attempt, then a reconciliation read (timeout ambiguous) of at most 1 s
    assert took < 4.0  # not the server's 5 s (room left for a busy machine)


async def test_full_outage_is_rationed_by_the_budget(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    async with client_for(base, max_connections=300) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(300))
        )
        stats = client.retry_budget.stats()
    assert all(isinstance(r, CancelFailed) and r.kind is ErrorKind.SERVER_ERROR for r in results)
    sent = len(fake.cancels())
    # ratio 0.2 of 300 first attempts + 10/s * 10 s reserve = 160 retries at most
    assert sent <= 300 + 160
    assert sent < 4 * 300 / 2
    assert stats.total_first_attempts == 300
    assert stats.total_retries == sent - 300
    assert stats.total_rejected > 0
    assert any("retry budget exhausted" in r.message for r in results if not r.ok)


async def test_disabled_policy_sends_once(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    async with client_for(base, retry=RetryPolicy.disabled()) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert result.attempts == 1
    assert len(fake.cancels()) == 1


async def test_backoff_grows_exponentially_with_cap(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503)})
    base = await fake.start(serve)
    fake_time = FakeTime()
    policy = RetryPolicy(
        max_attempts=6, initial_backoff=0.5, max_backoff=3.0, jitter=False, deadline=100
    )
    async with client_for(
        base, retry=policy, clock=fake_time.clock, sleep=fake_time.sleep
    ) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert fake_time.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [a.delay for a in result.history] == [0.5, 1.0, 2.0, 3.0, 3.0, None]


async def test_connection_refused_is_retried_and_not_ambiguous() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}") as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NETWORK
    assert result.retryable
    assert result.attempts == 4
    assert not any(a.ambiguous for a in result.history)
    assert not result.outcome_unknown  # nothing was sent, so nothing is unknown


async def test_timeout_is_retried_and_ambiguous(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(200, delay=1.0), Reply(200))
    base = await fake.start(serve)
    async with client_for(base, timeout=0.1) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert [a.kind for a in result.history] == [ErrorKind.TIMEOUT, None]
    assert result.history[0].ambiguous


async def test_reset_connection_is_retried(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(reset=True), Reply(200))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.history[0].kind is ErrorKind.NETWORK
    assert result.history[0].ambiguous


async def test_a_gateway_502_html_page_is_retried(serve: ServerFactory) -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    fake = ScriptedKlavi().on(CANCEL, Reply(502, body=page, content_type="text/html"), Reply(200))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok
    assert result.attempts == 2


@pytest.mark.parametrize(
    "body", [b"", b"<html>ok</html>", b"{not json", b"[1, 2]", b'"done"', b"\xff\xfe\x00"]
)
async def test_any_200_body_is_cancelled(serve: ServerFactory, body: bytes) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(200, body=body, content_type="text/html"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.http_status == 200
    assert result.body in (None, [1, 2], "done")


async def test_task_cancellation_mid_request_propagates_and_client_stays_usable(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(200, delay=5.0), Reply(200))
    base = await fake.start(serve)
    async with client_for(base) as client:
        task = asyncio.create_task(client.cancel_payment("p1", cancelled_by=CPF))
        while not fake.seen:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 3.0  # not the server's 5 s
        assert (await client.cancel_payment("p2", cancelled_by=CPF)).ok


async def test_task_cancellation_during_backoff_propagates(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503, headers={"Retry-After": "30"}), Reply(200))
    base = await fake.start(serve)
    async with client_for(base, retry=RetryPolicy(deadline=60)) as client:
        task = asyncio.create_task(client.cancel_payment("p1", cancelled_by=CPF))
        while not fake.seen:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(fake.cancels()) == 1
        assert (await client.cancel_payment("p2", cancelled_by=CPF)).ok


async def test_status_read_is_retried_like_a_cancel(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(STATUS, Reply(503), status_reply("PAYMENT_SCHEDULED", "p9"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        status = await client.get_payment_status("p9")
    assert status.status == "PAYMENT_SCHEDULED"
    assert status.payment_id == "p9"
    assert len(fake.requests(method="GET")) == 2


async def test_parse_server_error_once_per_attempt_logs_retries(
    serve: ServerFactory, leak_guard: object
) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503), Reply(200))
    base = await fake.start(serve)
    async with client_for(base) as client:
        await client.cancel_payment("p1", cancelled_by=CPF)
    records = leak_guard.records  # type: ignore[attr-defined]
    events = [getattr(r, "klavi_event", None) for r in records]
    assert events.count("attempt") == 2
    assert events.count("retry") == 1
    retry = next(r for r in records if getattr(r, "klavi_event", None) == "retry")
    assert retry.klavi_payment_id == "p1"
    assert retry.klavi_attempt == 1
    assert retry.klavi_status == 503
    assert retry.klavi_delay == pytest.approx(0.001)
    assert retry.klavi_document == "***.982.247-**"


async def test_give_up_is_logged_as_a_warning(serve: ServerFactory, leak_guard: object) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(404, {"message": "no such payment"})})
    base = await fake.start(serve)
    async with client_for(base) as client:
        await client.cancel_payment("p1", cancelled_by=CPF)
    records = leak_guard.records  # type: ignore[attr-defined]
    (give_up,) = [r for r in records if getattr(r, "klavi_event", None) == "give_up"]
    assert give_up.levelname == "WARNING"
    assert give_up.klavi_kind == "not_found"
    assert "no such payment" in give_up.getMessage()


async def test_status_read_failure_raises_typed_errors(serve: ServerFactory) -> None:
    from klavi_async import InvalidRequestError, NotFoundError, UnexpectedResponseError

    fake = ScriptedKlavi().on(STATUS, Reply(404, {"message": "gone"}), Reply(200, {"id": "x"}))
    base = await fake.start(serve)
    async with client_for(base) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.get_payment_status("p1")
        assert caught.value.http_status == 404
        assert caught.value.payment_id == "p1"
        with pytest.raises(UnexpectedResponseError):
            await client.get_payment_status("p1")
        with pytest.raises(InvalidRequestError):
            await client.get_payment_status("bad id!")


async def test_unknown_status_values_are_kept(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(STATUS, status_reply("CONSENT_AUTHORIED"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        status = await client.get_payment_status("p1")
    assert status.status == "CONSENT_AUTHORIED"
    assert not status.cancelled
