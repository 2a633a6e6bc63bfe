"""KlaviClient construction, lifecycle, session ownership, wire format."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import platform
import types
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import klavi_async
from klavi_async import (
    CancelFailed,
    Cancelled,
    CancelRequest,
    ClientClosedError,
    ClientCredentials,
    Environment,
    ErrorKind,
    KlaviClient,
    RetryBudget,
    RetryPolicy,
    StaticToken,
)

from .conftest import CNPJ, CNPJ_ALNUM, CPF, CPF_BARE, SECRET_KEY, TOKEN, ServerFactory
from .fakes import AUTO_CANCEL, CANCEL, Reply, ScriptedKlavi


async def test_public_names_match_the_contract() -> None:
    contract = {
        "KlaviClient",
        "Environment",
        "CancelRequest",
        "Cancelled",
        "CancelFailed",
        "ErrorKind",
        "Attempt",
        "PaymentStatus",
        "RetryPolicy",
        "RetryBudget",
        "TokenProvider",
        "AccessToken",
        "StaticToken",
        "ClientCredentials",
        "KlaviError",
        "deterministic_idempotency_key",
    }
    assert contract <= set(klavi_async.__all__)
    # The package imports its names on first use: each one in __all__ resolves, and
    # nothing else is offered as public.
    assert set(klavi_async.__all__) == set(klavi_async._EXPORTS)
    for name in klavi_async.__all__:
        value = getattr(klavi_async, name)
        assert getattr(value, "__name__", name) == name
    offered = {
        name
        for name in dir(klavi_async)
        if name.isidentifier()  # not pytest's assertion-rewriting helpers
        and not name.startswith("_")
        and not isinstance(getattr(klavi_async, name), types.ModuleType)
    }
    assert offered == set(klavi_async.__all__)  # not the helpers it imports (Any, Final)
    assert {name for name in dir(klavi_async) if name.startswith("_")} <= {
        "__version__",
        *(name for name in vars(klavi_async) if name.startswith("__")),
    }
    assert klavi_async.__version__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        klavi_async.Nope  # type: ignore[attr-defined]  # noqa: B018


def test_a_type_checker_never_sees_the_lazy_getattr() -> None:
    # A module `__getattr__` returning Any would make every misspelt name type-check.
    tree = ast.parse(Path(klavi_async.__file__).read_text())
    (guard,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "not TYPE_CHECKING"
    ]
    assert [n.name for n in guard.body if isinstance(n, ast.FunctionDef)] == ["__getattr__"]
    top = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "__getattr__" not in top


async def test_defaults_to_the_sandbox_host() -> None:
    client = KlaviClient(TOKEN)
    assert client.base_url == "https://api-sandbox.klavi.ai"
    assert KlaviClient(TOKEN, environment=Environment.PRODUCTION).base_url == (
        "https://api.klavi.ai"
    )
    assert KlaviClient(TOKEN, environment=Environment.TESTING).base_url == (
        "https://api-testing.klavi.ai"
    )


@pytest.mark.parametrize(
    "url",
    ["http://api.klavi.ai", "http://10.0.0.1:8080", "ftp://127.0.0.1", "not a url", "/relative"],
)
async def test_rejects_plain_http_and_bad_urls_at_construction(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        KlaviClient(TOKEN, base_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9", "http://127.8.9.10", "http://[::1]:8080", "http://localhost"]
)
async def test_allows_http_to_loopback(url: str) -> None:
    assert KlaviClient(TOKEN, base_url=url + "/").base_url == url


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, ValueError),
        ({"timeout": "10"}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"max_connections": 1.5}, TypeError),
        ({"retry": {"max_attempts": 3}}, TypeError),
        ({"retry_budget": 0.2}, TypeError),
        ({"session": object()}, TypeError),
        ({"idempotency_header": " "}, ValueError),
        ({"ssl": "yes"}, TypeError),
        ({"environment": "sandbox"}, TypeError),
        ({"cancel_path": "/payments/cancel"}, ValueError),
        ({"automatic_cancel_path": "/x/{payment_id}"}, ValueError),
        ({"cancel_path": "/payments/{payment_id}/cancel?force=1"}, ValueError),
        ({"status_path": "/payments/{payment_id}#status"}, ValueError),
    ],
)
async def test_bad_configuration_fails_at_construction(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        KlaviClient(TOKEN, **kwargs)  # type: ignore[arg-type]


async def test_rejects_an_unusable_token_provider() -> None:
    with pytest.raises(TypeError, match="token_provider"):
        KlaviClient(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        KlaviClient("")


async def test_repr_shows_no_secret() -> None:
    for provider in (TOKEN, StaticToken(TOKEN), ClientCredentials("ak-123456789", SECRET_KEY)):
        text = repr(KlaviClient(provider))
        assert TOKEN not in text
        assert SECRET_KEY not in text
        assert "api-sandbox.klavi.ai" in text


async def test_from_env_reads_credentials_and_target(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY", "KLAVI_TOKEN", "KLAVI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVI_ENVIRONMENT", "Production")
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    client = KlaviClient.from_env()
    assert client.base_url == "https://api.klavi.ai"
    assert TOKEN not in repr(client)

    monkeypatch.setenv("KLAVI_ACCESS_KEY", "ak-env-123456")
    monkeypatch.setenv("KLAVI_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("KLAVI_BASE_URL", "http://127.0.0.1:9999")
    client = KlaviClient.from_env(timeout=3.0)
    assert client.base_url == "http://127.0.0.1:9999"
    assert "ClientCredentials" in repr(client)
    assert SECRET_KEY not in repr(client)


async def test_from_env_explains_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY", "KLAVI_TOKEN", "KLAVI_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="no Klavi credentials"):
        KlaviClient.from_env()
    monkeypatch.setenv("KLAVI_ACCESS_KEY", "ak-only")
    with pytest.raises(ValueError, match="both"):
        KlaviClient.from_env()
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    monkeypatch.setenv("KLAVI_ENVIRONMENT", "staging")
    with pytest.raises(ValueError, match="unknown Klavi environment"):
        KlaviClient.from_env()


@pytest.mark.parametrize(
    ("value", "single_use"), [("1", True), ("YES", True), ("on", True), ("0", False), ("", False)]
)
async def test_from_env_reads_single_use_tokens(
    monkeypatch: pytest.MonkeyPatch, value: str, single_use: bool
) -> None:
    monkeypatch.delenv("KLAVI_TOKEN", raising=False)
    monkeypatch.setenv("KLAVI_ACCESS_KEY", "ak-env-123456")
    monkeypatch.setenv("KLAVI_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("KLAVI_SINGLE_USE_TOKENS", value)
    client = KlaviClient.from_env()
    assert f"single_use={single_use}" in repr(client)


async def test_from_env_refuses_single_use_tokens_it_cannot_give(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KLAVI_ACCESS_KEY", "KLAVI_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    monkeypatch.setenv("KLAVI_SINGLE_USE_TOKENS", "1")
    with pytest.raises(ValueError, match="a fixed KLAVI_TOKEN cannot be renewed") as caught:
        KlaviClient.from_env()
    assert TOKEN not in str(caught.value)
    monkeypatch.setenv("KLAVI_SINGLE_USE_TOKENS", "sometimes")
    with pytest.raises(ValueError, match="KLAVI_SINGLE_USE_TOKENS must be 1 or 0"):
        KlaviClient.from_env()


async def test_use_after_close_raises_a_clear_error(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    client = KlaviClient(TOKEN, base_url=base)
    async with client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    assert client.closed
    await client.aclose()  # idempotent
    with pytest.raises(ClientClosedError, match="closed"):
        await client.cancel_payment("p1", cancelled_by=CPF)
    with pytest.raises(ClientClosedError):
        await client.get_payment_status("p1")
    with pytest.raises(ClientClosedError):
        client.cancel_many([])
    with pytest.raises(ClientClosedError):
        async with client:
            pass
    assert isinstance(ClientClosedError("x"), RuntimeError)


async def test_works_without_async_with_and_closes_its_session(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    client = KlaviClient(TOKEN, base_url=base)
    assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    session = client._transport.session
    assert session is not None and not session.closed
    assert len(client._canceller.documents) == 1  # the validated document, remembered ...
    await client.aclose()
    assert session.closed
    assert len(client._canceller.documents) == 0  # ... until the client closes


async def test_borrowed_session_is_used_and_never_closed(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with aiohttp.ClientSession() as session:
        async with KlaviClient(TOKEN, base_url=base, session=session) as client:
            assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
        assert not session.closed
        assert fake.seen[0].headers["User-Agent"].startswith("klavi-async/")


async def test_a_closed_borrowed_session_is_misuse(serve: ServerFactory) -> None:
    base = await ScriptedKlavi().start(serve)
    session = aiohttp.ClientSession()
    await session.close()
    client = KlaviClient(TOKEN, base_url=base, session=session)
    with pytest.raises(RuntimeError, match="closed"):
        await client.cancel_payment("p1", cancelled_by=CPF)
    await client.aclose()


async def test_wire_format_of_a_cancel(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base) as client:
        result = await client.cancel_payment("pay-123", cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    (seen,) = fake.seen
    assert seen.path == "/payment/customer/v1/instant/payments/pay-123/cancel"
    assert json.loads(seen.body) == {"cancelledBy": CPF_BARE, "identifierType": "CPF"}
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["x-idempotency-key"] == result.idempotency_key
    assert uuid.UUID(seen.headers["x-idempotency-key"]).version == 4
    assert seen.headers["x-fapi-interaction-id"] == result.interaction_id
    assert uuid.UUID(result.interaction_id).version == 4
    ua = seen.headers["User-Agent"]
    assert ua.startswith(f"klavi-async/{klavi_async.__version__} ")
    assert f"Python/{platform.python_version()}" in ua
    assert f"aiohttp/{aiohttp.__version__}" in ua


async def test_cnpj_and_alphanumeric_cnpj_are_sent_bare(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base) as client:
        assert (await client.cancel_payment("p1", cancelled_by=CNPJ)).ok
        assert (await client.cancel_payment("p2", cancelled_by=CNPJ_ALNUM.lower())).ok
    bodies = [json.loads(s.body) for s in fake.seen]
    assert bodies == [
        {"cancelledBy": "11222333000181", "identifierType": "CNPJ"},
        {"cancelledBy": "12ABC34501DE35", "identifierType": "CNPJ"},
    ]


async def test_caller_key_is_sent_as_given_and_header_is_configurable(
    serve: ServerFactory,
) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, idempotency_header="Idempotency-Key") as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF, idempotency_key="my key/1")
    assert result.idempotency_key == "my key/1"
    assert fake.seen[0].headers["Idempotency-Key"] == "my key/1"
    assert "x-idempotency-key" not in fake.seen[0].headers


async def test_idempotency_header_can_be_switched_off(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, idempotency_header=None) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert result.idempotency_key is None
    assert "x-idempotency-key" not in fake.seen[0].headers


async def test_automatic_pix_cancel_uses_the_consent_path(serve: ServerFactory) -> None:
    fake = ScriptedKlavi()
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base) as client:
        result = await client.cancel_automatic_payment("consent-9", "pay-7", cancelled_by=CNPJ)
    assert result.ok
    assert result.consent_id == "consent-9"
    assert fake.seen[0].path == AUTO_CANCEL.format(consent="consent-9", id="pay-7")


async def test_path_templates_are_configurable(serve: ServerFactory) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v2/cancel/{id}", handler)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base, cancel_path="/v2/cancel/{payment_id}") as client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    assert seen == ["/v2/cancel/p1"]


async def test_base_url_path_prefix_is_kept(serve: ServerFactory) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/gw" + CANCEL, handler)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base + "/gw/") as client:
        assert (await client.cancel_payment("p1", cancelled_by=CPF)).ok
    assert seen == ["/gw/payment/customer/v1/instant/payments/p1/cancel"]


async def test_redirects_are_not_followed(serve: ServerFactory) -> None:
    hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_post(CANCEL, moved)
    app.router.add_post("/elsewhere", elsewhere)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base) as client:
        result = await client.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.UNEXPECTED_RESPONSE
    assert result.http_status == 307
    assert not result.retryable
    assert hits == ["/payment/customer/v1/instant/payments/p1/cancel"]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((123,), {"cancelled_by": CPF}),
        (("p1",), {"cancelled_by": 52998224725}),
        (("p1",), {"cancelled_by": CPF, "identifier_type": 1}),
        (("p1",), {"cancelled_by": CPF, "idempotency_key": b"k"}),
    ],
)
async def test_wrong_argument_types_raise_type_error(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(TypeError):
            await client.cancel_payment(*args, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await client.get_payment_status(1)  # type: ignore[arg-type]


async def test_budget_and_policy_are_per_client_unless_shared() -> None:
    first, second = KlaviClient(TOKEN), KlaviClient(TOKEN)
    assert first.retry_budget is not second.retry_budget
    assert first.retry_policy == RetryPolicy()
    shared = RetryBudget()
    assert KlaviClient(TOKEN, retry_budget=shared).retry_budget is shared


async def test_max_connections_bounds_the_pool(serve: ServerFactory) -> None:
    fake = ScriptedKlavi(default={CANCEL: Reply(200, {}, delay=0.05)})
    base = await fake.start(serve)
    async with KlaviClient(TOKEN, base_url=base, max_connections=3) as client:
        results = await asyncio.gather(
            *(client.cancel_payment(f"p{i}", cancelled_by=CPF) for i in range(12))
        )
    assert all(r.ok for r in results)
    assert fake.max_in_flight == 3


async def test_a_cancelled_aclose_still_forgets_the_documents() -> None:
    async def hanging_provider() -> str:
        await asyncio.sleep(3600)
        return TOKEN

    client = KlaviClient(hanging_provider, base_url="http://127.0.0.1:9")
    batch = client.cancel_many([CancelRequest("p1", CPF)], concurrency=1)
    pending = asyncio.ensure_future(anext(batch))
    while not len(client._canceller.documents):  # validated, now waiting for a token
        await asyncio.sleep(0.001)
    closing = asyncio.ensure_future(client.aclose())
    await asyncio.sleep(0)  # aclose() is waiting for the batch's worker
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert client.closed
    assert len(client._canceller.documents) == 0
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, ClientClosedError):
        await pending
    await batch.aclose()
    await client.aclose()


# Folded in from test_units.py.


async def test_a_document_passed_as_payment_id_is_not_echoed() -> None:
    from klavi_async import KlaviClient

    async with KlaviClient(TOKEN, base_url="http://127.0.0.1:9") as client:
        result = await client.cancel_payment(CPF, cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.INVALID_REQUEST
    assert CPF not in repr(result)
    assert result.payment_id == "***.982.247-**"


def test_a_client_used_on_a_second_event_loop_is_misuse_not_a_result() -> None:
    # Before: CancelFailed(INVALID_REQUEST, "the request could not be built
    # (RuntimeError)", retryable=False), as if the payment could never be cancelled.
    from .test_cli_process import emulator_in_thread

    with emulator_in_thread() as emu:
        first, second = emu.add_payment(), emu.add_payment()
        credentials = ClientCredentials(emu.access_key, emu.secret_key)
        klavi = KlaviClient(credentials, base_url=emu.url)
        home = asyncio.new_event_loop()
        try:
            assert home.run_until_complete(klavi.cancel_payment(first, cancelled_by=CPF)).ok
            with pytest.raises(RuntimeError, match="belongs to another event loop"):
                asyncio.run(klavi.cancel_payment(second, cancelled_by=CPF))
            assert emu.effects.get(second, 0) == 0
        finally:
            home.run_until_complete(klavi.aclose())
            home.close()
