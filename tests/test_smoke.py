import logging

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
