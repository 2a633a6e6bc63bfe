"""OpenTelemetry: spans, span events and metrics of real calls against loopback servers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from klavi_async import (
    CancelFailed,
    Cancelled,
    CancelRequest,
    ClientClosedError,
    KlaviClient,
    NotFoundError,
    RetryBudget,
    RetryPolicy,
)
from klavi_async._events import Events
from klavi_async._logging import LogSubscriber

from .conftest import CPF, TOKEN, ServerFactory, Telemetry
from .fakes import CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST = RetryPolicy(initial_backoff=0, jitter=False)
CANCEL_TEMPLATE = "/payment/customer/v1/instant/payments/{payment_id}/cancel"
STATUS_TEMPLATE = "/payment/customer/v1/instant/payments/{payment_id}/status"


def client_for(base: str, telemetry: Telemetry, **kwargs: Any) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    return KlaviClient(TOKEN, base_url=base, **telemetry.kwargs(), **kwargs)


def by_kind(telemetry: Telemetry, kind: SpanKind) -> list[Any]:
    return [s for s in telemetry.spans() if s.kind is kind]


def counts(telemetry: Telemetry, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset(p.attributes.items()): p.value for p in telemetry.points(name)}


async def test_a_retried_cancel_is_one_internal_span_over_two_client_spans(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503), Reply(200, {"status": "CANCELED"}))
    base = await fake.start(serve)
    port = int(base.rsplit(":", 1)[1])
    async with client_for(base, telemetry) as client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)

    (call,) = by_kind(telemetry, SpanKind.INTERNAL)
    first, second = sorted(by_kind(telemetry, SpanKind.CLIENT), key=lambda s: s.start_time)
    assert call.name == "cancel_payment"
    assert dict(call.attributes) == {
        "klavi.payment_id": "pay-1",
        "klavi.outcome": "cancelled",
        "klavi.attempts": 2,
        "klavi.reconciled": False,
        "klavi.outcome_unknown": False,
    }
    assert call.status.status_code is StatusCode.UNSET
    assert call.parent is None
    for span in (first, second):
        assert span.name == "POST"
        assert span.parent.span_id == call.context.span_id
        assert span.context.trace_id == call.context.trace_id
        assert call.start_time <= span.start_time <= span.end_time <= call.end_time
    common = {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": port,
        "url.template": CANCEL_TEMPLATE,
    }
    assert dict(first.attributes) == {
        **common,
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert first.status.status_code is StatusCode.ERROR
    assert dict(second.attributes) == {
        **common,
        "http.response.status_code": 200,
        "http.request.resend_count": 1,
    }
    assert second.status.status_code is StatusCode.UNSET
    (retry,) = [e for e in call.events if e.name == "klavi.retry"]
    assert dict(retry.attributes) == {
        "klavi.attempt": 1,
        "klavi.retry.delay": 0.0,
        "http.response.status_code": 503,
        "error.type": "server_error",
    }


async def test_metrics_count_cancels_attempts_and_durations(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(503), Reply(200, {"status": "CANCELED"}), Reply(404))
    base = await fake.start(serve)
    async with client_for(base, telemetry) as client:
        assert (await client.cancel_payment("pay-1", cancelled_by=CPF)).ok
        assert not (await client.cancel_payment("pay-2", cancelled_by=CPF)).ok

    assert counts(telemetry, "klavi.client.cancels") == {
        frozenset({("klavi.outcome", "cancelled")}): 1,
        frozenset({("klavi.outcome", "not_found")}): 1,
    }
    post = ("http.request.method", "POST")
    assert counts(telemetry, "klavi.client.attempts") == {
        frozenset({post, ("http.response.status_code", 503), ("error.type", "503")}): 1,
        frozenset({post, ("http.response.status_code", 200)}): 1,
        frozenset({post, ("http.response.status_code", 404), ("error.type", "404")}): 1,
    }
    durations = {
        frozenset(p.attributes.items()): p.count
        for p in telemetry.points("klavi.client.cancel.duration")
    }
    assert durations == {
        frozenset({("klavi.outcome", "cancelled")}): 1,
        frozenset({("klavi.outcome", "not_found")}): 1,
    }
    requests = telemetry.points("http.client.request.duration")
    assert sum(p.count for p in requests) == 3
    for point in requests:
        assert point.attributes["url.template"] == CANCEL_TEMPLATE
        assert point.attributes["server.address"] == "127.0.0.1"
        assert "http.request.resend_count" not in point.attributes


async def test_a_404_gives_not_found_and_error_type(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    base = await ScriptedKlavi().on(CANCEL, Reply(404)).start(serve)
    async with client_for(base, telemetry) as client:
        result = await client.cancel_payment("pay-404", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    (call,) = by_kind(telemetry, SpanKind.INTERNAL)
    assert call.attributes["klavi.outcome"] == "not_found"
    assert call.attributes["error.type"] == "not_found"
    assert call.attributes["klavi.attempts"] == 1
    assert call.attributes["klavi.outcome_unknown"] is False
    assert call.status.status_code is StatusCode.ERROR
    (request,) = by_kind(telemetry, SpanKind.CLIENT)
    assert request.attributes["error.type"] == "404"


async def test_a_reconciled_refusal_shows_the_status_read(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    refusal = {"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "message": "already"}
    fake = ScriptedKlavi().on(CANCEL, Reply(416, refusal)).on(STATUS, status_reply("CANCELED"))
    base = await fake.start(serve)
    async with client_for(base, telemetry) as client:
        result = await client.cancel_payment("pay-416", cancelled_by=CPF)
    assert isinstance(result, Cancelled) and result.reconciled

    (call,) = by_kind(telemetry, SpanKind.INTERNAL)
    post, get = sorted(by_kind(telemetry, SpanKind.CLIENT), key=lambda s: s.start_time)
    assert (post.name, get.name) == ("POST", "GET")
    assert post.attributes["error.type"] == "416"
    assert get.parent.span_id == call.context.span_id
    assert get.attributes["url.template"] == STATUS_TEMPLATE
    assert get.attributes["http.response.status_code"] == 200
    assert "http.request.resend_count" not in get.attributes  # the read's own first attempt
    assert call.attributes["klavi.reconciled"] is True
    assert call.attributes["klavi.outcome"] == "cancelled"
    assert call.attributes["klavi.attempts"] == 1
    (read,) = [e for e in call.events if e.name == "klavi.reconcile"]
    assert dict(read.attributes) == {
        "klavi.reads": 1,
        "klavi.payment_status": "CANCELED",
        "http.response.status_code": 200,
    }


async def test_a_budget_refusal_is_a_span_event_and_counted(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    base = await ScriptedKlavi().on(CANCEL, *[Reply(503)] * 5).start(serve)
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    async with client_for(base, telemetry, retry_budget=budget) as client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed) and result.attempts == 1
    (call,) = by_kind(telemetry, SpanKind.INTERNAL)
    (refused,) = [e for e in call.events if e.name == "klavi.retry_budget.refused"]
    assert dict(refused.attributes) == {"klavi.attempt": 1}
    assert call.attributes["klavi.outcome"] == "server_error"
    assert [p.value for p in telemetry.points("klavi.client.retries.refused")] == [1]


async def test_a_token_refresh_is_an_event_on_the_call_span(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    from klavi_async import ClientCredentials
    from klavi_async.testing import KlaviEmulator

    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment("PAYMENT_PENDING")
        credentials = ClientCredentials(emu.access_key, emu.secret_key)
        async with KlaviClient(
            credentials, base_url=emu.url, retry=FAST, **telemetry.kwargs()
        ) as client:
            assert (await client.cancel_payment(payment_id, cancelled_by=CPF)).ok
    (call,) = by_kind(telemetry, SpanKind.INTERNAL)
    (refreshed,) = [e for e in call.events if e.name == "klavi.token.refreshed"]
    assert refreshed.attributes["klavi.token.lifetime"] > 0
    auth, cancel = sorted(by_kind(telemetry, SpanKind.CLIENT), key=lambda s: s.start_time)
    assert auth.attributes["url.template"] == "/payment/customer/v1/auth"
    assert auth.parent.span_id == call.context.span_id  # fetched for this call
    assert cancel.attributes["url.template"] == CANCEL_TEMPLATE


async def test_a_users_span_is_the_parent_and_ours_is_current(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    seen: list[trace.Span] = []

    async def sleep(delay: float) -> None:
        seen.append(trace.get_current_span())  # what code run by the call sees as current

    base = await ScriptedKlavi().on(CANCEL, Reply(503), Reply(200)).start(serve)
    tracer = telemetry.tracer_provider.get_tracer("app")
    async with client_for(base, telemetry, sleep=sleep) as client:
        with tracer.start_as_current_span("handler") as handler:
            assert (await client.cancel_payment("pay-1", cancelled_by=CPF)).ok
            assert trace.get_current_span() is handler  # our context was detached
    (call,) = [s for s in by_kind(telemetry, SpanKind.INTERNAL) if s.name == "cancel_payment"]
    assert call.parent.span_id == handler.get_span_context().span_id
    assert seen[0].get_span_context().span_id == call.context.span_id


async def test_a_cancelled_call_ends_its_span_and_cleans_the_context(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    fake = ScriptedKlavi()
    fake.on(CANCEL, lambda request: Reply(200, delay=30))
    base = await fake.start(serve)
    before = context.get_current()
    async with client_for(base, telemetry) as client:
        task = asyncio.create_task(client.cancel_payment("pay-1", cancelled_by=CPF))
        while not fake.seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert context.get_current() == before
    (call,) = by_kind(telemetry, SpanKind.INTERNAL)
    assert call.end_time is not None
    assert call.attributes["error.type"] == "CancelledError"
    assert call.status.status_code is StatusCode.ERROR
    assert telemetry.points("klavi.client.cancels") == []


async def test_cancel_many_gives_one_span_per_item(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    base = await ScriptedKlavi().start(serve)
    requests = [CancelRequest(f"pay-{i}", cancelled_by=CPF) for i in range(5)]
    requests.append(CancelRequest("pay-a", consent_id="consent-1", cancelled_by=CPF))
    requests.append(CancelRequest("not a valid id!", cancelled_by=CPF))
    async with client_for(base, telemetry) as client:
        results = [r async for r in client.cancel_many(requests, concurrency=3)]
    assert sum(r.ok for r in results) == 6
    calls = by_kind(telemetry, SpanKind.INTERNAL)
    assert sorted(s.name for s in calls) == [
        "cancel_automatic_payment",
        *["cancel_payment"] * 6,
    ]
    assert len({s.context.trace_id for s in calls}) == 7  # each item its own trace
    (invalid,) = [s for s in calls if s.attributes["klavi.outcome"] == "invalid_request"]
    assert invalid.attributes["klavi.attempts"] == 0
    clients = by_kind(telemetry, SpanKind.CLIENT)
    assert len(clients) == 6
    parents = {s.context.span_id: s for s in calls}
    for span in clients:
        assert parents[span.parent.span_id].context.trace_id == span.context.trace_id
    automatic = [s for s in clients if "automatic" in s.attributes["url.template"]]
    assert automatic[0].attributes["url.template"] == (
        "/payment/customer/v1/automatic/consents/{consent_id}/payments/{payment_id}/cancel"
    )


async def test_a_status_read_is_one_span(serve: ServerFactory, telemetry: Telemetry) -> None:
    fake = ScriptedKlavi().on(STATUS, Reply(503), status_reply("PAYMENT_PENDING"), Reply(404))
    base = await fake.start(serve)
    async with client_for(base, telemetry) as client:
        status = await client.get_payment_status("pay-1")
        with pytest.raises(NotFoundError):
            await client.get_payment_status("pay-2")
    assert status.status == "PAYMENT_PENDING"
    ok, missing = sorted(by_kind(telemetry, SpanKind.INTERNAL), key=lambda s: s.start_time)
    assert ok.name == missing.name == "get_payment_status"
    assert ok.attributes["klavi.outcome"] == "ok"
    assert ok.attributes["klavi.payment_status"] == "PAYMENT_PENDING"
    assert ok.attributes["klavi.attempts"] == 2
    assert missing.attributes["klavi.outcome"] == "not_found"
    assert missing.attributes["error.type"] == "not_found"
    assert missing.status.status_code is StatusCode.ERROR
    clients = by_kind(telemetry, SpanKind.CLIENT)
    gets = [s for s in clients if s.parent.span_id == ok.context.span_id]
    assert [s.attributes.get("http.request.resend_count") for s in gets] == [None, 1]


async def test_a_call_on_a_closed_client_ends_its_span(
    serve: ServerFactory, telemetry: Telemetry
) -> None:
    base = await ScriptedKlavi().start(serve)
    client = client_for(base, telemetry)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert by_kind(telemetry, SpanKind.INTERNAL) == []  # refused before the call started


async def test_without_a_scope_the_call_path_is_unchanged(serve: ServerFactory) -> None:
    # Logging alone below DEBUG: no call-scope events, the plain coroutine runs.
    base = await ScriptedKlavi().on(STATUS, status_reply("PAYMENT_PENDING")).start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, telemetry=False) as client:
        client._shared.events = Events((LogSubscriber(),))
        client._canceller._shared.events = client._shared.events
        coroutine = client._canceller.cancel("pay-1", None, CPF, None, None)
        assert coroutine.cr_code.co_name == "_cancel"  # type: ignore[attr-defined]
        assert (await coroutine).ok
        status = client._shared
        read = __import__("klavi_async._status", fromlist=["read_status"]).read_status(
            status, client._endpoints, "pay-1", None
        )
        assert read.cr_code.co_name == "_read"
        await read


def test_telemetry_arguments_are_checked() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    with pytest.raises(ValueError, match="telemetry=False"):
        KlaviClient(TOKEN, telemetry=False, tracer_provider=TracerProvider())
    off = KlaviClient(TOKEN, telemetry=False)
    on = KlaviClient(TOKEN, telemetry=True)
    assert len(off._shared.events.subscribers) == len(on._shared.events.subscribers) - 1


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_klavi_async_does_not_import_opentelemetry() -> None:
    done = run_python(
        """
        import sys
        import klavi_async
        import klavi_async.testing
        assert not [m for m in sys.modules if m.startswith("opentelemetry")], sys.modules
        klavi_async.KlaviClient("tok", telemetry=False)
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        print("clean")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"


