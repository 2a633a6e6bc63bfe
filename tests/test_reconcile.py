"""Reconciliation: a status read settles refusals and ambiguous attempts."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from aiohttp import web

from klavi_async import CancelFailed, Cancelled, ErrorKind, KlaviClient, RetryPolicy

from .conftest import CPF, TOKEN, ServerFactory
from .fakes import AUTO_CANCEL, AUTO_STATUS, CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, jitter=False)


def client_for(base: str, **kwargs: object) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    return KlaviClient(TOKEN, base_url=base, **kwargs)  # type: ignore[arg-type]


async def test_refusal_on_a_cancelled_payment_is_already_cancelled(serve: ServerFactory) -> None:
    refusal = {"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "message": "already"}
    fake = ScriptedKlavi().on(CANCEL, Reply(416, refusal)).on(STATUS, status_reply("CANCELED"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.reconciled
    assert result.already_cancelled
    assert result.http_status == 416
    assert result.attempts == 1


async def test_refusal_on_a_settled_payment_carries_its_status(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(416, {"statusCode": 4101}))
    fake.on(STATUS, status_reply("PAYMENT_COMPLETED"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NOT_CANCELLABLE
    assert result.code == "4101"
    assert result.payment_status == "PAYMENT_COMPLETED"
    assert not result.outcome_unknown
    assert not result.retryable


async def test_conflict_is_reconciled(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(409)).on(STATUS, status_reply("CANCELED"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.already_cancelled and result.reconciled


async def test_ambiguous_attempts_are_reconciled(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(500)}).on(STATUS, status_reply("CANCELED"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.reconciled
    assert not result.already_cancelled
    assert result.attempts == 4


async def test_ambiguous_failure_with_failed_read_is_outcome_unknown(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(504), STATUS: Reply(503)})
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.outcome_unknown
    assert result.kind is ErrorKind.SERVER_ERROR
    assert result.retryable
    # The read is a safe GET: retried under the same policy (max_attempts reads), then unknown.
    assert len(fake.requests(method="GET")) == client.retry_policy.max_attempts


async def test_ambiguous_failure_attaches_the_status_read(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(502)}).on(STATUS, status_reply("PAYMENT_PENDING"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.payment_status == "PAYMENT_PENDING"
    assert not result.outcome_unknown


async def test_a_timed_out_request_may_still_land_so_a_pending_read_is_not_conclusive(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, delay=1.0)})
    fake.on(STATUS, status_reply("PAYMENT_PENDING"))
    base = await fake.start(serve)
    async with client_for(base, timeout=0.05, retry=RetryPolicy.disabled()) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.TIMEOUT
    assert result.payment_status == "PAYMENT_PENDING"
    assert result.outcome_unknown  # the first request may still cancel it after the read


async def test_a_terminal_read_after_a_timeout_is_conclusive(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, delay=1.0)})
    fake.on(STATUS, status_reply("PAYMENT_COMPLETED"))
    base = await fake.start(serve)
    async with client_for(base, timeout=0.05, retry=RetryPolicy.disabled()) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.payment_status == "PAYMENT_COMPLETED"
    assert not result.outcome_unknown


async def test_unambiguous_failures_are_not_reconciled(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(503), STATUS: status_reply("CANCELED")})
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
        not_found = await client.cancel_payment("p2", cancelled_by=CPF, idempotency_key="k")
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.SERVER_ERROR
    assert not result.outcome_unknown
    assert result.payment_status is None
    assert not_found.attempts == 4
    assert fake.requests(method="GET") == []


async def test_reset_after_effect_then_success_needs_no_read(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(reset=True), Reply(200, {"status": "CANCELED"}))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert not result.reconciled
    assert result.body == {"status": "CANCELED"}


async def test_automatic_payment_reconciles_on_its_own_status_path(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(AUTO_CANCEL, Reply(416)).on(AUTO_STATUS, status_reply("CANCELED"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_automatic_payment("c1", "p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled) and result.reconciled
    assert fake.seen[-1].path == AUTO_STATUS.format(consent="c1", id="p1")


async def test_status_read_with_garbage_body_counts_as_failed_read(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(CANCEL, Reply(409)).on(STATUS, Reply(200, body=b"<html>"))
    base = await fake.start(serve)
    async with client_for(base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.CONFLICT
    assert result.outcome_unknown


class ChaosKlavi:
    """A stateful Klavi whose every request may meet a seeded random fault."""

    CANCELLABLE = frozenset({"PAYMENT_PENDING", "PAYMENT_SCHEDULED"})

    def __init__(self, seed: int, statuses: dict[str, str]) -> None:
        self.rng = random.Random(seed)
        self.status = dict(statuses)
        self.initial = dict(statuses)
        self.effects: dict[str, int] = dict.fromkeys(statuses, 0)
        self.replies: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.held = asyncio.Event()
        """`slow_after` answers hang until this is set: past any client timeout, however
        busy the machine (a sleep just over the timeout was beaten by a slow loop)."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CANCEL, self.cancel)
        app.router.add_get(STATUS, self.read)
        return app

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["id"]
        key = (pid, request.headers["x-idempotency-key"])
        fault = self.rng.choices(
            ["none", "503", "429", "500_before", "500_after", "reset_after", "slow_after"],
            weights=[40, 12, 8, 8, 8, 12, 12],
        )[0]
        if fault == "503":
            return web.json_response({"message": "unavailable"}, status=503)
        if fault == "429":
            return web.json_response({}, status=429, headers={"Retry-After": "0"})
        if fault == "500_before":
            return web.json_response({}, status=500)
        if key in self.replies:
            status, body = self.replies[key]
        else:
            if self.status[pid] in self.CANCELLABLE:
                self.status[pid] = "CANCELED"
                self.effects[pid] += 1
                status, body = 200, json.dumps({"id": pid, "status": "CANCELED"}).encode()
            else:
                status = 416
                body = json.dumps({"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"}).encode()
            self.replies[key] = (status, body)
        if fault == "500_after":
            return web.json_response({}, status=500)
        if fault == "reset_after":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if fault == "slow_after":
            await self.held.wait()
        return web.Response(status=status, body=body, content_type="application/json")

    async def read(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["id"]
        if self.rng.random() < 0.25:
            return web.json_response({}, status=503)
        return web.json_response({"id": pid, "status": self.status[pid]})


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_ok_iff_cancelled_under_random_faults(serve: ServerFactory, seed: int) -> None:
    """Unless outcome_unknown, a result is ok exactly when the payment ends CANCELED."""
    rng = random.Random(seed)
    statuses = {
        f"p{i}": rng.choice(
            ["PAYMENT_PENDING", "PAYMENT_SCHEDULED", "PAYMENT_COMPLETED", "CANCELED"]
        )
        for i in range(160)
    }
    chaos = ChaosKlavi(seed, statuses)
    base = await serve(chaos.app())
    # A timeout well above a loopback answer's time on a busy machine: at 0.25 s, under
    # load, every answer came too late and every result was outcome_unknown.
    async with client_for(base, timeout=1.5, max_connections=200) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(pid, cancelled_by=CPF) for pid in statuses)
        )
    chaos.held.set()
    checked = 0
    for result in results:
        final = chaos.status[result.payment_id]
        assert chaos.effects[result.payment_id] <= 1
        if isinstance(result, CancelFailed) and result.outcome_unknown:
            continue
        if isinstance(result, CancelFailed) and chaos.initial[result.payment_id] == "CANCELED":
            # Cancelled by someone else before the call, and every attempt was turned
            # away unapplied (429/503): the call cannot know; it says "try again".
            assert result.retryable
            assert not any(a.ambiguous for a in result.history)
            continue
        checked += 1
        assert result.ok == (final == "CANCELED"), (result, final)
        if isinstance(result, CancelFailed) and result.payment_status is not None:
            assert result.payment_status == final
    assert checked > 60  # the rest were outcome_unknown (timeouts with a failed read)
    assert any(isinstance(r, Cancelled) and r.reconciled for r in results)
    assert any(isinstance(r, CancelFailed) and r.kind is ErrorKind.NOT_CANCELLABLE for r in results)
