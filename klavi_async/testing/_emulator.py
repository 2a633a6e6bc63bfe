"""
`KlaviEmulator`: an in-process fake Klavi on loopback, with fault injection.

It serves the routes the SDK uses (auth, create and read test payments, status, instant
and Automatic Pix cancel) with Klavi's status vocabulary and a small state machine, the
`x-idempotency-key` replay rules of Open Finance Brasil, and faults scripted per route or
drawn at random.  It counts every effect per payment, so a test can prove that a payment
was cancelled exactly once, and it logs every request with the fault it met.

This module holds the class: its state, lifecycle, fault scripts and request log.  Its
bases hold the rest: `_http` the serving and faults, `_rules` Klavi's rules per route,
`_state` the statuses and data types.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Self

from aiohttp import web

from ._faults import Fault, RandomFaults
from ._http import _ROUTES, _Http
from ._state import (
    AUTOMATIC_PIX_STATUSES,
    CANCELLABLE,
    KLAVI_STATUSES,
    REFUSAL_CODE,
    Payment,
    RequestRecord,
    _Answer,
)

__all__ = [
    "AUTOMATIC_PIX_STATUSES",
    "CANCELLABLE",
    "KLAVI_STATUSES",
    "REFUSAL_CODE",
    "KlaviEmulator",
    "Payment",
    "RequestRecord",
]


class KlaviEmulator(_Http):
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

    def records(self, route: str | None = None) -> list[RequestRecord]:
        """The request log, optionally for one route."""
        return [r for r in self.requests if route is None or r.route == route]
