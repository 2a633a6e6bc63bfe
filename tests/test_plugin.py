"""The pytest fixtures shipped with the package (pytest11 entry point)."""

from __future__ import annotations

import pytest

from klavi_async import KlaviClient
from klavi_async.testing import KlaviEmulator

from .conftest import CPF

pytest_plugins = ["pytester"]

# A user's test file: plain pytest-asyncio in its default strict mode, no conftest.
USER_TESTS = """
import pytest

@pytest.mark.asyncio
async def test_cancel(klavi_emulator, klavi_client):
    payment_id = klavi_emulator.add_payment("PAYMENT_PENDING")
    result = await klavi_client.cancel_payment(payment_id, cancelled_by="529.982.247-25")
    assert result.ok
    assert klavi_emulator.effects[payment_id] == 1

@pytest.mark.asyncio
async def test_refusal(klavi_emulator, klavi_client):
    payment_id = klavi_emulator.add_payment("PAYMENT_COMPLETED")
    result = await klavi_client.cancel_payment(payment_id, cancelled_by="529.982.247-25")
    assert result.kind.value == "not_cancellable"
"""


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


def test_the_entry_point_serves_a_strict_mode_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-W",
        "error",
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    result.assert_outcomes(passed=2)


def test_the_plugin_loads_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    # pytest imports the plugin in every project that has klavi_async installed; one
    # without pytest-asyncio must still run, and be told what the fixtures need.  A module
    # in the test directory shadows the installed pytest_asyncio.
    pytester.makepyfile(pytest_asyncio="raise ImportError('no pytest-asyncio here')")
    pytester.makepyfile(
        test_user="""
        def test_plain():
            pass

        def test_uses_the_emulator(klavi_emulator):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-W", "error")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*klavi_emulator fixture is async and needs pytest-asyncio*"])
