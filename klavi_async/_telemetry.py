"""
Whether a client reports to OpenTelemetry, decided without importing it unless needed.

Strictly private.  `_otel` (which imports `opentelemetry`) is imported here, inside the
function, and only for a client with telemetry on: `import klavi_async` never imports
OpenTelemetry, and without `opentelemetry-api` nothing is imported or paid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["subscribe_telemetry"]


def subscribe_telemetry(
    client: Any,
    enabled: bool | None,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
) -> None:
    """
    Subscribe OpenTelemetry to a `KlaviClient`'s events: only here is `opentelemetry` imported.

    *client* is typed `Any`: a `_client` import, even for typing, would be a cycle.
    """
    providers = tracer_provider is not None or meter_provider is not None
    if enabled is False:
        if providers:
            raise ValueError("tracer_provider/meter_provider given with telemetry=False")
        return
    try:
        from . import _otel
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        if enabled or providers:
            raise ImportError(
                "telemetry needs opentelemetry-api: pip install 'klavi-async[otel]'"
            ) from None
        return  # not installed: nothing imported, nothing subscribed
    if enabled is None and not providers and not _otel.globally_configured():
        return  # only the API's no-op proxies: nothing would be recorded
    base = client._endpoints.base
    provider = client._provider
    client._shared.events.subscribe(
        _otel.OtelSubscriber(
            tracer_provider,
            meter_provider,
            server_address=base.host or "",
            server_port=base.port or 443,
            auth_template=getattr(provider, "path", "/payment/customer/v1/auth"),
        )
    )
