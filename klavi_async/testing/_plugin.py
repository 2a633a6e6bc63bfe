"""
pytest fixtures for testing code that uses klavi_async, without the network.

Installed with the package (a `pytest11` entry point), so any project that depends on
klavi_async and pytest-asyncio can use them:

```python
async def test_refund_flow(klavi_emulator, klavi_client):
    payment_id = klavi_emulator.add_payment("PAYMENT_PENDING")
    result = await klavi_client.cancel_payment(payment_id, cancelled_by="529.982.247-25")
    assert result.ok and klavi_emulator.effects[payment_id] == 1
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .._client import KlaviClient
from .._retry import RetryPolicy
from .._tokens import ClientCredentials
from ._emulator import KlaviEmulator

__all__ = ["klavi_client", "klavi_emulator"]


@pytest_asyncio.fixture
async def klavi_emulator() -> AsyncIterator[KlaviEmulator]:
    """A started `KlaviEmulator` on 127.0.0.1 (a free port), closed after the test."""
    async with KlaviEmulator() as emulator:
        yield emulator


@pytest_asyncio.fixture
async def klavi_client(klavi_emulator: KlaviEmulator) -> AsyncIterator[KlaviClient]:
    """
    A `KlaviClient` bound to `klavi_emulator`, with its credentials and short backoffs.

    Closed after the test.
    """
    credentials = ClientCredentials(klavi_emulator.access_key, klavi_emulator.secret_key)
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    async with KlaviClient(credentials, base_url=klavi_emulator.url, retry=policy) as client:
        yield client
