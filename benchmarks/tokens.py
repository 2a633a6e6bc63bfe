"""
Tokens under load: 10k concurrent cancels with an expired token make one auth call, and
the cached-token path costs a few microseconds per call.

    python benchmarks/tokens.py [--cancels 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import server

from klavi_async import ClientCredentials, KlaviClient
from klavi_async._tokens import StaticToken, TokenCache


class JumpClock:
    """A monotonic clock that can be moved forward, to expire the cached token at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def expired_token_storm(base: str, cancels: int) -> tuple[int, float]:
    clock = JumpClock()
    credentials = ClientCredentials("bench-access-key", "bench-secret-key")
    async with KlaviClient(credentials, base_url=base, clock=clock, max_connections=256) as klavi:
        assert (await klavi.cancel_payment("warm-up", cancelled_by="52998224725")).ok
        clock.offset += 7200  # the 3600 s token is now expired
        before = klavi.token_fetches
        started = time.perf_counter()
        results = await asyncio.gather(
            *(klavi.cancel_payment(f"pay-{i}", cancelled_by="52998224725") for i in range(cancels))
        )
        elapsed = time.perf_counter() - started
        assert all(r.ok for r in results)
        return klavi.token_fetches - before, elapsed


async def cached_path_cost(rounds: int = 200_000) -> tuple[float, float]:
    cache = TokenCache(StaticToken("bench-token"))
    await cache.get()
    started = time.perf_counter()
    for _ in range(rounds):
        cache.peek()
    peek = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        await cache.get()
    get = (time.perf_counter() - started) / rounds
    return peek, get


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cancels", type=int, default=10_000)
    args = parser.parse_args()
    with server() as base:
        fetches, elapsed = asyncio.run(expired_token_storm(base, args.cancels))
    print(
        f"{args.cancels:,} concurrent cancels with an expired token: {fetches} auth call(s), {elapsed:.1f} s"
    )
    peek, get = asyncio.run(cached_path_cost())
    print(f"cached token: peek() {peek * 1e6:.2f} µs, await get() {get * 1e6:.2f} µs per call")
    if fetches != 1:
        raise SystemExit(f"expected exactly one auth call, saw {fetches}")


if __name__ == "__main__":
    main()
