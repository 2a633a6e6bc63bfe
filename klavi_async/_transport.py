"""
The one place that talks to aiohttp.

`Transport` owns (or borrows) one `aiohttp.ClientSession`, sends one request, reads the
body with a size cap and turns every aiohttp failure into a `TransportFailure` that says
whether the request may have reached the server.  Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import math
import platform
import ssl as _ssl
from collections.abc import Mapping
from typing import Final, Protocol

import aiohttp
from yarl import URL

from ._errors import ClientClosedError
from ._kinds import ErrorKind
from ._speedups import request_headers
from ._tokens import Bearer

__all__ = ["HTTPTransport", "Response", "Transport", "TransportFailure", "user_agent"]

DEFAULT_MAX_BODY: Final = 1024 * 1024
_CONNECT_MARGIN: Final = 0.1
"""
How much sooner than the total timeout the connect timeout (pool wait included) fires:
a tenth of the total, at most 0.1 s.  The total timer starts before the connect one, so
a margin of a few milliseconds is eaten by a busy event loop and a pool wait is then
reported as a request that may have been sent.
"""


def user_agent(version: str) -> str:
    """`klavi-async/<v> Python/<v> aiohttp/<v>`."""
    return f"klavi-async/{version} Python/{platform.python_version()} aiohttp/{aiohttp.__version__}"


class Response:
    """
    Status, headers and (at most `max_body` bytes of) body.  Strictly private.

    `cut` is None when the body was read whole; otherwise the kind and reason it was not
    (connection lost or timed out mid-body, a content encoding that failed to decode, more
    than `max_body` decoded bytes), and `body` is empty: a part is not a body.
    """

    __slots__ = ("body", "cut", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        cut: tuple[ErrorKind, str] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.cut = cut


class TransportFailure(Exception):
    """
    No usable response.  Strictly private.

    `sent` is False only when the request certainly never reached the server (connect
    failed); a timeout or disconnect after that may have been applied.
    """

    def __init__(self, kind: ErrorKind, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.sent = sent


class HTTPTransport(Protocol):
    """
    What the client sends requests through: `Transport`, or a fake in a unit test.

    `request()` returns a `Response` (any status) or raises `TransportFailure` when no
    usable response arrived; it must add `auth.header` as `Authorization` itself, in a
    dict of its own.  `aclose()` releases what it holds; it is called once.
    """

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        auth: Bearer | None = None,
    ) -> Response:
        """Send one request."""
        ...

    async def aclose(self) -> None:
        """Release the connections."""
        ...


class Transport:
    """One aiohttp session for one client.  Strictly private."""

    __slots__ = (
        "_max_body",
        "_max_connections",
        "_owns_session",
        "_request_ssl",
        "_session",
        "_ssl",
        "_timeouts",
        "_user_agent",
    )

    def __init__(
        self,
        *,
        user_agent: str,
        max_connections: int,
        session: aiohttp.ClientSession | None = None,
        ssl: _ssl.SSLContext | bool | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(
                f"session must be an aiohttp.ClientSession, got {type(session).__name__}"
            )
        self._user_agent = user_agent
        self._session = session
        self._owns_session = session is None
        self._ssl = ssl
        self._max_body = max_body
        self._max_connections = max_connections
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # Our own connector carries the TLS setting; a borrowed session needs it per request.
        self._request_ssl: _ssl.SSLContext | bool = (
            ssl if ssl is not None and session is not None else True
        )

    @property
    def ssl(self) -> _ssl.SSLContext | bool | None:
        """The TLS setting the client was given (None: aiohttp's default verification)."""
        return self._ssl

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The session, once the first request made (or was given) one."""
        return self._session

    def get_session(self) -> aiohttp.ClientSession:
        """The session, created on first use (a borrowed one must still be open)."""
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ssl=True if self._ssl is None else self._ssl,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self._user_agent},
                raise_for_status=False,
                auto_decompress=True,
            )
            self._session = session
        elif not self._owns_session and session.closed:
            raise RuntimeError("the aiohttp session given to KlaviClient is closed")
        return session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            # `connect` covers waiting for a pooled connection and connecting: a timeout
            # there sent nothing, and aiohttp says so (ConnectionTimeoutError) only if that
            # timer fires before the total one, hence shorter by `_CONNECT_MARGIN`.  No
            # rounding of deadlines to whole seconds (aiohttp's `ceil_threshold`), which could
            # reorder them.
            timeout = aiohttp.ClientTimeout(
                total=seconds,
                connect=seconds - min(seconds * _CONNECT_MARGIN, _CONNECT_MARGIN),
                ceil_threshold=math.inf,
            )
            if len(self._timeouts) < 64:
                self._timeouts[seconds] = timeout
        return timeout

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
        auth: Bearer | None = None,
    ) -> Response:
        """
        Send one request; raise `TransportFailure` when no usable response arrives.  The
        `Authorization` header is added here, in a dict no caller's frame holds; a
        cancellation is re-raised fresh from here, with no frame that saw the header.
        """
        session = self._session
        if session is None or not self._owns_session:
            session = self.get_session()  # made on first use; a borrowed one checked
        sent_headers = request_headers(
            headers,
            None if auth is None else auth.header,
            None if self._owns_session else self._user_agent,
        )
        resp: aiohttp.ClientResponse | None = None
        cancelled: tuple[object, ...] = ()
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=sent_headers,
                timeout=self._timeouts.get(timeout) or self._timeout(timeout),
                allow_redirects=False,
                ssl=self._request_ssl,
            ) as resp:
                status = resp.status
                try:
                    length = resp.content_length
                    plain = "Content-Encoding" not in resp.headers
                    if plain and length is not None and length <= self._max_body:
                        # The common case, inline: no extra coroutine on the hot path.
                        return Response(status, resp.headers, await resp.read())
                    return await self._read_uncommon(resp, timeout)
                except (aiohttp.ClientError, OSError) as exc:
                    resp.close()
                    return Response(status, resp.headers, b"", _body_cut(exc, timeout))
        except asyncio.CancelledError as exc:
            cancelled = exc.args
        except Exception as exc:
            failure = _failure(exc, timeout, auth)
            if failure is None:
                _raise_misuse(session)
            raise failure or _unbuildable(exc) from exc
        # Only a cancellation gets here.  Drop what this frame still holds, then raise.
        resp = sent_headers = None  # type: ignore[assignment]
        current = asyncio.current_task()
        if session.closed and current is not None and not current.cancelling():
            # Nobody cancelled this call: closing the session cancelled its wait.
            raise ClientClosedError("the client was closed while a call was running")
        raise asyncio.CancelledError(*cancelled)

    async def _read_uncommon(self, resp: aiohttp.ClientResponse, timeout: float) -> Response:
        """A body of unknown or too large a length, or encoded: read under the cap."""
        raw, over = await self._read_capped(resp)
        if over:
            resp.close()
            return Response(
                resp.status,
                resp.headers,
                b"",
                (
                    ErrorKind.UNEXPECTED_RESPONSE,
                    f"the body is larger than max_response_size ({self._max_body} bytes)",
                ),
            )
        return Response(resp.status, resp.headers, raw)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """
        Read a body of unknown, too large a length or encoded; True when it passed `max_body`.

        aiohttp decodes gzip/deflate/br as it is read, a chunk at a time, so counting the
        decoded chunks here bounds the memory a small compressed body can make us use.
        """
        chunks: list[bytes] = []
        size = 0
        limit = self._max_body
        while True:
            chunk = await resp.content.read(65536)
            if not chunk:
                return b"".join(chunks), False
            size += len(chunk)
            if size > limit:
                return b"", True
            chunks.append(chunk)

    async def aclose(self) -> None:
        """Close the session if we created it; a borrowed session is left open."""
        session = self._session
        if session is not None and self._owns_session and not session.closed:
            await session.close()
            # Let the connector's transports finish closing (aiohttp's advice).
            await asyncio.sleep(0)


def _body_cut(exc: BaseException, timeout: float) -> tuple[ErrorKind, str]:
    """Why a body could not be read whole, by the exception that stopped the read."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _payload_cut(exc, timeout)
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT, f"the body did not arrive within {timeout:.3g} s"
    return ErrorKind.NETWORK, f"the connection failed mid-body: {_describe(exc)}"


def _failure(exc: Exception, timeout: float, auth: Bearer | None) -> TransportFailure | None:
    """
    The `TransportFailure` for what aiohttp raised, the most specific first.

    None when it is no transport error at all (aiohttp refused to build the request, or
    the session was closed under the call).
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportFailure(
            ErrorKind.TIMEOUT, f"no connection within {timeout:.3g} s", sent=False
        )
    if isinstance(exc, TimeoutError):
        return TransportFailure(ErrorKind.TIMEOUT, f"no response within {timeout:.3g} s", sent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportFailure(ErrorKind.NETWORK, f"cannot connect: {_describe(exc)}", sent=False)
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportFailure(ErrorKind.NETWORK, "invalid URL", sent=False)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransportFailure(
            ErrorKind.NETWORK, f"connection failed: {_scrub(_describe(exc), auth)}", sent=True
        )
    return None


def _raise_misuse(session: aiohttp.ClientSession) -> None:
    """Raise for a session closed under the call, or made on another event loop."""
    if session.closed:
        raise ClientClosedError("the HTTP session was closed while a call was running")
    if getattr(session, "_loop", None) not in (None, asyncio.get_running_loop()):
        raise RuntimeError(
            "this KlaviClient's HTTP session belongs to another event loop (a client "
            "used under a second asyncio.run(), or a test's new loop): make one client "
            "per event loop, and close it on its own loop"
        )


def _unbuildable(exc: Exception) -> TransportFailure:
    """
    aiohttp refused to build the request (a header value it will not send, ...).

    Nothing left.  Only the exception's type is kept: its text may quote a header.
    """
    return TransportFailure(
        ErrorKind.INVALID_REQUEST,
        f"the request could not be built ({type(exc).__name__})",
        sent=False,
    )


def _payload_cut(exc: aiohttp.ClientPayloadError, timeout: float) -> tuple[ErrorKind, str]:
    """Why a body broke off: a content encoding that failed to decode, or the connection."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.http_exceptions.ContentEncodingError):
            return ErrorKind.UNEXPECTED_RESPONSE, "the body failed to decode (content encoding)"
        if isinstance(cause, TimeoutError):
            return ErrorKind.TIMEOUT, f"the body did not arrive within {timeout:.3g} s"
        cause = cause.__cause__ or cause.__context__
    if "encoding" in str(exc).lower():
        return ErrorKind.UNEXPECTED_RESPONSE, "the body failed to decode (content encoding)"
    return ErrorKind.NETWORK, f"the connection failed mid-body: {_describe(exc)}"


def _scrub(text: str, auth: Bearer | None) -> str:
    return text if auth is None else text.replace(auth.value, "***")


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text[:200]}" if text else name
