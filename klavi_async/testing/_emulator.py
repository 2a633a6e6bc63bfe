"""
`KlaviEmulator`: an in-process fake Klavi on loopback, with fault injection.

It serves the routes the SDK uses (auth, create and read test payments, status, instant
and Automatic Pix cancel) with Klavi's status vocabulary and a small state machine, the
`x-idempotency-key` replay rules of Open Finance Brasil, and faults scripted per route or
drawn at random.  It counts every effect per payment, so a test can prove that a payment
was cancelled exactly once, and it logs every request with the fault it met.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web
from attrs import define, field, frozen

from ._checks import cancel_body_problem
from ._faults import Fault, RandomFaults

__all__ = [
    "AUTOMATIC_PIX_STATUSES",
    "CANCELLABLE",
    "KLAVI_STATUSES",
    "KlaviEmulator",
    "Payment",
    "RequestRecord",
]

BASE: Final = "/payment/customer/v1"
KLAVI_STATUSES: Final = frozenset(
    {
        "PREPARING",
        "STARTED",
        "ENQUEUED",
        "CONSENT_AWAITING_AUTHORIZATION",
        "CONSENT_AUTHORIZED",
        "CONSENT_REJECTED",
        "PAYMENT_PENDING",
        "PAYMENT_PARTIALLY_ACCEPTED",
        "PAYMENT_READY_FOR_SETTLEMENT",
        "PAYMENT_SCHEDULED",
        "PAYMENT_SETTLEMENT_PROCESSING",
        "PAYMENT_SETTLEMENT_DEBTOR_ACCOUNT",
        "PAYMENT_COMPLETED",
        "PAYMENT_REJECTED",
        "CANCELED",
        "ERROR",
        "EXPIRED",
        "CONSENT_PARTIALLY_ACCEPTED",
        "CONSENT_REVOKED",
    }
)
"""Klavi's payment statuses (docs.klavi.ai status guides and enum, Automatic Pix included)."""
AUTOMATIC_PIX_STATUSES: Final = frozenset({"CONSENT_PARTIALLY_ACCEPTED", "CONSENT_REVOKED"})
"""
The statuses only Klavi's Automatic Pix guide lists: a consent waiting for more approvals
(cancellable, like `PAYMENT_PARTIALLY_ACCEPTED`) and a revoked consent (refused).
"""
CANCELLABLE: Final = frozenset(
    {
        "PREPARING",
        "STARTED",
        "ENQUEUED",
        "CONSENT_AWAITING_AUTHORIZATION",
        "CONSENT_AUTHORIZED",
        "PAYMENT_PENDING",
        "PAYMENT_PARTIALLY_ACCEPTED",
        "PAYMENT_SCHEDULED",
        "CONSENT_PARTIALLY_ACCEPTED",
    }
)
"""Pre-settlement statuses: a cancel moves them to CANCELED; any other is refused (416)."""
REFUSAL_CODE: Final = "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"
_HTML_PAGE: Final = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


@define
class Payment:
    """A test payment held by the emulator."""

    id: str
    client_request_id: str
    status: str
    amount: str = "10.00"
    currency: str = "BRL"
    consent_id: str | None = None
    status_update_at: str = field(factory=lambda: _now_iso())
    reason_code: str = "NAO_INFORMADO"
    reason_message: str = ""

    def status_body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "clientRequestId": self.client_request_id,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "statusReason": {"code": self.reason_code, "message": self.reason_message},
            "statusUpdateAt": self.status_update_at,
        }

    def body(self) -> dict[str, Any]:
        body = self.status_body()
        if self.consent_id is not None:
            body["consentId"] = self.consent_id
        return body


@frozen
class RequestRecord:
    """One request as the emulator saw it.  Never holds a token."""

    time: float
    method: str
    path: str
    route: str
    payment_id: str | None
    idempotency_key: str | None
    interaction_id: str | None
    authorized: bool
    """An `Authorization` header was present (its value is not kept)."""
    fault: str | None
    """The injected fault's name, or None."""
    status: int | None
    """The status sent, or None when the connection was dropped."""
    effect: bool
    """This request cancelled a payment."""
    replayed: bool = False
    """An idempotent replay of a stored response."""


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@define
class _Answer:
    status: int
    body: dict[str, Any] | None
    """None sends an empty body."""
    effect: bool = False
    replayed: bool = False
    headers: dict[str, str] = field(factory=dict)


