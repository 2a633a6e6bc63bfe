"""
The scripts in docs/integrations.md headed `# name.py: ...`, run as printed.

Two deadlines on one client against the emulator; a client certificate against a loopback
TLS server that demands one (a local CA from trustme); a proxy named in `HTTP_PROXY`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from klavi_async import CancelFailed, CancelRequest, ClientCredentials, ErrorKind, KlaviClient
from klavi_async.testing import KlaviEmulator

from ._webapps import ROOT
from .conftest import CPF, TOKEN, ServerFactory

CANCEL = "/payment/customer/v1/instant/payments/{id}/cancel"


def script(name: str) -> str:
    text = (ROOT / "docs" / "integrations.md").read_text()
    found = [
        block
        for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL)
        if block.startswith(f"# {name}: ")
    ]
    assert len(found) == 1, name
    return found[0]


def run_script(name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name.removesuffix(".py")}
    exec(compile(script(name), name, "exec"), namespace)  # noqa: S102  # our own docs
    return namespace


def use_emulator(monkeypatch: pytest.MonkeyPatch, emu: KlaviEmulator) -> None:
    monkeypatch.delenv("KLAVI_TOKEN", raising=False)
    monkeypatch.delenv("KLAVI_SINGLE_USE_TOKENS", raising=False)
    monkeypatch.setenv("KLAVI_BASE_URL", emu.url)
    monkeypatch.setenv("KLAVI_ACCESS_KEY", emu.access_key)
    monkeypatch.setenv("KLAVI_SECRET_KEY", emu.secret_key)


async def test_two_deadlines_on_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async with KlaviEmulator() as emu:
        use_emulator(monkeypatch, emu)
        names = run_script("two_deadlines.py")
        klavi, web_cancels = names["klavi"], names["web_cancels"]
        try:
            assert web_cancels.retry_policy.deadline == 3.0
            assert klavi.retry_policy.deadline == 30.0
            assert await names["cancel_for_web"](emu.add_payment(), CPF)
            requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(5)]
            assert await names["work"](requests) == 5
            assert emu.auth_calls == 1  # one token cache for both
        finally:
            await klavi.aclose()
        assert web_cancels.closed


# -- a client certificate ----------------------------------------------------------------


@pytest.fixture
async def mtls_server(tmp_path: Path) -> AsyncIterator[tuple[str, list[str], trustme.CA]]:
    """HTTPS on loopback that demands a client certificate from its CA: URL, names seen."""
    ca = trustme.CA()
    seen: list[str] = []

    async def cancel(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        seen.append(subject.get("commonName", ""))
        return web.json_response({"status": "CANCELED"})

    app = web.Application()
    app.router.add_post(CANCEL, cancel)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(ssl=context)
    yield f"https://localhost:{server.port}", seen, ca
    await server.close()


async def test_the_client_certificate_script(
    mtls_server: tuple[str, list[str], trustme.CA],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, seen, ca = mtls_server
    client_cert = ca.issue_cert("refunds-service", common_name="refunds-service")
    ca.cert_pem.write_to_path(str(tmp_path / "klavi-ca.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client-cert.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "client-key.pem"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KLAVI_ACCESS_KEY", raising=False)
    monkeypatch.delenv("KLAVI_SECRET_KEY", raising=False)
    monkeypatch.setenv("KLAVI_TOKEN", TOKEN)
    monkeypatch.setenv("KLAVI_BASE_URL", url)
    klavi = run_script("mtls.py")["klavi"]
    async with klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert result.ok, result
    assert seen == ["refunds-service"]


async def test_without_the_client_certificate_the_handshake_fails(
    mtls_server: tuple[str, list[str], trustme.CA],
) -> None:
    url, seen, ca = mtls_server
    context = ssl.create_default_context()
    ca.configure_trust(context)  # trusts the server, has no certificate of its own
    async with KlaviClient(TOKEN, base_url=url, ssl=context) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed), result
    assert result.kind is ErrorKind.NETWORK and result.retryable
    assert seen == []  # the server never took the request
    # Under TLS 1.3 the client learns of the refusal only after sending (a reset), so it
    # cannot know the cancel was not taken: outcome unknown, as the docs say.
    assert result.outcome_unknown and result.history[0].ambiguous


# -- a proxy -----------------------------------------------------------------------------


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length",
        "content-encoding", "host"}  # fmt: skip


async def test_the_proxy_script(serve: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    forwarded: list[str] = []
    target = ""

    async def forward(request: web.Request) -> web.Response:
        # A forward proxy for one target: the emulator.
        forwarded.append(f"{request.method} {request.path}")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                target + request.path_qs,
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, body=body, headers=kept)

    proxy = web.Application()
    proxy.router.add_route("*", "/{tail:.*}", forward)
    proxy_url = await serve(proxy)
    async with KlaviEmulator() as emu:
        target = emu.url
        use_emulator(monkeypatch, emu)
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        payments = [emu.add_payment() for _ in range(3)]
        assert await run_script("proxy.py")["cancel_all"](payments, CPF) == 3
        assert all(emu.effects[p] == 1 for p in payments)
    assert "POST /payment/customer/v1/auth" in forwarded
    cancels = [f"POST /payment/customer/v1/instant/payments/{p}/cancel" for p in payments]
    assert sorted(f for f in forwarded if f.endswith("/cancel")) == sorted(cancels)


async def test_with_access_keys_a_missing_certificate_fails_the_token_fetch(
    mtls_server: tuple[str, list[str], trustme.CA],
) -> None:
    url, seen, ca = mtls_server
    context = ssl.create_default_context()
    ca.configure_trust(context)
    credentials = ClientCredentials("access-key-1234", "secret-key-5678")
    async with KlaviClient(credentials, base_url=url, ssl=context) as klavi:
        result = await klavi.cancel_payment("p1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed), result
    assert result.kind is ErrorKind.AUTHENTICATION_FAILED and result.retryable
    assert result.attempts == 0 and not result.outcome_unknown  # nothing sent
    assert "the auth endpoint failed (network:" in result.message
    assert seen == []
