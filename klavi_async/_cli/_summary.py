"""
The end-of-batch summary of `klavi-async cancel-batch`: counts, and the lines printed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from attrs import define, field

from .._errors import CancelResult, ErrorKind
from .._results import Cancelled
from ._resume import CREDENTIAL_KINDS

__all__ = ["BatchSummary"]


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
    """Items never sent (not taken, or taken after the stop)."""
    cut_off: int = 0
    """Items in flight when a second signal stopped the batch: some may have reached Klavi."""
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
        if result.retryable or result.kind.value in CREDENTIAL_KINDS:
            self.retryable += 1  # a rerun sends it
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
            + self.cut_off
        )

    @property
    def not_final(self) -> int:
        """Items a rerun sends: retryable failures, unknown outcomes, items not sent or cut off."""
        return self.retryable + self.outcome_unknown + self.unfinished + self.cut_off

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
        if self.unfinished or self.cut_off or self.unread:
            rest = "; the rest of the input was not read" if self.unread else ""
            cut = (
                f", {self.cut_off} cut off in flight (they may have reached Klavi)"
                if self.cut_off
                else ""
            )
            yield f"not finished ({stopped}): {self.unfinished} never sent{cut}{rest}"
        if self.unread and not self.not_final:
            yield "rerun with the same --out to go on with the rest of the input"
        elif self.not_final or self.unread:
            cut = f"{self.cut_off} cut off, " if self.cut_off else ""
            yield (
                f"not final yet: {self.not_final} ({self.retryable} retryable, "
                f"{self.outcome_unknown} outcome unknown, {cut}{self.unfinished} not sent); "
                "rerun with the same --out to send them, with the same keys"
            )
