"""
The emulator's HTTP side, as the `_Http` base: the aiohttp route table, and per request the
log record, the TPS limit and the scripted or random fault around the route's answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web

from ._faults import Fault, RandomFaults
from ._rules import _Rules
from ._state import RequestRecord, _Answer

BASE: Final = "/payment/customer/v1"
_HTML_PAGE: Final = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
_ROUTES: Final = frozenset(
    {"auth", "create", "get", "status", "automatic_status", "cancel", "automatic_cancel"}
)


class _Http(_Rules):
    """Serving and fault injection; `KlaviEmulator.__init__` sets the state."""

    tps_limit: float | None
    random_faults: RandomFaults
    fault_routes: frozenset[str]
    requests: list[RequestRecord]
    auth_calls: int
    in_flight: int
    max_in_flight: int
    _scripts: dict[str, deque[Fault | None]]
    _recent: deque[float]

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        routes: list[tuple[str, str, str]] = [
            ("POST", f"{BASE}/auth", "auth"),
            ("POST", f"{BASE}/instant/payments", "create"),
            ("GET", f"{BASE}/instant/payments/{{payment_id}}", "get"),
            ("GET", f"{BASE}/instant/payments/{{payment_id}}/status", "status"),
            ("POST", f"{BASE}/instant/payments/{{payment_id}}/cancel", "cancel"),
            (
                "GET",
                f"{BASE}/automatic/consents/{{consent_id}}/payments/{{payment_id}}/status",
                "automatic_status",
            ),
            (
                "POST",
                f"{BASE}/automatic/consents/{{consent_id}}/payments/{{payment_id}}/cancel",
                "automatic_cancel",
            ),
        ]
        for method, path, route in routes:
            app.router.add_route(method, path, self._handler(route))
        return app

    def _handler(self, route: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        handlers: dict[str, Callable[[web.Request, bytes], Awaitable[_Answer]]] = {
            "auth": self._auth,
            "create": self._create,
            "get": self._get,
            "status": self._status,
            "automatic_status": self._status,
            "cancel": self._cancel,
            "automatic_cancel": self._cancel,
        }
        handle = handlers[route]

        async def endpoint(request: web.Request) -> web.StreamResponse:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._serve(route, handle, request)
            finally:
                self.in_flight -= 1

        return endpoint

    def _next_fault(self, route: str) -> Fault | None:
        queue = self._scripts.get(route)
        if queue:
            return queue.popleft()
        if route in self.fault_routes:
            return self.random_faults.draw()
        return None

    def _over_tps_limit(self) -> bool:
        if self.tps_limit is None:
            return False
        now = time.monotonic()
        while self._recent and now - self._recent[0] >= 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.tps_limit:
            return True
        self._recent.append(now)
        return False

    async def _serve(
        self,
        route: str,
        handle: Callable[[web.Request, bytes], Awaitable[_Answer]],
        request: web.Request,
    ) -> web.StreamResponse:
        body = await request.read()
        if route == "auth":
            # Every request that reached /auth, faulted or not: what a retry storm would show.
            self.auth_calls += 1

        def record(status: int | None, fault: str | None, answer: _Answer | None = None) -> None:
            self.requests.append(
                RequestRecord(
                    time=time.monotonic(),
                    method=request.method,
                    path=request.path,
                    route=route,
                    payment_id=request.match_info.get("payment_id"),
                    idempotency_key=request.headers.get("x-idempotency-key"),
                    interaction_id=request.headers.get("x-fapi-interaction-id"),
                    authorized="Authorization" in request.headers,
                    fault=fault,
                    status=status,
                    effect=answer.effect if answer else False,
                    replayed=answer.replayed if answer else False,
                )
            )

        if self._over_tps_limit():
            record(429, "tps_limit")
            return _json(429, {"statusCode": 429, "message": "TPS limit"}, {"Retry-After": "1"})
        fault = self._next_fault(route)
        name = fault.name if fault else None
        if fault is not None and not fault.after_effect:
            return self._fault_before(request, fault, record)
        if fault is not None and fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
        answer = await handle(request, body)
        if fault is None or fault.kind == "latency":
            record(answer.status, name, answer)
            return _json(answer.status, answer.body, answer.headers)
        return await self._fault_after(request, fault, answer, record)

    def _fault_before(
        self,
        request: web.Request,
        fault: Fault,
        record: Callable[[int | None, str | None], None],
    ) -> web.StreamResponse:
        if fault.kind == "reset_before":
            record(None, fault.name)
            return _drop(request)
        if fault.kind == "rate_limit":
            record(429, fault.name)
            retry = f"{fault.seconds:g}"
            return _json(
                429, {"statusCode": 429, "message": "rate limited"}, {"Retry-After": retry}
            )
        if fault.kind == "html_gateway":
            record(fault.status, fault.name)
            return web.Response(status=fault.status, body=_HTML_PAGE, content_type="text/html")
        record(fault.status, fault.name)
        return _json(fault.status, {"statusCode": fault.status, "message": "injected fault"})

    async def _fault_after(
        self,
        request: web.Request,
        fault: Fault,
        answer: _Answer,
        record: Callable[[int | None, str | None, _Answer | None], None],
    ) -> web.StreamResponse:
        if fault.kind == "reset_after":
            record(None, fault.name, answer)
            return _drop(request)
        if fault.kind == "malformed_json":
            status = fault.status or answer.status
            record(status, fault.name, answer)
            return web.Response(status=status, body=b'{"id": "', content_type="application/json")
        if fault.kind == "truncated":
            record(answer.status, fault.name, answer)
            payload = b"" if answer.body is None else json.dumps(answer.body).encode()
            response = web.StreamResponse(
                status=answer.status,
                headers={
                    "Content-Type": "application/json",
                    "Content-Length": str(len(payload) + 64),
                },
            )
            await response.prepare(request)
            await response.write(payload[: max(1, len(payload) // 2)])
            if request.transport is not None:
                request.transport.close()
            return response
        record(fault.status, fault.name, answer)
        return _json(fault.status, {"statusCode": fault.status, "message": "injected fault"})


def _json(
    status: int, body: dict[str, Any] | None, headers: Mapping[str, str] | None = None
) -> web.Response:
    if body is None:  # Content-Length: 0, no content type: nothing to parse
        return web.Response(status=status, headers=dict(headers or {}))
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)  # never reaches the client: the connection is gone
