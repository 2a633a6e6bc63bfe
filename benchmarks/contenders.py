"""
The contenders: the same cancel requests, at the same concurrency, through each client.

Every contender sends what klavi_async sends for a cancel: `POST .../instant/payments/{id}/cancel`
with a bearer token, JSON content type, a fresh UUID4 idempotency key and interaction id,
and the same 52-byte body.  Each returns one latency (seconds) per request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from klavi_async import CancelRequest, KlaviClient

TOKEN = "bench-token"
DOCUMENT = "52998224725"
BODY = b'{"cancelledBy":"52998224725","identifierType":"CPF"}'
PATH = "/payment/customer/v1/instant/payments/{}/cancel"

Contender = Callable[[str, int, int], Awaitable[list[float]]]

PREFIX = "pay-"
"""Payment ids are PREFIX + a counter; run_one makes it unique per run (the emulator cancels for real)."""


def _headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "x-idempotency-key": str(uuid.uuid4()),
        "x-fapi-interaction-id": str(uuid.uuid4()),
    }


async def _bounded(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with gate:
            await one(i)

    await asyncio.gather(*(run(i) for i in range(n)))


async def _pool(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """The cheapest shape: *concurrency* workers pulling from one iterator (no task per item)."""
    items = iter(range(n))

    async def worker() -> None:
        for i in items:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))


async def _raw(
    base: str, n: int, concurrency: int, shape: Callable[..., Awaitable[None]]
) -> list[float]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=max(100, concurrency))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            started = time.perf_counter()
            async with session.post(
                base + PATH.format(f"{PREFIX}{i}"), data=BODY, headers=_headers()
            ) as response:
                await response.read()
                assert response.status == 200
            latencies.append(time.perf_counter() - started)

        await shape(n, concurrency, one)
    return latencies


async def raw_aiohttp(base: str, n: int, concurrency: int) -> list[float]:
    """`ClientSession.post` under `asyncio.gather` and a semaphore (a task per request)."""
    return await _raw(base, n, concurrency, _bounded)


async def raw_aiohttp_pool(base: str, n: int, concurrency: int) -> list[float]:
    """The floor: `ClientSession.post` in a pool of *concurrency* workers over one session."""
    return await _raw(base, n, concurrency, _pool)


async def _requests(n: int) -> AsyncIterator[CancelRequest]:
    for i in range(n):
        yield CancelRequest(f"{PREFIX}{i}", DOCUMENT)


async def klavi_cancel_many(base: str, n: int, concurrency: int) -> list[float]:
    """klavi_async `cancel_many` over an async generator."""
    latencies: list[float] = []
    async with KlaviClient(TOKEN, base_url=base, max_connections=max(100, concurrency)) as klavi:
        async for result in klavi.cancel_many(_requests(n), concurrency=concurrency):
            assert result.ok, result
            latencies.append(result.elapsed)
    return latencies


async def klavi_cancel_many_no_telemetry(base: str, n: int, concurrency: int) -> list[float]:
    """`klavi_cancel_many` with `telemetry=False` (what a client without opentelemetry pays)."""
    latencies: list[float] = []
    limit = max(100, concurrency)
    async with KlaviClient(TOKEN, base_url=base, max_connections=limit, telemetry=False) as klavi:
        async for result in klavi.cancel_many(_requests(n), concurrency=concurrency):
            assert result.ok, result
            latencies.append(result.elapsed)
    return latencies


async def klavi_cancel_many_otel(base: str, n: int, concurrency: int) -> list[float]:
    """`klavi_cancel_many` reporting to the OpenTelemetry SDK, spans and metrics dropped."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    latencies: list[float] = []
    async with KlaviClient(
        TOKEN,
        base_url=base,
        max_connections=max(100, concurrency),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as klavi:
        async for result in klavi.cancel_many(_requests(n), concurrency=concurrency):
            assert result.ok, result
            latencies.append(result.elapsed)
    return latencies


async def klavi_gather(base: str, n: int, concurrency: int) -> list[float]:
    """klavi_async `cancel_payment` under `asyncio.gather` and a semaphore."""
    latencies: list[float] = []
    async with KlaviClient(TOKEN, base_url=base, max_connections=max(100, concurrency)) as klavi:

        async def one(i: int) -> None:
            result = await klavi.cancel_payment(f"{PREFIX}{i}", cancelled_by=DOCUMENT)
            assert result.ok, result
            latencies.append(result.elapsed)

        await _bounded(n, concurrency, one)
    return latencies


async def klavi_pool(base: str, n: int, concurrency: int) -> list[float]:
    """klavi_async `cancel_payment` in a pool of *concurrency* workers (the floor's shape)."""
    latencies: list[float] = []
    async with KlaviClient(TOKEN, base_url=base, max_connections=max(100, concurrency)) as klavi:

        async def one(i: int) -> None:
            result = await klavi.cancel_payment(f"{PREFIX}{i}", cancelled_by=DOCUMENT)
            assert result.ok, result
            latencies.append(result.elapsed)

        await _pool(n, concurrency, one)
    return latencies


async def httpx_client(base: str, n: int, concurrency: int) -> list[float]:
    """httpx `AsyncClient` with the same semaphore."""
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=max(100, concurrency))
    async with httpx.AsyncClient(limits=limits) as client:

        async def one(i: int) -> None:
            started = time.perf_counter()
            response = await client.post(
                base + PATH.format(f"{PREFIX}{i}"), content=BODY, headers=_headers()
            )
            assert response.status_code == 200
            latencies.append(time.perf_counter() - started)

        await _bounded(n, concurrency, one)
    return latencies


async def aiohttp_retry_client(base: str, n: int, concurrency: int) -> list[float]:
    """aiohttp-retry's `RetryClient` (4 attempts, exponential) with the same semaphore."""
    from aiohttp_retry import ExponentialRetry, RetryClient

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=max(100, concurrency))
    session = aiohttp.ClientSession(connector=connector)
    async with RetryClient(
        client_session=session, retry_options=ExponentialRetry(attempts=4)
    ) as client:

        async def one(i: int) -> None:
            started = time.perf_counter()
            async with client.post(
                base + PATH.format(f"{PREFIX}{i}"), data=BODY, headers=_headers()
            ) as response:
                await response.read()
                assert response.status == 200
            latencies.append(time.perf_counter() - started)

        await _bounded(n, concurrency, one)
    return latencies


CONTENDERS: dict[str, Contender] = {
    "raw_aiohttp_pool": raw_aiohttp_pool,
    "raw_aiohttp": raw_aiohttp,
    "klavi_pool": klavi_pool,
    "klavi_cancel_many": klavi_cancel_many,
    "klavi_cancel_many_no_telemetry": klavi_cancel_many_no_telemetry,
    "klavi_cancel_many_otel": klavi_cancel_many_otel,
    "klavi_gather": klavi_gather,
    "httpx": httpx_client,
    "aiohttp_retry": aiohttp_retry_client,
}
