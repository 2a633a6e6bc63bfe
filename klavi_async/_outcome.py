"""
The one place that maps what came back (status, headers, body) to an outcome.

Strictly private.  `classify_response()` never raises on a body, whatever its bytes or
content type: Klavi's error bodies come as `{statusCode, error, message}`,
`{errors: [{code, title, detail}], meta}`, `{error: {code, title, detail}}`, an HTML
page from a gateway, or nothing at all.
"""

from __future__ import annotations

import email.utils
import html
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from ._documents import scrub_documents
from ._kinds import ErrorKind
from ._speedups import parse_json, slot_builder
from ._values import text_or_none

if TYPE_CHECKING:
    from ._tokens import Bearer

__all__ = [
    "MAX_HINT_SECONDS",
    "Outcome",
    "classify_response",
    "cut_outcome",
    "parse_error_body",
    "parse_retry_after",
    "transport_outcome",
]

REFUSAL_CODE: Final = "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"
_REFUSAL_BYTES: Final = REFUSAL_CODE.encode()
_IDEMPOTENCY_CODES: Final = frozenset({"ERRO_IDEMPOTENCIA"})
MAX_HINT_SECONDS: Final = 86_400.0
"""Retry-After values are clamped to one day; anything larger is garbage or hostile."""
_MAX_MESSAGE: Final = 300
_MAX_SCRUBBED: Final = 2048
_MAX_CODE: Final = 100
_TITLE_RE: Final = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG_RE: Final = re.compile(r"<[^>]*>")
_SPACE_RE: Final = re.compile(r"\s+")
_CODE_RE: Final = re.compile(r"[A-Z][A-Z0-9_.\-]{1,99}|\d{3,6}")
_NUMBER_RE: Final = re.compile(r"[ \t]*[0-9]+(?:\.[0-9]+)?[ \t]*")  # HTTP OWS: SP, HTAB

_BY_STATUS: Final[Mapping[int, ErrorKind]] = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.UNAUTHORIZED,
    403: ErrorKind.FORBIDDEN,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    409: ErrorKind.CONFLICT,
    410: ErrorKind.NOT_FOUND,
    416: ErrorKind.NOT_CANCELLABLE,
    422: ErrorKind.BAD_REQUEST,
    429: ErrorKind.RATE_LIMITED,
    529: ErrorKind.RATE_LIMITED,
}
# 5xx that say the request was not processed; every other 5xx may have been applied.
_UNAPPLIED_5XX: Final = frozenset({501, 503, 505, 529})


