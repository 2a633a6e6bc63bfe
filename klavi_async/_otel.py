"""
OpenTelemetry as one subscriber of the events seam: the spans, span events and metrics.

Strictly private, and imported only by a client that uses telemetry (`KlaviClient`'s
`telemetry=`): `import klavi_async` never imports OpenTelemetry.  What is emitted, by
name, is the contract in docs/observability.md:

- one INTERNAL span per public call (`cancel_payment`, `cancel_automatic_payment`,
  `get_payment_status`), current while the call runs, so the caller's own spans and
  instrumentation nest; it opens on `CallStarted` and ends on `CallEnded`;
- one CLIENT span per HTTP request under it (`POST`, `GET`; a cancel's reconciliation
  reads too), built when the attempt ends (`AttemptEnded`) with its measured start, so
  the attempt path itself holds no span;
- span events for retry waits, budget refusals, token refreshes and failures,
  reconciliation reads and rate-limit waits;
- the five metrics of `Metrics`.

Safety: every attribute comes from a masked `CallInfo`, an `Attempt`, an `ErrorKind`, a
number or a template; no URL with an id, no body, no token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context, metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ._errors import CancelFailed
from ._events import (
    AttemptEnded,
    BudgetRefused,
    CallEnded,
    CallInfo,
    CallStarted,
    CancelGaveUp,
    CancelRejected,
    CancelSucceeded,
    RateLimitWait,
    Reconciled,
    RetryScheduled,
    StatusEnded,
    TokenFailed,
    TokenRefreshed,
)
from ._results import Cancelled
from ._version import version

__all__ = ["OtelSubscriber", "globally_configured"]


def globally_configured() -> bool:
    """
    Whether an OpenTelemetry SDK (or any real provider) is set as a global provider.

    The API alone hands out proxies that record nothing; reporting through them would
    build a span and its events for every call only to drop them (+25 % instructions per
    cancel, measured).  So with neither a provider passed nor a real one set globally, a
    client does not subscribe: configure the SDK before building clients.
    """
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    return not (
        isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        and type(meter_provider).__name__ in _NO_OP_METER_PROVIDERS
    )


_NO_OP_METER_PROVIDERS: Final = frozenset({"_ProxyMeterProvider", "NoOpMeterProvider"})
"""The API's own meter providers (the proxy's class is private, hence by name)."""

SCOPE_NAME: Final = "klavi_async"
"""The instrumentation scope of every span and metric."""

_SCOPE_KEY: Final = context.create_key("klavi_async.call")
"""Where the running call's `_Scope` sits in the OpenTelemetry context."""

_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5)
_DURATION_BUCKETS_LONG: Final = (*_DURATION_BUCKETS, 5.0, 7.5, 10.0, 30.0, 60.0)


class _Scope:
    """One public call's span and what its CLIENT spans need."""

    __slots__ = (
        "attempts",
        "call",
        "failed",
        "name",
        "span",
        "status_template",
        "token",
        "url_template",
    )

    def __init__(self, event: CallStarted, span: Span) -> None:
        self.call = event.call
        self.name = event.name
        self.span = span
        self.url_template = event.url_template
        self.status_template = event.status_template
        self.attempts = 0
        self.failed = False
        """The outcome set `error.type` already (a status read's `KlaviError`)."""
        self.token: object = None


class Metrics:
    """The five instruments, from one meter."""

    __slots__ = ("attempts", "cancel_duration", "cancels", "refused", "request_duration")

    def __init__(self, meter: metrics.Meter) -> None:
        self.cancels = meter.create_counter(
            "klavi.client.cancels", unit="{cancel}", description="Cancels ended, by outcome."
        )
        self.attempts = meter.create_counter(
            "klavi.client.attempts", unit="{attempt}", description="HTTP requests sent."
        )
        self.refused = meter.create_counter(
            "klavi.client.retries.refused",
            unit="{retry}",
            description="Retries the retry budget refused.",
        )
        self.cancel_duration = meter.create_histogram(
            "klavi.client.cancel.duration",
            unit="s",
            description="Duration of one cancel, retries and reconciliation included.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS_LONG,
        )
        self.request_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )


