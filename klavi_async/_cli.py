"""
The `klavi-async` command line.

Credentials come from `KLAVI_TOKEN`, or `KLAVI_ACCESS_KEY` + `KLAVI_SECRET_KEY`; the target
from `KLAVI_BASE_URL` or `KLAVI_ENVIRONMENT`.  Exit status: 0 all cancelled, 1 some
failed, 2 usage (bad flag, missing credentials, unreadable input), 130 interrupted.

click parses arguments (usage errors, help, choices) and tqdm draws the progress bar;
both are in the `cli` extra so the library itself stays on aiohttp, attrs and tenacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from attrs import define, field

from ._batchfile import (
    InputError,
    ResultsFile,
    ResumeState,
    Row,
    count_rows,
    item_id,
    read_rows,
)
from ._client import KlaviClient
from ._errors import ErrorKind, KlaviError
from ._results import Cancelled, CancelRequest, CancelResult

try:
    import click
    from tqdm import tqdm
except ImportError:  # pragma: no cover - exercised only without the extra installed
    _HAVE_EXTRA = False
else:
    _HAVE_EXTRA = True

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail_usage(message: str) -> NoReturn:
    raise click.UsageError(message)


def _client(**kwargs: Any) -> KlaviClient:
    try:
        return KlaviClient.from_env(**kwargs)
    except ValueError as exc:
        _fail_usage(str(exc))


def _emit(record: dict[str, Any]) -> None:
    click.echo(json.dumps(record, ensure_ascii=False))


def _cancel_command(
    payment_id: str,
    cancelled_by: str,
    identifier_type: str | None,
    idempotency_key: str | None,
    consent_id: str | None,
) -> int:
    client = _client()

    async def run() -> CancelResult:
        async with client:
            request = CancelRequest(
                payment_id,
                cancelled_by,
                identifier_type=identifier_type,
                idempotency_key=idempotency_key,
                consent_id=consent_id,
            )
            return await client.cancel_request(request)

    result = asyncio.run(run())
    _emit(result.to_record())
    return EXIT_OK if result.ok else EXIT_FAILED


def _status_command(payment_id: str, consent_id: str | None) -> int:
    client = _client()

    async def run() -> dict[str, Any]:
        async with client:
            try:
                status = await client.get_payment_status(payment_id, consent_id=consent_id)
            except KlaviError as exc:
                return {
                    "payment_id": payment_id,
                    "ok": False,
                    "kind": exc.kind.value,
                    "http_status": exc.http_status,
                    "code": exc.code,
                    "message": exc.message,
                    "retryable": exc.retryable,
                }
            return {
                "payment_id": status.payment_id,
                "ok": True,
                "status": status.status,
                "client_request_id": status.client_request_id,
                "amount": status.amount,
                "currency": status.currency,
                "status_reason_code": status.status_reason_code,
                "status_reason_message": status.status_reason_message,
                "status_update_at": status.status_update_at,
            }

    record = asyncio.run(run())
    _emit(record)
    return EXIT_OK if record["ok"] else EXIT_FAILED


@define
class BatchSummary:
    """Counts for the end-of-batch summary; every input item lands in exactly one bucket."""

    cancelled: int = 0
    already_cancelled: int = 0
    reconciled: int = 0
    retried: int = 0
    failed: Counter[str] = field(factory=Counter)
    refused_by_status: Counter[str] = field(factory=Counter)
    skipped_ok: int = 0
    skipped_failed: int = 0
    unfinished: int = 0

    def add(self, result: CancelResult) -> None:
        if result.attempts > 1:
            self.retried += 1
        if isinstance(result, Cancelled):
            if result.already_cancelled:
                self.already_cancelled += 1
            else:
                self.cancelled += 1
            if result.reconciled:
                self.reconciled += 1
            return
        self.failed[result.kind.value] += 1
        if result.kind is ErrorKind.NOT_CANCELLABLE:
            self.refused_by_status[result.payment_status or "unknown"] += 1

    @property
    def any_failed(self) -> bool:
        return bool(self.failed) or self.skipped_failed > 0

    def lines(self, elapsed: float) -> Iterator[str]:
        yield (
            f"cancelled {self.cancelled}, already cancelled {self.already_cancelled}, "
            f"failed {sum(self.failed.values())}, retried {self.retried}, "
            f"reconciled {self.reconciled}, elapsed {elapsed:.1f} s"
        )
        if self.failed:
            yield "failed by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(self.failed.items()))
        if self.refused_by_status:
            by_status = ", ".join(f"{s} {n}" for s, n in sorted(self.refused_by_status.items()))
            yield f"refused by status: {by_status}"
        if self.skipped_ok or self.skipped_failed:
            yield (
                f"already final in the results file: {self.skipped_ok} cancelled, "
                f"{self.skipped_failed} failed"
            )
        if self.unfinished:
            yield f"not finished (interrupted): {self.unfinished}; rerun to send them again"


def on_stop_signals(callback: Callable[[], object]) -> list[int]:
    """
    Call *callback* on SIGINT and SIGTERM; return the signals handled.

    The loop's own handlers exist on Unix only, and only in the main thread; elsewhere
    Python's default (KeyboardInterrupt) applies.
    """
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return []
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, callback)
    return [signal.SIGINT, signal.SIGTERM]


def _invalid_record(row: Row) -> dict[str, Any]:
    return {
        "payment_id": row.payment_id,
        "ok": False,
        "kind": ErrorKind.INVALID_REQUEST.value,
        "retryable": False,
        "http_status": None,
        "code": None,
        "message": f"malformed input row {row.line}: {row.error}",
        "idempotency_key": None,
        "attempts": 0,
        "already_cancelled": False,
        "reconciled": False,
        "outcome_unknown": False,
        "payment_status": None,
    }


async def _paced(
    items: Iterator[Any], rate: float | None, stop: asyncio.Event
) -> AsyncIterator[Any]:
    interval = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    for item in items:
        if stop.is_set():
            return
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at, time.monotonic()) + interval
        if stop.is_set():
            return
        yield item


async def run_batch(
    client: KlaviClient,
    input_path: str,
    out_path: str,
    *,
    concurrency: int,
    rate_limit: float | None,
    grace: float,
    progress: bool | None,
    echo: Callable[[str], None],
) -> int:
    """Run a batch; return the exit status.  Used by the CLI and the demo."""
    state = ResumeState.load(out_path)
    rows = read_rows(input_path)  # raises InputError for unknown formats before writing
    out = ResultsFile(out_path)
    summary = BatchSummary()
    stop = asyncio.Event()
    started = time.monotonic()
    line_of: dict[str, int] = {}
    total = count_rows(input_path)
    bar = tqdm(
        total=total,
        unit="item",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )
    pending: set[str] = set()

    def requests() -> Iterator[CancelRequest]:
        for row in rows:
            previous = state.final.get(row.item)
            if previous is not None:
                if previous:
                    summary.skipped_ok += 1
                else:
                    summary.skipped_failed += 1
                bar.update(1)
                continue
            if row.request is None:
                record = _invalid_record(row)
                record["consent_id"] = row.consent_id
                record["input_line"] = row.line
                out.write(record)
                summary.failed[ErrorKind.INVALID_REQUEST.value] += 1
                bar.update(1)
                continue
            request = row.request
            key = state.key_for(row)
            if key != request.idempotency_key:
                request = CancelRequest(
                    request.payment_id,
                    request.cancelled_by,
                    identifier_type=request.identifier_type,
                    idempotency_key=key,
                    consent_id=request.consent_id,
                )
            line_of[row.item] = row.line
            pending.add(row.item)
            yield request

    async def consume() -> None:
        async with contextlib.aclosing(
            client.cancel_many(_paced(requests(), rate_limit, stop), concurrency=concurrency)
        ) as results:
            async for result in results:
                item = item_id(result.payment_id, result.consent_id, 0)
                pending.discard(item)
                record = result.to_record()
                record["input_line"] = line_of.pop(item, None)
                out.write(record)
                summary.add(result)
                bar.update(1)

    loop = asyncio.get_running_loop()
    consumer = asyncio.ensure_future(consume())
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            consumer.cancel()
            return
        interrupted = True
        stop.set()
        echo(
            f"interrupted: finishing the cancels in flight (up to {grace:g} s); "
            "signal again to stop now"
        )
        loop.call_later(grace, consumer.cancel)

    installed = on_stop_signals(on_signal)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        bar.close()
        out.close()
    summary.unfinished = len(pending)
    for text in summary.lines(time.monotonic() - started):
        echo(text)
    if interrupted or summary.unfinished:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.any_failed else EXIT_OK


def _batch_command(
    input_path: str, out_path: str, concurrency: int, rate_limit: float | None, grace: float
) -> int:
    client = _client()

    async def run() -> int:
        async with client:
            return await run_batch(
                client,
                input_path,
                out_path,
                concurrency=concurrency,
                rate_limit=rate_limit,
                grace=grace,
                progress=None,
                echo=lambda text: click.echo(text, err=True),
            )

    try:
        return asyncio.run(run())
    except InputError as exc:
        _fail_usage(str(exc))


def _build() -> click.Group:
    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="klavi-async", prog_name="klavi-async")
    def cli() -> None:
        """Cancel Klavi payment initiations from the command line."""

    @cli.command()
    @click.argument("payment_id")
    @click.option("--cancelled-by", required=True, help="CPF or CNPJ of who asks to cancel.")
    @click.option(
        "--identifier-type",
        type=click.Choice(["CPF", "CNPJ"], case_sensitive=False),
        help="Default: from the document's length.",
    )
    @click.option("--idempotency-key", help="Default: a new UUID4.")
    @click.option("--consent-id", help="Cancel an Automatic Pix payment of this consent.")
    def cancel(
        payment_id: str,
        cancelled_by: str,
        identifier_type: str | None,
        idempotency_key: str | None,
        consent_id: str | None,
    ) -> None:
        """Cancel one payment and print the result as JSON."""
        sys.exit(
            _cancel_command(payment_id, cancelled_by, identifier_type, idempotency_key, consent_id)
        )

    @cli.command()
    @click.argument("payment_id")
    @click.option("--consent-id", help="Read an Automatic Pix payment of this consent.")
    def status(payment_id: str, consent_id: str | None) -> None:
        """Print a payment's status as JSON."""
        sys.exit(_status_command(payment_id, consent_id))

    @cli.command("cancel-batch")
    @click.argument("input_path", metavar="INPUT")
    @click.option("--out", "out_path", required=True, help="Results file (JSON Lines).")
    @click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True)
    @click.option("--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Cancels/s.")
    @click.option("--grace", type=click.FloatRange(min=0), default=10.0, hidden=True)
    def cancel_batch(
        input_path: str, out_path: str, concurrency: int, rate_limit: float | None, grace: float
    ) -> None:
        """Cancel every payment in INPUT (CSV or JSONL; '-' reads JSONL from stdin).

        Rerunning with the same --out sends only items without a final line, with the
        same idempotency keys as before.
        """
        sys.exit(_batch_command(input_path, out_path, concurrency, rate_limit, grace))

    @cli.command()
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
    @click.option(
        "--fault",
        "faults",
        multiple=True,
        metavar="NAME=RATE",
        help="Random fault and its probability, e.g. 503=0.1 (repeatable; see the docs).",
    )
    @click.option("--seed", type=int, help="Seed for reproducible random faults.")
    @click.option("--tps-limit", type=click.FloatRange(min=0, min_open=True))
    @click.option("--latency", type=click.FloatRange(min=0), default=0.5, show_default=True)
    @click.option("--retry-after", type=click.FloatRange(min=0), default=1.0, show_default=True)
    @click.option("--payments", type=click.IntRange(min=0), default=0, help="Seed N payments.")
    @click.option(
        "--payments-csv",
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        help="Write the seeded payments as a cancel-batch input file.",
    )
    def emulator(
        host: str,
        port: int,
        faults: tuple[str, ...],
        seed: int | None,
        tps_limit: float | None,
        latency: float,
        retry_after: float,
        payments: int,
        payments_csv: Path | None,
    ) -> None:
        """Serve the Klavi emulator (no credentials, no network) until Ctrl-C."""
        from ._demo import serve_emulator

        rates = _fault_rates(faults)
        try:
            code = asyncio.run(
                serve_emulator(
                    click.echo,
                    host=host,
                    port=port,
                    fault_rates=rates,
                    seed=seed,
                    tps_limit=tps_limit,
                    latency=latency,
                    retry_after=retry_after,
                    payments=payments,
                    payments_csv=payments_csv,
                )
            )
        except ValueError as exc:
            _fail_usage(str(exc))
        except OSError as exc:
            _fail_usage(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        sys.exit(code)

    @cli.command()
    @click.option("--payments", type=click.IntRange(min=10), default=300, show_default=True)
    @click.option("--seed", type=int, default=2026, show_default=True)
    def demo(payments: int, seed: int) -> None:
        """Cancel a few hundred payments against the embedded emulator, faults on."""
        from ._demo import run_demo

        sys.exit(
            asyncio.run(
                run_demo(lambda text: click.echo(text, err=True), payments=payments, seed=seed)
            )
        )

    return cli


def _fault_rates(specs: tuple[str, ...]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            _fail_usage(f"--fault expects NAME=RATE, got {spec!r}")
    return rates


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of `klavi-async`."""
    if not _HAVE_EXTRA:  # pragma: no cover
        sys.stderr.write("klavi-async: the CLI needs its extra: pip install 'klavi-async[cli]'\n")
        sys.exit(EXIT_USAGE)
    cli = _build()
    try:
        cli.main(args=argv, prog_name="klavi-async", standalone_mode=False)
    except click.UsageError as exc:
        sys.stderr.write(f"klavi-async: error: {exc.format_message()}\n")
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        sys.stderr.write(f"klavi-async: error: {exc.format_message()}\n")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK)