def test_without_opentelemetry_a_cancel_works_and_nothing_is_imported() -> None:
    done = run_python(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
        import asyncio
        from klavi_async import ClientCredentials, KlaviClient
        from klavi_async.testing import KlaviEmulator

        async def main():
            async with KlaviEmulator() as emu:
                payment_id = emu.add_payment("PAYMENT_PENDING")
                credentials = ClientCredentials(emu.access_key, emu.secret_key)
                async with KlaviClient(credentials, base_url=emu.url) as klavi:
                    result = await klavi.cancel_payment(payment_id, cancelled_by={CPF!r})
                assert result.ok, result
                assert emu.effects[payment_id] == 1
            try:
                KlaviClient("tok", telemetry=True)
            except ImportError as exc:
                print(exc)
            loaded = [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]]
            assert not loaded, loaded
            print("cancelled")

        asyncio.run(main())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "telemetry needs opentelemetry-api: pip install 'klavi-async[otel]'",
        "cancelled",
    ]


def test_by_default_only_a_real_global_provider_turns_telemetry_on() -> None:
    # The API alone gives no-op proxies: a client that subscribed to them would build spans
    # nobody records on every call (+25 % instructions per cancel, measured).
    done = run_python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from klavi_async import KlaviClient
        from klavi_async._events import TRACE

        before = KlaviClient("tok")
        trace.set_tracer_provider(TracerProvider())
        after = KlaviClient("tok")
        forced = KlaviClient("tok", telemetry=True)
        print(before._shared.events.wants(TRACE), after._shared.events.wants(TRACE))
        print(len(before._shared.events.subscribers) + 1 == len(after._shared.events.subscribers))
        print(len(forced._shared.events.subscribers) == len(after._shared.events.subscribers))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True"]


