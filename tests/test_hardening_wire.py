"""
Hostile wire behaviour (issue 9): bodies cut or undecodable, decompression bombs, requests
aiohttp will not build, pool-wait timeouts, and a reconciliation read that is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import pytest
from aiohttp import web

from klavi_async import (
    CancelFailed,
    Cancelled,
    CancelRequest,
    ErrorKind,
    KlaviClient,
    NetworkError,
    RetryBudget,
    RetryPolicy,
)

from .conftest import CPF, TOKEN, ServerFactory
from .fakes import CANCEL, STATUS, Reply, ScriptedKlavi, status_reply

FAST: Final = RetryPolicy(initial_backoff=0, jitter=False)
REFUSAL: Final = json.dumps(
    {"errors": [{"code": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "detail": "settled"}]}
).encode()

# A raw answer: given the method and path, write bytes to the client (or not) and say how
# the connection ends: "close" (after the bytes), "abort" (a reset) or "stall" (hold it).
RawAnswer = Callable[[str, str, asyncio.StreamWriter], Awaitable[str]]


@pytest.fixture
async def raw_klavi() -> AsyncIterator[Callable[[RawAnswer], Awaitable[str]]]:
    """A TCP server on 127.0.0.1 that parses requests and answers with whatever bytes."""
    servers: list[asyncio.Server] = []
    stalls: list[asyncio.Event] = []

    async def start(answer: RawAnswer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    method, path, _ = lines[0].split(" ", 2)
                    length = 0
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    if length:
                        await reader.readexactly(length)
                    how = await answer(method, path, writer)
                    await writer.drain()
                    if how == "abort":
                        writer.transport.abort()
                        return
                    if how == "stall":
                        stall = asyncio.Event()
                        stalls.append(stall)
                        await stall.wait()
                        return
                    if how == "close":
                        return
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for stall in stalls:
        stall.set()
    for server in servers:
        server.close()
        await server.wait_closed()


def head(status: int, *headers: str, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def whole(status: int, body: bytes) -> bytes:
    return head(status, length=len(body)) + body


def status_body(status: str) -> bytes:
    return json.dumps({"id": "p1", "status": status}).encode()


class Seen:
    """Counts the requests a raw server answered, by route."""

    def __init__(self) -> None:
        self.cancels = 0
        self.reads = 0


def cut_cancel(seen: Seen, payment_status: str, cut: bytes) -> RawAnswer:
    """Cancel: a 200 status line and part of a body, then a reset.  Status: *payment_status*."""

    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> str:
        if path.endswith("/cancel"):
            seen.cancels += 1
            writer.write(head(200, length=len(REFUSAL)) + cut)
            return "abort"
        seen.reads += 1
        writer.write(whole(200, status_body(payment_status)))
        return "keep"

    return answer


# -- item 1: a 2xx whose body could not be read whole is no success -------------------


async def test_a_200_cut_before_its_refusal_code_is_not_cancelled(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    seen = Seen()
    # The body would have said PAGAMENTO_NAO_PERMITE_CANCELAMENTO: the payment settled.
    base = await raw_klavi(cut_cancel(seen, "PAYMENT_COMPLETED", REFUSAL[:12]))
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed), result
    assert result.kind is ErrorKind.NETWORK
    assert result.http_status == 200
    assert result.payment_status == "PAYMENT_COMPLETED"
    assert not result.outcome_unknown  # the status line came: Klavi had finished with it
    assert result.history[0].ambiguous
    assert "body" in result.message
    assert seen.cancels == 1  # not re-sent: the read decided
    assert seen.reads == 1


async def test_a_200_cut_mid_body_is_reconciled_when_the_read_says_canceled(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    seen = Seen()
    base = await raw_klavi(cut_cancel(seen, "CANCELED", b'{"status": "CAN'))
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.reconciled and not result.already_cancelled
    assert seen.reads == 1


async def test_a_200_whose_body_trickles_past_the_timeout_is_not_a_success(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    seen = Seen()

    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> str:
        if path.endswith("/cancel"):
            seen.cancels += 1
            writer.write(head(200, length=len(REFUSAL)))
            for byte in REFUSAL[:20]:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
            return "stall"
        seen.reads += 1
        writer.write(whole(200, status_body("PAYMENT_COMPLETED")))
        return "keep"

    base = await raw_klavi(answer)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, timeout=0.3) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed), result
    assert result.kind is ErrorKind.TIMEOUT
    assert result.http_status == 200
    assert result.payment_status == "PAYMENT_COMPLETED"
    assert result.history[0].ambiguous


async def test_a_200_whose_gzip_body_fails_to_decode_is_not_a_success(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    seen = Seen()
    garbage = b"\x1f\x8b\x08\x00 this is not a gzip stream at all"

    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> str:
        if path.endswith("/cancel"):
            seen.cancels += 1
            writer.write(head(200, "Content-Encoding: gzip", length=len(garbage)) + garbage)
            return "keep"
        seen.reads += 1
        writer.write(whole(200, status_body("PAYMENT_PENDING")))
        return "keep"

    base = await raw_klavi(answer)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed), result
    assert result.kind is ErrorKind.UNEXPECTED_RESPONSE
    assert "decode" in result.message
    assert result.payment_status == "PAYMENT_PENDING"
    assert result.history[0].ambiguous
    assert seen.cancels == 1 and seen.reads == 1


async def test_an_error_status_with_a_cut_body_is_classified_by_its_status(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> str:
        if path.endswith("/cancel"):
            writer.write(head(404, length=200) + b'{"message": "no such')
            return "abort"
        writer.write(whole(404, b"{}"))
        return "keep"

    base = await raw_klavi(answer)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NOT_FOUND
    assert result.body is None
    assert not result.history[0].ambiguous


async def test_a_status_read_cut_mid_body_is_retried(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    seen = Seen()

    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> str:
        seen.reads += 1
        body = status_body("PAYMENT_PENDING")
        if seen.reads == 1:
            writer.write(head(200, length=len(body)) + body[:10])
            return "abort"
        writer.write(whole(200, body))
        return "keep"

    base = await raw_klavi(answer)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        status = await klavi.get_payment_status("p1")
    assert status.status == "PAYMENT_PENDING"
    assert seen.reads == 2


async def test_a_status_read_always_cut_is_a_network_error(
    raw_klavi: Callable[[RawAnswer], Awaitable[str]],
) -> None:
    async def answer(method: str, path: str, writer: asyncio.StreamWriter) -> str:
        writer.write(head(200, length=100) + b'{"status"')
        return "abort"

    base = await raw_klavi(answer)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        with pytest.raises(NetworkError) as caught:
            await klavi.get_payment_status("p1")
    assert caught.value.http_status == 200


# -- item 2: the cap counts decoded bytes ----------------------------------------------

_BOMB_SIZE: Final = 1024 * 1024 * 1024  # decoded
_BOMBS: dict[str, bytes] = {}


def bomb(encoding: str) -> bytes:
    """~1 GB of zeros, compressed (about 1 MB), built in pieces and kept for the session."""
    if encoding not in _BOMBS:
        wbits = 31 if encoding == "gzip" else 15
        packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
        block = bytes(1024 * 1024)
        parts = [packer.compress(block) for _ in range(_BOMB_SIZE // len(block))]
        parts.append(packer.flush())
        _BOMBS[encoding] = b"".join(parts)
    return _BOMBS[encoding]


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("status", [200, 500])
async def test_a_compressed_bomb_stops_at_the_cap_with_bounded_memory(
    serve: ServerFactory, encoding: str, status: int
) -> None:
    payload = bomb(encoding)
    assert len(payload) < 1_100_000  # under max_response_size as sent: the old check let it in
    reads = []

    async def cancel(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=status,
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": encoding,
                "Content-Length": str(len(payload)),
            },
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for offset in range(0, len(payload), 65536):
                await response.write(payload[offset : offset + 65536])
        return response

    async def read(request: web.Request) -> web.Response:
        reads.append(request.path)
        return web.json_response({"status": "CANCELED" if status == 200 else "PAYMENT_COMPLETED"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    app.router.add_get(STATUS, read)
    base = await serve(app)
    policy = RetryPolicy(max_attempts=1)
    gc.collect()
    tracemalloc.start()
    try:
        started = time.monotonic()
        async with KlaviClient(TOKEN, base_url=base, retry=policy) as klavi:
            result = await klavi.cancel_payment("p1", cancelled_by=CPF)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The default cap is 1 MiB of decoded body; a whole read would have held 1 GB.
    assert peak < 40 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
    assert elapsed < 30  # a guard against a hang, not a performance figure
    if status == 200:
        # A 2xx that could not be read whole: the read decides.
        assert isinstance(result, Cancelled) and result.reconciled, result
        assert result.history[0].ambiguous
    else:
        assert isinstance(result, CancelFailed)
        assert result.kind is ErrorKind.SERVER_ERROR and result.body is None
        assert result.payment_status == "PAYMENT_COMPLETED"
    assert reads  # both ambiguous: a 500 may have been applied, a cut 200 said nothing


async def test_an_encoded_body_under_the_cap_is_read_and_decoded(serve: ServerFactory) -> None:
    body = json.dumps({"status": "CANCELED", "pad": "x" * 5000}).encode()

    async def cancel(request: web.Request) -> web.Response:
        return web.Response(
            body=zlib.compress(body),
            headers={"Content-Encoding": "deflate", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, max_response_size=6000) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled) and not result.reconciled
    assert result.body["status"] == "CANCELED"


async def test_a_decoded_body_over_a_small_cap_is_not_a_success(serve: ServerFactory) -> None:
    body = json.dumps({"status": "CANCELED", "pad": "x" * 5000}).encode()

    async def cancel(request: web.Request) -> web.Response:
        return web.Response(
            body=zlib.compress(body),
            headers={"Content-Encoding": "deflate", "Content-Type": "application/json"},
        )

    async def read(request: web.Request) -> web.Response:
        return web.json_response({"status": "PAYMENT_PENDING"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    app.router.add_get(STATUS, read)
    base = await serve(app)
    # The compressed body (~100 bytes) is far under the cap; decoded, it is over.
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, max_response_size=1000) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.UNEXPECTED_RESPONSE
    assert "max_response_size" in result.message
    assert result.payment_status == "PAYMENT_PENDING"


# -- item 7 (transport): a request aiohttp will not build is a result -----------------


async def test_a_request_aiohttp_refuses_to_build_is_a_result(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    # A header name aiohttp refuses to send (it raises ValueError while writing headers).
    bad_header = "x-idempotency-key\r\nx-injected"
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, idempotency_header=bad_header) as k:
        result = await k.cancel_payment("p1", cancelled_by=CPF)
        batch = [r async for r in k.cancel_many([CancelRequest("p2", CPF)] * 3)]
    for failed in (result, *batch):
        assert isinstance(failed, CancelFailed)
        assert failed.kind is ErrorKind.INVALID_REQUEST
        assert not failed.retryable and not failed.outcome_unknown
        assert not failed.history[0].ambiguous  # nothing was sent: no status read either
        assert "could not be built" in failed.message
    assert fake.seen == []


# -- item 10: waiting for a pooled connection sent nothing ----------------------------


async def test_a_pool_wait_timeout_is_not_ambiguous(serve: ServerFactory) -> None:
    release = asyncio.Event()
    holding = asyncio.Event()
    fake = ScriptedKlavi().on(STATUS, status_reply("PAYMENT_PENDING"))

    async def slow(request: web.Request) -> web.Response:
        holding.set()
        await release.wait()
        return web.Response(text="done")

    app = fake.app()
    app.router.add_get("/slow", slow)
    base = await serve(app)
    policy = RetryPolicy(max_attempts=1)
    async with KlaviClient(
        TOKEN, base_url=base, retry=policy, max_connections=1, timeout=1.0
    ) as klavi:
        # The pool's only connection is busy with a slow request of the same session.
        session = klavi._transport.get_session()
        busy = asyncio.create_task(session.get(base + "/slow"))
        await asyncio.wait_for(holding.wait(), 5)
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
        release.set()
        response = await busy
        response.release()
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.TIMEOUT
    assert not result.history[0].ambiguous
    assert not result.outcome_unknown and result.payment_status is None
    assert fake.requests(method="GET") == [] and fake.cancels() == []  # no needless read
    assert result.retryable


async def test_a_cancel_queued_behind_a_slow_one_times_out_unambiguously(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=3.0)}).on(
        STATUS, status_reply("PAYMENT_PENDING")
    )
    base = await fake.start(serve)
    policy = RetryPolicy(max_attempts=1)
    async with KlaviClient(
        TOKEN, base_url=base, retry=policy, max_connections=1, timeout=1.0
    ) as klavi:
        first, second = await asyncio.gather(
            klavi.cancel_payment("p1", cancelled_by=CPF),
            klavi.cancel_payment("p2", cancelled_by=CPF),
        )
    assert isinstance(first, CancelFailed) and isinstance(second, CancelFailed)
    # The first was sent and timed out: ambiguous, read, and may still land.
    assert first.history[0].ambiguous and first.outcome_unknown
    # The second waited for the only connection and never left.
    assert second.kind is ErrorKind.TIMEOUT
    assert not second.history[0].ambiguous and not second.outcome_unknown
    assert [s.path.split("/")[-2] for s in fake.requests(method="GET")] == ["p1"]
    assert [s.path.split("/")[-2] for s in fake.cancels()] == ["p1"]


# -- item 11: the reconciliation read is retried ---------------------------------------


async def test_a_failed_reconciliation_read_is_retried(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(504)}).on(
        STATUS, Reply(503), Reply(500), status_reply("PAYMENT_PENDING", "p1")
    )
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.payment_status == "PAYMENT_PENDING"
    assert not result.outcome_unknown  # 504 says Klavi finished: the read is conclusive
    assert len(fake.requests(method="GET")) == 3
    # The reads are not the cancel's attempts.
    assert [a.http_status for a in result.history] == [504] * 4


async def test_the_read_that_confirms_a_cancel_may_be_the_second(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(502)}).on(
        STATUS, Reply(reset=True), status_reply("CANCELED", "p1")
    )
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, Cancelled) and result.reconciled


async def test_outcome_unknown_only_when_every_read_failed(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(504), STATUS: Reply(503)})
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed) and result.outcome_unknown
    assert len(fake.requests(method="GET")) == FAST.max_attempts


async def test_the_reads_stay_within_the_budget(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(504), STATUS: Reply(503)})
    base = await fake.start(serve)
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    async with KlaviClient(TOKEN, base_url=base, retry=FAST, retry_budget=budget) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed) and result.outcome_unknown
    assert len(fake.cancels()) == 1 and len(fake.requests(method="GET")) == 1


async def test_the_reads_stay_within_the_remaining_deadline(serve: ServerFactory) -> None:
    # Each read takes 0.4 s and fails; the cancel has used its deadline, so the reads get
    # the 1 s minimum: three reads at most, not max_attempts=10.
    fake = ScriptedKlavi(default={CANCEL: Reply(504), STATUS: Reply(503, delay=0.4)})
    base = await fake.start(serve)
    policy = RetryPolicy(max_attempts=10, initial_backoff=0, jitter=False, deadline=0.2)
    async with KlaviClient(TOKEN, base_url=base, retry=policy) as klavi:
        started = time.monotonic()
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
        elapsed = time.monotonic() - started
    assert isinstance(result, CancelFailed) and result.outcome_unknown
    assert 1 <= len(fake.requests(method="GET")) <= 3
    assert elapsed < 3.5  # ten reads would take 4 s; the count above is the check
