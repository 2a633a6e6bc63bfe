"""
The attempt every request of a client goes through, and what a client's calls share.

Strictly private.  `Call.attempt()` is one attempt: token (waiting no longer than the
deadline), a slot of the client's rate limiter, send, classify, record, and on a 401 one
replay with a fresh token.  The retry loop calls it; a cancel, its reconciliation read, a
status read and the credentials exchange all use it.  `Shared.loop()` is the one place a
retry loop is built.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Awaitable, Callable

import attrs
from yarl import URL

from ._auth import (
    CredentialsProvider,
    OwnToken,
    auth_failure,
    replays,
    scrub_echo,
    wait_for_token,
)
from ._budget import RetryBudget
from ._errors import ClientClosedError
from ._events import (
    DEBUG,
    INFO,
    AttemptEnded,
    BudgetRefused,
    CallInfo,
    Events,
    RateLimitWait,
    RetryScheduled,
)
from ._kinds import ErrorKind, result_retryable
from ._outcome import Outcome, classify_response, cut_outcome, transport_outcome
from ._ratelimit import PRIORITY_FIRST, PRIORITY_READ, PRIORITY_RETRY, RateLimit, RateLimiter
from ._retry import RetryLoop, RetryPolicy, new_retry_loop
from ._speedups import new_attempt, uuid4
from ._tokens import Bearer, ClientCredentials, TokenCache, TokenProvider
from ._transport import HTTPTransport, Response, TransportFailure

__all__ = ["Call", "Shared", "final_message"]


class Shared:
    """
    What every call of one client shares.  Strictly private.

    `closed` is set by `KlaviClient.aclose()` (`close()`, for the client's views too); an
    attempt that starts after it raises `ClientClosedError`.  `limiter` is the client's
    one rate limiter (None when `rate_limit=None`), shared by every request of every call
    but the credentials exchange of a shared token (rare).
    """

    __slots__ = (
        "__weakref__",
        "budget",
        "clock",
        "closed",
        "events",
        "limiter",
        "policy",
        "secrets",
        "single_use",
        "sleep",
        "timeout",
        "tokens",
        "transport",
        "views",
    )

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        transport: HTTPTransport,
        provider: TokenProvider | ClientCredentials,
        policy: RetryPolicy,
        budget: RetryBudget,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        events: Events,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.timeout = timeout
        self.transport = transport
        self.policy = policy
        self.budget = budget
        self.clock = clock
        self.sleep = sleep
        self.events = events
        self.closed = False
        self.limiter = (
            None
            if rate_limit is None
            else RateLimiter(rate_limit, clock=clock, sleep=sleep, max_pause=policy.max_retry_after)
        )
        # Scrubbed from what a status read keeps (the server has no business echoing them).
        self.secrets: tuple[str, ...] = ()
        self.single_use = False  # each call fetches a token of its own (`OwnToken`)
        if isinstance(provider, ClientCredentials):
            self.single_use = provider.single_use
            self.secrets = (provider.secret_key, provider.access_key)
            provider = CredentialsProvider(
                provider, base_url, self.post_unauthorised, policy.retry_statuses
            )
        self.tokens = TokenCache(provider, clock=clock, events=events)
        self.views: weakref.WeakSet[Shared] = weakref.WeakSet()

    def derive(self, policy: RetryPolicy, timeout: float) -> Shared:
        """
        What a view of the client shares (`KlaviClient.with_options`): everything but the
        retry policy and the timeout.  Closed when this is closed.
        """
        view = copy.copy(self)  # `views` included: every view registers with the client's
        view.policy, view.timeout = policy, timeout
        self.views.add(view)
        return view

    def close(self) -> None:
        """Mark this and every view closed: a call that starts after it raises."""
        self.closed = True
        for view in self.views:
            view.closed = True

    def loop(
        self,
        call: Call,
        *,
        start: float | None = None,
        safe: bool = False,
        counted: bool = True,
        deadline: float | None = None,
    ) -> RetryLoop:
        """The one place a retry loop is built: the client's policy, budget and clock."""
        policy = self.policy
        if deadline is not None and policy.deadline != deadline:
            policy = attrs.evolve(policy, deadline=deadline)
        return new_retry_loop(
            policy,
            self.budget,
            clock=self.clock,
            sleep=self.sleep,
            observer=call,
            start=start,
            safe=safe,
            counted=counted,
        )

    async def post_unauthorised(self, url: URL, headers: dict[str, str], body: bytes) -> Outcome:
        """
        POST without a token under the retry policy: the credentials exchange's send.

        Safe to repeat (a second exchange only gives another token), so retried like a
        read; part of the call that needed the token, so not counted as a call of its own
        in the budget.  With single-use tokens every call makes one: it takes a slot of
        the rate limiter then, and tells it what Klavi answered.
        """
        call = Call(self, "auth", None, uuid4(), authorize=False)
        loop = self.loop(call, safe=True, counted=False)
        return await loop.run(call.attempt, loop, "POST", url, headers, body)


class Call:
    """One call's attempts: token, send, classify, record, 401 replay.  Strictly private."""

    __slots__ = (
        "_auth_retryable",
        "_authorize",
        "_document",
        "_info",
        "_replayed",
        "_shared",
        "_tokens",
        "interaction_id",
        "payment_id",
    )

    def __init__(
        self,
        shared: Shared,
        payment_id: str,
        document: str | None,
        interaction_id: str,
        *,
        authorize: bool = True,
    ) -> None:
        self._shared = shared
        self.payment_id = payment_id
        self._document = document
        self.interaction_id = interaction_id
        self._authorize = authorize
        # Where this call's tokens come from: the client's cache, or its own token.
        self._tokens = (
            OwnToken(shared.tokens, shared.clock)
            if shared.single_use and authorize
            else shared.tokens
        )
        self._replayed = False
        self._auth_retryable = False
        self._info: CallInfo | None = None

    async def attempt(
        self,
        loop: RetryLoop,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None,
    ) -> Outcome:
        """
        One attempt: a token, a rate-limit slot, the send; a 401 refreshes the token and
        replays once.  One coroutine on purpose: each frame of the await chain is resumed
        on every wake-up.  Until the limiter is engaged a send costs one attribute check.
        """
        c = self._shared
        if c.closed:
            raise ClientClosedError("this KlaviClient was closed while a call was running")
        # A `Bearer`, never the bare string: this frame is on every traceback of the call.
        token: Bearer | None = None
        # The credentials exchange takes a slot only when every call makes one.
        limiter = c.limiter if self._authorize or c.single_use else None
        if self._authorize:
            token = self._tokens.peek()
            if token is None:
                waited = await self._wait_token(loop)
                if not isinstance(waited, Bearer):
                    return waited
                token = waited
        refreshed = False
        while True:
            if limiter is not None and limiter.engaged:
                refusal = await self._take_slot(limiter, loop, method)
                if refusal is not None:
                    return refusal
            timeout, left = c.timeout, loop.remaining()
            if left < timeout:  # the common value stays exact: its ClientTimeout is cached
                timeout = max(left, 0.001)
            started = c.clock()
            try:
                # The transport adds the Authorization header: no dict of ours holds it.
                response = await c.transport.request(
                    method, url, headers=headers, body=body, timeout=timeout, auth=token
                )
            except TransportFailure as exc:
                outcome = transport_outcome(exc.kind, sent=exc.sent, message=exc.message)
            else:
                outcome = self._classify(response, token)
                if limiter is not None:  # a 429/529 throttles it, any other answer counts
                    if outcome.retry_after is None:  # nothing to cap: `_tell`'s work, inline
                        limiter.on_response(response.status, None, started)
                    else:
                        self._tell(limiter, response.status, outcome.retry_after, started)
            self._record(loop, method, outcome, c.clock() - started, refreshed)
            if outcome.kind is None or not replays(token, outcome, self._replayed):
                return outcome  # (a success never replays: no need to ask)
            # 401: drop this token if it is still the cached one, get another, replay once.
            self._replayed = True
            self._tokens.invalidate(token)  # type: ignore[arg-type]  # replays() checked it
            fresh = await self._wait_token(loop)
            if not isinstance(fresh, Bearer):
                return fresh
            if fresh == token:
                return outcome  # the same token would be refused again
            token, refreshed = fresh, True

    async def _wait_token(self, loop: RetryLoop) -> Bearer | Outcome:
        """A token within the call's deadline, or the outcome of a call that got none."""
        try:
            return await wait_for_token(self._tokens, loop.remaining(), loop.deadline)
        except ClientClosedError:
            raise  # misuse, not an outcome: the client was closed under the call
        except Exception as exc:
            outcome, self._auth_retryable = auth_failure(exc)
            return outcome

    def _tell(
        self, limiter: RateLimiter, status: int, retry_after: float | None, sent_at: float
    ) -> None:
        # The pause a Retry-After may ask of the whole client is the policy's cap at most:
        # one `Retry-After: 86400` must not stop every later call for a day.
        if retry_after is not None:
            retry_after = min(retry_after, self._shared.policy.max_retry_after)
        limiter.on_response(status, retry_after, sent_at)

    async def _take_slot(
        self, limiter: RateLimiter, loop: RetryLoop, method: str
    ) -> Outcome | None:
        """
        Wait for this send's slot; None once taken, or (nothing sent) the attempt's outcome
        when the slot would come past the call's deadline.  A status read queues first, then
        retries (at the back, one in step with the probes failed after four 429s).

        The refusal is `RATE_LIMITED` with `retry_after` = the wait it would need, and the
        loop stops on the deadline rule: no later attempt could be sooner.  It is not
        recorded in the history, which holds the requests sent (as for invalid input).
        """
        c = self._shared
        since = c.clock()
        retry = PRIORITY_RETRY if loop.history else PRIORITY_FIRST
        priority = PRIORITY_READ if method == "GET" else retry
        if await limiter.acquire(loop.remaining(), priority=priority):
            waited = c.clock() - since
            if waited > 0 and c.events.wants(DEBUG):
                c.events.emit(RateLimitWait(call=self.info(), delay=waited))
            return None
        wait = max(limiter.delay(), 0.0)
        loop.stop_reason, loop.refused_wait = "deadline", wait
        return Outcome(
            ErrorKind.RATE_LIMITED,
            None,
            message=f"the client's rate limit has no slot for {wait:.3g} s; nothing was sent",
            retry_after=wait,
        )

    def _classify(self, response: Response, token: Bearer | None) -> Outcome:
        if response.cut is None:
            body = response.body
            if not self._authorize and self._shared.secrets:
                body = scrub_echo(body, self._shared.secrets)  # /auth echoing the keys
            return classify_response(
                response.status, response.headers, body, document=self._document, token=token
            )
        return cut_outcome(response.status, response.headers, *response.cut, token=token)

    def _record(
        self, loop: RetryLoop, method: str, outcome: Outcome, duration: float, refreshed: bool
    ) -> None:
        attempt = new_attempt(
            number=len(loop.history) + 1,
            http_status=outcome.http_status,
            kind=outcome.kind,
            code=outcome.code,
            ambiguous=outcome.ambiguous,
            duration=duration,
            delay=None,
            retry_after=outcome.retry_after,
            request_id=outcome.request_id,
            token_refreshed=refreshed,
        )
        loop.history.append(attempt)  # `loop.record(attempt)`, one call less
        events = self._shared.events
        if events.wants(DEBUG):
            events.emit(
                AttemptEnded(
                    call=self.info(), method=method, attempt=attempt, message=outcome.message
                )
            )

    def retryable(self, outcome: Outcome) -> bool:
        """The final result's `retryable` (`_kinds`' table; auth as its failure said)."""
        return result_retryable(outcome.kind, self._auth_retryable)

    def info(self) -> CallInfo:
        """Who this call is, for events: built (and masked) once, on first use."""
        info = self._info
        if info is None:
            info = self._info = CallInfo.of(self.payment_id, self.interaction_id, self._document)
        return info

    # RetryObserver: what the retry loop decided.

    def retry_scheduled(self, outcome: Outcome, attempt_number: int, delay: float) -> None:
        events = self._shared.events
        if events.wants(INFO):
            events.emit(
                RetryScheduled(
                    call=self.info(),
                    attempt=attempt_number,
                    http_status=outcome.http_status,
                    kind=outcome.kind,
                    delay=delay,
                )
            )

    def budget_refused(self, attempt_number: int) -> None:
        events = self._shared.events
        if events.wants(INFO):
            events.emit(BudgetRefused(call=self.info(), attempt=attempt_number))


def final_message(outcome: Outcome, loop: RetryLoop) -> str:
    """The result's message: the last outcome's, and why retrying stopped."""
    message = outcome.message or (outcome.kind.value if outcome.kind else "")
    reason = loop.stop_reason
    if reason == "budget":
        message += " (retry budget exhausted)"
    elif reason == "deadline":
        message += " (deadline reached before the next attempt)"
    elif reason == "attempts" and len(loop.history) > 1:
        message += f" (after {len(loop.history)} attempts)"
    return message
