"""
pytest fixtures for testing code that uses klavi_async, without the network.

Installed with the package (a `pytest11` entry point), so any project that depends on
klavi_async and pytest-asyncio can use them, in `strict` or `auto` mode:

```python
async def test_refund_flow(klavi_emulator, klavi_client):
    payment_id = klavi_emulator.add_payment("PAYMENT_PENDING")
    result = await klavi_client.cancel_payment(payment_id, cancelled_by="529.982.247-25")
    assert result.ok and klavi_emulator.effects[payment_id] == 1
```

pytest loads this module in every project where klavi_async is installed, so it must load
without pytest-asyncio too; there the fixtures fail with a message that says what to install.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import pytest

from .._client import KlaviClient
from .._retry import RetryPolicy
from .._tokens import ClientCredentials
from ._emulator import KlaviEmulator

__all__ = ["klavi_client", "klavi_emulator"]

_AsyncFixture = Callable[..., AsyncIterator[Any]]


def _needs_pytest_asyncio(function: _AsyncFixture) -> object:
    """Stands in for `pytest_asyncio.fixture`: a fixture that explains what is missing."""
    name = function.__name__

    def explain() -> NoReturn:
        pytest.fail(
            f"the {name} fixture is async and needs pytest-asyncio: pip install pytest-asyncio",
            pytrace=False,
        )

    explain.__doc__ = function.__doc__
    return pytest.fixture(name=name)(explain)


_async_fixture: Callable[[_AsyncFixture], object]
try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:
    _async_fixture = _needs_pytest_asyncio


@_async_fixture
async def klavi_emulator() -> AsyncIterator[KlaviEmulator]:
    """
    A started `KlaviEmulator` on 127.0.0.1 (a free port), closed after the test.

    Fresh for every test: no payments, no faults, an empty request log.  Seed payments with
    `add_payment()`, script faults with `script()`, and check `effects` and `requests`.
    """
    async with KlaviEmulator() as emulator:
        yield emulator


@_async_fixture
async def klavi_client(klavi_emulator: KlaviEmulator) -> AsyncIterator[KlaviClient]:
    """
    A `KlaviClient` bound to `klavi_emulator`, with its credentials and short backoffs.

    Retries wait 10-50 ms instead of seconds, so scripted 5xx and 429 faults keep tests
    fast.  Closed after the test (before the emulator).
    """
    credentials = ClientCredentials(klavi_emulator.access_key, klavi_emulator.secret_key)
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)
    async with KlaviClient(credentials, base_url=klavi_emulator.url, retry=policy) as client:
        yield client