class KlaviEmulator:
    """
    A fake Klavi on 127.0.0.1 (port 0 by default) for tests and demos.

    ```python
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment("PAYMENT_PENDING")
        credentials = ClientCredentials(emu.access_key, emu.secret_key)
        async with KlaviClient(credentials, base_url=emu.url) as klavi:
            await klavi.cancel_payment(payment_id, cancelled_by="529.982.247-25")
        assert emu.effects[payment_id] == 1
    ```

    *fault_rates* maps fault names (`FAULT_NAMES`) to probabilities, drawn with *seed* on
    the routes in *fault_routes*; `script()` queues faults for the next requests of a
    route.  *tps_limit* answers 429 beyond that many requests in any second.

    Closer to what Klavi documents, each off by default: *refusal_code* is the 416 body's
    `statusCode` (Klavi's business codes are numbers, e.g. 4101; no cancel-specific one is
    documented); *empty_cancel_body* answers a cancel's 200 with no body (Klavi's cancel
    page shows none); *single_use_tokens* makes a token serve one payment initiation (an
    older Klavi auth page says so): the first payment it is used for, any other answers 401.
    """

    def __init__(
        self,
        *,
        access_key: str = "test-access-key",
        secret_key: str = "test-secret-key",  # noqa: S107 - a fake server's well-known test key
        token_lifetime: float = 300.0,
        host: str = "127.0.0.1",
        port: int = 0,
        fault_rates: Mapping[str, float] | None = None,
        seed: int | None = None,
        fault_routes: Iterable[str] = ("cancel", "automatic_cancel"),
        latency: float = 0.5,
        retry_after: float = 0.0,
        tps_limit: float | None = None,
        clock: Callable[[], float] = time.time,
        refusal_code: str | int = REFUSAL_CODE,
        empty_cancel_body: bool = False,
        single_use_tokens: bool = False,
    ) -> None:
        if token_lifetime <= 0:
            raise ValueError("token_lifetime must be > 0")
        if tps_limit is not None and tps_limit <= 0:
            raise ValueError("tps_limit must be > 0")
        if isinstance(refusal_code, bool) or not isinstance(refusal_code, str | int):
            raise TypeError("refusal_code must be a str or an int")
        if isinstance(refusal_code, str) and not refusal_code.strip():
            raise ValueError("refusal_code must not be blank")
        self.refusal_code = refusal_code
        self.empty_cancel_body = empty_cancel_body
        self.single_use_tokens = single_use_tokens
        self.access_key = access_key
        self.secret_key = secret_key
        self.token_lifetime = token_lifetime
        self.host = host
        self.port = port
        self.tps_limit = tps_limit
        self.random_faults = RandomFaults(
            dict(fault_rates or {}), seed=seed, latency=latency, retry_after=retry_after
        )
        self.fault_routes = frozenset(fault_routes)
        self._clock = clock
        self._signing_key = os.urandom(32)
        self._tokens: dict[str, float] = {}
        self._token_payment: dict[str, str] = {}  # single_use_tokens: the payment each serves
        self._scripts: dict[str, deque[Fault | None]] = {}
        self._stored: dict[str, tuple[str, _Answer]] = {}
        self._recent: deque[float] = deque()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.payments: dict[str, Payment] = {}
        self.by_client_request_id: dict[str, str] = {}
        self.effects: dict[str, int] = {}
        """How many times each payment was moved to CANCELED by a cancel (at most 1)."""
        self.requests: list[RequestRecord] = []
        self.auth_calls = 0
        """Requests that reached `/auth`, including the ones a fault or the TPS limit answered."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = self._build_app()

    # -- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:54321`; the emulator must be started."""
        if self._url is None:
            raise RuntimeError("the emulator is not running; use 'async with' or start()")
        return self._url

    async def start(self) -> str:
        """Start serving; return the base URL."""
        if self._runner is not None:
            return self.url
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self._url = f"http://{shown}:{port}"
        return self._url

    async def close(self) -> None:
        """Stop serving.  Idempotent."""
        runner, self._runner = self._runner, None
        self._url = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- test helpers -----------------------------------------------------------------

    def add_payment(
        self,
        status: str = "PAYMENT_PENDING",
        *,
        payment_id: str | None = None,
        consent_id: str | None = None,
        amount: str = "10.00",
    ) -> str:
        """Create a payment in *status* (one of `KLAVI_STATUSES`); return its id."""
        if status not in KLAVI_STATUSES:
            raise ValueError(f"unknown Klavi status {status!r}")
        payment_id = payment_id or str(uuid.uuid4())
        payment = Payment(
            payment_id, str(uuid.uuid4()), status, amount=amount, consent_id=consent_id
        )
        self.payments[payment_id] = payment
        self.by_client_request_id[payment.client_request_id] = payment_id
        self.effects.setdefault(payment_id, 0)
        return payment_id

    def status_of(self, payment_id: str) -> str:
        """The payment's current status."""
        return self.payments[payment_id].status

    def set_status(self, payment_id: str, status: str) -> None:
        """Move a payment to *status* (e.g. to simulate settlement)."""
        if status not in KLAVI_STATUSES:
            raise ValueError(f"unknown Klavi status {status!r}")
        self.payments[payment_id].status = status
        self.payments[payment_id].status_update_at = _now_iso()

    def script(self, route: str, faults: Iterable[Fault | int | None]) -> None:
        """
        Queue faults for the next requests of *route*; an int is a plain status fault,
        None lets one request through untouched.
        """
        if route not in _ROUTES:
            raise ValueError(f"unknown route {route!r}; routes: {', '.join(sorted(_ROUTES))}")
        queue = self._scripts.setdefault(route, deque())
        for fault in faults:
            queue.append(Fault.of_status(fault) if isinstance(fault, int) else fault)

    def revoke_consent(self, consent_id: str) -> int:
        """
        Revoke an Automatic Pix consent: its payments not yet settled become CONSENT_REVOKED.

        Returns how many payments moved; later cancels of them are refused (416).
        """
        moved = 0
        for payment in self.payments.values():
            if payment.consent_id == consent_id and payment.status in CANCELLABLE:
                payment.status = "CONSENT_REVOKED"
                payment.status_update_at = _now_iso()
                moved += 1
        return moved

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (the next use answers 401)."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    def records(self, route: str | None = None) -> list[RequestRecord]:
        """The request log, optionally for one route."""
        return [r for r in self.requests if route is None or r.route == route]

    # -- HTTP ---------------------------------------------------------------------------

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

    # -- routes -------------------------------------------------------------------------

    def _issue_token(self) -> str:
        expires = self._clock() + self.token_lifetime
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": self.access_key, "exp": int(expires), "jti": str(uuid.uuid4())}
        payload = _b64(json.dumps(claims).encode())
        signature = hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256)
        token = f"{header}.{payload}.{_b64(signature.digest())}"
        self._tokens[token] = expires
        return token

    def _authorized(self, request: web.Request, payment_id: str | None = None) -> bool:
        """A live token; with `single_use_tokens`, one not bound to another payment."""
        value = request.headers.get("Authorization", "")
        if not value.startswith("Bearer "):
            return False
        token = value[7:]
        expires = self._tokens.get(token)
        if expires is None or self._clock() >= expires:
            return False
        if not self.single_use_tokens:
            return True
        bound = self._token_payment.get(token)
        if payment_id is None:  # creating a payment: the token must still be unused
            return bound is None
        return self._token_payment.setdefault(token, payment_id) == payment_id

    def _bind(self, request: web.Request, payment_id: str) -> None:
        if self.single_use_tokens:
            self._token_payment[request.headers["Authorization"][7:]] = payment_id

    async def _auth(self, request: web.Request, body: bytes) -> _Answer:
        data = _object(body)
        access_key = data.get("accessKey") if data else None
        secret_key = data.get("secretKey") if data else None
        if not isinstance(access_key, str) or not isinstance(secret_key, str):
            return _Answer(400, {"statusCode": 400, "error": "Bad Request", "message": "bad body"})
        # Bytes, not str: compare_digest refuses non-ASCII strings, and a key is any text.
        keys_ok = hmac.compare_digest(access_key.encode(), self.access_key.encode()) and (
            hmac.compare_digest(secret_key.encode(), self.secret_key.encode())
        )
        if not keys_ok:
            return _Answer(
                401,
                {
                    "statusCode": 401,
                    "error": "Unauthorized",
                    "message": "Invalid accessKey or secretKey",
                },
            )
        return _Answer(200, {"accessToken": self._issue_token(), "expireIn": self.token_lifetime})

    async def _create(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request):
            return _unauthorized()
        data = _object(body)
        if data is None:
            return _Answer(400, {"statusCode": 400, "message": "the body is not a JSON object"})
        client_request_id = data.get("clientRequestId")
        status = data.get("status", "PAYMENT_PENDING")
        if not isinstance(client_request_id, str) or not client_request_id:
            return _Answer(422, {"statusCode": 422, "message": "clientRequestId is required"})
        if status not in KLAVI_STATUSES:
            return _Answer(422, {"statusCode": 422, "message": "unknown status"})
        existing = self.by_client_request_id.get(client_request_id)
        if existing is not None:
            self._bind(request, existing)
            return _Answer(200, self.payments[existing].body())
        payment_id = self.add_payment(str(status), amount=str(data.get("amount", "10.00")))
        self._bind(request, payment_id)
        payment = self.payments[payment_id]
        del self.by_client_request_id[payment.client_request_id]
        payment.client_request_id = client_request_id
        payment.currency = str(data.get("currency", "BRL"))
        self.by_client_request_id[client_request_id] = payment_id
        return _Answer(201, payment.body())

    def _find(self, request: web.Request) -> Payment | None:
        payment = self.payments.get(request.match_info["payment_id"])
        consent_id = request.match_info.get("consent_id")
        if payment is None or payment.consent_id != consent_id:
            return None
        return payment

    async def _get(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request, request.match_info["payment_id"]):
            return _unauthorized()
        payment = self._find(request)
        return _not_found() if payment is None else _Answer(200, payment.body())

    async def _status(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request, request.match_info["payment_id"]):
            return _unauthorized()
        payment = self._find(request)
        return _not_found() if payment is None else _Answer(200, payment.status_body())

    async def _cancel(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request, request.match_info["payment_id"]):
            return _unauthorized()
        key = request.headers.get("x-idempotency-key")
        fingerprint = hashlib.sha256(request.path.encode() + b"\x00" + body).hexdigest()
        if key is not None and key in self._stored:
            stored_fingerprint, stored = self._stored[key]
            if stored_fingerprint != fingerprint:
                return _Answer(
                    409,
                    {
                        "statusCode": "ERRO_IDEMPOTENCIA",
                        "message": "x-idempotency-key reused with another request",
                    },
                )
            return _Answer(stored.status, stored.body, replayed=True)
        answer = self._apply_cancel(request, body)
        if key is not None and (200 <= answer.status < 300 or answer.status == 416):
            self._stored[key] = (fingerprint, _Answer(answer.status, answer.body))
        return answer

    def _apply_cancel(self, request: web.Request, body: bytes) -> _Answer:
        data = _object(body)
        if data is None:
            return _Answer(400, {"statusCode": 400, "message": "the body is not a JSON object"})
        # The emulator's own check, not the SDK's: an SDK validation bug must show up here.
        problem = cancel_body_problem(data.get("cancelledBy"), data.get("identifierType"))
        if problem is not None:
            return _Answer(422, {"statusCode": 422, "message": problem})
        payment = self._find(request)
        if payment is None:
            return _not_found()
        if payment.status not in CANCELLABLE:
            return _Answer(
                416,
                {
                    "statusCode": self.refusal_code,
                    "error": "Business error",
                    "message": f"payment in status {payment.status} cannot be cancelled",
                },
            )
        payment.status = "CANCELED"
        payment.status_update_at = _now_iso()
        self.effects[payment.id] = self.effects.get(payment.id, 0) + 1
        return _Answer(200, None if self.empty_cancel_body else payment.body(), effect=True)


_ROUTES: Final = frozenset(
    {"auth", "create", "get", "status", "automatic_status", "cancel", "automatic_cancel"}
)


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _unauthorized() -> _Answer:
    return _Answer(401, {"statusCode": 401, "error": "Unauthorized", "message": "invalid token"})


def _not_found() -> _Answer:
    return _Answer(404, {"statusCode": 404, "error": "Not Found", "message": "no such payment"})


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
