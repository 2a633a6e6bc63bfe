"""
`KlaviClient`: arguments, lifecycle, and the public calls.

One client holds one HTTP session (one connection pool), one token cache and one retry
budget, shared by every call made through it, including `cancel_many()`.  The calls
themselves live in `_cancel` (one cancel, top to bottom); this module checks what the
caller passed and delegates.
"""

from __future__ import annotations

import asyncio
import copy
import ssl as _ssl
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Self

from . import _batch
from ._account import account_fingerprint
from ._attempt import Shared
from ._budget import RetryBudget
from ._cancel import Canceller
from ._config import (
    AUTOMATIC_CANCEL_PATH,
    AUTOMATIC_STATUS_PATH,
    CANCEL_PATH,
    STATUS_PATH,
    Endpoints,
    Environment,
    check_call_args,
    check_client_config,
    check_int,
    check_number,
    check_optional_type,
    client_kwargs_from_env,
    client_settings,
)
from ._errors import CancelResult, ClientClosedError
from ._logging import default_events
from ._ratelimit import RateLimit, RateLimitStats, rate_value
from ._results import CancelRequest, PaymentStatus
from ._retry import RetryPolicy
from ._status import read_status
from ._telemetry import subscribe_telemetry
from ._tokens import AccessToken, ClientCredentials, TokenProvider, as_provider
from ._transport import DEFAULT_MAX_BODY, HTTPTransport, Transport, user_agent
from ._version import version

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["KlaviClient"]


TokenSource = TokenProvider | ClientCredentials | str | Callable[[], Awaitable[AccessToken | str]]