class OtelSubscriber:
    """
    Turns the seam's events into spans, span events and metrics.  Strictly private.

    *tracer_provider* and *meter_provider* default to the global ones (looked up through
    OpenTelemetry's proxies, so providers set after the client was built still count).
    *server_address* and *server_port* are the base URL's; *auth_template* is the
    credentials exchange's path (its requests belong to no public call).
    """

    __slots__ = ("_address", "_auth_template", "_handlers", "_metrics", "_port", "_tracer")

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        *,
        server_address: str,
        server_port: int,
        auth_template: str,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE_NAME, version, tracer_provider)
        self._metrics = Metrics(metrics.get_meter(SCOPE_NAME, version, meter_provider))
        self._address = server_address
        self._port = server_port
        self._auth_template = auth_template
        self._handlers: dict[type, Callable[[Any], None]] = {
            CallStarted: self._started,
            CallEnded: self._ended,
            AttemptEnded: self._attempt,
            RetryScheduled: self._retry,
            BudgetRefused: self._refused,
            RateLimitWait: self._rate_limit_wait,
            Reconciled: self._reconciled,
            TokenRefreshed: self._token_refreshed,
            TokenFailed: self._token_failed,
            CancelSucceeded: self._cancel_ended,
            CancelGaveUp: self._cancel_ended,
            CancelRejected: self._cancel_ended,
            StatusEnded: self._status_ended,
        }

    def wants(self, level: int) -> bool:
        """Every level: spans need every event."""
        return True

    def __call__(self, event: Any) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    # -- the call's span ---------------------------------------------------------------

    def _started(self, event: CallStarted) -> None:
        span = self._tracer.start_span(
            event.name,
            kind=SpanKind.INTERNAL,
            attributes={"klavi.payment_id": event.call.payment_id},
        )
        scope = _Scope(event, span)
        scope.token = context.attach(
            context.set_value(_SCOPE_KEY, scope, trace.set_span_in_context(span))
        )

    def _ended(self, event: CallEnded) -> None:
        scope = _scope(event.call)
        if scope is None:
            return  # a scope that never opened: nothing to end
        span = scope.span
        exc = event.exception
        if exc is not None and not scope.failed:  # cancelled, or a client closed meanwhile
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        context.detach(scope.token)  # type: ignore[arg-type]  # attach()'s token
        span.end()

    def _cancel_ended(self, event: CancelSucceeded | CancelGaveUp | CancelRejected) -> None:
        result = event.result
        outcome = "cancelled" if isinstance(result, Cancelled) else result.kind.value
        self._metrics.cancels.add(1, {"klavi.outcome": outcome})
        self._metrics.cancel_duration.record(result.elapsed, {"klavi.outcome": outcome})
        scope = _current()
        if scope is None:
            return
        span = scope.span
        span.set_attribute("klavi.outcome", outcome)
        span.set_attribute("klavi.attempts", result.attempts)
        if isinstance(result, CancelFailed):
            span.set_attribute("klavi.reconciled", False)
            span.set_attribute("klavi.outcome_unknown", result.outcome_unknown)
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR, result.message))
        else:
            span.set_attribute("klavi.reconciled", result.reconciled)
            span.set_attribute("klavi.outcome_unknown", False)

    def _status_ended(self, event: StatusEnded) -> None:
        scope = _scope(event.call)
        if scope is None:
            return
        span = scope.span
        span.set_attribute("klavi.attempts", scope.attempts)
        if event.status is not None:
            span.set_attribute("klavi.outcome", "ok")
            span.set_attribute("klavi.payment_status", event.status.status)
        elif event.error is not None:
            kind = event.error.kind.value
            scope.failed = True
            span.set_attribute("klavi.outcome", kind)
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, event.error.message))

    # -- one HTTP request --------------------------------------------------------------

    def _attempt(self, event: AttemptEnded) -> None:
        attempt = event.attempt
        end = time.time_ns()
        start = end - max(int(attempt.duration * 1e9), 0)
        scope = _scope(event.call)
        if scope is None:  # the credentials exchange: under whatever span is current
            parent = None
            template = self._auth_template
        else:
            parent = trace.set_span_in_context(scope.span)
            template = scope.status_template if event.method == "GET" else scope.url_template
            if template == scope.url_template:  # the call's own request, not a reconciliation
                scope.attempts += 1
        attributes: dict[str, str | int] = {
            "http.request.method": event.method,
            "server.address": self._address,
            "server.port": self._port,
            "url.template": template,
        }
        counted: dict[str, str | int] = {"http.request.method": event.method}
        if attempt.http_status is not None:
            attributes["http.response.status_code"] = attempt.http_status
            counted["http.response.status_code"] = attempt.http_status
        if attempt.kind is not None:
            status = attempt.http_status
            error = str(status) if status is not None and status >= 400 else attempt.kind.value
            attributes["error.type"] = counted["error.type"] = error
        self._metrics.attempts.add(1, counted)
        self._metrics.request_duration.record(max(attempt.duration, 0.0), attributes)
        if attempt.number > 1:
            attributes["http.request.resend_count"] = attempt.number - 1
        span = self._tracer.start_span(
            event.method,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=start,
        )
        if attempt.kind is not None:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)

    # -- span events -------------------------------------------------------------------

    def _retry(self, event: RetryScheduled) -> None:
        attributes: dict[str, str | int | float] = {
            "klavi.attempt": event.attempt,
            "klavi.retry.delay": event.delay,
        }
        if event.http_status is not None:
            attributes["http.response.status_code"] = event.http_status
        if event.kind is not None:
            attributes["error.type"] = event.kind.value
        _span_of(event.call).add_event("klavi.retry", attributes)

    def _refused(self, event: BudgetRefused) -> None:
        self._metrics.refused.add(1)
        _span_of(event.call).add_event(
            "klavi.retry_budget.refused", {"klavi.attempt": event.attempt}
        )

    def _rate_limit_wait(self, event: RateLimitWait) -> None:
        _span_of(event.call).add_event("klavi.rate_limit.wait", {"klavi.delay": event.delay})

    def _reconciled(self, event: Reconciled) -> None:
        attributes: dict[str, str | int] = {"klavi.reads": event.reads}
        if event.payment_status is not None:
            attributes["klavi.payment_status"] = event.payment_status
        if event.http_status is not None:
            attributes["http.response.status_code"] = event.http_status
        _span_of(event.call).add_event("klavi.reconcile", attributes)

    def _token_refreshed(self, event: TokenRefreshed) -> None:
        trace.get_current_span().add_event(
            "klavi.token.refreshed", {"klavi.token.lifetime": event.lifetime}
        )

    def _token_failed(self, event: TokenFailed) -> None:
        trace.get_current_span().add_event("klavi.token.failed", {"klavi.message": event.message})


def _current() -> _Scope | None:
    """The running call's scope, if a call of a telemetry client is running here."""
    scope = context.get_value(_SCOPE_KEY)
    return scope if isinstance(scope, _Scope) else None


def _scope(call: CallInfo) -> _Scope | None:
    """The running call's scope if *call* is that call (not a credentials exchange)."""
    scope = _current()
    if scope is None or scope.call.interaction_id != call.interaction_id:
        return None
    return scope


def _span_of(call: CallInfo) -> Span:
    """The span an event of *call* belongs on: its call's, else the current one."""
    scope = _scope(call)
    return trace.get_current_span() if scope is None else scope.span
