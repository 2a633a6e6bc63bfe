"""KlaviEmulator: endpoints, state machine, idempotency, faults, and the SDK through it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp
import pytest

from klavi_async import (
    CancelFailed,
    Cancelled,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy as Policy,
)
from klavi_async.testing import CANCELLABLE, FAULT_NAMES, KLAVI_STATUSES, Fault, KlaviEmulator

from .conftest import CPF, CPF_BARE, LeakGuard

FAST = Policy(initial_backoff=0.005, max_backoff=0.01, jitter=False)
BASE = "/payment/customer/v1"
BODY = json.dumps({"cancelledBy": CPF_BARE, "identifierType": "CPF"}).encode()


def client(emu: KlaviEmulator, **kwargs: object) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    credentials = ClientCredentials(emu.access_key, emu.secret_key)
    return KlaviClient(credentials, base_url=emu.url, **kwargs)  # type: ignore[arg-type]


async def token_for(emu: KlaviEmulator, session: aiohttp.ClientSession) -> str:
    async with session.post(
        f"{emu.url}{BASE}/auth", json={"accessKey": emu.access_key, "secretKey": emu.secret_key}
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["expireIn"] == emu.token_lifetime
    token: str = body["accessToken"]
    return token


async def test_auth_issues_jwt_shaped_tokens_and_rejects_bad_keys(leak_guard: LeakGuard) -> None:
    async with KlaviEmulator(token_lifetime=120) as emu, aiohttp.ClientSession() as session:
        token = await token_for(emu, session)
        leak_guard.add(token)
        from klavi_async._tokens import jwt_expiry

        assert token.count(".") == 2
        assert jwt_expiry(token) is not None
        async with session.post(
            f"{emu.url}{BASE}/auth", json={"accessKey": emu.access_key, "secretKey": "nope"}
        ) as response:
            assert response.status == 401
            assert (await response.json())["message"] == "Invalid accessKey or secretKey"
        async with session.post(f"{emu.url}{BASE}/auth", data=b"{oops") as response:
            assert response.status == 400
        assert emu.auth_calls == 3
        assert all(token not in repr(r) for r in emu.requests)


async def test_create_dedupes_by_client_request_id() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        body = {"clientRequestId": "order-1", "amount": "12.50", "currency": "BRL"}
        async with session.post(
            f"{emu.url}{BASE}/instant/payments", json=body, headers=headers
        ) as r:
            assert r.status == 201
            created = await r.json()
        async with session.post(
            f"{emu.url}{BASE}/instant/payments", json=body, headers=headers
        ) as r:
            assert r.status == 200
            again = await r.json()
        assert again["id"] == created["id"]
        assert created["status"] == "PAYMENT_PENDING"
        assert len(emu.payments) == 1
        async with session.get(
            f"{emu.url}{BASE}/instant/payments/{created['id']}", headers=headers
        ) as r:
            assert (await r.json())["amount"] == "12.50"
        bad = {"clientRequestId": "order-2", "status": "NOT_A_STATUS"}
        async with session.post(
            f"{emu.url}{BASE}/instant/payments", json=bad, headers=headers
        ) as r:
            assert r.status == 422
        async with session.post(
            f"{emu.url}{BASE}/instant/payments", json={"amount": "1"}, headers=headers
        ) as r:
            assert r.status == 422


async def test_requests_without_a_valid_token_are_401() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        payment_id = emu.add_payment()
        url = f"{emu.url}{BASE}/instant/payments/{payment_id}/cancel"
        async with session.post(url, data=BODY) as response:
            assert response.status == 401
        token = await token_for(emu, session)
        emu.expire_tokens()
        async with session.post(url, data=BODY, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401
        assert emu.effects[payment_id] == 0


async def test_sdk_refreshes_an_expired_token_and_replays() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        async with client(emu) as klavi:
            assert (await klavi.get_payment_status(payment_id)).status == "PAYMENT_PENDING"
            emu.expire_tokens()
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled)
        assert [a.http_status for a in result.history] == [401, 200]
        assert emu.auth_calls == 2


async def test_cancel_moves_cancellable_payments_to_canceled() -> None:
    async with KlaviEmulator() as emu:
        ids = {status: emu.add_payment(status) for status in sorted(CANCELLABLE)}
        async with client(emu) as klavi:
            for payment_id in ids.values():
                result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
                assert isinstance(result, Cancelled)
                assert result.body["status"] == "CANCELED"
        assert {emu.status_of(p) for p in ids.values()} == {"CANCELED"}
        assert all(emu.effects[p] == 1 for p in ids.values())


@pytest.mark.parametrize("status", sorted(KLAVI_STATUSES - CANCELLABLE))
async def test_other_statuses_are_refused_with_416(status: str) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment(status)
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        if status == "CANCELED":
            assert isinstance(result, Cancelled)
            assert result.already_cancelled and result.reconciled
        else:
            assert isinstance(result, CancelFailed)
            assert result.kind is ErrorKind.NOT_CANCELLABLE
            assert result.http_status == 416
            assert result.code == "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"
            assert result.payment_status == status
        assert emu.effects[payment_id] == 0


async def test_unknown_payment_and_wrong_consent_are_404() -> None:
    async with KlaviEmulator() as emu:
        automatic = emu.add_payment(consent_id="consent-1")
        async with client(emu) as klavi:
            missing = await klavi.cancel_payment("no-such-payment", cancelled_by=CPF)
            wrong = await klavi.cancel_automatic_payment("consent-2", automatic, cancelled_by=CPF)
            right = await klavi.cancel_automatic_payment("consent-1", automatic, cancelled_by=CPF)
            status = await klavi.get_payment_status(automatic, consent_id="consent-1")
        assert isinstance(missing, CancelFailed) and missing.kind is ErrorKind.NOT_FOUND
        assert isinstance(wrong, CancelFailed) and wrong.kind is ErrorKind.NOT_FOUND
        assert right.ok
        assert status.cancelled


async def test_malformed_and_invalid_cancel_bodies() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        payment_id = emu.add_payment()
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        url = f"{emu.url}{BASE}/instant/payments/{payment_id}/cancel"
        async with session.post(url, data=b"{not json", headers=headers) as response:
            assert response.status == 400
        bad = {"cancelledBy": "52998224726", "identifierType": "CPF"}
        async with session.post(url, json=bad, headers=headers) as response:
            assert response.status == 422
            assert "52998224726" not in await response.text()
        async with session.post(url, json={"cancelledBy": CPF_BARE}, headers=headers) as response:
            assert response.status == 422
        assert emu.effects[payment_id] == 0


async def test_idempotent_replay_and_conflict() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        payment_id = emu.add_payment()
        headers = {
            "Authorization": f"Bearer {await token_for(emu, session)}",
            "x-idempotency-key": "key-1",
        }
        url = f"{emu.url}{BASE}/instant/payments/{payment_id}/cancel"
        answers = []
        for _ in range(3):
            async with session.post(url, data=BODY, headers=headers) as response:
                answers.append((response.status, await response.read()))
        assert len(set(answers)) == 1
        assert answers[0][0] == 200
        assert emu.effects[payment_id] == 1
        assert [r.replayed for r in emu.records("cancel")] == [False, True, True]
        other = json.dumps({"cancelledBy": "11222333000181", "identifierType": "CNPJ"}).encode()
        async with session.post(url, data=other, headers=headers) as response:
            assert response.status == 409
        without_key = {"Authorization": headers["Authorization"]}
        async with session.post(url, data=BODY, headers=without_key) as response:
            assert response.status == 416  # no key: a plain second cancel is refused


@pytest.mark.parametrize(
    ("fault", "effect", "reconciled"),
    [
        (Fault.reset_after(), 1, False),  # the retry with the same key replays the 200
        (Fault.reset_before(), 1, False),
        (Fault.truncated(), 1, False),
        (Fault.malformed_json(), 1, False),
        (Fault.html_gateway(), 1, False),
        (Fault.of_status(503), 1, False),
        (Fault.of_status(500, after_effect=True), 1, False),
        (Fault.rate_limit(retry_after=0), 1, False),
        (Fault.latency(0.01), 1, False),
    ],
)
async def test_each_fault_then_a_clean_retry_cancels_exactly_once(
    fault: Fault, effect: int, reconciled: bool
) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [fault])
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled), result
        assert emu.effects[payment_id] == effect
        assert result.reconciled is reconciled
        first = emu.records("cancel")[0]
        assert first.fault == fault.name
        assert first.effect is fault.after_effect


async def test_ambiguous_failures_everywhere_are_reconciled() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.reset_after(), 500, 500, 500])
        async with client(emu, idempotency_header=None) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled)
        assert result.reconciled
        assert emu.effects[payment_id] == 1


async def test_failed_status_read_leaves_the_outcome_unknown() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.reset_after(), 503, 503, 503])
        emu.script("status", [503])
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, CancelFailed)
        assert result.outcome_unknown
        assert emu.effects[payment_id] == 1


async def test_latency_past_the_timeout_still_applies_the_effect() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.latency(0.3)])
        async with client(emu, timeout=0.1) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
            await asyncio.sleep(0.3)
        assert isinstance(result, Cancelled)
        assert result.history[0].kind is ErrorKind.TIMEOUT
        assert emu.effects[payment_id] == 1


async def test_random_faults_are_reproducible_with_a_seed() -> None:
    async def run(seed: int) -> list[str | None]:
        rates = {"503": 0.2, "reset_after": 0.1, "429": 0.1, "malformed_json": 0.1}
        async with KlaviEmulator(fault_rates=rates, seed=seed) as emu:
            ids = [emu.add_payment() for _ in range(40)]
            async with client(emu) as klavi:
                for payment_id in ids:
                    await klavi.cancel_payment(payment_id, cancelled_by=CPF)
            assert all(emu.effects[p] == 1 for p in ids)
            return [r.fault for r in emu.records("cancel")]

    first, second = await run(3), await run(3)
    assert first == second
    assert len(set(first)) > 2
    assert first != await run(4)


async def test_fault_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        KlaviEmulator(fault_rates={"teapot": 0.1})
    with pytest.raises(ValueError, match="at most 1"):
        KlaviEmulator(fault_rates={"503": 0.7, "500": 0.6})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KlaviEmulator(fault_rates={"503": 2})
    with pytest.raises(ValueError, match="unknown route"):
        KlaviEmulator().script("refund", [503])
    with pytest.raises(ValueError, match="tps_limit"):
        KlaviEmulator(tps_limit=0)
    with pytest.raises(ValueError, match="unknown Klavi status"):
        KlaviEmulator().add_payment("DONE")
    assert set(FAULT_NAMES) >= {"503", "429", "reset_after", "truncated"}
    with pytest.raises(RuntimeError, match="not running"):
        _ = KlaviEmulator().url


async def test_tps_limit_answers_429() -> None:
    async with KlaviEmulator(tps_limit=5) as emu:
        ids = [emu.add_payment() for _ in range(12)]
        async with client(emu, retry=Policy.disabled()) as klavi:
            results = await asyncio.gather(
                *(klavi.cancel_payment(p, cancelled_by=CPF) for p in ids)
            )
        kinds = Counter(getattr(r, "kind", None) for r in results)
        assert kinds[ErrorKind.RATE_LIMITED] >= 6
        assert any(r.fault == "tps_limit" for r in emu.requests)
        limited = next(r for r in results if isinstance(r, CancelFailed))
        assert limited.retry_after == 1.0


async def test_max_in_flight_is_measured() -> None:
    async with KlaviEmulator() as emu:
        ids = [emu.add_payment() for _ in range(20)]
        emu.script("cancel", [Fault.latency(0.05)] * 20)
        async with client(emu, max_connections=8) as klavi:
            await asyncio.gather(*(klavi.cancel_payment(p, cancelled_by=CPF) for p in ids))
        assert emu.max_in_flight == 8
        assert emu.in_flight == 0


async def test_request_log_never_holds_a_token(leak_guard: LeakGuard) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        async with client(emu) as klavi:
            await klavi.cancel_payment(payment_id, cancelled_by=CPF, idempotency_key="k-9")
        tokens = list(emu._tokens)
        assert tokens
        cancel = emu.records("cancel")[0]
        assert cancel.authorized
        assert cancel.idempotency_key == "k-9"
        assert cancel.interaction_id
        assert all(t not in repr(emu.requests) for t in tokens)
