"""
`KlaviClient`: the session manager and the cancel coroutines.

One client holds one HTTP session (one connection pool), one token cache and one retry
budget, shared by every call made through it, including `cancel_many()`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import ssl as _ssl
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import attrs
from yarl import URL

from . import _batch
from ._budget import RetryBudget
from ._config import (
    AUTOMATIC_CANCEL_PATH,
    AUTOMATIC_STATUS_PATH,
    CANCEL_PATH,
    STATUS_PATH,
    Environment,
    check_base_url,
)
from ._documents import (
    DocumentCache,
    InvalidInput,
    clip_kept,
    mask_document,
    validate_idempotency_key,
    validate_payment_id,
)
from ._errors import (
    ClientClosedError,
    ErrorKind,
    InvalidRequestError,
    UnexpectedResponseError,
    error_class,
)
from ._outcome import Outcome, classify_response, cut_outcome, transport_outcome
from ._results import (
    Attempt,
    CancelFailed,
    Cancelled,
    CancelRequest,
    CancelResult,
    PaymentStatus,
    new_attempt,
    new_cancelled,
)
from ._retry import RetryLoop, RetryPolicy
from ._tokens import (
    AccessToken,
    Bearer,
    ClientCredentials,
    StaticToken,
    TokenCache,
    TokenError,
    TokenProvider,
    as_provider,
    parse_auth_response,
)
from ._transport import DEFAULT_MAX_BODY, Transport, TransportFailure, user_agent
from ._version import version

if TYPE_CHECKING:
    import aiohttp

__all__ = ["KlaviClient"]

logger = logging.getLogger("klavi_async")

_RECONCILE_MIN_TIMEOUT: Final = 1.0
"""A reconciliation read gets at least this long, even when the deadline has passed."""
_INTERACTION_HEADER: Final = "x-fapi-interaction-id"
_urandom: Final = os.urandom


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "open"
    CLOSED = "closed"


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
    hosts.  *clock* and *sleep* exist for tests (a fake monotonic clock and sleep).
    """

    def __init__(
        self,
        token_provider: TokenSource,
        *,
        environment: Environment = Environment.SANDBOX,
        base_url: str | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
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
    ) -> None:
        if not isinstance(environment, Environment):
            raise TypeError(f"environment must be an Environment, got {environment!r}")
        self._base_url = check_base_url(environment.base_url if base_url is None else base_url)
        # Request URLs are built from the parsed base (`with_path`): parsing a whole URL
        # string per call costs several times more.
        self._base = URL(self._base_url, encoded=True)
        self._base_path = self._base.raw_path.rstrip("/")
        _check_optional_type("retry", retry, RetryPolicy)
        _check_optional_type("retry_budget", retry_budget, RetryBudget)
        _check_number("timeout", timeout)
        _check_int("max_connections", max_connections)
        _check_int("max_response_size", max_response_size)
        header: object = idempotency_header
        if header is not None and (not isinstance(header, str) or not header.strip()):
            raise ValueError("idempotency_header must be a header name or None")
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext | bool):
            raise TypeError("ssl must be an ssl.SSLContext, a bool or None")
        for name, path, fields in (
            ("cancel_path", cancel_path, ("payment_id",)),
            ("status_path", status_path, ("payment_id",)),
            ("automatic_cancel_path", automatic_cancel_path, ("consent_id", "payment_id")),
            ("automatic_status_path", automatic_status_path, ("consent_id", "payment_id")),
        ):
            _check_path(name, path, fields)

        self._retry = retry if retry is not None else RetryPolicy()
        self._budget = retry_budget if retry_budget is not None else RetryBudget()
        self._timeout = float(timeout)
        self._key_header = idempotency_header
        self._paths = (cancel_path, status_path, automatic_cancel_path, automatic_status_path)
        self._clock = clock
        self._sleep = sleep
        self._transport = Transport(
            user_agent=user_agent(version),
            max_connections=max_connections,
            session=session,
            ssl=ssl,
            max_body=max_response_size,
        )
        provider = as_provider(token_provider)
        self._provider = provider
        if isinstance(provider, ClientCredentials):
            provider = _CredentialsProvider(self, provider)
        self._tokens = TokenCache(provider, clock=clock)
        self._documents = DocumentCache()
        self._state = _State.UNOPENED
        self._batches: dict[int, set[asyncio.Task[Any]]] = {}

    # -- construction helpers ---------------------------------------------------------

    @classmethod
    def from_env(cls, **kwargs: Any) -> KlaviClient:
        """
        Build a client from the environment.

        Credentials: `KLAVI_ACCESS_KEY` and `KLAVI_SECRET_KEY`, or `KLAVI_TOKEN`.  Target:
        `KLAVI_BASE_URL`, else `KLAVI_ENVIRONMENT` (`sandbox`, `testing`, `production`).
        Keyword arguments are passed to the constructor and win over the environment.
        """
        if "token_provider" not in kwargs:
            access = os.environ.get("KLAVI_ACCESS_KEY", "").strip()
            secret = os.environ.get("KLAVI_SECRET_KEY", "").strip()
            token = os.environ.get("KLAVI_TOKEN", "").strip()
            if access and secret:
                kwargs["token_provider"] = ClientCredentials(access, secret)
            elif token:
                kwargs["token_provider"] = StaticToken(token)
            elif access or secret:
                raise ValueError("set both KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY (or KLAVI_TOKEN)")
            else:
                raise ValueError(
                    "no Klavi credentials: set KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY, "
                    "or KLAVI_TOKEN"
                )
        if "base_url" not in kwargs and os.environ.get("KLAVI_BASE_URL", "").strip():
            kwargs["base_url"] = os.environ["KLAVI_BASE_URL"].strip()
        if "environment" not in kwargs and os.environ.get("KLAVI_ENVIRONMENT", "").strip():
            kwargs["environment"] = Environment.parse(os.environ["KLAVI_ENVIRONMENT"])
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

    @property
    def closed(self) -> bool:
        """True after `aclose()`."""
        return self._state is _State.CLOSED

    @property
    def token_fetches(self) -> int:
        """How many times the token provider has been called."""
        return self._tokens.fetches

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this KlaviClient is closed; create a new one")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """
        Close the client: cancel batch work in flight, then close the session we own.

        Idempotent.  A session passed in by the caller is left open.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        # Before the first await: a cancelled aclose() must not leave documents behind
        # (calls still running were validated already).
        self._documents.clear()
        tasks = [task for running in self._batches.values() for task in running]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._tokens.aclose()
        await self._transport.aclose()

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this KlaviClient is closed; create a new one")

    def __repr__(self) -> str:
        return (
            f"<KlaviClient base_url={self._base_url!r} state={self._state.value} "
            f"provider={self._provider!r}>"
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
        _check_args(payment_id, cancelled_by, identifier_type, idempotency_key, None)
        return await self._cancel(payment_id, None, cancelled_by, identifier_type, idempotency_key)

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
        _check_args(payment_id, cancelled_by, identifier_type, idempotency_key, consent_id)
        return await self._cancel(
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
        _check_int("concurrency", concurrency)
        return _batch.stream(self, requests, concurrency)

    async def cancel_request(self, request: CancelRequest) -> CancelResult:
        """Run one `CancelRequest` (what `cancel_many` does for each item)."""
        return await self._request_call(request)

    def _request_call(self, request: CancelRequest) -> Coroutine[Any, Any, CancelResult]:
        """Check *request* now and return the cancel's coroutine (one await level less)."""
        self._check_open()
        if not isinstance(request, CancelRequest):
            raise TypeError(f"expected a CancelRequest, got {type(request).__name__}")
        _check_args(
            request.payment_id,
            request.cancelled_by,
            request.identifier_type,
            request.idempotency_key,
            request.consent_id,
        )
        return self._cancel(
            request.payment_id,
            request.consent_id,
            request.cancelled_by,
            request.identifier_type,
            request.idempotency_key,
        )

    async def _cancel(
        self,
        payment_id: str,
        consent_id: str | None,
        cancelled_by: str,
        identifier_type: str | None,
        idempotency_key: str | None,
    ) -> CancelResult:
        start = self._clock()
        interaction_id, generated_key = _uuid4_pair()
        if self._key_header is None:
            key = None
        elif idempotency_key is None:
            key = generated_key
        else:
            key = idempotency_key
        try:
            validate_payment_id(payment_id)
            if consent_id is not None:
                validate_payment_id(consent_id, "consent_id")
            if idempotency_key is not None:
                validate_idempotency_key(idempotency_key)
            document, doc_type = self._documents.validate(cancelled_by, identifier_type)
        except InvalidInput as exc:
            return self._invalid(payment_id, consent_id, key, interaction_id, start, str(exc))

        url = self._url(payment_id, consent_id)
        body = f'{{"cancelledBy":"{document}","identifierType":"{doc_type}"}}'.encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            _INTERACTION_HEADER: interaction_id,
        }
        if key is not None:
            headers[self._key_header] = key  # type: ignore[index]
        call = _Call(self, payment_id, document, interaction_id)
        loop = RetryLoop(
            self._retry,
            self._budget,
            clock=self._clock,
            sleep=self._sleep,
            on_retry=call.on_retry,
            start=start,
        )
        # The first attempt is awaited here rather than through loop.run(): one coroutine
        # frame less on every resumption of the hot path.
        loop.start_call()
        outcome = await call.execute(loop, "POST", url, headers, body)
        if loop.wants_retry(outcome):
            outcome = await loop.retry_after_first(
                outcome, call.execute, loop, "POST", url, headers, body
            )
        history = tuple(loop.history)
        if outcome.kind is None:
            return self._cancelled(call, consent_id, key, start, history, outcome, False)

        payment_status: str | None = None
        outcome_unknown = False
        if outcome.refused or any(a.ambiguous for a in history):
            status = await self._reconcile(call, loop, payment_id, consent_id)
            if status is not None and status.cancelled:
                return self._cancelled(call, consent_id, key, start, history, outcome, True)
            if status is None:
                outcome_unknown = True
            else:
                payment_status = status.status
                # A request that timed out or lost its connection may still be running at
                # Klavi and cancel the payment after this read; only a terminal status rules
                # that out.
                outcome_unknown = not status.terminal and any(
                    a.ambiguous and a.http_status is None for a in history
                )

        retry_after = outcome.retry_after
        if loop.stop_reason == "deadline" and retry_after is None:
            retry_after = loop.refused_wait
        failed = CancelFailed(
            payment_id=payment_id,
            consent_id=consent_id,
            idempotency_key=key,
            interaction_id=interaction_id,
            attempts=len(history),
            history=history,
            elapsed=self._clock() - start,
            kind=outcome.kind,
            http_status=outcome.http_status,
            code=outcome.code,
            message=_final_message(outcome, loop),
            retryable=call.retryable(outcome),
            outcome_unknown=outcome_unknown,
            payment_status=payment_status,
            retry_after=retry_after,
            body=outcome.body,
        )
        call.log_failed(failed)
        return failed

    def _cancelled(
        self,
        call: _Call,
        consent_id: str | None,
        key: str | None,
        start: float,
        history: tuple[Attempt, ...],
        outcome: Outcome,
        reconciled: bool,
    ) -> Cancelled:
        result = new_cancelled(
            call.payment_id,
            key,
            call.interaction_id,
            history,
            self._clock() - start,
            consent_id,
            outcome.http_status,
            outcome.body,
            reconciled and outcome.refused,
            reconciled,
        )
        if logger.isEnabledFor(logging.DEBUG):
            call.log_cancelled(result)
        return result

    def _invalid(
        self,
        payment_id: str,
        consent_id: str | None,
        key: str | None,
        interaction_id: str,
        start: float,
        message: str,
    ) -> CancelFailed:
        # An id that failed validation may be a document passed in the wrong argument, or
        # anything at all: what is kept is masked and clipped.
        payment_id = clip_kept(payment_id)
        result = CancelFailed(
            payment_id=payment_id,
            consent_id=None if consent_id is None else clip_kept(consent_id),
            idempotency_key=None if key is None else clip_kept(key),
            interaction_id=interaction_id,
            attempts=0,
            history=(),
            elapsed=self._clock() - start,
            kind=ErrorKind.INVALID_REQUEST,
            http_status=None,
            code=None,
            message=message,
            retryable=False,
        )
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "cancel rejected locally: %s",
                message,
                extra={
                    "klavi_event": "cancel_invalid",
                    "klavi_payment_id": payment_id,
                    "klavi_kind": ErrorKind.INVALID_REQUEST.value,
                },
            )
        return result

    async def _reconcile(
        self, call: _Call, loop: RetryLoop, payment_id: str, consent_id: str | None
    ) -> PaymentStatus | None:
        """
        Read the payment's status after an ambiguous or refused cancel; None if no read could.

        A GET is safe to repeat, so the read is retried under the client's policy and
        budget, within what is left of the call's deadline (at least
        `_RECONCILE_MIN_TIMEOUT`).  Its attempts are not the cancel's: they stay out of
        the result's history.
        """
        url = self._url(payment_id, consent_id, status=True)
        deadline = max(loop.remaining(), _RECONCILE_MIN_TIMEOUT)
        policy = self._retry
        if policy.deadline != deadline:
            policy = attrs.evolve(policy, deadline=deadline)
        reads = RetryLoop(
            policy,
            self._budget,
            clock=self._clock,
            sleep=self._sleep,
            on_retry=call.on_retry,
            safe=True,
        )
        headers = {"Accept": "application/json", _INTERACTION_HEADER: call.interaction_id}
        # Not loop.run(): the read is part of the cancel, not a first attempt of its own
        # that would earn the budget more retries.
        outcome = await call.execute(reads, "GET", url, headers, None)
        if reads.wants_retry(outcome):
            outcome = await reads.retry_after_first(
                outcome, call.execute, reads, "GET", url, headers, None
            )
        status = None
        if outcome.kind is None and isinstance(outcome.body, dict):
            status = PaymentStatus.from_body(payment_id, outcome.body)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "reconciliation read for payment %s: %s",
                call.shown_id(),
                status.status if status else f"failed ({(outcome.kind or 'no status').__str__()})",
                extra={
                    "klavi_event": "reconcile",
                    "klavi_payment_id": call.shown_id(),
                    "klavi_status": outcome.http_status,
                    "klavi_payment_status": status.status if status else None,
                    "klavi_reads": len(reads.history),
                },
            )
        return status

    def _url(self, payment_id: str, consent_id: str | None, *, status: bool = False) -> URL:
        """
        The cancel (or status) URL of ids already validated.

        Validated ids hold only ASCII letters, digits and '-', which a URL path carries as
        they are: nothing to percent-encode.
        """
        if consent_id is None:
            path = self._paths[1 if status else 0].format(payment_id=payment_id)
        else:
            path = self._paths[3 if status else 2].format(
                consent_id=consent_id, payment_id=payment_id
            )
        return self._base.with_path(self._base_path + path, encoded=True)

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
        if not isinstance(payment_id, str):
            raise TypeError(f"payment_id must be a str, got {type(payment_id).__name__}")
        if consent_id is not None and not isinstance(consent_id, str):
            raise TypeError(f"consent_id must be a str, got {type(consent_id).__name__}")
        try:
            validate_payment_id(payment_id)
            if consent_id is not None:
                validate_payment_id(consent_id, "consent_id")
        except InvalidInput as exc:
            # The id may be a document passed by mistake, or anything at all.
            raise InvalidRequestError(str(exc), payment_id=clip_kept(payment_id)) from None
        url = self._url(payment_id, consent_id, status=True)
        call = _Call(self, payment_id, None, _uuid4())
        headers = {"Accept": "application/json", _INTERACTION_HEADER: call.interaction_id}
        loop = RetryLoop(
            self._retry,
            self._budget,
            clock=self._clock,
            sleep=self._sleep,
            on_retry=call.on_retry,
            safe=True,
        )
        outcome = await loop.run(call.execute, loop, "GET", url, headers, None)
        if outcome.kind is None:
            body = outcome.body
            status = PaymentStatus.from_body(payment_id, body) if isinstance(body, dict) else None
            if status is None:
                raise UnexpectedResponseError(
                    "the status response has no usable 'status' field",
                    payment_id=payment_id,
                    http_status=outcome.http_status,
                    body=body,
                )
            return status
        raise error_class(outcome.kind)(
            _final_message(outcome, loop),
            kind=outcome.kind,
            payment_id=payment_id,
            http_status=outcome.http_status,
            code=outcome.code,
            retryable=call.retryable(outcome),
            retry_after=outcome.retry_after,
            body=outcome.body,
        )

    # -- auth -------------------------------------------------------------------------

    async def _fetch_credentials_token(self, credentials: ClientCredentials) -> AccessToken:
        url = URL(self._base_url + credentials.path, encoded=False)
        body = json.dumps(
            {"accessKey": credentials.access_key, "secretKey": credentials.secret_key}
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        call = _Call(self, "auth", None, _uuid4(), authorize=False)
        loop = RetryLoop(
            self._retry, self._budget, clock=self._clock, sleep=self._sleep, on_retry=call.on_retry
        )
        outcome = await loop.run(call.execute, loop, "POST", url, headers, body)
        if outcome.kind is None:
            try:
                return parse_auth_response(outcome.body)
            except ValueError as exc:
                # A 200 whose body could not be read at all (cut short, empty) may just have
                # been unlucky; one that says something other than a token will say it again.
                raise TokenError(str(exc), retryable=outcome.body is None) from None
        message = outcome.message
        for secret in (credentials.secret_key, credentials.access_key):
            message = message.replace(secret, "***")
        if outcome.http_status in (400, 401, 403, 404, 422):
            raise TokenError(
                f"Klavi rejected the access key (HTTP {outcome.http_status}: {message})",
                retryable=False,
            )
        raise TokenError(
            f"the auth endpoint failed ({outcome.kind.value}: {message})",
            retryable=self._retry.should_retry(outcome) or outcome.kind.retryable,
        )


class _CredentialsProvider:
    """`ClientCredentials` bound to one client's URL, session and retry policy."""

    __slots__ = ("_client", "_credentials")

    def __init__(self, client: KlaviClient, credentials: ClientCredentials) -> None:
        self._client = client
        self._credentials = credentials

    async def get_token(self) -> AccessToken:
        return await self._client._fetch_credentials_token(self._credentials)


class _Call:
    """One call's requests: token, send, 401 replay, history, logs.  Strictly private."""

    __slots__ = (
        "_auth_retryable",
        "_authorize",
        "_client",
        "_document",
        "_replayed",
        "interaction_id",
        "payment_id",
    )

    def __init__(
        self,
        client: KlaviClient,
        payment_id: str,
        document: str | None,
        interaction_id: str,
        *,
        authorize: bool = True,
    ) -> None:
        self._client = client
        self.payment_id = payment_id
        self._document = document
        self.interaction_id = interaction_id
        self._authorize = authorize
        self._replayed = False
        self._auth_retryable = False

    async def execute(
        self,
        loop: RetryLoop | None,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> Outcome:
        """
        One attempt: get a token, send, and on a 401 refresh the token and replay once.

        A single coroutine on purpose: every frame in the await chain is resumed each time
        aiohttp wakes up, and this is the hot path of every cancel.
        """
        client = self._client
        if client._state is _State.CLOSED:
            raise ClientClosedError("this KlaviClient was closed while a call was running")
        tokens = client._tokens
        # A `Bearer`, never the bare string: this frame is on every traceback of the call.
        token: Bearer | None = None
        if self._authorize:
            token = tokens.peek()
            if token is None:
                try:
                    token = await self._wait_for_token(loop)
                except Exception as exc:
                    return self._auth_failed(exc)
        if timeout is None:
            timeout = client._timeout
            if loop is not None:
                remaining = loop.remaining()
                if remaining < timeout:  # keep the common value exact: its ClientTimeout is cached
                    timeout = max(remaining, 0.001)
        clock = client._clock
        refreshed = False
        while True:
            started = clock()
            try:
                # The transport adds the Authorization header: no dict of ours holds it.
                response = await client._transport.request(
                    method, url, headers=headers, body=body, timeout=timeout, auth=token
                )
            except TransportFailure as failure:
                outcome = transport_outcome(
                    failure.kind, sent=failure.sent, message=failure.message
                )
            else:
                if response.cut is None:
                    outcome = classify_response(
                        response.status,
                        response.headers,
                        response.body,
                        document=self._document,
                        token=token,
                    )
                else:
                    outcome = cut_outcome(
                        response.status, response.headers, *response.cut, token=token
                    )
            if loop is not None:
                attempt = new_attempt(
                    len(loop.history) + 1,
                    outcome.http_status,
                    outcome.kind,
                    outcome.code,
                    outcome.ambiguous,
                    clock() - started,
                    outcome.retry_after,
                    outcome.request_id,
                    refreshed,
                )
                loop.record(attempt)
                if logger.isEnabledFor(logging.DEBUG):
                    self._log_attempt(method, attempt, outcome)
            if token is None or outcome.kind is not ErrorKind.UNAUTHORIZED or self._replayed:
                return outcome
            # 401: drop this token if it is still the cached one, get another, replay once.
            self._replayed = True
            tokens.invalidate(token)
            try:
                fresh = await self._wait_for_token(loop)
            except Exception as exc:
                return self._auth_failed(exc)
            if fresh == token:
                return outcome  # the same token would be refused again
            token, refreshed = fresh, True

    async def _wait_for_token(self, loop: RetryLoop | None) -> Bearer:
        """A token from the cache, waiting no longer than the call's deadline allows."""
        tokens = self._client._tokens
        if loop is None:
            return await asyncio.wait_for(tokens.get(), self._client._timeout)
        remaining = loop.remaining()
        try:
            # Only this caller stops waiting: the shared fetch goes on for the others.
            return await asyncio.wait_for(tokens.get(), max(remaining, 0.001))
        except TimeoutError:
            raise TokenError(
                f"the token provider gave no token within the call's deadline "
                f"({loop.deadline:g} s)",
                retryable=True,
            ) from None

    def _auth_failed(self, exc: Exception) -> Outcome:
        if isinstance(exc, TokenError):
            message, retryable = exc.message, exc.retryable
        else:
            message = f"the token provider raised {type(exc).__name__}"
            retryable = isinstance(exc, TimeoutError | ConnectionError) or (
                getattr(exc, "retryable", False) is True
            )
        self._auth_retryable = retryable
        return Outcome(ErrorKind.AUTHENTICATION_FAILED, None, message=message)

    def shown_id(self) -> str:
        """The payment id for logs: a valid id may still be a CPF passed by mistake."""
        return clip_kept(self.payment_id)

    def _extra(self, **values: Any) -> dict[str, Any]:
        extra = {
            "klavi_payment_id": self.shown_id(),
            "klavi_interaction_id": self.interaction_id,
        }
        if self._document is not None:
            extra["klavi_document"] = mask_document(self._document)
        for name, value in values.items():
            extra[f"klavi_{name}"] = value
        return extra

    def _log_attempt(self, method: str, attempt: Attempt, outcome: Outcome) -> None:
        logger.debug(
            "%s attempt %d for payment %s: %s",
            method,
            attempt.number,
            self.shown_id(),
            attempt.http_status if attempt.http_status is not None else outcome.message,
            extra=self._extra(
                event="attempt",
                attempt=attempt.number,
                status=attempt.http_status,
                kind=outcome.kind.value if outcome.kind else None,
                duration=attempt.duration,
            ),
        )

    def on_retry(self, outcome: Outcome, attempt_number: int, delay: float) -> None:
        """Log a scheduled retry (called by the retry loop before it sleeps)."""
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "retrying payment %s after attempt %d (%s) in %.3f s",
                self.shown_id(),
                attempt_number,
                outcome.http_status or (outcome.kind.value if outcome.kind else "ok"),
                delay,
                extra=self._extra(
                    event="retry",
                    attempt=attempt_number,
                    status=outcome.http_status,
                    kind=outcome.kind.value if outcome.kind else None,
                    delay=delay,
                ),
            )

    def log_cancelled(self, result: Cancelled) -> None:
        """Log a success at DEBUG (the caller checks that DEBUG is on)."""
        logger.debug(
            "payment %s cancelled after %d attempt(s)%s",
            self.shown_id(),
            result.attempts,
            " (reconciled)" if result.reconciled else "",
            extra=self._extra(
                event="cancelled",
                attempt=result.attempts,
                status=result.http_status,
                reconciled=result.reconciled,
            ),
        )

    def log_failed(self, result: CancelFailed) -> None:
        """Log a give-up at WARNING."""
        if logger.isEnabledFor(logging.WARNING):
            logger.warning(
                "giving up on payment %s after %d attempt(s): %s",
                self.shown_id(),
                result.attempts,
                result.message,
                extra=self._extra(
                    event="give_up",
                    attempt=result.attempts,
                    status=result.http_status,
                    kind=result.kind.value,
                    outcome_unknown=result.outcome_unknown,
                    payment_status=result.payment_status,
                ),
            )

    def retryable(self, outcome: Outcome) -> bool:
        """The final result's `retryable`: by kind, or per failure for auth."""
        if outcome.kind is ErrorKind.AUTHENTICATION_FAILED:
            return self._auth_retryable
        return outcome.kind is not None and outcome.kind.retryable


def _uuid4_pair() -> tuple[str, str]:
    """
    Two independent random (version 4) UUID strings from one read of the system's randomness.

    Each is the same as `str(uuid.uuid4())`, without building UUID objects.
    """
    h = _urandom(32).hex()
    return (
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}",
        f"{h[32:40]}-{h[40:44]}-4{h[45:48]}-{_VARIANT[h[48]]}{h[49:52]}-{h[52:]}",
    )


