"""
Draw docs/img/trace.png: the spans of one retried cancel, as OpenTelemetry records them.

    .venv/bin/python docs/img/make_trace_png.py

Runs a real cancel against the emulator (a scripted 503 first, so the cancel retries),
with the SDK's in-memory span exporter, and draws every span as a bar on a time axis,
with its name and attributes.  Needs opentelemetry-sdk and matplotlib (dev and bench
extras).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from klavi_async import ClientCredentials, KlaviClient, RetryPolicy
from klavi_async.testing import KlaviEmulator

OUT = Path(__file__).with_name("trace.png")


async def record() -> list[Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with KlaviEmulator(latency=0.02) as emu:
        payment_id = emu.add_payment("PAYMENT_PENDING")
        emu.script("cancel", [503])
        credentials = ClientCredentials(emu.access_key, emu.secret_key)
        retry = RetryPolicy(initial_backoff=0.05, jitter=False)
        async with KlaviClient(
            credentials, base_url=emu.url, retry=retry, tracer_provider=provider
        ) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by="529.982.247-25")
    assert result.ok, result
    return sorted(exporter.get_finished_spans(), key=lambda s: s.start_time)


def label(span: Any) -> str:
    shown = {k: v for k, v in span.attributes.items() if k not in ("server.address",)}
    lines = [f"{span.name}  ({span.kind.name})"]
    lines += [f"{k} = {v}" for k, v in shown.items()]
    return "\n".join(lines)


def draw(spans: list[Any]) -> None:
    t0 = spans[0].start_time
    total = (max(s.end_time for s in spans) - t0) / 1e6
    fig, (text, ax) = plt.subplots(
        1,
        2,
        figsize=(15, 1.45 * len(spans) + 1.2),
        gridspec_kw={"width_ratios": [1.25, 1]},
        sharey=True,
    )
    for row, span in enumerate(spans):
        start = (span.start_time - t0) / 1e6
        width = max((span.end_time - span.start_time) / 1e6, total / 150)
        internal = span.kind.name == "INTERNAL"
        failed = span.status.status_code.name == "ERROR"
        color = "#4c72b0" if internal else ("#c44e52" if failed else "#55a868")
        ax.barh(row, width, left=start, height=0.45, color=color)
        text.text(0.0, row, label(span), va="center", fontsize=8.5, family="monospace")
        for number, event in enumerate(span.events):
            at = (event.timestamp - t0) / 1e6
            ax.plot([at], [row - 0.3], marker="v", color="black")
            ax.annotate(
                event.name,
                (at, row - 0.3),
                (at + total / 40, row - 0.38 - 0.18 * number),
                fontsize=8.5,
                arrowprops={"arrowstyle": "-", "color": "grey"},
            )
    ax.set_ylim(len(spans) - 0.4, -0.9)
    ax.set_xlim(-total / 50, total * 1.05)
    ax.set_yticks([])
    ax.set_xlabel("milliseconds since the cancel started")
    ax.grid(axis="x", alpha=0.3)
    text.axis("off")
    fig.suptitle(
        "One cancel that met a 503: the call's INTERNAL span, the token fetch, "
        "two cancel requests (red: failed), span events"
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)


if __name__ == "__main__":
    draw(asyncio.run(record()))
    print(f"wrote {OUT}")  # noqa: T201 - a script's one line of output
