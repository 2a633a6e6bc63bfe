"""
The emulator as a benchmark server, in its own process: every payment id is cancellable.

Unlike the minimal server, this runs the full `KlaviEmulator` (routing, token checks, body
validation, the state machine, idempotency bookkeeping), so it is slower than the client; the
numbers show the SDK against a realistic peer, not the SDK's own ceiling.  It accepts the
benchmark's fixed token and creates a pending payment for any id it has not seen.

    python benchmarks/emulator_server.py [--tps-limit N] [--uvloop]   # prints PORT <n>

With `--tps-limit N` it answers 429 (`Retry-After: 1`) beyond N accepted requests in any
second, as Klavi does beyond an account's rate.  `GET /_bench/log` returns the request
log so far as JSON: one `[time, status, route, payment_id]` row per request, `time` on
the machine's monotonic clock (the same clock as `time.monotonic()` in any other process
on this machine), `status` null for a dropped connection.  The route itself is not
logged and not rate limited.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from contextlib import suppress

from aiohttp import web

from klavi_async.testing import KlaviEmulator
from klavi_async.testing._emulator import Payment

TOKEN = "bench-token"


class BenchEmulator(KlaviEmulator):
    def __init__(self, *, tps_limit: float | None = None) -> None:
        super().__init__(tps_limit=tps_limit)
        self.app.router.add_get("/_bench/log", self._bench_log)

    def _authorized(self, request: web.Request, payment_id: str | None = None) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}" or super()._authorized(
            request, payment_id
        )

    def _find(self, request: web.Request) -> Payment | None:
        payment_id = request.match_info["payment_id"]
        if payment_id not in self.payments:
            self.add_payment("PAYMENT_PENDING", payment_id=payment_id)
        return super()._find(request)

    async def _bench_log(self, request: web.Request) -> web.Response:
        rows = [[r.time, r.status, r.route, r.payment_id] for r in self.requests]
        return web.json_response(rows)


def _tps_limit(value: str) -> float:
    limit = float(value)
    if not limit > 0:
        raise argparse.ArgumentTypeError("the TPS limit must be > 0")
    return limit


async def serve(tps_limit: float | None) -> None:
    emulator = BenchEmulator(tps_limit=tps_limit)
    async with emulator:
        print(f"PORT {emulator.url.rsplit(':', 1)[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--tps-limit", type=_tps_limit, default=None, help="429 beyond N requests per second"
    )
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(args.tps_limit))


if __name__ == "__main__":
    main()
