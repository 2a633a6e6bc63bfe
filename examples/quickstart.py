"""
Cancel a few payments end to end, with no credentials and no network.

Starts a tiny Klavi look-alike on 127.0.0.1 (its own aiohttp.web app), then cancels
payments through klavi_async: one succeeds at once, one after a 503, one is refused
because it already settled, one had already been cancelled, and one input is invalid.
Run it with `make demo` or `python examples/quickstart.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

from aiohttp import web

from klavi_async import (
    CancelFailed,
    Cancelled,
    CancelRequest,
    ClientCredentials,
    KlaviClient,
    RetryPolicy,
)

BASE = "/payment/customer/v1"
ACCESS_KEY, SECRET_KEY = "demo-access-key", "demo-secret-key"


def fake_jwt(lifetime: int) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': int(time.time()) + lifetime})}.sig"


def klavi_lookalike() -> web.Application:
    """Payments with statuses, one flaky route, and Klavi's refusal for settled payments."""
    status = {
        "pay-ok": "PAYMENT_PENDING",
        "pay-flaky": "PAYMENT_SCHEDULED",
        "pay-settled": "PAYMENT_COMPLETED",
        "pay-done": "CANCELED",
    }
    flaky_left = {"pay-flaky": 1}
    token = fake_jwt(300)

    async def auth(request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}:
            return web.json_response({"statusCode": 401, "message": "bad keys"}, status=401)
        return web.json_response({"accessToken": token, "expireIn": 300})

    async def cancel(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"statusCode": 401}, status=401)
        payment_id = request.match_info["id"]
        if flaky_left.get(payment_id, 0) > 0:
            flaky_left[payment_id] -= 1
            return web.json_response({"message": "try again"}, status=503)
        if payment_id not in status:
            return web.json_response({"message": "unknown payment"}, status=404)
        if status[payment_id] in ("PAYMENT_PENDING", "PAYMENT_SCHEDULED"):
            status[payment_id] = "CANCELED"
            return web.json_response({"id": payment_id, "status": "CANCELED"})
        refusal = {"errors": [{"code": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO", "title": "refused"}]}
        return web.json_response(refusal, status=416)

    async def read_status(request: web.Request) -> web.Response:
        payment_id = request.match_info["id"]
        return web.json_response({"id": payment_id, "status": status.get(payment_id, "ERROR")})

    app = web.Application()
    app.router.add_post(f"{BASE}/auth", auth)
    app.router.add_post(f"{BASE}/instant/payments/{{id}}/cancel", cancel)
    app.router.add_get(f"{BASE}/instant/payments/{{id}}/status", read_status)
    return app


def describe(result: Cancelled | CancelFailed) -> str:
    if isinstance(result, Cancelled):
        how = "already cancelled" if result.already_cancelled else "cancelled"
        return f"{how} after {result.attempts} attempt(s)"
    status = f", payment is {result.payment_status}" if result.payment_status else ""
    return f"{result.kind.value}: {result.message}{status}"


async def main() -> None:
    runner = web.AppRunner(klavi_lookalike())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with KlaviClient(
            ClientCredentials(ACCESS_KEY, SECRET_KEY),
            base_url=f"http://{host}:{port}",
            retry=RetryPolicy(initial_backoff=0.05),
        ) as klavi:
            single = await klavi.cancel_payment("pay-ok", cancelled_by="529.982.247-25")
            print(f"pay-ok          -> {describe(single)}")

            requests = [
                CancelRequest("pay-flaky", "52998224725"),
                CancelRequest("pay-settled", "11.222.333/0001-81"),
                CancelRequest("pay-done", "12.ABC.345/01DE-35"),
                CancelRequest("pay-typo", "529.982.247-26"),
            ]
            async for result in klavi.cancel_many(requests, concurrency=4):
                print(f"{result.payment_id:<15} -> {describe(result)}")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