def _uuid4() -> str:
    """One random (version 4) UUID string."""
    return _uuid4_pair()[0]


_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _final_message(outcome: Outcome, loop: RetryLoop) -> str:
    message = outcome.message or (outcome.kind.value if outcome.kind else "")
    reason = loop.stop_reason
    if reason == "budget":
        message += " (retry budget exhausted)"
    elif reason == "deadline":
        message += " (deadline reached before the next attempt)"
    elif reason == "attempts" and len(loop.history) > 1:
        message += f" (after {len(loop.history)} attempts)"
    return message


def _check_optional_type(name: str, value: object, expected: type) -> None:
    if value is not None and not isinstance(value, expected):
        raise TypeError(f"{name} must be a {expected.__name__}, got {type(value).__name__}")


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_path(name: str, path: object, fields: tuple[str, ...]) -> None:
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
        raise ValueError(f"{name} must be a path starting with '/', with no query or fragment")
    for field_name in fields:
        if "{" + field_name + "}" not in path:
            raise ValueError(f"{name} must contain {{{field_name}}}")


def _check_args(
    payment_id: object,
    cancelled_by: object,
    identifier_type: object,
    idempotency_key: object,
    consent_id: object,
) -> None:
    if (
        type(payment_id) is str
        and type(cancelled_by) is str
        and (identifier_type is None or type(identifier_type) is str)
        and (idempotency_key is None or type(idempotency_key) is str)
        and (consent_id is None or type(consent_id) is str)
    ):
        return  # the common case in one expression; the loop below names the culprit
    for name, value, optional in (
        ("payment_id", payment_id, False),
        ("cancelled_by", cancelled_by, False),
        ("identifier_type", identifier_type, True),
        ("idempotency_key", idempotency_key, True),
        ("consent_id", consent_id, True),
    ):
        if not isinstance(value, str) and not (optional and value is None):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
