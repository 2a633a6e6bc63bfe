import logging
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from klavi_async import KlaviClient

from .conftest import CPF, CPF_BARE, TOKEN, LeakGuard, ServerFactory


async def test_cancel_against_loopback(serve: ServerFactory) -> None:
    async def cancel(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/payment/customer/v1/instant/payments/{id}/cancel", cancel)
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base) as client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert result.ok


async def test_leak_guard_sees_results_and_would_catch_a_leak(
    serve: ServerFactory, leak_guard: LeakGuard
) -> None:
    app = web.Application()
    base = await serve(app)
    async with KlaviClient(TOKEN, base_url=base) as client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert result in leak_guard.objects
    assert any("pay-1" in text for text in leak_guard.texts())
    probe = LeakGuard()
    probe.objects.append(ValueError(f"token {TOKEN}"))
    assert probe.leaks()
    probe = LeakGuard()
    probe.records.append(logging.makeLogRecord({"msg": "doc %s", "args": (CPF_BARE,)}))
    assert probe.leaks()


def test_an_unclosed_session_fails_the_suite(tmp_path: Path) -> None:
    """The project's pytest settings turn an unclosed aiohttp session into a failure."""
    leaky = tmp_path / "test_leaky.py"
    leaky.write_text(
        "import aiohttp, gc\n"
        "async def test_leaks():\n"
        "    aiohttp.ClientSession()\n"
        "    gc.collect()\n"
    )
    config = Path(__file__).resolve().parents[1] / "pyproject.toml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(config), "-p", "no:cacheprovider", str(leaky)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Unclosed client session" in result.stdout
