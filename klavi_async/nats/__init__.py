"""
Cancel requests through NATS JetStream: many workers, at-least-once, one record each.

Publishers put `CancelRequest`s on `klavi.cancel.requests` (stream `KLAVI_CANCEL`) with
`enqueue()`; any number of `CancelWorker`s, on any number of machines, consume them and
publish one record per request on `klavi.cancel.results` (or `klavi.cancel.dead` for a
message that cannot be a request) in `KLAVI_CANCEL_RESULTS`.  Needs the `nats` extra.
"""

from __future__ import annotations

try:
    import nats as _nats  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without nats-py
    raise ImportError("klavi_async.nats needs nats-py: pip install 'klavi-async[nats]'") from exc

from ._decide import LONGEST, Action, Decision, Poison, decide, is_final, parse_request
from ._enqueue import enqueue, publish_requests, request_message
from ._reader import ResultsSummary, StoredMessage, read_results, result_line
from ._settings import stream_changes
from ._settle import WorkerStats
from ._sharedlimit import shared_rate_limit
from ._streams import (
    DEAD_SUBJECT,
    REQUESTS_STREAM,
    REQUESTS_SUBJECT,
    RESULTS_STREAM,
    RESULTS_SUBJECT,
    LegacyStreamError,
    connect,
    ensure_streams,
)
from ._worker import CancelWorker

__all__ = [
    "CancelWorker",
    "WorkerStats",
    "shared_rate_limit",
    "enqueue",
    "publish_requests",
    "ensure_streams",
    "stream_changes",
    "connect",
    "request_message",
    "REQUESTS_STREAM",
    "REQUESTS_SUBJECT",
    "RESULTS_STREAM",
    "RESULTS_SUBJECT",
    "DEAD_SUBJECT",
    "LegacyStreamError",
    "Action",
    "Decision",
    "Poison",
    "decide",
    "is_final",
    "parse_request",
    "read_results",
    "StoredMessage",
    "result_line",
    "ResultsSummary",
    "LONGEST",
]
