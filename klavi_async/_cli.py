"""
The `klavi-async` command line.

Credentials come from `KLAVI_TOKEN`, or `KLAVI_ACCESS_KEY` + `KLAVI_SECRET_KEY`; the target
from `KLAVI_BASE_URL` or `KLAVI_ENVIRONMENT`.  Exit status: 0 all cancelled, 1 some
failed for good, 2 usage (bad flag, missing or rejected credentials, unreadable input),
3 some items not final yet (a rerun sends them), 130 interrupted.

click parses arguments (usage errors, help, choices) and tqdm draws the progress bar;
both are in the `cli` extra so the library itself stays on aiohttp, attrs and tenacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final, NoReturn, TypeGuard

from attrs import define, field

from ._batchfile import (
    InputError,
    ResultsFile,
    ResumeState,
    Row,
    RowFeed,
    check_paths,
    count_rows,
    item_id,
)
from ._client import KlaviClient
from ._errors import ErrorKind, KlaviError
from ._results import CancelFailed, Cancelled, CancelRequest, CancelResult

try:
    import click
    from tqdm import tqdm
except ImportError:  # pragma: no cover - exercised only without the extra installed
    _HAVE_EXTRA = False
else:
    _HAVE_EXTRA = True

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FINAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

MAX_CONCURRENCY: Final = 10_000
DEAD_ENDPOINT_AFTER: Final = 10
"""Consecutive cancels that never reached Klavi (connect failures) that stop a batch."""


def _fail_usage(message: str) -> NoReturn:
    raise click.UsageError(message)


def _client(**kwargs: Any) -> KlaviClient:
    if "KLAVI_BASE_URL" in os.environ and not os.environ["KLAVI_BASE_URL"].strip():
        # Unset it, or give a URL: an empty one must not fall back to another target.
        _fail_usage("KLAVI_BASE_URL is set but empty: unset it or give the API's base URL")
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
    """
    Counts for the end-of-batch summary; every input item lands in exactly one bucket.

    The buckets are cancelled, already cancelled, failed (by kind), outcome unknown,
    already final in the results file, and not finished; `retried` and `reconciled`
    count across them.
    """

    cancelled: int = 0
    already_cancelled: int = 0
    reconciled: int = 0
    retried: int = 0
    failed: Counter[str] = field(factory=Counter)
    """Failures whose outcome is known, by kind, final or not."""
    retryable: int = 0
    """Of `failed`, the ones a rerun sends again."""
    outcome_unknown: int = 0
    refused_by_status: Counter[str] = field(factory=Counter)
    skipped_ok: int = 0
    skipped_failed: int = 0
    unfinished: int = 0
    """Items never sent, or cut off before their result was recorded."""
    unread: bool = False
    """The batch stopped before the end of an input it could not read on (stdin)."""

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
        if result.outcome_unknown:
            self.outcome_unknown += 1
            return
        self.failed[result.kind.value] += 1
        if result.retryable:
            self.retryable += 1
        if result.kind is ErrorKind.NOT_CANCELLABLE:
            self.refused_by_status[result.payment_status or "unknown"] += 1

    @property
    def total(self) -> int:
        return (
            self.cancelled
            + self.already_cancelled
            + sum(self.failed.values())
            + self.outcome_unknown
            + self.skipped_ok
            + self.skipped_failed
            + self.unfinished
        )

    @property
    def not_final(self) -> int:
        """Items a rerun sends: retryable failures, unknown outcomes, items not sent."""
        return self.retryable + self.outcome_unknown + self.unfinished

    @property
    def any_failed(self) -> bool:
        return sum(self.failed.values()) > self.retryable or self.skipped_failed > 0

    def lines(self, elapsed: float, stopped: str = "interrupted") -> Iterator[str]:
        yield (
            f"items {self.total}: cancelled {self.cancelled}, "
            f"already cancelled {self.already_cancelled}, failed {sum(self.failed.values())}, "
            f"outcome unknown {self.outcome_unknown}, retried {self.retried}, "
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
        if self.unfinished or self.unread:
            rest = "; the rest of the input was not read" if self.unread else ""
            yield f"not finished ({stopped}): {self.unfinished} never sent{rest}"
        if self.not_final or self.unread:
            yield (
                f"not final yet: {self.not_final} ({self.retryable} retryable, "
                f"{self.outcome_unknown} outcome unknown, {self.unfinished} not sent); "
                "rerun with the same --out to send them, with the same keys"
            )


def _credentials_rejected(result: CancelResult) -> TypeGuard[CancelFailed]:
    """The token was refused for good: every other cancel of the batch would fail the same."""
    if not isinstance(result, CancelFailed):
        return False
    if result.kind is ErrorKind.AUTHENTICATION_FAILED:
        return not result.retryable
    return result.kind is ErrorKind.UNAUTHORIZED


def _never_reached_klavi(result: CancelResult) -> TypeGuard[CancelFailed]:
    """A connect failure or timeout on every attempt, none of which may have been sent."""
    return (
        isinstance(result, CancelFailed)
        and result.kind in (ErrorKind.NETWORK, ErrorKind.TIMEOUT)
        and not result.outcome_unknown
        and not any(attempt.ambiguous for attempt in result.history)
    )


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
        "consent_id": row.consent_id,
        "input_line": row.line,
        "request_digest": row.digest,
    }


class _Sent:
    """The rows sent and not answered yet: which line and request each result answers."""

    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[str | None, int, str]]] = {}
        self.count = 0

    def add(self, row: Row, key: str | None) -> None:
        self._rows.setdefault(row.item, []).append((key, row.line, row.digest))
        self.count += 1

    def take(self, result: CancelResult) -> tuple[int | None, str | None]:
        """The input line and request digest of the row *result* answers."""
        item = item_id(result.payment_id, result.consent_id, 0)
        rows = self._rows.get(item)
        if not rows:
            return None, None
        index = next((i for i, r in enumerate(rows) if r[0] == result.idempotency_key), 0)
        _, line, digest = rows.pop(index)
        if not rows:
            del self._rows[item]
        self.count -= 1
        return line, digest


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
    """
    Run a batch; return the exit status.  Used by the CLI and the demo.

    Raises `InputError` before anything is written when the input cannot be read, or the
    results file cannot be used (a directory, or the input itself).
    """
    check_paths(input_path, out_path)
    state = ResumeState.load(out_path)
    feed = RowFeed(input_path)  # raises InputError for unknown formats before writing
    try:
        out = ResultsFile(out_path)
    except InputError:
        feed.close()
        raise
    summary = BatchSummary()
    stop = asyncio.Event()
    started = time.monotonic()
    bar = tqdm(
        total=count_rows(input_path),
        unit="item",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )
    sent = _Sent()
    rejected: str | None = None
    unreachable: str | None = None
    dead = 0

    def request_for(row: Row) -> CancelRequest | None:
        """The request to send for *row*, or None when it is recorded already or now."""
        previous = state.outcome(row)
        if previous is not None:
            if previous:
                summary.skipped_ok += 1
            else:
                summary.skipped_failed += 1
            bar.update(1)
            return None
        if row.request is None:
            out.write(_invalid_record(row))
            summary.failed[ErrorKind.INVALID_REQUEST.value] += 1
            bar.update(1)
            return None
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
        return request

    async def requests() -> AsyncIterator[CancelRequest]:
        interval = 1.0 / rate_limit if rate_limit else 0.0
        next_at = time.monotonic()
        quiet = 0
        while not stop.is_set():
            row = await feed.next()
            if row is None:
                return
            request = request_for(row)
            if request is None:
                quiet += 1
                if quiet % 256 == 0:
                    await asyncio.sleep(0)  # a long run of rows sending nothing: let signals in
                continue
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                next_at = max(next_at, time.monotonic()) + interval
            if stop.is_set():
                summary.unfinished += 1  # taken, never sent
                return
            sent.add(row, request.idempotency_key)
            yield request

    def halt() -> None:
        stop.set()
        feed.interrupt()

    async def consume() -> None:
        nonlocal rejected, unreachable, dead
        async with contextlib.aclosing(
            client.cancel_many(requests(), concurrency=concurrency)
        ) as results:
            async for result in results:
                if _credentials_rejected(result):
                    # One message, not a line per item: the rest is cut off unsent.
                    rejected = result.message
                    halt()
                    return
                line, digest = sent.take(result)
                record = result.to_record()
                record["input_line"] = line
                record["request_digest"] = digest
                out.write(record)
                summary.add(result)
                bar.update(1)
                if not _never_reached_klavi(result):
                    dead = 0
                    continue
                dead += 1
                if dead >= DEAD_ENDPOINT_AFTER:
                    # A dead endpoint: every further cancel would fail the same way.
                    unreachable = result.message
                    halt()
                    return

    async def drain() -> None:
        """Count the rows a stopped batch did not take (a regular file ends soon)."""
        feed.resume()
        seen = 0
        while (row := await feed.next()) is not None:
            previous = state.outcome(row)
            if previous is None:
                summary.unfinished += 1
            elif previous:
                summary.skipped_ok += 1
            else:
                summary.skipped_failed += 1
            seen += 1
            if seen % 1024 == 0:
                await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    feed.start()
    consumer = asyncio.ensure_future(consume())
    interrupted = hard_stop = False
    timer: asyncio.TimerHandle | None = None

    def on_signal() -> None:
        nonlocal interrupted, hard_stop, timer
        if interrupted:
            hard_stop = True
            feed.close()
            consumer.cancel()
            return
        interrupted = True
        halt()
        echo(
            f"interrupted: finishing the cancels in flight (up to {grace:g} s); "
            "signal again to stop now"
        )
        timer = loop.call_later(grace, consumer.cancel)

    installed = on_stop_signals(on_signal)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        if stop.is_set() and rejected is None and feed.regular and not hard_stop:
            await drain()
    finally:
        if timer is not None:
            timer.cancel()
        for signum in installed:
            loop.remove_signal_handler(signum)
        summary.unread = stop.is_set() and not feed.finished and feed.error is None
        feed.close()
        bar.close()
        out.close()
    summary.unfinished += sent.count
    if rejected is not None:
        if out.written or summary.skipped_ok or summary.skipped_failed:
            for text in summary.lines(time.monotonic() - started, "stopped"):
                echo(text)
        echo(
            f"klavi-async: error: Klavi rejected the credentials ({rejected}); the batch "
            "stopped before sending more. Check KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY "
            "(or KLAVI_TOKEN) and the target, then rerun."
        )
        return EXIT_USAGE
    reason = "interrupted" if interrupted else "stopped"
    for text in summary.lines(time.monotonic() - started, reason):
        echo(text)
    if unreachable is not None:
        echo(
            f"stopped: {DEAD_ENDPOINT_AFTER} cancels in a row could not reach "
            f"{client.base_url} ({unreachable}); none of them was sent. Check the target "
            "and rerun: they are sent again with the same keys."
        )
    if feed.error is not None:
        echo(f"klavi-async: error: {feed.error}")
        return EXIT_USAGE
    if interrupted:
        return EXIT_INTERRUPTED
    if summary.not_final or summary.unread:
        return EXIT_NOT_FINAL
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
    @click.option(
        "--concurrency",
        type=click.IntRange(1, MAX_CONCURRENCY),
        default=32,
        show_default=True,
        help="Cancels in flight at once (1-10000).",
    )
    @click.option("--rate-limit", type=click.FloatRange(min=0, min_open=True), help="Cancels/s.")
    @click.option("--grace", type=click.FloatRange(min=0), default=10.0, hidden=True)
    def cancel_batch(
        input_path: str, out_path: str, concurrency: int, rate_limit: float | None, grace: float
    ) -> None:
        """Cancel every payment in INPUT (CSV or JSONL; '-' reads JSONL from stdin).

        Rerunning with the same --out sends only items without a final line, with the
        same idempotency keys as before.  Exit status: 0 all cancelled, 1 some failed for
        good, 2 usage or rejected credentials, 3 some items not final yet (rerun), 130
        interrupted.
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

    try:  # `worker` and `enqueue` come with the `nats` extra (klavi_async/nats/_cli.py)
        from .nats._cli import add_commands
    except ImportError as exc:  # without nats-py they only print the install hint, exit 2
        hint = str(exc)
        for name in ("worker", "enqueue"):
            extra = {"ignore_unknown_options": True, "allow_extra_args": True}
            cli.command(name, help=hint, context_settings=extra)(lambda: _fail_usage(hint))
    else:
        add_commands(cli)

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
