"""
A tiny scripted Klavi for client tests: each route answers from a queue of replies.

Kept apart from `klavi_async.testing.KlaviEmulator` on purpose: these tests pin the
client's behaviour against exact bytes, independent of the emulator's state machine.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from attrs import define, field
from multidict import CIMultiDict
from yarl import URL

from klavi_async import KlaviClient, RetryPolicy
from klavi_async._tokens import Bearer
from klavi_async._transport import Response, TransportFailure

from .conftest import ServerFactory

CANCEL = "/payment/customer/v1/instant/payments/{id}/cancel"
STATUS = "/payment/customer/v1/instant/payments/{id}/status"
AUTO_CANCEL = "/payment/customer/v1/automatic/consents/{consent}/payments/{id}/cancel"
AUTO_STATUS = "/payment/customer/v1/automatic/consents/{consent}/payments/{id}/status"
AUTH = "/payment/customer/v1/auth"


@define
class Reply:
    """One scripted answer."""

    status: int = 200
    json_body: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(factory=dict)
    delay: float = 0.0
    reset: bool = False
    """Drop the connection without answering."""
    content_type: str = "application/json"


def status_reply(status: str, payment_id: str = "pay-1") -> Reply:
    return Reply(200, {"id": payment_id, "status": status, "statusReason": {"code": "X"}})


@define
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    time: float


@define
class ScriptedKlavi:
    """Routes answer from `script[route]` (a deque), then from `default[route]`."""

    script: dict[str, deque[Reply | Callable[[web.Request], Reply | Awaitable[Reply]]]] = field(
        factory=dict
    )
    default: dict[str, Reply] = field(factory=dict)
    seen: list[Seen] = field(factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def on(
        self, route: str, *replies: Reply | Callable[[web.Request], Reply | Awaitable[Reply]]
    ) -> ScriptedKlavi:
        self.script.setdefault(route, deque()).extend(replies)
        return self

    def requests(self, route_prefix: str = "", method: str | None = None) -> list[Seen]:
        return [
            s
            for s in self.seen
            if s.path.startswith(route_prefix) and (method is None or s.method == method)
        ]

    def cancels(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path.endswith("/cancel")]

    def app(self) -> web.Application:
        app = web.Application()
        for route, method in (
            (CANCEL, "POST"),
            (STATUS, "GET"),
            (AUTO_CANCEL, "POST"),
            (AUTO_STATUS, "GET"),
            (AUTH, "POST"),
        ):
            app.router.add_route(method, route, self._handler(route))
        return app

    async def start(self, serve: ServerFactory) -> str:
        return await serve(self.app())

    def _handler(self, route: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.seen.append(
                Seen(
                    request.method,
                    request.path,
                    dict(request.headers),
                    body,
                    asyncio.get_running_loop().time(),
                )
            )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                queue = self.script.get(route)
                if queue:
                    item = queue.popleft()
                    reply = item(request) if callable(item) else item
                    if inspect.isawaitable(reply):
                        reply = await reply
                else:
                    reply = self.default.get(route, Reply(200, {}))
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.reset:
                    assert request.transport is not None
                    request.transport.abort()
                    return web.Response(status=500)  # never reaches the client
                payload = reply.body
                if payload is None:
                    payload = (
                        b"" if reply.json_body is None else json.dumps(reply.json_body).encode()
                    )
                return web.Response(
                    status=reply.status,
                    body=payload,
                    headers=reply.headers,
                    content_type=reply.content_type,
                )
            finally:
                self.in_flight -= 1

        return handle


Handler = Callable[["Sent"], "Response | TransportFailure | Awaitable[Response | TransportFailure]"]


@define
class Sent:
    """One request as the client handed it to the transport."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    timeout: float
    authorization: str | None

    def json(self) -> Any:
        return None if self.body is None else json.loads(self.body)


class MockTransport:
    """
    A transport without sockets (httpx's `MockTransport`, for klavi): *handler* answers.

    The handler gets a `Sent` and returns (or, when async, resolves to) a `Response`, or a
    `TransportFailure` to raise.  Build the client with `mock_client()`.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[Sent] = []
        self.closed = False

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        auth: Bearer | None = None,
    ) -> Response:
        sent = Sent(
            method, str(url), dict(headers), body, timeout, None if auth is None else auth.header
        )
        self.sent.append(sent)
        answer = self.handler(sent)
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, TransportFailure):
            raise answer
        return answer

    async def aclose(self) -> None:
        self.closed = True


def json_response(status: int, body: Any = None, **headers: str) -> Response:
    """A whole `Response` with a JSON body (or none)."""
    raw = b"" if body is None else json.dumps(body).encode()
    return Response(status, CIMultiDict(headers), raw)


def mock_client(
    handler: Handler,
    token: object = "tok-mock",  # noqa: S107 - a test token
    **kwargs: Any,
) -> tuple[KlaviClient, MockTransport]:
    """A `KlaviClient` on a new `MockTransport`, and the transport."""
    kwargs.setdefault("base_url", "http://127.0.0.1:9")
    if kwargs.pop("retry_disabled", False):
        kwargs["retry"] = RetryPolicy.disabled()
    kwargs.setdefault("retry", RetryPolicy(initial_backoff=0, jitter=False))
    transport = MockTransport(handler)
    return KlaviClient._with_transport(transport, token, **kwargs), transport  # type: ignore[arg-type]