class Outcome:
    """
    What one attempt produced; `kind` is None on success.  Strictly private.

    A plain slotted class rather than attrs: one is built per attempt on the hot path.
    """

    __slots__ = (
        "ambiguous",
        "body",
        "code",
        "http_status",
        "kind",
        "message",
        "request_id",
        "retry_after",
    )

    def __init__(
        self,
        kind: ErrorKind | None,
        http_status: int | None,
        *,
        code: str | None = None,
        message: str = "",
        ambiguous: bool = False,
        retry_after: float | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        self.kind = kind
        self.http_status = http_status
        self.code = code
        self.message = message
        self.ambiguous = ambiguous  # the request may have been applied without our knowing
        self.retry_after = retry_after
        self.body = body
        self.request_id = request_id

    @property
    def refused(self) -> bool:
        """Klavi answered and declined to cancel (409, 416 or a refusal code)."""
        return self.kind is ErrorKind.CONFLICT or self.kind is ErrorKind.NOT_CANCELLABLE

    def __repr__(self) -> str:  # the body is left out: it may hold personal data
        return (
            f"Outcome(kind={self.kind!r}, http_status={self.http_status!r}, code={self.code!r}, "
            f"message={self.message!r}, ambiguous={self.ambiguous!r})"
        )


_new_success: Final = slot_builder(
    Outcome, kind=None, code=None, message="", ambiguous=False, retry_after=None
)
"""`Outcome(None, http_status, body=..., request_id=...)`: a success, built without the
class call (`_speedups.slot_builder`: every answer that is not an error makes one)."""


def transport_outcome(kind: ErrorKind, *, sent: bool, message: str) -> Outcome:
    """An attempt that got no usable response; *sent* says whether bytes may have left."""
    return Outcome(kind, None, message=message, ambiguous=sent)


def classify_response(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    document: str | None = None,
    token: Bearer | None = None,
) -> Outcome:
    """
    Map one HTTP answer to an `Outcome`.

    2xx is success unless the body carries the refusal code.  *document*, when given, is
    masked wherever the server echoed it in the message; *token*, the one the request
    carried, is removed from everything kept (body, code, message, request id).
    """
    request_id = headers.get("x-fapi-interaction-id") or headers.get("x-request-id")
    # `raw.find(x) != -1`, not `x in raw`: bytes' `in` first tries *x* as an int (a byte
    # value) and raises and clears a TypeError for any other, about 2,000 instructions
    # per test on every answer; `find` takes a bytes argument as it is.
    if token is not None:
        if raw.find(token.raw) != -1:
            raw = raw.replace(token.raw, b"***")
        if request_id is not None and token.value in request_id:
            request_id = request_id.replace(token.value, "***")
    success = 200 <= status < 300
    if success and raw.find(_REFUSAL_BYTES) == -1:
        return _new_success(http_status=status, body=parse_json(raw), request_id=request_id)

    # Scrub before clipping, so a document cut at the edge cannot slip through in part.
    body, code, message = parse_error_body(raw, status=status, limit=_MAX_SCRUBBED)
    refused = code is not None and REFUSAL_CODE in code
    if success and not refused:
        return Outcome(None, status, body=body, request_id=request_id)
    if refused:
        kind = ErrorKind.NOT_CANCELLABLE
    elif code in _IDEMPOTENCY_CODES:
        kind = ErrorKind.CONFLICT
    elif status in _BY_STATUS:
        kind = _BY_STATUS[status]
    elif 500 <= status < 600:
        kind = ErrorKind.SERVER_ERROR
    else:
        kind = ErrorKind.UNEXPECTED_RESPONSE
    if not message:
        message = _reason(status)
    elif document is not None or any(c.isdigit() for c in message):
        message = scrub_documents(message, document)
    message = _clip(message, _MAX_MESSAGE) or message
    if code is not None and (document is not None or any(c.isdigit() for c in code)):
        # A code may echo the document too; masking lengthens it, so clip it again.
        code = _clip(scrub_documents(code, document), _MAX_CODE)
    return Outcome(
        kind,
        status,
        code=code,
        message=message,
        ambiguous=500 <= status < 600 and status not in _UNAPPLIED_5XX,
        retry_after=parse_retry_after(headers),
        body=body,
        request_id=request_id,
    )


def cut_outcome(
    status: int,
    headers: Mapping[str, str],
    kind: ErrorKind,
    reason: str,
    *,
    token: Bearer | None = None,
) -> Outcome:
    """
    An answer whose body could not be read whole (`Response.cut`).

    A 2xx is then no success: what the body said is lost (a refusal code, say), so the
    attempt is ambiguous and a status read decides.  An error status is classified by
    the status alone, the body dropped.
    """
    if not 200 <= status < 300:
        return classify_response(status, headers, b"", token=token)
    request_id = headers.get("x-fapi-interaction-id") or headers.get("x-request-id")
    if token is not None and request_id is not None:
        request_id = request_id.replace(token.value, "***")
    return Outcome(
        kind,
        status,
        message=f"HTTP {status}, but {reason}",
        ambiguous=True,
        request_id=request_id,
    )


def _field(value: object) -> str | None:
    return text_or_none(value, strip=True)


def _reason(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    return f"HTTP {status} {phrase}"


def parse_error_body(
    raw: bytes, *, status: int | None = None, limit: int = _MAX_MESSAGE
) -> tuple[Any, str | None, str]:
    """
    Read `(parsed_json_or_None, code, message)` from any error body.

    Never raises.  The message is trimmed to *limit* characters and may be empty.
    """
    try:
        return _parse_error_body(raw, status, limit)
    except Exception:  # pragma: no cover - defensive: a parser bug must not lose an outcome
        return None, None, ""


def _parse_error_body(raw: bytes, status: int | None, limit: int) -> tuple[Any, str | None, str]:
    body = parse_json(raw)
    if isinstance(body, dict):
        code, message = _from_object(body, status)
        return body, _clip(code, _MAX_CODE), _clip(message, limit) or ""
    if body is not None:
        return body, None, ""
    match = _TITLE_RE.search(raw[:65536])
    if match:
        title = match.group(1).decode("utf-8", "replace")
        return None, None, _clip(_clean(html.unescape(title)), limit) or ""
    text = raw[:2048].decode("utf-8", "replace")
    if "<" in text:
        text = _TAG_RE.sub(" ", text)
    return None, None, _clip(_clean(text), limit) or ""


def _from_object(body: dict[str, Any], status: int | None) -> tuple[str | None, str | None]:
    code: str | None = None
    message: str | None = None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        codes = [_field(e.get("code")) for e in errors if isinstance(e, dict)]
        code = REFUSAL_CODE if REFUSAL_CODE in codes else _field(first.get("code"))
        message = _field(first.get("detail")) or _field(first.get("title"))
    error = body.get("error")
    if isinstance(error, dict):
        code = code or _field(error.get("code"))
        message = message or _field(error.get("detail")) or _field(error.get("message"))
        message = message or _field(error.get("title"))
    if code is None and error == REFUSAL_CODE:
        code = error  # the refusal code wins wherever it stands
    if code is None:
        # Klavi's 416 names the business error in `statusCode` (a string or a number); it
        # wins over a generic upper-case `error` label such as "BUSINESS_ERROR".
        for key in ("code", "statusCode", "errorCode"):
            value = body.get(key)
            text = _field(value)
            if text is not None and text != str(status):  # the status echoed is no code
                code = text
                break
    if code is None and isinstance(error, str) and _CODE_RE.fullmatch(error):
        code = error
    if message is None:
        message = _field(body.get("message")) or _field(body.get("detail"))
        message = message or _field(body.get("title")) or (_field(error) if error else None)
    return code, message


def _clean(text: str) -> str:
    return _SPACE_RE.sub(" ", "".join(c if c.isprintable() else " " for c in text)).strip()


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = _clean(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """
    Seconds the server asks us to wait, from `retry-after-ms` or `retry-after`.

    `retry-after` may be seconds or an HTTP date; a date in the past gives 0.  Values are
    clamped to [0, one day]; anything unparseable gives None.  Never raises.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = _seconds(ms)
        if value is not None:
            return min(value / 1000.0, MAX_HINT_SECONDS)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _seconds(raw)
    if value is not None:
        return min(value, MAX_HINT_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # an HTTP date is always GMT
    try:
        delta = when.timestamp() - (time.time() if now is None else now)
    except (OverflowError, OSError, ValueError):  # pragma: no cover - platform limits
        return None
    return min(max(delta, 0.0), MAX_HINT_SECONDS)


def _seconds(text: str) -> float | None:
    if len(text) > 32 or not _NUMBER_RE.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
