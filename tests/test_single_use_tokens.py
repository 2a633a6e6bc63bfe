"""
`ClientCredentials(..., single_use=True)`: a token of its own for every call.

Against a scripted Klavi that hands out numbered tokens, so each test can say which token
each request carried.  The emulator's single-use mode at concurrency is in
test_emulator_fidelity.py; the CLI and the worker fleet in their own files.
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import aclosing

import pytest
from aiohttp import web

from klavi_async import (
    CancelFailed,
    CancelRequest,
    CancelResult,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy,
)

from .conftest import CPF, LeakGuard, ServerFactory, no_sdk_tasks
from .fakes import AUTH, CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST = RetryPolicy(initial_backoff=0, max_backoff=0, jitter=False)
OWN = ClientCredentials("access-key-1234", "secret-key-5678", single_use=True)


class Tokens:
    """Auth answers tok-1, tok-2, ... in the order asked, each after *gate* (if given) opens."""

    def __init__(self, gate: asyncio.Event | None = None, lifetime: float = 300.0) -> None:
        self.counter = itertools.count(1)
        self.gate = gate
        self.lifetime = lifetime
        self.waiting = 0

    async def reply(self, _request: web.Request) -> Reply:
        self.waiting += 1
        if self.gate is not None:
            await self.gate.wait()
        return Reply(200, {"accessToken": f"tok-{next(self.counter)}", "expireIn": self.lifetime})

    def serve(self, fake: ScriptedKlavi, count: int = 50) -> ScriptedKlavi:
        return fake.on(AUTH, *[self.reply] * count)


def tokens_of(fake: ScriptedKlavi, suffix: str) -> list[str]:
    """The bearer token of each request whose path ends with *suffix*, in order."""
    return [
        s.headers["Authorization"].removeprefix("Bearer ")
        for s in fake.seen
        if s.path.endswith(suffix)
    ]


async def collect(
    klavi: KlaviClient, requests: list[CancelRequest], concurrency: int
) -> list[CancelResult]:
    async with aclosing(klavi.cancel_many(requests, concurrency=concurrency)) as results:
        return [r async for r in results]


async def test_each_cancel_uses_a_token_of_its_own_and_its_read_the_same(
    serve: ServerFactory,
) -> None:
    fake = Tokens().serve(ScriptedKlavi(default={CANCEL: Reply(200, {})}))
    fake.on(CANCEL, Reply(200, {}), Reply(200, {}), Reply(503), Reply(200, {}), Reply(416))
    fake.on(STATUS, status_reply("PAYMENT_COMPLETED", "p4"))
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        results = [
            await klavi.cancel_payment(p, cancelled_by=CPF) for p in ("p1", "p2", "p3", "p4")
        ]
        assert klavi.token_fetches == 4
    assert [r.ok for r in results] == [True, True, True, False]
    # p3 was retried (503, then 200) with its own token; p4's refusal read with p4's token.
    assert tokens_of(fake, "/cancel") == ["tok-1", "tok-2", "tok-3", "tok-3", "tok-4"]
    assert tokens_of(fake, "/status") == ["tok-4"]
    refused = results[3]
    assert isinstance(refused, CancelFailed) and refused.kind is ErrorKind.NOT_CANCELLABLE
    assert refused.payment_status == "PAYMENT_COMPLETED"


async def test_a_401_fetches_a_new_token_and_replays_once(serve: ServerFactory) -> None:
    fake = Tokens().serve(ScriptedKlavi())
    fake.on(CANCEL, Reply(401), Reply(200, {}), Reply(401), Reply(401))
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        replayed = await klavi.cancel_payment("p1", cancelled_by=CPF)
        refused = await klavi.cancel_payment("p2", cancelled_by=CPF)
    assert replayed.ok and [a.http_status for a in replayed.history] == [401, 200]
    assert replayed.history[1].token_refreshed
    assert isinstance(refused, CancelFailed) and refused.kind is ErrorKind.UNAUTHORIZED
    assert tokens_of(fake, "/cancel") == ["tok-1", "tok-2", "tok-3", "tok-4"]


async def test_fetches_run_concurrently(serve: ServerFactory) -> None:
    # No token is handed out until eight fetches are at the server at once: fetched one
    # at a time (a single flight), the batch could not get past the first.
    tokens = Tokens(asyncio.Event())
    fake = tokens.serve(ScriptedKlavi(default={CANCEL: Reply(200, {})}))
    base = await fake.start(serve)
    requests = [CancelRequest(f"p{i}", CPF) for i in range(8)]
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        batch = asyncio.create_task(collect(klavi, requests, 8))
        while tokens.waiting < 8:
            assert not batch.done()
            await asyncio.sleep(0.01)
        assert tokens.gate is not None
        tokens.gate.set()
        results = await asyncio.wait_for(batch, 30)
    assert all(r.ok for r in results)
    assert sorted(tokens_of(fake, "/cancel")) == sorted(f"tok-{i}" for i in range(1, 9))


async def test_a_fetch_past_the_deadline_ends_the_call_and_leaks_nothing(
    serve: ServerFactory,
) -> None:
    fake = Tokens(asyncio.Event()).serve(ScriptedKlavi())  # the auth route never answers
    base = await fake.start(serve)
    policy = RetryPolicy(max_attempts=1, deadline=0.3)
    async with KlaviClient(OWN, base_url=base, retry=policy, timeout=5.0) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED and result.retryable
    assert fake.cancels() == []
    assert no_sdk_tasks()


async def test_a_cancelled_call_cancels_its_fetch(serve: ServerFactory) -> None:
    tokens = Tokens(asyncio.Event())
    fake = tokens.serve(ScriptedKlavi())
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        call = asyncio.create_task(klavi.cancel_payment("p1", cancelled_by=CPF))
        while tokens.waiting < 1:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert no_sdk_tasks()
    assert fake.cancels() == []


async def test_a_rejected_key_fails_each_call_and_warns(
    serve: ServerFactory, leak_guard: LeakGuard
) -> None:
    fake = ScriptedKlavi(default={AUTH: Reply(401, {"message": "bad key secret-key-5678"})})
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        results = [await klavi.cancel_payment(p, cancelled_by=CPF) for p in ("p1", "p2")]
    for result in results:
        assert isinstance(result, CancelFailed)
        assert result.kind is ErrorKind.AUTHENTICATION_FAILED and not result.retryable
    assert len(fake.requests(AUTH)) == 2 and fake.cancels() == []
    warnings = [r for r in leak_guard.records if r.msg.startswith("token provider failed")]
    assert len(warnings) == 2  # one per fetch: a call's failure is its own


async def test_a_token_about_to_expire_is_replaced_before_the_next_attempt(
    serve: ServerFactory,
) -> None:
    now = [1000.0]

    def later(_request: web.Request) -> Reply:
        now[0] += 5.0  # the 2 s token expires while this attempt fails
        return Reply(503)

    fake = Tokens(lifetime=2.0).serve(ScriptedKlavi())
    fake.on(CANCEL, later, Reply(200, {}))
    base = await fake.start(serve)
    async with KlaviClient(
        OWN,
        base_url=base,
        retry=RetryPolicy(initial_backoff=0, jitter=False, deadline=60),
        clock=lambda: now[0],
    ) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok and result.attempts == 2
    assert tokens_of(fake, "/cancel") == ["tok-1", "tok-2"]


def test_single_use_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="single_use must be a bool"):
        ClientCredentials("a", "b", single_use="yes")  # type: ignore[arg-type]
    assert ClientCredentials("a", "b").single_use is False
    assert "single_use=True" in repr(OWN)
    assert "secret-key-5678" not in repr(OWN)
