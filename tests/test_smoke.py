from aiohttp import web

from klavi_async import KlaviClient

from .conftest import CPF, TOKEN, ServerFactory


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
