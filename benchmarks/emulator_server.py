"""
The emulator as a benchmark server, in its own process: every payment id is cancellable.

Unlike the minimal server, this runs the full `KlaviEmulator` (routing, token checks, body
validation, the state machine, idempotency bookkeeping), so it is slower than the client; the
numbers show the SDK against a realistic peer, not the SDK's own ceiling.  It accepts the
benchmark's fixed token and creates a pending payment for any id it has not seen.

    python benchmarks/emulator_server.py   # prints PORT <n>
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import suppress

from aiohttp import web

from klavi_async.testing import KlaviEmulator
from klavi_async.testing._emulator import Payment

TOKEN = "bench-token"


class BenchEmulator(KlaviEmulator):
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}" or super()._authorized(
            request
        )

    def _find(self, request: web.Request) -> Payment | None:
        payment_id = request.match_info["payment_id"]
        if payment_id not in self.payments:
            self.add_payment("PAYMENT_PENDING", payment_id=payment_id)
        return super()._find(request)


async def main() -> None:
    emulator = BenchEmulator()
    async with emulator:
        print(f"PORT {emulator.url.rsplit(':', 1)[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        asyncio.run(main())
