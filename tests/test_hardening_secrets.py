"""
Secrets and careless input (issue 9): a token echoed by the server, the token in frame
locals and in asyncio's debug output, documents in errors and reprs, unusable tokens,
providers raising CancelledError, and huge invalid values kept whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from klavi_async import (
    CancelFailed,
    CancelRequest,
    ErrorKind,
    InvalidRequestError,
    KlaviClient,
    KlaviError,
    RetryPolicy,
    UnauthorizedError,
)

from .conftest import CPF, CPF_BARE, ServerFactory
from .fakes import AUTH, CANCEL, STATUS, Reply, ScriptedKlavi

FAST = RetryPolicy(initial_backoff=0, jitter=False)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrbGF2aSJ9.c2lnbmF0dXJlLXNlY3JldC0xMjM0NTY"


def texts_of(result: Any) -> Iterator[str]:
    """Everything a user may print or store from a result."""
    yield repr(result)
    yield str(result)
    yield json.dumps(result.to_record())
    for attempt in result.history:
        yield repr(attempt)
    if isinstance(result, CancelFailed):
        try:
            result.unwrap()
        except KlaviError as exc:
            yield str(exc)
            yield repr(exc)
            yield "".join(traceback.format_exception(exc))


# -- item 3: the token echoed by the server -----------------------------------------


async def test_a_token_echoed_in_a_401_is_scrubbed_everywhere(
    serve: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def echo(request: web.Request) -> Reply:
        sent = request.headers["Authorization"]
        return Reply(
            401,
            {"message": f"invalid token: {sent}", "code": f"BAD_{sent[7:]}"},
            headers={"x-request-id": f"req-{sent[7:]}"},
        )

    fake = ScriptedKlavi(default={CANCEL: Reply(401)}).on(CANCEL, echo, echo)
    base = await fake.start(serve)
    with caplog.at_level(logging.DEBUG, logger="klavi_async"):
        async with KlaviClient(JWT, base_url=base, retry=FAST) as klavi:
            result = await klavi.cancel_payment("p1", cancelled_by=CPF)
            with pytest.raises(UnauthorizedError) as caught:
                fake.on(STATUS, echo)
                await klavi.get_payment_status("p1")
    assert isinstance(result, CancelFailed) and result.kind is ErrorKind.UNAUTHORIZED
    assert "invalid token: Bearer ***" in result.message
    assert result.history[0].request_id == "req-***"
    texts = [*texts_of(result), str(caught.value), repr(caught.value.body)]
    texts += [r.getMessage() for r in caplog.records]
    texts += [repr(vars(r)) for r in caplog.records]
    leaked = [t for t in texts if JWT in t]
    assert not leaked, leaked[:2]
    assert result.body == {"message": "invalid token: Bearer ***", "code": "BAD_***"}


async def test_a_token_echoed_in_a_success_body_is_not_kept(serve: ServerFactory) -> None:
    fake = ScriptedKlavi().on(
        CANCEL, lambda request: Reply(200, {"by": request.headers["Authorization"]})
    )
    base = await fake.start(serve)
    async with KlaviClient(JWT, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok and result.body == {"by": "Bearer ***"}


# -- item 4: no frame local or traceback holds the token ------------------------------


def assert_no_token_in_frames(exc: BaseException, token: str) -> None:
    """Neither capture_locals nor a walk of the plain values in each frame finds *token*."""
    rendered = traceback.TracebackException.from_exception(exc, capture_locals=True)
    for stack in _stacks(rendered):
        for frame in stack:
            if frame.filename != __file__ and frame.locals:
                assert not [v for v in frame.locals.values() if token in v], frame.name
    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        tb = chain.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == __file__:  # this test's own server records
                tb = tb.tb_next
                continue
            for name, value in tb.tb_frame.f_locals.items():
                assert token not in _plain_strings(value), (tb.tb_frame.f_code.co_name, name)
            tb = tb.tb_next
        chain = chain.__cause__ or chain.__context__


def _stacks(rendered: traceback.TracebackException) -> Iterator[traceback.StackSummary]:
    seen: set[int] = set()
    current: traceback.TracebackException | None = rendered
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current.stack
        current = current.__cause__ or current.__context__


def _plain_strings(value: object, depth: int = 0) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if depth > 3:
        return ""
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return ""
    return "\n".join(_plain_strings(item, depth + 1) for item in items)


@pytest.mark.parametrize("status_read", [False, True])
async def test_a_cancelled_call_carries_no_token_in_its_traceback(
    serve: ServerFactory, status_read: bool
) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(10)
        return web.json_response({})

    app = web.Application()
    app.router.add_post(CANCEL, slow)
    app.router.add_get(STATUS, slow)
    base = await serve(app)
    async with KlaviClient(JWT, base_url=base, retry=FAST) as klavi:
        call = (
            klavi.get_payment_status("p1")
            if status_read
            else klavi.cancel_payment("p1", cancelled_by=CPF)
        )
        task = asyncio.create_task(call)
        await asyncio.wait_for(arrived.wait(), 5)
        task.cancel("stop")
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
    assert caught.value.args == ("stop",)  # the cancel message survives
    assert_no_token_in_frames(caught.value, JWT)


async def test_an_error_raised_by_a_status_read_carries_no_token(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={STATUS: Reply(401, {"message": "no"})})
    base = await fake.start(serve)
    async with KlaviClient(JWT, base_url=base, retry=FAST) as klavi:
        with pytest.raises(UnauthorizedError) as caught:
            await klavi.get_payment_status("p1")
    assert_no_token_in_frames(caught.value, JWT)


async def test_a_timeout_of_the_callers_own_carries_no_token(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=5)})
    base = await fake.start(serve)
    async with KlaviClient(JWT, base_url=base, retry=FAST) as klavi:
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(0.2):
                await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert_no_token_in_frames(caught.value, JWT)


# -- item 5: asyncio debug mode -------------------------------------------------------


async def test_asyncio_debug_output_never_shows_the_token(
    serve: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)

    async def slow_provider() -> str:
        time.sleep(0.03)  # noqa: ASYNC251 - a slow step: debug mode logs the task and its result
        return JWT

    loop = asyncio.get_running_loop()
    old = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            async with KlaviClient(slow_provider, base_url=base, retry=FAST) as klavi:
                assert (await klavi.cancel_payment("p1", cancelled_by=CPF)).ok
                await asyncio.sleep(0)
    finally:
        loop.set_debug(old[0])
        loop.slow_callback_duration = old[1]
    executing = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any("_fetch" in m for m in executing)  # the fetch task was reported
    assert not [m for m in executing if JWT in m]


# -- item 6: documents masked in every field of every repr and error ------------------


async def test_a_cpf_passed_as_the_payment_id_of_a_status_read_is_masked() -> None:
    async with KlaviClient("tok", base_url="http://127.0.0.1:9") as klavi:
        with pytest.raises(InvalidRequestError) as caught:
            await klavi.get_payment_status(CPF)
    assert caught.value.payment_id is not None
    for text in (caught.value.payment_id, str(caught.value), repr(caught.value)):
        assert CPF not in text and CPF_BARE not in text
    assert "***.982.247-**" in caught.value.payment_id


async def test_a_bare_cpf_that_is_a_valid_id_is_masked_in_reprs_and_messages(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi(default={STATUS: Reply(404, {"message": "no such payment"})})
    base = await fake.start(serve)
    async with KlaviClient("tok", base_url=base, retry=FAST) as klavi:
        with pytest.raises(KlaviError) as caught:
            await klavi.get_payment_status(CPF_BARE)
        result = await klavi.cancel_payment(CPF_BARE, cancelled_by=CPF)
    assert CPF_BARE not in str(caught.value)
    assert CPF_BARE not in repr(result)


def test_a_cancel_requests_repr_masks_documents_in_every_field() -> None:
    request = CancelRequest(CPF_BARE, CPF, CPF, CPF, consent_id=CPF_BARE)
    shown = repr(request)
    assert CPF not in shown and CPF_BARE not in shown
    assert shown.count("***.982.247-**") == 5


# -- item 7 (token): a token holding control characters -------------------------------


@pytest.mark.parametrize("char", ["\x01", "\x08", "\x0b", "\x1f", "\x7f", "é", "\u2028"])
async def test_a_provider_token_with_a_control_character_is_refused(
    serve: ServerFactory, char: str
) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)

    async def provider() -> str:
        return f"tok{char}en"

    async with KlaviClient(provider, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
        batch = [r async for r in klavi.cancel_many([CancelRequest("p2", CPF)] * 2)]
    for failed in (result, *batch):
        assert isinstance(failed, CancelFailed)
        assert failed.kind is ErrorKind.AUTHENTICATION_FAILED
        assert not failed.retryable
        assert "control or non-ASCII" in failed.message
    assert fake.seen == []


async def test_an_auth_endpoint_token_with_a_control_character_is_refused(
    serve: ServerFactory,
) -> None:
    from klavi_async import ClientCredentials

    fake = ScriptedKlavi(default={AUTH: Reply(200, {"accessToken": "tok\x01x", "expireIn": 600})})
    base = await fake.start(serve)
    async with KlaviClient(ClientCredentials("ak-1", "sk-1"), base_url=base, retry=FAST) as k:
        result = await k.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED and not result.retryable
    assert fake.cancels() == []


# -- item 8: a provider raising CancelledError ----------------------------------------


async def test_a_provider_raising_cancelled_error_is_a_provider_failure(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)

    async def provider() -> str:
        raise asyncio.CancelledError

    async with KlaviClient(provider, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
        batch = [
            r async for r in klavi.cancel_many([CancelRequest(f"p{i}", CPF) for i in range(3)])
        ]
    for failed in (result, *batch):
        assert isinstance(failed, CancelFailed)
        assert failed.kind is ErrorKind.AUTHENTICATION_FAILED
        assert "CancelledError" in failed.message
    assert len(batch) == 3


async def test_a_real_cancellation_during_a_token_fetch_still_propagates(
    serve: ServerFactory,
) -> None:
    base = await ScriptedKlavi().start(serve)
    fetching = asyncio.Event()

    async def provider() -> str:
        fetching.set()
        await asyncio.sleep(10)
        return "tok"

    async with KlaviClient(provider, base_url=base, retry=FAST) as klavi:
        task = asyncio.create_task(klavi.cancel_payment("p1", cancelled_by=CPF))
        await asyncio.wait_for(fetching.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- item 12 (half): values kept from invalid input are clipped -----------------------


async def test_huge_invalid_values_are_kept_clipped() -> None:
    huge = "x" * 10_000_000 + "!"
    async with KlaviClient("tok", base_url="http://127.0.0.1:9") as klavi:
        by_id = await klavi.cancel_payment(huge, cancelled_by=CPF)
        by_key = await klavi.cancel_payment("p1", cancelled_by=CPF, idempotency_key=huge)
        by_consent = await klavi.cancel_automatic_payment(huge, "p1", cancelled_by=CPF)
        with pytest.raises(InvalidRequestError) as caught:
            await klavi.get_payment_status(huge)
    assert isinstance(by_id, CancelFailed) and by_id.kind is ErrorKind.INVALID_REQUEST
    assert by_id.payment_id == "x" * 100 + "…(clipped)"
    assert by_key.idempotency_key == "x" * 100 + "…(clipped)"
    assert by_consent.consent_id == "x" * 100 + "…(clipped)"
    assert caught.value.payment_id == "x" * 100 + "…(clipped)"
    for value in (by_id, by_key, by_consent, caught.value):
        assert len(repr(value)) < 2000
        assert len(str(value)) < 2000
    assert len(json.dumps(by_id.to_record())) < 2000
    assert len(repr(CancelRequest(huge, CPF))) < 500


async def test_a_document_at_the_clip_edge_is_masked_not_cut() -> None:
    value = "x" * 95 + " " + CPF_BARE + " !"
    async with KlaviClient("tok", base_url="http://127.0.0.1:9") as klavi:
        result = await klavi.cancel_payment(value, cancelled_by=CPF)
    assert CPF_BARE[:5] not in result.payment_id
    assert result.payment_id.endswith("…(clipped)")


# -- a status value that echoes the client's keys ---------------------------------------


async def test_a_status_read_echoing_the_secret_key_keeps_it_nowhere(
    serve: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    from klavi_async import ClientCredentials

    secret, access = "sk-very-secret-0042", "ak-visible-0042"
    echo = Reply(200, {"status": f"PAYMENT_COMPLETED {secret}", "id": f"{access}-{secret}"})
    refusal = {"statusCode": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "message": "no"}
    fake = (
        ScriptedKlavi(default={AUTH: Reply(200, {"accessToken": "tok-1", "expireIn": 600})})
        .on(CANCEL, Reply(416, refusal))
        .on(STATUS, echo, echo)
    )
    base = await fake.start(serve)
    credentials = ClientCredentials(access, secret)
    with caplog.at_level(logging.DEBUG, logger="klavi_async"):
        async with KlaviClient(credentials, base_url=base, retry=FAST) as klavi:
            result = await klavi.cancel_payment("p1", cancelled_by=CPF)
            read = await klavi.get_payment_status("p1")
    assert isinstance(result, CancelFailed)
    assert result.payment_status == "PAYMENT_COMPLETED ***"
    assert read.status == "PAYMENT_COMPLETED ***" and read.payment_id == "***-***"
    texts = [*texts_of(result), repr(read), str(result.to_record())]
    texts += [r.getMessage() for r in caplog.records] + [repr(vars(r)) for r in caplog.records]
    assert not [t for t in texts if secret in t or access in t]