class KlaviClient:
    """
    The session manager: one connection pool, token cache and retry budget per client.

    ```python
    async with KlaviClient(ClientCredentials(access_key, secret_key)) as klavi:
        result = await klavi.cancel_payment("pay-123", cancelled_by="529.982.247-25")
    ```

    *token_provider* may be a `TokenProvider`, `ClientCredentials`, a token string, or an
    async callable taking no arguments and returning `str | AccessToken`.  A caller's
    *session* is borrowed and never closed.  `https` is required except for loopback
    hosts.  *rate_limit* is a `RateLimit` (adaptive by default: unthrottled until the
    answers show Klavi refusing a share of them), a number (a fixed cap in requests per
    second) or None (off).  *clock* and *sleep* exist for tests (a fake monotonic clock
    and sleep).  *telemetry* and the providers: OpenTelemetry, on by default when
    installed (docs/observability.md).
    """

    def __init__(
        self,
        token_provider: TokenSource,
        *,
        environment: Environment = Environment.SANDBOX,
        base_url: str | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        rate_limit: RateLimit | float | None = RateLimit(),  # noqa: B008  # frozen, shared
        timeout: float = 10.0,
        max_connections: int = 100,
        session: aiohttp.ClientSession | None = None,
        idempotency_header: str | None = "x-idempotency-key",
        ssl: _ssl.SSLContext | bool | None = None,
        max_response_size: int = DEFAULT_MAX_BODY,
        cancel_path: str = CANCEL_PATH,
        status_path: str = STATUS_PATH,
        automatic_cancel_path: str = AUTOMATIC_CANCEL_PATH,
        automatic_status_path: str = AUTOMATIC_STATUS_PATH,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        telemetry: bool | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        paths = (cancel_path, status_path, automatic_cancel_path, automatic_status_path)
        self._base_url = check_client_config(
            environment, base_url, retry, retry_budget, timeout, max_connections,
            max_response_size, idempotency_header, ssl, paths,
        )  # fmt: skip
        self._retry, self._budget, self._rate_limit = client_settings(
            retry, retry_budget, rate_limit
        )
        self._transport: HTTPTransport = Transport(
            user_agent=user_agent(version),
            max_connections=max_connections,
            session=session,
            ssl=ssl,
            max_body=max_response_size,
        )
        self._provider = as_provider(token_provider)
        self._shared = self._share(float(timeout), clock, sleep)
        self._endpoints = Endpoints(self._base_url, *paths)
        self._canceller = Canceller(self._shared, self._endpoints, idempotency_header)
        subscribe_telemetry(self, telemetry, tracer_provider, meter_provider)
        self._view = False
        self._batches: dict[int, set[asyncio.Task[Any]]] = {}

    def _share(
        self, timeout: float, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]
    ) -> Shared:
        """What every call of this client shares (one place, so `__init__` stays short)."""
        return Shared(
            base_url=self._base_url,
            timeout=timeout,
            transport=self._transport,
            provider=self._provider,
            policy=self._retry,
            budget=self._budget,
            clock=clock,
            sleep=sleep,
            events=default_events(),
            rate_limit=self._rate_limit,
        )

    def with_options(
        self, *, retry: RetryPolicy | None = None, timeout: float | None = None
    ) -> KlaviClient:
        """
        This client with another retry policy or timeout for the calls made through it.

        The view shares everything else: the session, the token cache, the retry budget,
        the rate limiter and telemetry.  It is cheap (make one per web request if you
        like); closing the client closes its views, and closing a view does nothing.
        """
        self._check_open()
        check_optional_type("retry", retry, RetryPolicy)
        if timeout is not None:
            check_number("timeout", timeout)
        view = copy.copy(self)  # the same objects: transport, budget, batches, ...
        view._view, view._retry = True, self._retry if retry is None else retry
        seconds = self._shared.timeout if timeout is None else float(timeout)
        view._shared = self._shared.derive(view._retry, seconds)
        view._canceller = self._canceller.derive(view._shared)
        return view

    @classmethod
    def _with_transport(
        cls, transport: HTTPTransport, token_provider: TokenSource, **kwargs: Any
    ) -> KlaviClient:
        """
        A client that sends through *transport* instead of aiohttp: a hook for unit tests.

        Private on purpose: the public constructor stays what DESIGN.md documents, and a
        fake transport skips what only a real one can check (TLS, the wire).
        """
        client = cls(token_provider, **kwargs)
        client._transport = client._shared.transport = transport  # the unused one never opened
        return client

    # -- construction helpers ---------------------------------------------------------

    @classmethod
    def from_env(cls, **kwargs: Any) -> KlaviClient:
        """
        Build a client from the environment.

        Credentials: `KLAVI_ACCESS_KEY` and `KLAVI_SECRET_KEY`, or `KLAVI_TOKEN`;
        `KLAVI_SINGLE_USE_TOKENS=1` fetches a token per call (`ClientCredentials`'
        `single_use`).  Target: `KLAVI_BASE_URL`, else `KLAVI_ENVIRONMENT` (`sandbox`,
        `testing`, `production`).
        Keyword arguments are passed to the constructor and win over the environment.
        """
        kwargs = client_kwargs_from_env(kwargs)
        token_provider = kwargs.pop("token_provider")
        return cls(token_provider, **kwargs)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The base URL every request goes to."""
        return self._base_url

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._retry

    @property
    def retry_budget(self) -> RetryBudget:
        """The retry budget shared by every call of this client."""
        return self._budget

    def rate_limit_stats(self) -> RateLimitStats | None:
        """
        The rate limiter now: allowed rate, throttles seen, time spent waiting.

        None when the client has no limiter (`rate_limit=None`): nothing is counted then,
        and a snapshot of zeros would say no 429 came back when some may have.
        """
        limiter = self._shared.limiter
        return None if limiter is None else limiter.stats()

    def share_rate_limit(self, part: float | None, *, fleet_size: int) -> None:
        """
        Give the adaptive limiter its *part* of a limit shared by *fleet_size* clients of one
        account: it goes on from *part* requests/s, probing past it (None: nothing new; a
        fixed cap ignores it).  A *part* a `RateLimit` would refuse is a `ValueError`.
        """
        if part is not None:
            part = rate_value(part, "part")
        check_int("fleet_size", fleet_size)
        limiter = self._shared.limiter
        if limiter is not None:
            limiter.share(part, fleet_size)

    @property
    def account(self) -> str | None:
        """
        The Klavi account, as 16 hex digits of a SHA-256 of the base URL and the access key
        (or static token): the same for its clients, showing neither.  None: a callable.
        """
        return account_fingerprint(self._base_url, self._provider)

    @property
    def closed(self) -> bool:
        """True after `aclose()` (of the client a view was made from, for a view)."""
        return self._shared.closed

    @property
    def token_fetches(self) -> int:
        """How many times the token provider has been called."""
        return self._shared.tokens.fetches

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """
        Close the client: cancel batch work in flight, then close the session we own.

        Idempotent.  A session passed in by the caller is left open.  For a view
        (`with_options`), nothing: the client it was made from owns what it shares.
        """
        if self._shared.closed or self._view:
            return
        self._shared.close()
        # Before the first await: a cancelled aclose() must not leave documents behind
        # (calls still running were validated already).
        self._canceller.documents.clear()
        tasks = [task for running in self._batches.values() for task in running]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._shared.tokens.aclose()
        await self._transport.aclose()

    def _check_open(self) -> None:
        if self._shared.closed:
            raise ClientClosedError("this KlaviClient is closed; create a new one")

    def __repr__(self) -> str:
        state = "closed" if self._shared.closed else "open"
        view = f" view timeout={self._shared.timeout:g}" if self._view else ""
        return (
            f"<KlaviClient base_url={self._base_url!r} state={state}{view}"
            f" provider={self._provider!r}>"
        )

    # -- cancel -----------------------------------------------------------------------

    async def cancel_payment(
        self,
        payment_id: str,
        *,
        cancelled_by: str,
        identifier_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> CancelResult:
        """
        Cancel an instant payment initiation; return `Cancelled` or `CancelFailed`.

        Never raises for an outcome: every answer, transport failure, timeout and invalid
        input comes back as a result.  Raises only for misuse (a closed client, arguments
        of the wrong type) and lets `asyncio.CancelledError` through.
        """
        self._check_open()
        check_call_args(payment_id, cancelled_by, identifier_type, idempotency_key, None)
        return await self._canceller.cancel(
            payment_id, None, cancelled_by, identifier_type, idempotency_key
        )

    async def cancel_automatic_payment(
        self,
        consent_id: str,
        payment_id: str,
        *,
        cancelled_by: str,
        identifier_type: str | None = None,
        idempotency_key: str | None = None,
    ) -> CancelResult:
        """Cancel one Automatic Pix payment of *consent_id*; same results as `cancel_payment`."""
        self._check_open()
        check_call_args(payment_id, cancelled_by, identifier_type, idempotency_key, consent_id)
        return await self._canceller.cancel(
            payment_id, consent_id, cancelled_by, identifier_type, idempotency_key
        )

    def cancel_many(
        self,
        requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
        *,
        concurrency: int = 32,
    ) -> AsyncGenerator[CancelResult, None]:
        """
        Cancel many payments with at most *concurrency* in flight; yield results as they end.

        *requests* is a sync or async iterable of `CancelRequest`, pulled lazily.  Exactly
        one result per input (invalid ones included), in completion order; memory stays
        bounded by *concurrency*.  Close the generator (`aclose()`, or `async with
        contextlib.aclosing(...)`) to cancel the work in flight; no task is left behind.
        """
        self._check_open()
        check_int("concurrency", concurrency)
        return _batch.stream(
            self._request_call,
            requests,
            concurrency,
            on_start=self._track_batch,
            on_end=self._untrack_batch,
        )

    async def cancel_request(self, request: CancelRequest) -> CancelResult:
        """Run one `CancelRequest` (what `cancel_many` does for each item)."""
        return await self._request_call(request)

    def _request_call(self, request: CancelRequest) -> Coroutine[Any, Any, CancelResult]:
        """Check *request* now and return the cancel's coroutine (one await level less)."""
        self._check_open()
        if not isinstance(request, CancelRequest):
            raise TypeError(f"expected a CancelRequest, got {type(request).__name__}")
        check_call_args(
            request.payment_id,
            request.cancelled_by,
            request.identifier_type,
            request.idempotency_key,
            request.consent_id,
        )
        return self._canceller.cancel(
            request.payment_id,
            request.consent_id,
            request.cancelled_by,
            request.identifier_type,
            request.idempotency_key,
        )

    def _track_batch(self, workers: set[asyncio.Task[None]]) -> None:
        self._batches[id(workers)] = workers  # lets aclose() cancel what is in flight

    def _untrack_batch(self, workers: set[asyncio.Task[None]]) -> None:
        self._batches.pop(id(workers), None)

    # -- status -----------------------------------------------------------------------

    async def get_payment_status(
        self, payment_id: str, *, consent_id: str | None = None
    ) -> PaymentStatus:
        """
        Read a payment's status (retried like a cancel; a GET is safe to repeat).

        Raises the `KlaviError` subclass matching the failure; `PaymentStatus.status`
        keeps Klavi's status string as sent, known or not.
        """
        self._check_open()
        return await read_status(self._shared, self._endpoints, payment_id, consent_id)
