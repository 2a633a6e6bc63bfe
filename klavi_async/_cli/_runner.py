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
from collections.abc import AsyncIterator, Callable
from typing import Any

from tqdm import tqdm

from .._client import KlaviClient
from .._errors import CancelFailed, CancelResult, ErrorKind
from .._results import CancelRequest
from .._rows import InputError, Row
from .._signals import on_stop_signals
from ._common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_FINAL, EXIT_OK, EXIT_USAGE
from ._feed import RowFeed
from ._input import count_rows
from ._lines import (
    DEAD_ENDPOINT_AFTER,
    REJECTED_AFTER,
    Sent,
    credentials_rejected,
    invalid_result,
    line_of,
    never_reached_klavi,
)
from ._resume import ResultsFile, ResumeState, check_paths
from ._summary import BatchSummary

__all__ = ["DEAD_ENDPOINT_AFTER", "run_batch"]


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
        self._sent = Sent()
        self._dead = 0
        self._rejected: str | None = None
        """Why Klavi refused the credentials, when it did (the batch stopped)."""
        self._fresh_refused = False
        """Klavi refused a token fetched after a 401 too (single-use tokens, perhaps)."""
        self._held: list[CancelFailed] = []
        """Refusals of credentials not yet written: a few in a row stop the batch."""
        self._accepted = False
        """Klavi answered a request of this run with something other than a refusal."""
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
                if self._held and self._accepted:
                    self.flush_held()  # the batch ended before a third refusal
                elif self._held:
                    self._reject(self._held[-1])  # nothing else came: the keys are refused
                if self._stop.is_set() and self._feed.regular and not self._hard_stop:
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
            self._out.write(line_of(invalid_result(row), row.line, row.digest))
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
                    # Refused keys or a dead endpoint: no new item; those in flight fail
                    # fast or finish, and either way their lines tell what happened.
                    self._halt()
                    self._finish_in_flight()

    def _record(self, result: CancelResult) -> bool:
        """Write *result*'s line; True when it says the batch must stop."""
        if credentials_rejected(result):
            if self._rejected is not None:  # stopped already: one more refused, unsent
                self._unsent(result)
                return False
            self._held.append(result)
            if len(self._held) < REJECTED_AFTER:
                return False
            self._reject(result)
            return True
        if result.attempts:
            self._accepted = True  # Klavi took the credentials for a request
        if self._rejected is None:
            self.flush_held()
        self._write(result)
        if not never_reached_klavi(result):
            self._dead = 0
            return False
        self._dead += 1
        if self._dead < DEAD_ENDPOINT_AFTER:
            return False
        # A dead endpoint: every further cancel would fail the same way.
        self._unreachable = result.message
        return True

    def _reject(self, result: CancelFailed) -> None:
        """Refused keys: one message, not a line per item; the refused ones count as unsent."""
        self._rejected = result.message
        self._fresh_refused = any(attempt.token_refreshed for attempt in result.history)
        held, self._held = self._held, []
        for refused in held:
            self._unsent(refused)

    def _unsent(self, result: CancelResult) -> None:
        """A cancel refused for its credentials after all: no line, sent again by a rerun."""
        self._sent.take(result)
        self.summary.unfinished += 1

    def flush_held(self) -> None:
        """Write the refusals held back: another answer came, so the keys are good."""
        held, self._held = self._held, []
        for result in held:
            self._write(result)

    def _write(self, result: CancelResult) -> None:
        line, digest = self._sent.take(result)
        self._out.write(line_of(result, line, digest))
        self.summary.add(result)
        self._bar.update(1)

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
