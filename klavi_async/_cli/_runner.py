"""
The batch runner behind `klavi-async cancel-batch` and the demo.

Rows are taken from the input as `cancel_many` asks for them, each result is written as
one line of the results file as it arrives, and the batch stops early on a signal (the
cancels in flight finish within the grace period), on credentials Klavi rejects, or on an
endpoint that no cancel reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeGuard

from tqdm import tqdm

from .._client import KlaviClient
from .._errors import ErrorKind
from .._results import CancelFailed, CancelRequest, CancelResult
from ._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_FINAL, EXIT_OK, EXIT_USAGE
from ._feed import RowFeed
from ._resume import ResultsFile, ResumeState, check_paths
from ._rows import InputError, Row, count_rows, item_id
from ._signals import on_stop_signals
from ._summary import BatchSummary

__all__ = ["DEAD_ENDPOINT_AFTER", "run_batch"]

DEAD_ENDPOINT_AFTER: Final = 10
"""Consecutive cancels that never reached Klavi (connect failures, or no token to be had)
that stop a batch."""


def _credentials_rejected(result: CancelResult) -> TypeGuard[CancelFailed]:
    """The token was refused for good: every other cancel of the batch would fail the same."""
    if not isinstance(result, CancelFailed):
        return False
    if result.kind is ErrorKind.AUTHENTICATION_FAILED:
        return not result.retryable
    return result.kind is ErrorKind.UNAUTHORIZED


def _never_reached_klavi(result: CancelResult) -> TypeGuard[CancelFailed]:
    """
    A connect failure or timeout on every attempt, none of which may have been sent; or
    no token to be had for it (the auth endpoint unreachable or failing, with access
    keys): nothing was sent.
    """
    if not isinstance(result, CancelFailed) or result.outcome_unknown:
        return False
    if result.kind is ErrorKind.AUTHENTICATION_FAILED:
        return result.retryable and not result.history
    return result.kind in (ErrorKind.NETWORK, ErrorKind.TIMEOUT) and not any(
        attempt.ambiguous for attempt in result.history
    )


def _invalid_result(row: Row) -> CancelFailed:
    """The result for a row that holds no request: rejected locally, nothing sent."""
    from .._documents import clip_kept  # here, not at the top: one edit while _runner moves

    # The row's values may be anything (a CPF in payment_id, 1 MB of text): masked and
    # clipped.  Resume matches this final line by request_digest, not by payment_id.
    return CancelFailed(
        payment_id=clip_kept(row.payment_id) if row.payment_id else row.payment_id,
        consent_id=clip_kept(row.consent_id) if row.consent_id else row.consent_id,
        idempotency_key=None,
        interaction_id=str(uuid.uuid4()),  # as for any cancel rejected before sending
        attempts=0,
        history=(),
        elapsed=0.0,
        kind=ErrorKind.INVALID_REQUEST,
        http_status=None,
        code=None,
        message=f"malformed input row {row.line}: {row.error}",
        retryable=False,
    )


def _line(result: CancelResult, line: int | None, digest: str | None) -> dict[str, Any]:
    """The results file's line for *result*: its record, and which input row it answers."""
    record = result.to_record()
    record["input_line"] = line
    record["request_digest"] = digest
    return record


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


