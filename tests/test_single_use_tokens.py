"""
`ClientCredentials(..., single_use=True)`: a token of its own for every call.

Against a scripted Klavi that hands out numbered tokens, so each test can say which token
each request carried.  The emulator's single-use mode at concurrency is in
test_emulator_fidelity.py; the CLI and the worker fleet in their own files.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import urllib.parse
from collections.abc import Callable
from contextlib import aclosing

import pytest
from aiohttp import web

from klavi_async import (
    CancelFailed,
    CancelRequest,
    CancelResult,
    ClientClosedError,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy,
)
from klavi_async._transport import Response

from .conftest import CPF, LeakGuard, ServerFactory, no_sdk_tasks
from .fakes import (
    AUTH,
    CANCEL,
    STATUS,
    MockTransport,
    Reply,
    ScriptedKlavi,
    Sent,
    json_response,
    status_reply,
)

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


# -- the attack on single-use tokens ------------------------------------------------------


@pytest.mark.parametrize("secret", ["SuperSecretKey-0123456789abcdef", "tab\tand  two spaces"])
async def test_an_auth_answer_echoing_the_secret_near_the_clip_keeps_none_of_it(
    serve: ServerFactory, leak_guard: LeakGuard, secret: str
) -> None:
    # Scrubbed after the message was cleaned and clipped, a key cut at the edge kept up
    # to 26 characters, and one with folded white space was kept whole.
    padding = "x" * (300 - len(secret) // 2)
    answer = Reply(503, {"message": f"{padding} {secret} more"})
    fake = ScriptedKlavi(default={AUTH: answer})
    base = await fake.start(serve)
    credentials = ClientCredentials("access-key-1234", secret, single_use=True)
    async with KlaviClient(credentials, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed) and result.kind is ErrorKind.AUTHENTICATION_FAILED
    seen = [result.message, repr(result), *(r.getMessage() for r in leak_guard.records)]
    for piece in (secret[:8], secret[-8:], "SuperSecretKey"):
        assert not any(piece in text for text in seen), piece


async def test_the_auth_body_never_shows_the_keys() -> None:
    # A call cancelled while it fetches its own token carries the send's frames (Python
    # 3.12's wait_for runs it in the caller's task): each holds the body as a local.
    bodies: list[object] = []

    def handler(sent: Sent) -> Response:
        bodies.append(sent.body)
        return json_response(200, {"accessToken": "tok-1", "expireIn": 300})

    transport = MockTransport(handler)
    klavi = KlaviClient._with_transport(transport, OWN, base_url="http://127.0.0.1:9")
    async with klavi:
        await klavi.cancel_payment("p1", cancelled_by=CPF)
    body = bodies[0]
    assert isinstance(body, bytes) and b"secret-key-5678" in body  # sent as it is
    assert "secret-key-5678" not in repr(body) + str(body)


async def test_each_token_fetch_takes_a_slot_and_tells_the_limiter(serve: ServerFactory) -> None:
    # Every call fetches a token: /auth is a share of the traffic the limiter must see.
    fake = Tokens().serve(ScriptedKlavi(default={CANCEL: Reply(200, {})}))
    fake.script[AUTH].appendleft(Reply(429, {}, headers={"Retry-After": "0"}))
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        assert (await klavi.cancel_payment("p1", cancelled_by=CPF)).ok
        stats = klavi.rate_limit_stats()
    assert stats is not None and stats.throttle_events == 1


async def test_a_token_fetch_is_part_of_its_call_in_the_budget(serve: ServerFactory) -> None:
    fake = Tokens().serve(ScriptedKlavi(default={CANCEL: Reply(200, {})}))
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        for payment in ("p1", "p2", "p3"):
            assert (await klavi.cancel_payment(payment, cancelled_by=CPF)).ok
        assert klavi.retry_budget.stats().total_first_attempts == 3  # was 6


async def test_an_auth_answer_cut_short_is_fetched_again(serve: ServerFactory) -> None:
    fake = Tokens().serve(ScriptedKlavi(default={CANCEL: Reply(200, {})}))
    fake.script[AUTH].appendleft(
        Reply(200, body=b'{"accessToken": "tok', headers={"Content-Length": "90"})
    )
    base = await fake.start(serve)
    async with KlaviClient(OWN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok, result
    assert len(fake.requests(AUTH)) == 2


@pytest.mark.parametrize("single_use", [True, False])
async def test_closing_the_client_while_calls_wait_for_tokens_raises_closed(
    serve: ServerFactory, single_use: bool
) -> None:
    # Before: AUTHENTICATION_FAILED, not retryable, "the token provider raised
    # ClientClosedError" (single-use), or a bare CancelledError nobody asked for.
    tokens = Tokens(asyncio.Event())
    fake = tokens.serve(ScriptedKlavi())
    base = await fake.start(serve)
    credentials = ClientCredentials("access-key-1234", "secret-key-5678", single_use=single_use)
    klavi = KlaviClient(credentials, base_url=base, retry=FAST)
    calls = [asyncio.create_task(klavi.cancel_payment(f"p{i}", cancelled_by=CPF)) for i in range(3)]
    while tokens.waiting < (3 if single_use else 1):
        await asyncio.sleep(0.01)
    await klavi.aclose()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, ClientClosedError) for o in outcomes), outcomes
    assert fake.cancels() == []


@pytest.mark.parametrize("single_use", [True, False])
async def test_closing_the_client_under_load_raises_closed_in_every_call(
    serve: ServerFactory, single_use: bool
) -> None:
    # 120 calls over a pool of 100, Klavi slow: closing the client made the 20 waiting
    # for a pooled connection raise a bare CancelledError (shared token) or end
    # AUTHENTICATION_FAILED "the token provider raised CancelledError" (single-use).
    fake = Tokens().serve(ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=30)}), 200)
    base = await fake.start(serve)
    credentials = ClientCredentials("access-key-1234", "secret-key-5678", single_use=single_use)
    klavi = KlaviClient(credentials, base_url=base, retry=FAST, max_connections=100)
    calls = [
        asyncio.create_task(klavi.cancel_payment(f"p{i}", cancelled_by=CPF)) for i in range(120)
    ]
    while len(fake.cancels()) < 100:
        await asyncio.sleep(0.01)
    await klavi.aclose()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    kinds = {type(o).__name__ for o in outcomes if not isinstance(o, CancelFailed)}
    failed = [o for o in outcomes if isinstance(o, CancelFailed)]
    assert kinds <= {"ClientClosedError"}, kinds
    assert all(o.kind is not ErrorKind.AUTHENTICATION_FAILED for o in failed)


@pytest.mark.parametrize(
    "escape",
    [
        lambda s: urllib.parse.quote(s, safe=""),
        urllib.parse.quote_plus,
        html.escape,
        lambda s: json.dumps(s)[1:-1],
    ],
    ids=["url", "form", "html", "json"],
)
async def test_an_escaped_echo_of_the_secret_is_scrubbed(
    serve: ServerFactory, leak_guard: LeakGuard, escape: Callable[[str], str]
) -> None:
    secret = 'S3cr+t/K&y<>"\\é☃'
    fake = ScriptedKlavi(default={AUTH: Reply(401, body=f"bad key {escape(secret)}".encode())})
    base = await fake.start(serve)
    credentials = ClientCredentials("access-key-1234", secret)
    async with KlaviClient(credentials, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed) and result.kind is ErrorKind.AUTHENTICATION_FAILED
    assert "bad key ***" in result.message, result.message
