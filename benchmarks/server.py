"""
A minimal HTTP/1.1 keep-alive server for benchmarks, meant to run in its own process.

It answers every request with `200 {}` (and `POST .../auth` with a token), parsing
only what it must (request line, headers, Content-Length), so the client under test is
the bottleneck, not the server.  Prints `PORT <n>` on stdout once listening.

    python benchmarks/server.py [--port 0] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import time

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def _auth_reply() -> bytes:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) + 3600}).encode())
    token = f"eyJhbGciOiJub25lIn0.{claims.rstrip(b'=').decode()}.sig"
    body = json.dumps({"accessToken": token, "expireIn": 3600}).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Protocol(asyncio.Protocol):
    def __init__(self, auth_reply: bytes) -> None:
        self._buffer = b""
        self._auth_reply = auth_reply
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            self._buffer = self._buffer[total:]
            assert self._transport is not None
            is_auth = head.startswith(b"POST ") and b"/auth " in head.split(b"\r\n", 1)[0]
            self._transport.write(self._auth_reply if is_auth else _OK)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    reply = _auth_reply()
    server = await loop.create_server(lambda: _Protocol(reply), "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await stop
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
