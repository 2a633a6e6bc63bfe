"""
Shared fixtures: loopback servers and the secret-leak guard.

Every test runs with the `klavi_async` logger at DEBUG and a handler that keeps every
record; the same guard subscribes to the events of every client the test builds, and
keeps each result and error they report.  At teardown it fails the test if any record
(message or `extra` value), result or error holds a registered secret: a token, a
secret key or a full CPF/CNPJ.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aioresponses.core
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings

from klavi_async import KlaviError
from klavi_async._documents import normalize_document
from klavi_async._events import subscribed

# Property tests judge what the code does, never how fast: no wall-clock deadline, and no
# health check that fails a slow example on a busy machine (CI runners, laptops).
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("suite")

# Documents used across the suite (valid ones from reference/openfinance-brasil.md).
CPF = "529.982.247-25"
CPF_BARE = "52998224725"
CNPJ = "11.222.333/0001-81"
CNPJ_BARE = "11222333000181"
CNPJ_ALNUM = "12.ABC.345/01DE-35"
TOKEN = "tok-0123456789abcdef-secret"
ACCESS_KEY = "ak-test-0001"
SECRET_KEY = "sk-test-very-secret-0001"

_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({})))


class LeakGuard(logging.Handler):
    """Keeps every `klavi_async` record, result and error, and checks them for secrets."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.objects: list[object] = []
        self.secrets: set[str] = {TOKEN, SECRET_KEY, CPF_BARE, CNPJ_BARE, CPF, CNPJ}
        self.secrets.add(normalize_document(CNPJ_ALNUM))
        self.telemetry: list[Telemetry] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    # An events subscriber too: every event, whatever its level.

    def wants(self, level: int) -> bool:
        return True

    def __call__(self, event: Any) -> None:
        result = getattr(event, "result", None)
        if result is not None:
            self.objects.append(result)
            if not result.ok:  # what `unwrap()` would raise
                self.objects.append(KlaviError.from_result(result))
        error = getattr(event, "error", None)
        if error is not None:
            self.objects.append(error)

    def add(self, *secrets: str) -> None:
        """Register more strings that must never be logged."""
        self.secrets.update(s for s in secrets if s)

    def texts(self) -> Iterator[str]:
        for record in self.records:
            yield record.getMessage()
            for name, value in vars(record).items():
                if name not in _RECORD_ATTRS:
                    yield f"{name}={value!r}"

    def object_texts(self) -> Iterator[str]:
        for obj in self.objects:
            yield repr(obj)
            yield str(obj)
            for name in ("message", "args"):
                value = getattr(obj, name, None)
                if value is not None:
                    yield str(value)
            to_record = getattr(obj, "to_record", None)
            if to_record is not None:  # a result: its record and its attempts too
                # The record keeps a valid payment id exact (a batch's resume matches on
                # it); everything else in it must be clean.
                yield repr({k: v for k, v in to_record().items() if k != "payment_id"})
                for attempt in getattr(obj, "history", ()):
                    yield repr(attempt)

    def telemetry_texts(self) -> Iterator[str]:
        for telemetry in self.telemetry:
            yield from telemetry.texts()

    def leaks(self) -> list[str]:
        texts = [*self.texts(), *self.object_texts(), *self.telemetry_texts()]
        return [t for t in texts for s in self.secrets if s in t]


@pytest.fixture(autouse=True)
def leak_guard() -> Iterator[LeakGuard]:
    """Fail the test if a secret reaches a log record, a result's repr/str or an error message."""
    guard = LeakGuard()
    logger = logging.getLogger("klavi_async")
    old_level = logger.level
    logger.addHandler(guard)
    logger.setLevel(logging.DEBUG)
    try:
        with subscribed(guard):
            yield guard
    finally:
        logger.removeHandler(guard)
        logger.setLevel(old_level)
    leaked = guard.leaks()
    assert not leaked, f"a secret reached a log, repr, message or telemetry: {leaked[:3]}"


class Telemetry:
    """
    OpenTelemetry SDK providers that keep everything in memory, for one test.

    Pass `tracer_provider` and `meter_provider` to a client; `spans()` are the finished
    spans, `points(name)` a metric's data points.  The leak guard reads every span name,
    attribute, event, status and metric attribute for secrets at teardown.
    """

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        # No atexit hooks: nothing here runs a thread, and a test builds many providers.
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)

    def kwargs(self) -> dict[str, Any]:
        """The client keyword arguments that report here."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        """The data points of metric *name* collected now (cumulative)."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def texts(self) -> Iterator[str]:
        for span in self.spans():
            yield span.name
            yield repr(dict(span.attributes or {}))
            yield str(span.status.description)
            for event in span.events:
                yield event.name
                yield repr(dict(event.attributes or {}))
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        yield repr(dict(point.attributes or {}))


@pytest.fixture
def telemetry(leak_guard: LeakGuard) -> Telemetry:
    """In-memory OpenTelemetry providers whose output the leak guard checks."""
    recorded = Telemetry()
    leak_guard.telemetry.append(recorded)
    return recorded  # read by the leak guard at its teardown, after the test's own


ServerFactory = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """`base_url = await serve(app)`: run *app* on 127.0.0.1, port 0, until the test ends."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


class _StreamWriterStub:
    output_size = 0


class _CompatResponse(ClientResponse):
    """aiohttp 3.14 added a required `stream_writer`; aioresponses 0.7.9 does not pass it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("stream_writer", _StreamWriterStub())
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def aiomock(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses.aioresponses]:
    """`aioresponses` patched for aiohttp 3.14 (pnuckowski/aioresponses#289)."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", _CompatResponse)
    with aioresponses.aioresponses() as mocked:
        yield mocked


def no_sdk_tasks() -> bool:
    """No task running SDK code is left (a loopback server's own tasks don't count)."""
    import asyncio
    import os

    import klavi_async

    package = os.path.dirname(klavi_async.__file__)
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and code.co_filename.startswith(package):
            return False
    return True
