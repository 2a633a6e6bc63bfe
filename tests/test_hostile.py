"""Hostile servers: every odd answer has a defined outcome, and nothing hangs or leaks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from klavi_async import CancelFailed, Cancelled, ErrorKind, KlaviClient, RetryPolicy

from .conftest import CPF, TOKEN, ServerFactory
from .fakes import CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST = RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.002, jitter=False)

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """A TCP server speaking whatever bytes the test writes, on 127.0.0.1."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> str:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client gave up first: fine for these tests
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)


async def test_status_line_trickled_past_the_timeout(raw_server: object) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    base = await raw_server(trickle)  # type: ignore[operator]
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, timeout=0.3) as klavi:
        started = time.monotonic()
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.TIMEOUT
    assert result.history[0].ambiguous
    assert result.outcome_unknown  # the reconciliation read met the same server
    assert time.monotonic() - started < 10  # a guard against a hang; the kinds are the check


async def test_body_trickled_past_the_timeout_keeps_the_status(serve: ServerFactory) -> None:
    async def cancel(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "50"})
        await response.prepare(request)
        for _ in range(50):
            await response.write(b" ")
            await asyncio.sleep(0.05)
        return response

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"status": "PAYMENT_PENDING"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    app.router.add_get(STATUS, status)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, timeout=0.3) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    # The 200 status line arrived but the body never did: not a success; the read decides,
    # and it found the payment still pending.
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.TIMEOUT
    assert result.http_status == 200
    assert result.payment_status == "PAYMENT_PENDING"


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2000 Weird\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        b"",
    ],
)
async def test_garbage_answers_are_network_failures(raw_server: object, garbage: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(garbage)
        await writer.drain()
        writer.close()

    base = await raw_server(answer)  # type: ignore[operator]
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NETWORK
    assert result.retryable
    assert result.attempts == 2
    assert TOKEN not in result.message


async def test_redirects_never_carry_the_token_elsewhere(serve: ServerFactory) -> None:
    elsewhere: list[str] = []

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("Authorization", ""))
        return web.json_response({})

    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", other)
    other_base = await serve(other_app)
    fake = ScriptedKlavi(
        default={CANCEL: Reply(302, headers={"Location": f"{other_base}/steal"})}
    ).on(STATUS, status_reply("PAYMENT_PENDING"))
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.UNEXPECTED_RESPONSE
    assert result.http_status == 302
    assert elsewhere == []


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/plain", b'{"status": "CANCELED"}', {"status": "CANCELED"}),
        ("application/xml", b"<ok/>", None),
        ("application/json; charset=latin-1", '{"n": "ç"}'.encode("latin-1"), None),
        ("application/json", b"\x00\x01\x02", None),
        ("application/json", b"null", None),
        ("application/json", b"123", 123),
    ],
)
async def test_odd_success_bodies(
    serve: ServerFactory, content_type: str, body: bytes, expected: object
) -> None:
    fake = ScriptedKlavi().on(
        CANCEL, Reply(200, body=body, content_type=content_type.split(";")[0])
    )
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.body == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [("99999999999", ErrorKind.RATE_LIMITED), ("-1", ErrorKind.RATE_LIMITED), ("soon", None)],
)
async def test_huge_or_garbage_retry_after(serve: ServerFactory, value: str, kind: object) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(429, headers={"Retry-After": value})})
    base = await fake.start(serve)
    policy = RetryPolicy(deadline=5, initial_backoff=0.001, max_backoff=0.002)
    async with KlaviClient(TOKEN, base_url=base, retry=policy) as klavi:
        started = time.monotonic()
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert time.monotonic() - started < 30  # within the deadline, not a day
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.RATE_LIMITED
    if value == "99999999999":
        assert result.attempts == 1  # capped at 60 s, which the 5 s deadline cannot fit
        assert result.retry_after == 86400.0


async def test_error_body_that_is_huge_html(serve: ServerFactory) -> None:
    page = b"<html><title>" + b"x" * 5000 + b"</title>" + b"<p>" * 500_000 + b"</html>"
    fake = ScriptedKlavi(default={CANCEL: Reply(502, body=page, content_type="text/html")})
    fake.on(STATUS, status_reply("PAYMENT_PENDING"))
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.SERVER_ERROR
    assert len(result.message) <= 300 + 40
    assert result.payment_status == "PAYMENT_PENDING"
