"""TLS: verification on by default, a custom SSLContext, real loopback HTTPS with a local CA."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from klavi_async import CancelFailed, Cancelled, ErrorKind, KlaviClient, RetryPolicy

from .conftest import CPF, TOKEN

CANCEL = "/payment/customer/v1/instant/payments/{id}/cancel"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def https_url(ca: trustme.CA) -> AsyncIterator[str]:
    seen: list[str] = []

    async def cancel(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"status": "CANCELED"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(ssl=server_context)
    yield f"https://localhost:{server.port}"
    await server.close()


async def test_an_unknown_ca_is_refused_by_default(https_url: str) -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.001)
    async with KlaviClient(TOKEN, base_url=https_url, retry=policy) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NETWORK
    assert "Certificate" in result.message or "certificate" in result.message
    assert not any(a.ambiguous for a in result.history)  # the handshake failed: nothing sent


async def test_a_context_trusting_the_local_ca_works(https_url: str, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with KlaviClient(TOKEN, base_url=https_url, ssl=context) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.body == {"status": "CANCELED"}


async def test_a_borrowed_session_gets_the_context_per_request(
    https_url: str, ca: trustme.CA
) -> None:
    import aiohttp

    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with aiohttp.ClientSession() as session:
        async with KlaviClient(TOKEN, base_url=https_url, ssl=context, session=session) as klavi:
            assert (await klavi.cancel_payment("p1", cancelled_by=CPF)).ok
        policy = RetryPolicy.disabled()
        async with KlaviClient(TOKEN, base_url=https_url, session=session, retry=policy) as klavi:
            refused = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(refused, CancelFailed)
    assert refused.kind is ErrorKind.NETWORK
