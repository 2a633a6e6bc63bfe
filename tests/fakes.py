"""
A tiny scripted Klavi for client tests: each route answers from a queue of replies.

Kept apart from `klavi_async.testing.KlaviEmulator` on purpose: these tests pin the
client's behaviour against exact bytes, independent of the emulator's state machine.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from attrs import define, field

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

    script: dict[str, deque[Reply | Callable[[web.Request], Reply]]] = field(factory=dict)
    default: dict[str, Reply] = field(factory=dict)
    seen: list[Seen] = field(factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def on(self, route: str, *replies: Reply | Callable[[web.Request], Reply]) -> ScriptedKlavi:
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