@pytest.mark.parametrize(
    "status",
    ["PAYMENT_COMPLETED 52998224725", "PAYMENT_COMPLETED 529.982.247-25", "PAID:CPF52998224725"],
)
async def test_a_document_in_a_status_value_reaches_nothing_in_clear(
    serve: ServerFactory,
    telemetry: Telemetry,
    caplog: pytest.LogCaptureFixture,
    status: str,
) -> None:
    # A hostile or careless server puts the payer's CPF in the status itself: it must not
    # reach the result, its repr, the record a worker publishes, a log line or a span.
    refusal = {"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "message": "no"}
    reply = status_reply(status)
    fake = ScriptedKlavi().on(CANCEL, Reply(416, refusal)).on(STATUS, reply, reply)
    base = await fake.start(serve)
    with caplog.at_level("DEBUG", logger="klavi_async"):
        async with client_for(base, telemetry) as client:
            result = await client.cancel_payment("pay-416", cancelled_by=CPF)
            read = await client.get_payment_status("pay-416")
    assert isinstance(result, CancelFailed)
    assert result.payment_status is not None and "***.982.247-**" in result.payment_status
    texts = [result.payment_status, repr(result), str(result.to_record()), read.status, repr(read)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(vars(record)) for record in caplog.records]
    for span in telemetry.spans():
        texts.append(repr(dict(span.attributes or {})))
        texts += [repr(dict(event.attributes or {})) for event in span.events]
    leaked = [text for text in texts if "52998224725" in text or "529.982.247-25" in text]
    assert not leaked, leaked[:2]


async def test_a_huge_status_value_is_kept_clipped(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(STATUS, status_reply("PAYMENT_PENDING" + "x" * 100_000))
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as client:
        read = await client.get_payment_status("pay-1")
    assert read.status.endswith("…(clipped)") and len(read.status) < 200
    assert len(read.body["status"]) > 100_000  # the body the caller asked for, as sent
