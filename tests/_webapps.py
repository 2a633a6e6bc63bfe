"""
What the example web app tests share: clients bound to an emulator, the outcome cases,
and a real server process stopped with SIGTERM while requests are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from klavi_async import ClientCredentials, KlaviClient, RetryPolicy
from klavi_async.testing import KlaviEmulator
from klavi_async.testing._faults import Fault

from .conftest import CPF, CPF_BARE

ROOT = Path(__file__).resolve().parent.parent
MAX_CONNECTIONS = 10


class ClientFactory:
    """A `client_factory` for the apps: clients bound to *emulator*; keeps each one made."""

    def __init__(
        self, emulator: KlaviEmulator, *, secret_key: str | None = None, deadline: float = 2.0
    ) -> None:
        self.emulator = emulator
        self.secret_key = secret_key
        self.deadline = deadline
        self.clients: list[KlaviClient] = []

    def __call__(self) -> KlaviClient:
        emu = self.emulator
        credentials = ClientCredentials(emu.access_key, self.secret_key or emu.secret_key)
        # A short deadline: a 429 asking for 3 s is not waited for, it is answered at once.
        policy = RetryPolicy(
            max_attempts=2, initial_backoff=0, jitter=False, deadline=self.deadline
        )
        client = KlaviClient(
            credentials, base_url=emu.url, retry=policy, max_connections=MAX_CONNECTIONS
        )
        self.clients.append(client)
        return client

    @property
    def client(self) -> KlaviClient:
        """The one client made (the apps must make exactly one)."""
        assert len(self.clients) == 1, f"{len(self.clients)} clients made, expected one"
        return self.clients[0]


def session_closed(client: KlaviClient) -> bool:
    """The client is closed and so is the aiohttp session it created."""
    session = client._transport._session
    return client.closed and session is not None and session.closed


def count_connections(emulator: KlaviEmulator) -> set[tuple[str, int]]:
    """
    The client addresses (host, port) of every connection the emulator answers on.

    Call it before the emulator starts (its app is frozen then).
    """
    peers: set[tuple[str, int]] = set()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        transport = request.transport
        if transport is not None:
            peers.add(transport.get_extra_info("peername")[:2])

    emulator.app.on_response_prepare.append(on_prepare)
    return peers


@attrs.frozen
class Case:
    """One outcome: how to set the emulator up, the body sent, and the answer expected."""

    name: str
    status: int
    kind: str | None
    payment_status: str = "PAYMENT_PENDING"
    body: dict[str, Any] = attrs.field(factory=lambda: {"cancelled_by": CPF})
    script: dict[str, list[Fault | int | None]] = attrs.field(factory=dict)
    retry_after: str | None = None
    secret_key: str | None = None
    consent_id: str | None = None
    unknown_payment: bool = False
    sends_cancel: bool = True


CASES = [
    Case("cancelled", 200, None),
    Case("already_cancelled", 200, None, payment_status="CANCELED"),
    Case("automatic_pix", 200, None, consent_id="consent-1"),
    Case("not_found", 404, "not_found", unknown_payment=True),
    Case("refused", 409, "not_cancellable", payment_status="PAYMENT_COMPLETED"),
    Case(
        "invalid_document", 422, "invalid_request", body={"cancelled_by": "529.982.247-26"},
        sends_cancel=False,
    ),
    Case(
        "wrong_identifier_type", 422, "invalid_request",
        body={"cancelled_by": CPF, "identifier_type": "CNPJ"}, sends_cancel=False,
    ),
    Case("server_error", 503, "server_error", script={"cancel": [503, 503]}, retry_after="1"),
    Case(
        "rate_limited", 503, "rate_limited", script={"cancel": [Fault.rate_limit(3.0)]},
        retry_after="3",
    ),
    Case(
        "outcome_unknown", 503, "network",
        script={"cancel": [Fault.reset_after(), Fault.reset_before()], "status": [503] * 4},
        retry_after="1",
    ),
    Case(
        "keys_rejected", 502, "authentication_failed", secret_key="wrong-secret",
        sends_cancel=False,
    ),
]  # fmt: skip

BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("missing_cancelled_by", b'{"identifier_type": "CPF"}', "missing"),
    ("number_document", b'{"cancelled_by": %s}' % CPF_BARE.encode(), "string_type"),
    ("misspelt_field", json.dumps({"cancelledBy": CPF}).encode(), "extra_forbidden"),
    (
        "non_string_key",
        json.dumps({"cancelled_by": CPF, "idempotency_key": 7}).encode(),
        "string_type",
    ),
    ("array", json.dumps([CPF]).encode(), "model_attributes_type"),
    ("not_json", b'{"cancelled_by": "%s"' % CPF.encode(), "json_invalid"),
    ("empty", b"", "missing"),
]
"""(name, body bytes, an error type the 422 lists); every one is refused before sending."""


def prepare(emulator: KlaviEmulator, case: Case) -> tuple[str, dict[str, Any]]:
    """Seed the emulator for *case*; return the payment id and the request body."""
    if case.unknown_payment:
        payment_id = "pay-unknown"
    else:
        payment_id = emulator.add_payment(case.payment_status, consent_id=case.consent_id)
    for route, faults in case.script.items():
        emulator.script(route, faults)
    body = dict(case.body)
    if case.consent_id is not None:
        body["consent_id"] = case.consent_id
    return payment_id, body


def check_answer(
    emulator: KlaviEmulator, case: Case, payment_id: str, status: int, headers: Any, text: str
) -> dict[str, Any]:
    """Assert the app's answer for *case*; return the parsed record."""
    record: dict[str, Any] = json.loads(text)
    assert status == case.status, record
    assert record["kind"] == case.kind
    assert record["ok"] is (case.status == 200)
    assert headers.get("Retry-After") == case.retry_after
    assert CPF_BARE not in text and CPF not in text
    routes = {"cancel", "automatic_cancel"}
    sent = [r for r in emulator.requests if r.route in routes]
    assert bool(sent) is case.sends_cancel
    if case.status == 503:
        assert "same idempotency_key" in record["hint"]
        if case.name == "outcome_unknown":
            assert record["outcome_unknown"] is True
            assert "may have taken effect" in record["hint"]
    if case.name == "cancelled":
        assert emulator.effects[payment_id] == 1
    if case.name == "refused":
        assert record["payment_status"] == "PAYMENT_COMPLETED"
    return record


