"""The aiohttp boundary: body caps, exception mapping, TLS settings (also via aioresponses)."""

from __future__ import annotations

import re
import ssl

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses

from klavi_async import CancelFailed, Cancelled, ErrorKind, KlaviClient, RetryPolicy

from .conftest import CPF, TOKEN, ServerFactory
from .fakes import CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.002, jitter=False)
BASE = "https://api-sandbox.klavi.ai"
CANCEL_URL = re.compile(
    r"^https://api-sandbox\.klavi\.ai/payment/customer/v1/instant/payments/.*/cancel$"
)
STATUS_URL = re.compile(
    r"^https://api-sandbox\.klavi\.ai/payment/customer/v1/instant/payments/.*/status$"
)


async def test_oversized_success_body_is_capped(serve: ServerFactory) -> None:
    big = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    fake = ScriptedKlavi().on(CANCEL, Reply(200, body=big))
    fake.on(STATUS, Reply(200, body=b'{"status": "CANCELED"}'))
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    # A 200 read only up to the cap is not a success by itself: the status read decides.
    assert isinstance(result, Cancelled)
    assert result.reconciled
    assert result.body is None
    assert len(fake.cancels()) == 1


async def test_oversized_chunked_error_body_is_capped(serve: ServerFactory) -> None:
    async def cancel(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=416)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"statusCode": "4101", "pad": "')
        for _ in range(40):
            await response.write(b"y" * 65536)
        await response.write(b'"}')
        return response

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"status": "PAYMENT_COMPLETED"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    app.router.add_get(STATUS, status)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, max_response_size=100_000) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NOT_CANCELLABLE
    assert result.payment_status == "PAYMENT_COMPLETED"


async def test_small_chunked_body_is_read_whole(serve: ServerFactory) -> None:
    async def cancel(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"status": ')
        await response.write(b'"CANCELED"}')
        return response

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.body == {"status": "CANCELED"}


async def test_body_cut_after_the_status_line_keeps_the_status(serve: ServerFactory) -> None:
    async def cancel(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"status": "CAN')
        assert request.transport is not None
        request.transport.close()
        return response

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"status": "CANCELED"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    app.router.add_get(STATUS, status)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    # The status line said 200 but the body was cut: only the status read may say CANCELED.
    assert isinstance(result, Cancelled)
    assert result.reconciled
    assert result.body is None
    assert result.attempts == 1


async def test_a_custom_ssl_context_is_accepted(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    context = ssl.create_default_context()
    async with KlaviClient(TOKEN, base_url=base, ssl=context) as client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    assert client._transport.ssl is context


async def test_mocked_retry_then_success(aiomock: aioresponses) -> None:
    mocked = aiomock
    mocked.post(CANCEL_URL, status=503, payload={"message": "busy"})
    mocked.post(CANCEL_URL, status=200, payload={"status": "CANCELED"})
    async with KlaviClient(TOKEN, retry=FAST) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert [a.http_status for a in result.history] == [503, 200]
    assert result.body == {"status": "CANCELED"}
    calls = [c for key, cs in mocked.requests.items() for c in cs if key[0] == "POST"]
    keys = {c.kwargs["headers"]["x-idempotency-key"] for c in calls}
    assert len(calls) == 2 and len(keys) == 1


@pytest.mark.parametrize(
    ("exception", "kind", "ambiguous"),
    [
        (aiohttp.ServerDisconnectedError(), ErrorKind.NETWORK, True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), ErrorKind.NETWORK, True),
        (aiohttp.ClientPayloadError("broken"), ErrorKind.NETWORK, True),
        (TimeoutError(), ErrorKind.TIMEOUT, True),
        (aiohttp.ConnectionTimeoutError(), ErrorKind.TIMEOUT, False),
        (
            aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey(
                    "api-sandbox.klavi.ai", 443, True, True, None, None, None
                ),
                OSError(111, "refused"),
            ),
            ErrorKind.NETWORK,
            False,
        ),
        (ConnectionResetError(104, "reset"), ErrorKind.NETWORK, True),
    ],
)
async def test_aiohttp_errors_map_to_kinds(
    aiomock: aioresponses, exception: Exception, kind: ErrorKind, ambiguous: bool
) -> None:
    aiomock.post(CANCEL_URL, exception=exception, repeat=True)
    aiomock.get(STATUS_URL, status=200, payload={"status": "PAYMENT_PENDING"}, repeat=True)
    async with KlaviClient(TOKEN, retry=FAST) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is kind
    assert result.retryable
    assert result.attempts == 4
    assert all(a.ambiguous is ambiguous for a in result.history)
    assert (result.payment_status == "PAYMENT_PENDING") is ambiguous
    assert TOKEN not in result.message


async def test_mocked_status_read(aiomock: aioresponses) -> None:
    aiomock.get(STATUS_URL, status=200, payload=status_reply("PAYMENT_PENDING").json_body)
    async with KlaviClient(TOKEN) as client:
        status = await client.get_payment_status("pay-1")
    assert status.status == "PAYMENT_PENDING"
    assert status.status_reason_code == "X"
    assert BASE in client.base_url
