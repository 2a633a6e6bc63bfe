"""The pytest fixtures shipped with the package (pytest11 entry point)."""

from __future__ import annotations

from klavi_async import KlaviClient
from klavi_async.testing import KlaviEmulator

from .conftest import CPF


async def test_fixtures_give_a_bound_client(
    klavi_emulator: KlaviEmulator, klavi_client: KlaviClient
) -> None:
    payment_id = klavi_emulator.add_payment("PAYMENT_SCHEDULED")
    result = await klavi_client.cancel_payment(payment_id, cancelled_by=CPF)
    assert result.ok
    assert klavi_emulator.effects[payment_id] == 1
    assert klavi_client.base_url == klavi_emulator.url


async def test_each_test_gets_a_fresh_emulator(klavi_emulator: KlaviEmulator) -> None:
    assert klavi_emulator.payments == {}
    assert klavi_emulator.requests == []
