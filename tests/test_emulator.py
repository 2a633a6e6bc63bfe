"""KlaviEmulator: endpoints, state machine, idempotency, faults, and the SDK through it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from klavi_async import (
    CancelFailed,
    Cancelled,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy as Policy,
)
from klavi_async.testing import (
    CANCELLABLE,
    FAULT_NAMES,
    KLAVI_STATUSES,
    Fault,
    KlaviEmulator,
    RandomFaults,
)

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
    ("fault", "attempts"),
    [
        (Fault.reset_after(), 2),  # the retry with the same key replays the stored 200
        (Fault.reset_before(), 2),
        (Fault.malformed_json(), 1),  # a 200 with a body that is not JSON is still a 200
        (Fault.html_gateway(), 2),
        (Fault.of_status(503), 2),
        (Fault.of_status(500, after_effect=True), 2),
        (Fault.rate_limit(retry_after=0), 2),
        (Fault.latency(0.01), 1),
    ],
    ids=lambda value: value.name if isinstance(value, Fault) else str(value),
)
async def test_each_fault_then_a_clean_retry_cancels_exactly_once(
    fault: Fault, attempts: int
) -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [fault])
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled), result
        assert result.attempts == attempts
        assert not result.reconciled
        assert emu.effects[payment_id] == 1
        records = emu.records("cancel")
        assert [r.fault for r in records] == [fault.name] + [None] * (attempts - 1)
        assert records[0].effect is fault.after_effect
        assert [r.replayed for r in records[1:]] == [fault.after_effect] * (attempts - 1)


async def test_a_truncated_200_is_settled_by_the_status_read() -> None:
    # The status line said 200 but the body was cut: not a success by itself; the cancel is
    # not re-sent (it may have been applied) and the status read finds it CANCELED.
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.truncated()])
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled), result
        assert result.attempts == 1
        assert result.reconciled
        assert emu.effects[payment_id] == 1
        assert [r.fault for r in emu.records("cancel")] == [Fault.truncated().name]


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
        emu.script("status", [503] * FAST.max_attempts)  # every read fails (reads are retried)
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


async def test_auth_wants_both_keys_as_strings_and_takes_any_text() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        url = f"{emu.url}{BASE}/auth"
        for body in ({"accessKey": emu.access_key}, {"accessKey": 1, "secretKey": "x"}, [1]):
            async with session.post(url, json=body) as response:
                assert response.status == 400
        async with session.post(url, json={"accessKey": "chave-é", "secretKey": "ñ"}) as response:
            assert response.status == 401
    async with KlaviEmulator(access_key="chave-é", secret_key="segredo-ñ") as emu:
        payment_id = emu.add_payment()
        async with client(emu) as klavi:
            assert (await klavi.cancel_payment(payment_id, cancelled_by=CPF)).ok


async def test_auth_calls_count_faulted_requests_too() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("auth", [503, Fault.reset_before()])
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled)
        assert emu.auth_calls == 3
        assert [(r.fault, r.status) for r in emu.records("auth")] == [
            ("503", 503),
            ("reset_before", None),
            (None, 200),
        ]


async def test_tokens_expire_on_the_emulator_clock() -> None:
    now = [1_000_000.0]
    async with (
        KlaviEmulator(token_lifetime=60, clock=lambda: now[0]) as emu,
        aiohttp.ClientSession() as session,
    ):
        from klavi_async._tokens import jwt_expiry

        payment_id = emu.add_payment()
        token = await token_for(emu, session)
        assert jwt_expiry(token) == 1_000_060
        url = f"{emu.url}{BASE}/instant/payments/{payment_id}/status"
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 200
        now[0] += 60
        async with session.get(url, headers=headers) as response:
            assert response.status == 401
        async with session.get(url, headers={"Authorization": token}) as response:
            assert response.status == 401  # no "Bearer " scheme


async def test_status_and_payment_reads_have_klavi_shapes() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        instant = emu.add_payment("CONSENT_AUTHORIZED", amount="99.90")
        automatic = emu.add_payment("PAYMENT_SCHEDULED", consent_id="consent-7")
        async with session.get(
            f"{emu.url}{BASE}/instant/payments/{instant}/status", headers=headers
        ) as response:
            status = await response.json()
        assert set(status) == {
            "id",
            "clientRequestId",
            "amount",
            "currency",
            "status",
            "statusReason",
            "statusUpdateAt",
        }
        assert (status["id"], status["amount"], status["status"]) == (
            instant,
            "99.90",
            "CONSENT_AUTHORIZED",
        )
        assert set(status["statusReason"]) == {"code", "message"}
        emu.set_status(instant, "PAYMENT_COMPLETED")
        async with session.get(
            f"{emu.url}{BASE}/instant/payments/{instant}", headers=headers
        ) as response:
            assert (await response.json())["status"] == "PAYMENT_COMPLETED"
        path = f"{BASE}/automatic/consents/consent-7/payments/{automatic}/status"
        async with session.get(f"{emu.url}{path}", headers=headers) as response:
            assert (await response.json())["status"] == "PAYMENT_SCHEDULED"
        # An automatic payment lives under its consent only.
        for path in (
            f"{BASE}/instant/payments/{automatic}/status",
            f"{BASE}/automatic/consents/other/payments/{automatic}/status",
            f"{BASE}/instant/payments/no-such-id",
        ):
            async with session.get(f"{emu.url}{path}", headers=headers) as response:
                assert response.status == 404, path
        with pytest.raises(ValueError, match="unknown Klavi status"):
            emu.set_status(instant, "SETTLED")


async def test_start_close_and_other_runners() -> None:
    emu = KlaviEmulator()
    url = await emu.start()
    try:
        assert url == emu.url
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith("/")
        assert await emu.start() == url  # already running: same server
        taken = int(url.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="in use"):
            await KlaviEmulator(port=taken).start()
    finally:
        await emu.close()
        await emu.close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.url

    # `app` is a plain aiohttp application: any runner can serve it.
    other = KlaviEmulator(access_key="ak", secret_key="sk")
    async with (
        TestServer(other.app) as server,
        aiohttp.ClientSession() as session,
        session.post(
            server.make_url(f"{BASE}/auth"), json={"accessKey": "ak", "secretKey": "sk"}
        ) as response,
    ):
        assert response.status == 200
    assert other.auth_calls == 1


async def test_reset_after_without_a_key_is_reconciled() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.reset_after()])
        async with client(emu, idempotency_header=None) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
        # The retry finds the payment already CANCELED (416); the status read settles it.
        assert isinstance(result, Cancelled)
        assert result.reconciled and result.already_cancelled
        assert [a.http_status for a in result.history] == [None, 416]
        assert emu.effects[payment_id] == 1
        assert [r.effect for r in emu.records("cancel")] == [True, False]
        assert len(emu.records("status")) == 1


async def test_refusals_are_stored_and_keys_are_bound_to_their_path() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        settled = emu.add_payment("PAYMENT_COMPLETED")
        pending = emu.add_payment()
        headers = {
            "Authorization": f"Bearer {await token_for(emu, session)}",
            "x-idempotency-key": "key-7",
        }
        url = f"{emu.url}{BASE}/instant/payments/{settled}/cancel"
        async with session.post(url, data=BODY, headers=headers) as response:
            first = (response.status, await response.read())
        assert first[0] == 416
        refusal = json.loads(first[1])
        assert refusal["statusCode"] == "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"
        emu.set_status(settled, "PAYMENT_PENDING")
        async with session.post(url, data=BODY, headers=headers) as response:
            assert (response.status, await response.read()) == first  # replayed, not re-run
        assert emu.status_of(settled) == "PAYMENT_PENDING"
        assert emu.effects[settled] == 0
        other = f"{emu.url}{BASE}/instant/payments/{pending}/cancel"
        async with session.post(other, data=BODY, headers=headers) as response:
            assert response.status == 409
            assert (await response.json())["statusCode"] == "ERRO_IDEMPOTENCIA"
        assert emu.status_of(pending) == "PAYMENT_PENDING"


async def test_automatic_cancel_has_its_own_fault_script() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment(consent_id="consent-1")
        emu.script("automatic_cancel", [Fault.reset_before(), 503])
        async with client(emu) as klavi:
            result = await klavi.cancel_automatic_payment("consent-1", payment_id, cancelled_by=CPF)
        assert isinstance(result, Cancelled)
        assert result.attempts == 3
        assert [r.fault for r in emu.records("automatic_cancel")] == ["reset_before", "503", None]
        assert emu.records("cancel") == []
        assert emu.effects[payment_id] == 1


async def test_malformed_html_and_truncated_bodies_on_the_wire() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        ids = [emu.add_payment() for _ in range(5)]
        emu.script(
            "cancel",
            [
                Fault.malformed_json(),
                Fault.malformed_json(status=500),
                Fault.html_gateway(),
                Fault.truncated(),
                None,  # lets one request through untouched
            ],
        )
        answers = []
        for payment_id in ids[:3]:
            url = f"{emu.url}{BASE}/instant/payments/{payment_id}/cancel"
            async with session.post(url, data=BODY, headers=headers) as response:
                answers.append((response.status, response.content_type, await response.read()))
        for _, content_type, raw in answers[:2]:
            assert content_type == "application/json"
            with pytest.raises(ValueError, match="Unterminated"):
                json.loads(raw)
        assert [a[0] for a in answers] == [200, 500, 502]
        assert answers[2][1] == "text/html"
        assert b"502 Bad Gateway" in answers[2][2]
        url = f"{emu.url}{BASE}/instant/payments/{ids[3]}/cancel"
        async with session.post(url, data=BODY, headers=headers) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        url = f"{emu.url}{BASE}/instant/payments/{ids[4]}/cancel"
        async with session.post(url, data=BODY, headers=headers) as response:
            assert (await response.json())["status"] == "CANCELED"
        assert [emu.effects[p] for p in ids] == [1, 1, 0, 1, 1]
        assert [r.effect for r in emu.records("cancel")] == [True, True, False, True, True]


async def test_random_faults_strike_only_their_routes() -> None:
    async with KlaviEmulator(fault_rates={"503": 1.0}, seed=1) as emu:
        ids = [emu.add_payment() for _ in range(3)]
        async with client(emu, retry=Policy.disabled()) as klavi:
            results = [await klavi.cancel_payment(p, cancelled_by=CPF) for p in ids]
            statuses = [await klavi.get_payment_status(p) for p in ids]
        assert all(getattr(r, "kind", None) is ErrorKind.SERVER_ERROR for r in results)
        assert {s.status for s in statuses} == {"PAYMENT_PENDING"}
        assert {r.fault for r in emu.records("cancel")} == {"503"}
        assert {r.fault for r in emu.records("status")} == {None}
    async with KlaviEmulator(fault_rates={"503": 1.0}, fault_routes=["status"]) as emu:
        payment_id = emu.add_payment()
        async with client(emu, retry=Policy.disabled()) as klavi:
            assert (await klavi.cancel_payment(payment_id, cancelled_by=CPF)).ok
        assert emu.records("cancel")[0].fault is None


def test_random_fault_draws_follow_the_rates() -> None:
    draws = RandomFaults({"503": 0.25, "reset_after": 0.25}, seed=11)
    names = Counter(f.name if f else None for f in (draws.draw() for _ in range(4000)))
    assert set(names) == {"503", "reset_after", None}
    assert 1800 <= names[None] <= 2200
    assert 800 <= names["503"] <= 1200
    assert RandomFaults().draw() is None
    latency = RandomFaults({"latency": 1.0}, latency=0.2).draw()
    assert latency == Fault.latency(0.2)
    limited = RandomFaults({"429": 1.0}, retry_after=3).draw()
    assert limited == Fault.rate_limit(3)


async def test_request_log_records_what_happened() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.reset_after()])
        async with client(emu) as klavi:
            await klavi.cancel_payment(payment_id, cancelled_by=CPF, idempotency_key="k-1")
        auth, first, second = emu.requests
        assert (auth.route, auth.method, auth.authorized, auth.status) == (
            "auth",
            "POST",
            False,
            200,
        )
        assert first.path == f"{BASE}/instant/payments/{payment_id}/cancel"
        assert (first.route, first.payment_id, first.idempotency_key) == (
            "cancel",
            payment_id,
            "k-1",
        )
        assert (first.fault, first.status, first.effect, first.replayed) == (
            "reset_after",
            None,
            True,
            False,
        )
        assert (second.fault, second.status, second.effect, second.replayed) == (
            None,
            200,
            False,
            True,
        )
        assert first.interaction_id == second.interaction_id  # one call, one correlation id
        assert auth.time <= first.time <= second.time
