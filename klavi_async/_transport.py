"""
The one place that talks to aiohttp.

`Transport` owns (or borrows) one `aiohttp.ClientSession`, sends one request, reads the
body with a size cap and turns every aiohttp failure into a `TransportFailure` that says
whether the request may have reached the server.  Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import platform
import ssl as _ssl
from collections.abc import Mapping
from typing import Final

import aiohttp
from yarl import URL

from ._errors import ErrorKind

__all__ = ["Response", "Transport", "TransportFailure", "user_agent"]

DEFAULT_MAX_BODY: Final = 1024 * 1024


def user_agent(version: str) -> str:
    """`klavi-async/<v> Python/<v> aiohttp/<v>`."""
    return f"klavi-async/{version} Python/{platform.python_version()} aiohttp/{aiohttp.__version__}"


class Response:
    """Status, headers and (at most `max_body` bytes of) body.  Strictly private."""

    __slots__ = ("body", "headers", "status", "truncated")

    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, truncated: bool = False
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.truncated = truncated


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


class Transport:
    """One HTTP session for one client.  Strictly private."""

    __slots__ = (
        "_connector_args",
        "_max_body",
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
        self._connector_args = {"limit": max_connections}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # Our own connector carries the TLS setting; a borrowed session needs it per request.
        self._request_ssl: _ssl.SSLContext | bool = (
            ssl if ssl is not None and session is not None else True
        )

    @property
    def owns_session(self) -> bool:
        """True when the session is ours to close."""
        return self._owns_session

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._connector_args["limit"],
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
            timeout = aiohttp.ClientTimeout(total=seconds)
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
    ) -> Response:
        """Send one request; raise `TransportFailure` when no usable response arrives."""
        session = self._get_session()
        if not self._owns_session:
            headers["User-Agent"] = self._user_agent
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=self._timeout(timeout),
                allow_redirects=False,
                ssl=self._request_ssl,
            ) as resp:
                status = resp.status
                try:
                    length = resp.content_length
                    if length is not None and length <= self._max_body:
                        # The common case, inline: no extra coroutine on the hot path.
                        return Response(status, resp.headers, await resp.read())
                    raw, truncated = await self._read_capped(resp)
                except (aiohttp.ClientError, TimeoutError, OSError):
                    # The status line arrived, so the server processed the request; the
                    # body is lost but the status still tells the outcome.
                    resp.close()
                    return Response(status, resp.headers, b"", truncated=True)
                if truncated:
                    resp.close()
                return Response(status, resp.headers, raw, truncated)
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransportFailure(
                ErrorKind.TIMEOUT, f"connect timed out after {timeout:g} s", sent=False
            ) from exc
        except TimeoutError as exc:
            raise TransportFailure(
                ErrorKind.TIMEOUT, f"no response within {timeout:g} s", sent=True
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportFailure(
                ErrorKind.NETWORK, f"cannot connect: {_describe(exc)}", sent=False
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise TransportFailure(ErrorKind.NETWORK, "invalid URL", sent=False) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportFailure(
                ErrorKind.NETWORK, f"connection failed: {_describe(exc)}", sent=True
            ) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """Read a body of unknown or too large a length, keeping at most `max_body` bytes."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await resp.content.read(65536)
            if not chunk:
                return b"".join(chunks), False
            size += len(chunk)
            if size > self._max_body:
                chunks.append(chunk[: len(chunk) - (size - self._max_body)])
                return b"".join(chunks), True
            chunks.append(chunk)

    async def aclose(self) -> None:
        """Close the session if we created it; a borrowed session is left open."""
        session = self._session
        if session is not None and self._owns_session and not session.closed:
            await session.close()
            # Let the connector's transports finish closing (aiohttp's advice).
            await asyncio.sleep(0)


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text[:200]}" if text else name
