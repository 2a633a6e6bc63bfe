"""
examples/fastapi_app.py against the emulator: outcomes, one client per app, shutdown,
and a dependency override.

Driven through httpx's `ASGITransport` inside asgi-lifespan's `LifespanManager`:
`ASGITransport` alone does not run the lifespan, and FastAPI's `TestClient` runs the app
on another thread's loop while aiohttp sessions belong to one loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from examples.fastapi_app import MAX_BODY_SIZE, create_app, get_klavi
from klavi_async import ClientCredentials, KlaviClient
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
async def requests_to(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as http:
        yield http


@asynccontextmanager
async def served(factory: ClientFactory) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(client_factory=factory)
    async with LifespanManager(app), requests_to(app) as http:
        yield app, http


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_each_outcome_has_its_status(klavi_emulator: KlaviEmulator, case: Case) -> None:
    payment_id, body = prepare(klavi_emulator, case)
    factory = ClientFactory(klavi_emulator, secret_key=case.secret_key)
    async with served(factory) as (_, http):
        response = await http.post(f"/payments/{payment_id}/cancel", json=body)
    check_answer(
        klavi_emulator, case, payment_id, response.status_code, response.headers, response.text
    )


@pytest.mark.parametrize(("name", "raw", "error_type"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_bad_body_is_a_422_that_echoes_nothing(
    klavi_emulator: KlaviEmulator, name: str, raw: bytes, error_type: str
) -> None:
    payment_id = klavi_emulator.add_payment()
    async with served(ClientFactory(klavi_emulator)) as (_, http):
        response = await http.post(
            f"/payments/{payment_id}/cancel",
            content=raw,
            headers={"Content-Type": "application/json"},
        )
    check_bad_body(klavi_emulator, response.status_code, response.text, error_type)


async def test_a_deeply_nested_body_is_refused_not_a_500(klavi_emulator: KlaviEmulator) -> None:
    # FastAPI answers a body it cannot parse (here: RecursionError) with its own 400.
    async with served(ClientFactory(klavi_emulator)) as (_, http):
        response = await http.post("/payments/pay-1/cancel", content=b"[" * 200_000)
    assert response.status_code in (400, 422)
    assert klavi_emulator.requests == []


async def test_concurrent_requests_share_one_token_and_one_pool() -> None:
    emulator = KlaviEmulator()
    peers = count_connections(emulator)
    async with emulator:
        payment_ids = [emulator.add_payment() for _ in range(200)]
        # 200 at once through a pool of MAX_CONNECTIONS: on a busy machine the last wait
        # longer than the other tests' 2 s deadline for a connection.
        factory = ClientFactory(emulator, deadline=60.0)
        async with served(factory) as (app, http):

            async def cancel(payment_id: str) -> int:
                path = f"/payments/{payment_id}/cancel"
                response = await http.post(path, json={"cancelled_by": CPF})
                assert response.json()["ok"] is True
                return response.status_code

            statuses = await asyncio.gather(*(cancel(pid) for pid in payment_ids))
            assert app.state.klavi is factory.client
    assert statuses == [200] * 200
    assert emulator.auth_calls == 1
    assert factory.client.token_fetches == 1
    assert all(emulator.effects[pid] == 1 for pid in payment_ids)
    # One pool: never more connections than its limit, however many requests at once.
    assert 1 <= len(peers) <= MAX_CONNECTIONS


async def test_the_lifespan_closes_the_client_and_its_session(
    klavi_emulator: KlaviEmulator,
) -> None:
    payment_id = klavi_emulator.add_payment()
    factory = ClientFactory(klavi_emulator)
    async with served(factory) as (_, http):
        response = await http.post(f"/payments/{payment_id}/cancel", json={"cancelled_by": CPF})
        assert response.status_code == 200
        assert not factory.client.closed
    assert session_closed(factory.client)


async def test_a_dependency_override_hands_handlers_the_tests_client(
    klavi_emulator: KlaviEmulator,
) -> None:
    def no_client() -> KlaviClient:
        raise AssertionError("the lifespan's client must not be built")

    # No lifespan at all: the override is the only client the handler sees.
    app = create_app(client_factory=no_client)
    payment_id = klavi_emulator.add_payment()
    credentials = ClientCredentials(klavi_emulator.access_key, klavi_emulator.secret_key)
    async with KlaviClient(credentials, base_url=klavi_emulator.url) as mine:
        app.dependency_overrides[get_klavi] = lambda: mine
        async with requests_to(app) as http:
            response = await http.post(f"/payments/{payment_id}/cancel", json={"cancelled_by": CPF})
        assert response.status_code == 200
        assert mine.token_fetches == 1
    assert klavi_emulator.effects[payment_id] == 1


async def test_a_request_after_close_is_a_503_not_a_500(klavi_emulator: KlaviEmulator) -> None:
    credentials = ClientCredentials(klavi_emulator.access_key, klavi_emulator.secret_key)
    closed = KlaviClient(credentials, base_url=klavi_emulator.url)
    await closed.aclose()
    app = create_app()
    app.dependency_overrides[get_klavi] = lambda: closed
    async with requests_to(app) as http:
        response = await http.post("/payments/pay-1/cancel", json={"cancelled_by": CPF})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "shutting down" in response.json()["detail"]


@pytest.mark.slow
async def test_sigterm_under_load_answers_every_request_in_flight() -> None:
    # Every cancel waits 3 s at the emulator, so all of them are in flight at SIGTERM.
    async with KlaviEmulator(fault_rates={"latency": 1.0}, latency=3.0) as emulator:
        run = await sigterm_under_load("examples.fastapi_app", emulator, requests=20)
    # uvicorn finishes, then re-raises the signal it caught: killed by SIGTERM, cleanly.
    check_shutdown(run, 20, {0, -signal.SIGTERM})
    assert "Finished server process" in run.stderr


async def test_unknown_keys_are_one_problem_that_names_none(
    klavi_emulator: KlaviEmulator,
) -> None:
    many = {f"k{i}": 1 for i in range(60_000)}
    async with served(ClientFactory(klavi_emulator)) as (_, http):
        response = await http.post(
            "/payments/pay-1/cancel", json={"cancelled_by": CPF, CPF_BARE: "x", CPF: True}
        )
        assert response.status_code == 422
        assert CPF_BARE not in response.text and CPF not in response.text
        assert response.json()["detail"] == [
            {
                "loc": ["body"],
                "msg": "Extra inputs are not permitted (2 unknown fields)",
                "type": "extra_forbidden",
            }
        ]
        response = await http.post("/payments/pay-1/cancel", json=many)
        assert response.status_code == 422
        assert len(response.content) < 1_000  # not one problem per key
    assert klavi_emulator.requests == []


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"cancelled_by":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"cancelled_by": "\xff\xfe"}',
    ],
    ids=["deep", "deep_in_a_field", "not_utf8"],
)
async def test_an_unparsable_body_is_a_422_json_invalid_like_aiohttp(
    klavi_emulator: KlaviEmulator, raw: bytes
) -> None:
    async with served(ClientFactory(klavi_emulator)) as (_, http):
        response = await http.post(
            "/payments/pay-1/cancel", content=raw, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert klavi_emulator.requests == []


async def test_a_body_over_one_mib_is_a_413(klavi_emulator: KlaviEmulator) -> None:
    big = b'{"cancelled_by": "%s", "consent_id": "%s"}' % (CPF.encode(), b"x" * MAX_BODY_SIZE)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with served(ClientFactory(klavi_emulator)) as (_, http):
        declared = await http.post(
            "/payments/pay-1/cancel", content=big, headers={"Content-Type": "application/json"}
        )
        streamed = await http.post(
            "/payments/pay-1/cancel",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        payment_id = klavi_emulator.add_payment()
        at_the_limit = await http.post(
            f"/payments/{payment_id}/cancel",
            content=b'{"cancelled_by": "%s"}' % CPF.encode() + b" " * (MAX_BODY_SIZE - 40),
            headers={"Content-Type": "application/json"},
        )
    assert declared.status_code == 413
    assert "Content-Length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert CPF not in declared.text and CPF not in streamed.text
    assert at_the_limit.status_code == 200, at_the_limit.text
    assert klavi_emulator.effects[payment_id] == 1


@pytest.mark.parametrize("content_type", CURL_CONTENT_TYPES)
async def test_the_documented_curl_command_works_as_written(
    klavi_emulator: KlaviEmulator, content_type: str | None
) -> None:
    # `curl -d` sends a form content type (or a client none at all): FastAPI read a form
    # and answered 422 to the command docs/integrations.md shows; aiohttp read the JSON.
    path, body, headers = documented_curl(klavi_emulator, content_type)
    async with served(ClientFactory(klavi_emulator)) as (_, http):
        response = await http.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True
