"""
examples/aiohttp_app.py against the emulator: outcomes, one client per app, shutdown.

Driven through aiohttp's own `TestServer`/`TestClient` (they run the app's startup and
cleanup, as pytest-aiohttp's `aiohttp_client` fixture does on top of them): the
pytest-aiohttp plugin imports pytest_asyncio when pytest loads it, which breaks
test_plugin.py's run of a project without pytest-asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp.test_utils import TestClient, TestServer

from examples.aiohttp_app import KLAVI, create_app
from klavi_async.testing import KlaviEmulator

from ._webapps import (
    BAD_BODIES,
    CASES,
    CURL_CONTENT_TYPES,
    MAX_CONNECTIONS,
    Case,
    ClientFactory,
    check_answer,
    check_bad_body,
    check_shutdown,
    count_connections,
    documented_curl,
    prepare,
    session_closed,
    sigterm_under_load,
)
from .conftest import CPF, CPF_BARE


@asynccontextmanager
async def served(factory: ClientFactory) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(create_app(client_factory=factory))) as client:
        yield client


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_each_outcome_has_its_status(klavi_emulator: KlaviEmulator, case: Case) -> None:
    payment_id, body = prepare(klavi_emulator, case)
    factory = ClientFactory(klavi_emulator, secret_key=case.secret_key)
    async with served(factory) as http:
        response = await http.post(f"/payments/{payment_id}/cancel", json=body)
        text = await response.text()
    check_answer(klavi_emulator, case, payment_id, response.status, response.headers, text)


@pytest.mark.parametrize(("name", "raw", "error_type"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_bad_body_is_a_422_that_echoes_nothing(
    klavi_emulator: KlaviEmulator, name: str, raw: bytes, error_type: str
) -> None:
    payment_id = klavi_emulator.add_payment()
    async with served(ClientFactory(klavi_emulator)) as http:
        response = await http.post(
            f"/payments/{payment_id}/cancel",
            data=raw,
            headers={"Content-Type": "application/json"},
        )
        check_bad_body(klavi_emulator, response.status, await response.text(), error_type)


async def test_a_deeply_nested_body_is_a_422_not_a_500(klavi_emulator: KlaviEmulator) -> None:
    async with served(ClientFactory(klavi_emulator)) as http:
        response = await http.post("/payments/pay-1/cancel", data=b"[" * 200_000)
        assert response.status == 422
        assert (await response.json())["detail"][0]["type"] == "json_invalid"


async def test_concurrent_requests_share_one_token_and_one_pool() -> None:
    emulator = KlaviEmulator()
    peers = count_connections(emulator)
    async with emulator:
        payment_ids = [emulator.add_payment() for _ in range(200)]
        # 200 at once through a pool of MAX_CONNECTIONS: on a busy machine the last wait
        # longer than the other tests' 2 s deadline for a connection.
        factory = ClientFactory(emulator, deadline=60.0)
        async with served(factory) as http:

            async def cancel(payment_id: str) -> int:
                path = f"/payments/{payment_id}/cancel"
                response = await http.post(path, json={"cancelled_by": CPF})
                assert (await response.json())["ok"] is True
                return response.status

            statuses = await asyncio.gather(*(cancel(pid) for pid in payment_ids))
            assert http.app is not None
            assert http.app[KLAVI] is factory.client
    assert statuses == [200] * 200
    assert emulator.auth_calls == 1
    assert factory.client.token_fetches == 1
    assert all(emulator.effects[pid] == 1 for pid in payment_ids)
    # One pool: never more connections than its limit, however many requests at once.
    assert 1 <= len(peers) <= MAX_CONNECTIONS


async def test_cleanup_closes_the_client_and_its_session(klavi_emulator: KlaviEmulator) -> None:
    payment_id = klavi_emulator.add_payment()
    factory = ClientFactory(klavi_emulator)
    async with served(factory) as http:
        response = await http.post(f"/payments/{payment_id}/cancel", json={"cancelled_by": CPF})
        assert response.status == 200
        assert not factory.client.closed
    assert session_closed(factory.client)


@pytest.mark.slow
async def test_sigterm_under_load_answers_every_request_in_flight() -> None:
    # Every cancel waits 3 s at the emulator, so all of them are in flight at SIGTERM.
    async with KlaviEmulator(fault_rates={"latency": 1.0}, latency=3.0) as emulator:
        run = await sigterm_under_load("examples.aiohttp_app", emulator, requests=20)
    # run_app turns SIGTERM into GracefulExit and returns: exit 0.
    check_shutdown(run, 20, {0})


async def test_a_request_after_close_is_a_503_not_a_500(klavi_emulator: KlaviEmulator) -> None:
    factory = ClientFactory(klavi_emulator)
    async with served(factory) as http:
        await factory.client.aclose()
        response = await http.post("/payments/pay-1/cancel", json={"cancelled_by": CPF})
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert "shutting down" in (await response.json())["detail"]
    assert klavi_emulator.requests == []


async def test_unknown_keys_are_one_problem_that_names_none(
    klavi_emulator: KlaviEmulator,
) -> None:
    many = {f"k{i}": 1 for i in range(60_000)}
    async with served(ClientFactory(klavi_emulator)) as http:
        response = await http.post(
            "/payments/pay-1/cancel", json={"cancelled_by": CPF, CPF_BARE: "x", CPF: True}
        )
        assert response.status == 422
        text = await response.text()
        assert CPF_BARE not in text and CPF not in text
        assert (await response.json())["detail"] == [
            {
                "loc": ["body"],
                "msg": "Extra inputs are not permitted (2 unknown fields)",
                "type": "extra_forbidden",
            }
        ]
        response = await http.post("/payments/pay-1/cancel", json=many)
        assert response.status == 422
        answer = await response.read()
        assert len(answer) < 1_000  # not one problem per key
    assert klavi_emulator.requests == []


@pytest.mark.parametrize("content_type", CURL_CONTENT_TYPES)
async def test_the_documented_curl_command_works_as_written(
    klavi_emulator: KlaviEmulator, content_type: str | None
) -> None:
    path, body, headers = documented_curl(klavi_emulator, content_type)
    async with served(ClientFactory(klavi_emulator)) as http:
        response = await http.post(path, data=body, headers=headers)
        assert response.status == 200, await response.text()
        assert (await response.json())["ok"] is True