def check_bad_body(emulator: KlaviEmulator, status: int, text: str, error_type: str) -> None:
    """A refused body: 422, the problem named, nothing of the body echoed, nothing sent."""
    assert status == 422, text
    detail = json.loads(text)["detail"]
    assert error_type in {problem["type"] for problem in detail}, detail
    assert all(problem["loc"][0] == "body" and problem["msg"] for problem in detail)
    assert CPF_BARE not in text and CPF not in text
    assert emulator.requests == []


# -- a real server process --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class ShutdownRun:
    """What happened when a server got SIGTERM under load."""

    in_flight: int
    """Cancels the emulator was serving when SIGTERM was sent."""
    answers: list[tuple[int, dict[str, Any]]]
    returncode: int
    stderr: str


LEAK_SIGNS = (
    "Unclosed client session",
    "Unclosed connector",
    "ResourceWarning",
    "Task was destroyed",
    "Traceback",
    "ClientClosedError",
)


async def sigterm_under_load(module: str, emulator: KlaviEmulator, requests: int) -> ShutdownRun:
    """
    Serve `python -m <module>` against *emulator*, send *requests* cancels, SIGTERM the
    server while the emulator holds all of them, and collect every answer and the exit.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAVI_")}
    env.update(
        KLAVI_BASE_URL=emulator.url,
        KLAVI_ACCESS_KEY=emulator.access_key,
        KLAVI_SECRET_KEY=emulator.secret_key,
        PYTHONWARNINGS="default",  # show every ResourceWarning on stderr
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output = asyncio.create_task(proc.communicate())
    try:
        await _wait_listening(port, output)
        payment_ids = [emulator.add_payment() for _ in range(requests)]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:

            async def post(payment_id: str) -> tuple[int, dict[str, Any]]:
                path = f"/payments/{payment_id}/cancel"
                async with session.post(path, json={"cancelled_by": CPF}) as response:
                    return response.status, await response.json()

            posts = [asyncio.create_task(post(pid)) for pid in payment_ids]
            deadline = time.monotonic() + 10
            while emulator.in_flight < requests:
                assert time.monotonic() < deadline, "the cancels never reached the emulator"
                assert not any(p.done() for p in posts), [p for p in posts if p.done()]
                await asyncio.sleep(0.01)
            in_flight = emulator.in_flight
            proc.send_signal(signal.SIGTERM)
            answers = await asyncio.wait_for(asyncio.gather(*posts), 20)
        _, stderr = await asyncio.wait_for(output, 20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(BaseException):
            await output
    assert proc.returncode is not None
    return ShutdownRun(in_flight, answers, proc.returncode, stderr.decode(errors="replace"))


async def _wait_listening(port: int, output: asyncio.Task[Any]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert not output.done(), f"the server exited early: {output.result()!r}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline, "the server never listened"
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


def check_shutdown(run: ShutdownRun, requests: int, exit_codes: set[int]) -> None:
    """Every cancel in flight was answered as cancelled; a clean exit; nothing leaked."""
    assert run.in_flight == requests
    statuses = [status for status, _ in run.answers]
    assert statuses == [200] * requests, [a for a in run.answers if a[0] != 200][:3]
    assert all(record["ok"] for _, record in run.answers)
    assert run.returncode in exit_codes, (run.returncode, run.stderr[-2000:])
    for sign in LEAK_SIGNS:
        assert sign not in run.stderr, run.stderr[-3000:]
    assert CPF_BARE not in run.stderr and CPF not in run.stderr


CURL_CONTENT_TYPES: list[str | None] = ["application/x-www-form-urlencoded", None]
"""What `curl -d` sends as the Content-Type, and a client that sends none."""


def documented_curl(
    emulator: KlaviEmulator, content_type: str | None
) -> tuple[str, bytes, dict[str, str]]:
    """
    The `curl` command docs/integrations.md shows, as written, for a payment of
    *emulator*: its path, body and headers (*content_type*, if any).
    """
    text = (Path(__file__).parent.parent / "docs" / "integrations.md").read_text()
    found = re.search(r"curl -s localhost:8000(\S+) -d '([^']*)'", text)
    assert found is not None, "docs/integrations.md no longer shows the curl command"
    path = found.group(1).replace("pay-123", emulator.add_payment())
    headers = {} if content_type is None else {"Content-Type": content_type}
    return path, found.group(2).encode(), headers