class _BatchRun:
    """One batch over open files: feeds `cancel_many`, writes the lines, obeys the stops."""

    def __init__(
        self,
        client: KlaviClient,
        feed: RowFeed,
        state: ResumeState,
        out: ResultsFile,
        bar: tqdm[Any],
        *,
        grace: float,
        echo: Callable[[str], None],
    ) -> None:
        self._client = client
        self._feed = feed
        self._state = state
        self._out = out
        self._bar = bar
        self._grace = grace
        self._echo = echo
        self.summary = BatchSummary()
        self._stop = asyncio.Event()
        self._sent = _Sent()
        self._dead = 0
        self._rejected: str | None = None
        """Why Klavi refused the credentials, when it did (the batch stopped)."""
        self._fresh_refused = False
        """Klavi refused a token fetched after a 401 too (single-use tokens, perhaps)."""
        self._unreachable: str | None = None
        """Why the endpoint looked dead, when it did (the batch stopped)."""
        self._interrupted = False
        self._hard_stop = False
        self._consumer: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, concurrency: int) -> None:
        """Send every row not final yet; on a stop, count the rows left unsent."""
        self._feed.start()
        self._consumer = consumer = asyncio.ensure_future(self._consume(concurrency))
        try:
            with on_stop_signals(self._on_signal):
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
                stopped_early = self._stop.is_set() and self._rejected is None
                if stopped_early and self._feed.regular and not self._hard_stop:
                    await self._drain()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            feed = self._feed
            self.summary.unread = self._stop.is_set() and not feed.finished and feed.error is None
        # Handed to the client, with no result: sent or not, a second signal cut them off.
        self.summary.cut_off += self._sent.count

    def _halt(self) -> None:
        self._stop.set()
        self._feed.interrupt()

    def _on_signal(self) -> None:
        """The first signal lets the cancels in flight finish; a second stops them now."""
        if self._interrupted:
            self._hard_stop = True
            self._feed.close()
            if self._consumer is not None:
                self._consumer.cancel()
            return
        self._interrupted = True
        self._halt()
        self._echo(
            f"interrupted: finishing the cancels in flight (up to {self._grace:g} s); "
            "signal again to stop now"
        )
        self._finish_in_flight()

    def _finish_in_flight(self) -> None:
        """Let the cancels in flight end and be recorded, for the grace period at most."""
        if self._consumer is not None and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._grace, self._consumer.cancel)

    def _request_for(self, row: Row) -> CancelRequest | None:
        """The request to send for *row*, or None when it is recorded already or now."""
        previous = self._state.outcome(row)
        if previous is not None:
            if previous:
                self.summary.skipped_ok += 1
            else:
                self.summary.skipped_failed += 1
            self._bar.update(1)
            return None
        if row.request is None:
            self._out.write(_line(_invalid_result(row), row.line, row.digest))
            self.summary.failed[ErrorKind.INVALID_REQUEST.value] += 1
            self._bar.update(1)
            return None
        request = row.request
        key = self._state.key_for(row)
        if key != request.idempotency_key:
            request = CancelRequest(
                request.payment_id,
                request.cancelled_by,
                identifier_type=request.identifier_type,
                idempotency_key=key,
                consent_id=request.consent_id,
            )
        return request

    async def _requests(self) -> AsyncIterator[CancelRequest]:
        quiet = 0
        while not self._stop.is_set():
            row = await self._feed.next()
            if row is None:
                return
            request = self._request_for(row)
            if request is None:
                quiet += 1
                if quiet % 256 == 0:
                    await asyncio.sleep(0)  # a long run of rows sending nothing: let signals in
                continue
            if self._stop.is_set():  # set while the feed was read
                self.summary.unfinished += 1  # taken, never sent
                return
            self._sent.add(row, request.idempotency_key)
            yield request

    async def _consume(self, concurrency: int) -> None:
        # The pace is the client's: its rate limiter (cancel-batch --rate-limit) spaces the
        # sends of every cancel, retries included, and backs off on Klavi's 429s.
        requests = self._requests()
        results = self._client.cancel_many(requests, concurrency=concurrency)
        async with contextlib.aclosing(results):
            async for result in results:
                if self._record(result):
                    self._halt()
                    if self._rejected is not None:
                        return  # the cancels in flight are cut off: they would fail too
                    # A dead endpoint: no new item; those in flight fail fast or, if it
                    # came back, finish, and either way their lines tell what happened.
                    self._finish_in_flight()

    def _record(self, result: CancelResult) -> bool:
        """Write *result*'s line; True when it says the batch must stop."""
        if _credentials_rejected(result):
            # One message, not a line per item: the rest is cut off unsent.
            self._rejected = result.message
            self._fresh_refused = any(attempt.token_refreshed for attempt in result.history)
            return True
        line, digest = self._sent.take(result)
        self._out.write(_line(result, line, digest))
        self.summary.add(result)
        self._bar.update(1)
        if not _never_reached_klavi(result):
            self._dead = 0
            return False
        self._dead += 1
        if self._dead < DEAD_ENDPOINT_AFTER:
            return False
        # A dead endpoint: every further cancel would fail the same way.
        self._unreachable = result.message
        return True

    async def _drain(self) -> None:
        """Count the rows a stopped batch did not take (a regular file ends soon)."""
        self._feed.resume()
        seen = 0
        while (row := await self._feed.next()) is not None:
            previous = self._state.outcome(row)
            if previous is None:
                self.summary.unfinished += 1
            elif previous:
                self.summary.skipped_ok += 1
            else:
                self.summary.skipped_failed += 1
            seen += 1
            if seen % 1024 == 0:
                await asyncio.sleep(0)

    def report(self, elapsed: float) -> int:
        """Print the summary and what stopped the batch; return the exit status."""
        summary = self.summary
        if self._rejected is not None:
            if self._out.written or summary.skipped_ok or summary.skipped_failed:
                self._print_summary(elapsed, "stopped")
            if self._fresh_refused:
                self._echo(
                    f"klavi-async: error: Klavi refused a token fetched with these access keys "
                    f"and then a fresh one ({self._rejected}); the batch stopped before sending "
                    "more. If this account's tokens serve one payment initiation each, rerun "
                    "with --single-use-tokens (KLAVI_SINGLE_USE_TOKENS=1); otherwise check the "
                    "keys and the target."
                )
                return EXIT_USAGE
            self._echo(
                f"klavi-async: error: Klavi rejected the credentials ({self._rejected}); the "
                "batch stopped before sending more. Check KLAVI_ACCESS_KEY and KLAVI_SECRET_KEY "
                "(or KLAVI_TOKEN) and the target, then rerun."
            )
            return EXIT_USAGE
        nothing = not (summary.total or summary.skipped_ok or summary.skipped_failed)
        if not (nothing and self._feed.error is not None):  # else the error alone says it
            self._print_summary(elapsed, "interrupted" if self._interrupted else "stopped")
        if self._unreachable is not None:
            self._echo(
                f"stopped: {DEAD_ENDPOINT_AFTER} cancels in a row could not reach "
                f"{self._client.base_url} ({self._unreachable}); none of them was sent. Check "
                "the target (and, with access keys, its auth endpoint) and rerun: they are "
                "sent again with the same keys."
            )
        if self._feed.error is not None:
            self._echo(f"klavi-async: error: {self._feed.error}")
            return EXIT_USAGE
        if self._interrupted:
            return EXIT_INTERRUPTED
        if nothing:
            source = "stdin" if self._feed.path == "-" else self._feed.path
            self._echo(f"{source} has no rows: nothing to cancel")
        if summary.not_final or summary.unread:
            return EXIT_NOT_FINAL
        return EXIT_FAILED if summary.any_failed else EXIT_OK

    def _print_summary(self, elapsed: float, stopped: str) -> None:
        for text in self.summary.lines(elapsed, stopped):
            self._echo(text)


async def run_batch(
    client: KlaviClient,
    input_path: str,
    out_path: str,
    *,
    concurrency: int,
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
    feed = RowFeed(input_path)  # raises InputError for unknown formats before writing
    try:
        out = ResultsFile(out_path)  # locked: no other run writes it while it is read
    except InputError:
        feed.close()
        raise
    try:
        state = ResumeState.load(out_path)
    except InputError:
        feed.close()
        out.close()
        raise
    if out.repaired:
        echo(
            f"--out {out_path}: removed its last line, cut short ({out.repaired} bytes) by a "
            "run that stopped mid-write; its item is sent again, with the same key"
        )
    if state.unreadable:
        echo(f"--out {out_path}: {state.unreadable} line(s) are not JSON records and were ignored")
    started = time.monotonic()
    bar = tqdm(
        total=count_rows(input_path),
        unit="item",
        file=sys.stderr,
        disable=None if progress is None else not progress,
    )
    batch = _BatchRun(client, feed, state, out, bar, grace=grace, echo=echo)
    try:
        await batch.run(concurrency)
    finally:
        feed.close()
        bar.close()
        out.close()
    return batch.report(time.monotonic() - started)
