"""
What each result means for a `cancel-batch` run: its line in the results file, the row it
answers, and whether it says the batch must stop (refused keys, a dead endpoint).
"""

from __future__ import annotations

import uuid
from typing import Any, Final, TypeGuard

from .._documents import clip_kept
from .._errors import CancelFailed, CancelResult, ErrorKind
from .._rows import Row, item_id

__all__ = [
    "DEAD_ENDPOINT_AFTER",
    "REJECTED_AFTER",
    "Sent",
    "credentials_rejected",
    "invalid_result",
    "line_of",
    "never_reached_klavi",
]

DEAD_ENDPOINT_AFTER: Final = 10
"""Consecutive cancels that never reached Klavi (connect failures, or no token to be had)
that stop a batch."""
REJECTED_AFTER: Final = 3
"""Consecutive cancels refused for their credentials that stop a batch: one alone may be a
bad answer to one call's token fetch (single-use tokens), not refused keys."""


def credentials_rejected(result: CancelResult) -> TypeGuard[CancelFailed]:
    """The token was refused for good: every other cancel of the batch would fail the same."""
    if not isinstance(result, CancelFailed):
        return False
    if result.kind is ErrorKind.AUTHENTICATION_FAILED:
        return not result.retryable
    return result.kind is ErrorKind.UNAUTHORIZED


def never_reached_klavi(result: CancelResult) -> TypeGuard[CancelFailed]:
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


def invalid_result(row: Row) -> CancelFailed:
    """The result for a row that holds no request: rejected locally, nothing sent."""
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


def line_of(result: CancelResult, line: int | None, digest: str | None) -> dict[str, Any]:
    """The results file's line for *result*: its record, and which input row it answers."""
    record = result.to_record()
    record["input_line"] = line
    record["request_digest"] = digest
    return record


class Sent:
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
