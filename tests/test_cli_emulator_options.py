"""`klavi-async emulator` options, each seen on the wire of a real emulator subprocess."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from .conftest import CPF_BARE
from .test_cli_process import CLI

pytestmark = pytest.mark.slow

BASE = "/payment/customer/v1"


@contextmanager
def emulator_process(*options: str) -> Iterator[tuple[str, list[str]]]:
    """`klavi-async emulator --port 0 *options*`: its URL and banner, stopped by SIGINT."""
    server = subprocess.Popen(
        [CLI, "emulator", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        banner = []
        while not banner or banner[-1] != "Ctrl-C stops it.":
            line = server.stdout.readline()
            assert line, f"the emulator exited: {server.communicate(timeout=10)}"
            banner.append(line.rstrip("\n"))
        assert banner[0].startswith("Klavi emulator listening on http://127.0.0.1:")
        yield banner[0].rsplit(" ", 1)[1], banner
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=20)
    assert server.returncode == 0


class Wire:
    """Raw HTTP to the emulator: what it answers, not what the SDK makes of it."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url + BASE

    async def send(
        self, method: str, path: str, body: object, token: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as response:
            return response.status, await response.read()

    async def token(self) -> str:
        keys = {"accessKey": "test-access-key", "secretKey": "test-secret-key"}
        status, raw = await self.send("POST", "/auth", keys)
        assert status == 200, raw
        token = json.loads(raw)["accessToken"]
        assert isinstance(token, str)
        return token

    async def create(self, token: str, status: str = "PAYMENT_PENDING") -> tuple[int, Any]:
        body = {"clientRequestId": str(uuid.uuid4()), "status": status}
        code, raw = await self.send("POST", "/instant/payments", body, token)
        return code, json.loads(raw)

    async def cancel(self, token: str, payment_id: str) -> tuple[int, bytes]:
        body = {"cancelledBy": CPF_BARE, "identifierType": "CPF"}
        return await self.send("POST", f"/instant/payments/{payment_id}/cancel", body, token)


def on_the_wire(url: str, scenario: Any) -> Any:
    async def run() -> Any:
        async with aiohttp.ClientSession() as session:
            return await scenario(Wire(session, url))

    return asyncio.run(run())


async def refusal(wire: Wire) -> Any:
    """The statusCode of a 416 refusal (a settled payment's cancel)."""
    token = await wire.token()
    created, payment = await wire.create(token, "PAYMENT_COMPLETED")
    assert created == 201
    status, raw = await wire.cancel(token, payment["id"])
    assert status == 416
    return json.loads(raw)["statusCode"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"),
        (("--refusal-code", "4105"), 4105),
        (("--refusal-code", "NEGOCIO_416"), "NEGOCIO_416"),
    ],
)
def test_refusal_code_sets_the_416_status_code(options: tuple[str, ...], expected: object) -> None:
    with emulator_process(*options) as (url, banner):
        code = on_the_wire(url, refusal)
    assert code == expected
    assert type(code) is type(expected)  # digits are a JSON number, as Klavi sends 4105
    assert any("416 refusals carry statusCode" in line for line in banner) == bool(options)


def test_a_blank_refusal_code_is_a_usage_error() -> None:
    result = subprocess.run(
        [CLI, "emulator", "--port", "0", "--refusal-code", " "],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == "klavi-async: error: refusal_code must not be blank\n"


async def cancel_body(wire: Wire) -> tuple[int, bytes]:
    token = await wire.token()
    _, payment = await wire.create(token)
    return await wire.cancel(token, payment["id"])


@pytest.mark.parametrize("empty", [False, True])
def test_empty_cancel_body_answers_200_with_no_body(empty: bool) -> None:
    options = ("--empty-cancel-body",) if empty else ()
    with emulator_process(*options) as (url, _):
        status, raw = on_the_wire(url, cancel_body)
    assert status == 200
    if empty:
        assert raw == b""
    else:
        assert json.loads(raw)["status"] == "CANCELED"


async def one_token_two_payments(wire: Wire) -> tuple[int, int, int]:
    """A second payment initiation with the token of a first, then that first's cancel."""
    token = await wire.token()
    first, payment = await wire.create(token)
    assert first == 201
    second, _ = await wire.create(token)
    cancelled, _ = await wire.cancel(token, payment["id"])
    return first, second, cancelled


@pytest.mark.parametrize(("single_use", "second"), [(False, 201), (True, 401)])
def test_single_use_tokens_serve_one_payment_initiation(single_use: bool, second: int) -> None:
    options = ("--single-use-tokens",) if single_use else ()
    with emulator_process(*options) as (url, banner):
        statuses = on_the_wire(url, one_token_two_payments)
    assert statuses == (201, second, 200)  # the token still serves its own payment
    assert ("  a token serves one payment initiation" in banner) is single_use


async def burst(wire: Wire) -> list[tuple[int, bytes]]:
    keys = {"accessKey": "test-access-key", "secretKey": "test-secret-key"}
    return await asyncio.gather(*(wire.send("POST", "/auth", keys) for _ in range(6)))


@pytest.mark.parametrize("limit", [None, "2"])
def test_tps_limit_answers_429_beyond_it(limit: str | None) -> None:
    options = ("--tps-limit", limit) if limit else ()
    with emulator_process(*options) as (url, _):
        answers = on_the_wire(url, burst)
    statuses = sorted(status for status, _ in answers)
    if limit is None:
        assert statuses == [200] * 6
        return
    # Six at once, two a second: at least the ones past the first second's two are refused.
    assert statuses.count(200) >= 2
    assert 429 in statuses
    refused = next(raw for status, raw in answers if status == 429)
    assert json.loads(refused) == {"statusCode": 429, "message": "TPS limit"}
