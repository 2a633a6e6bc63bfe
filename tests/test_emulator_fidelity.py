"""
The emulator as Klavi documents itself: its own document check, numeric 416 business codes,
empty 200 bodies, single-use tokens and the Automatic Pix consent statuses.
"""

from __future__ import annotations

import json
from contextlib import aclosing

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings, strategies as st

from klavi_async import (
    CancelFailed,
    Cancelled,
    CancelRequest,
    ClientCredentials,
    ErrorKind,
    KlaviClient,
    RetryPolicy,
    _documents as sdk_documents,
)
from klavi_async.testing import (
    AUTOMATIC_PIX_STATUSES,
    CANCELLABLE,
    KLAVI_STATUSES,
    Fault,
    KlaviEmulator,
)
from klavi_async.testing._checks import cancel_body_problem, valid_cnpj, valid_cpf

from .conftest import CPF, CPF_BARE, ServerFactory

FAST = RetryPolicy(initial_backoff=0, max_backoff=0, jitter=False)
BASE = "/payment/customer/v1"
REFUSAL = "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"
BODY = json.dumps({"cancelledBy": CPF_BARE, "identifierType": "CPF"}).encode()

# Known vectors (reference/openfinance-brasil.md §2 and §3): computed there and checked
# against four PyPI libraries, so they judge both implementations from outside.
VALID_CPFS = ["52998224725", "11144477735", "12345678909", "39053344705"]
INVALID_CPFS = ["52998224726", "11111111111", "00000000000", "5299822472", "529982247250"]
VALID_CNPJS = [
    "12ABC34501DE35",
    "A87HBZHB000161",
    "ABCDEFGH000195",
    "1A2B3C4D5E6F34",
    "Z9Y8X7W6000105",
    "Q2GROWP7000185",
    "11222333000181",
    "11444777000161",
    "45723174000110",
    "06990590000123",
]
INVALID_CNPJS = [
    "LBNXQOB5000163",  # a closed brutils PR's wrong letter mapping (A=10): invalid
    "00000000000000",
    "12ABC34501DE36",
    "12abc34501DE35",
    "12ABC34501DEA5",
    "11222333000182",
]
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcz.-/ \u0660\u0665\uff11\u00b2"
CNPJ_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def credentials(emu: KlaviEmulator) -> ClientCredentials:
    return ClientCredentials(emu.access_key, emu.secret_key)


def client(emu: KlaviEmulator, **kwargs: object) -> KlaviClient:
    kwargs.setdefault("retry", FAST)
    return KlaviClient(credentials(emu), base_url=emu.url, **kwargs)  # type: ignore[arg-type]


async def token_for(emu: KlaviEmulator, session: aiohttp.ClientSession) -> str:
    async with session.post(
        f"{emu.url}{BASE}/auth", json={"accessKey": emu.access_key, "secretKey": emu.secret_key}
    ) as response:
        token: str = (await response.json())["accessToken"]
    return token


# -- the emulator's own document check -------------------------------------------------


def test_known_vectors_judge_both_checks_alike() -> None:
    for cpf in VALID_CPFS:
        assert valid_cpf(cpf) and sdk_documents.is_valid_cpf(cpf), cpf
    for cpf in INVALID_CPFS:
        assert not valid_cpf(cpf) and not sdk_documents.is_valid_cpf(cpf), cpf
    for cnpj in VALID_CNPJS:
        assert valid_cnpj(cnpj) and sdk_documents.is_valid_cnpj(cnpj), cnpj
    for cnpj in INVALID_CNPJS:
        assert not valid_cnpj(cnpj) and not sdk_documents.is_valid_cnpj(cnpj), cnpj


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=16))
def test_both_checks_agree_on_any_text(text: str) -> None:
    assert valid_cpf(text) == sdk_documents.is_valid_cpf(text)
    assert valid_cnpj(text) == sdk_documents.is_valid_cnpj(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=9, max_size=9))
def test_a_cpf_base_has_one_valid_pair_of_check_digits(base: str) -> None:
    # Random inputs are almost never valid; trying all 100 endings of a base finds the
    # one that is, so the two checks are compared on valid documents too.
    ours = {base + f"{n:02d}" for n in range(100) if valid_cpf(base + f"{n:02d}")}
    theirs = {
        base + f"{n:02d}" for n in range(100) if sdk_documents.is_valid_cpf(base + f"{n:02d}")
    }
    assert ours == theirs
    assert len(ours) == (0 if len(set(base)) == 1 else 1)  # a repdigit is refused


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=CNPJ_CHARS, min_size=12, max_size=12))
def test_a_cnpj_root_has_one_valid_pair_of_check_digits(root: str) -> None:
    ours = {root + f"{n:02d}" for n in range(100) if valid_cnpj(root + f"{n:02d}")}
    theirs = {
        root + f"{n:02d}" for n in range(100) if sdk_documents.is_valid_cnpj(root + f"{n:02d}")
    }
    assert ours == theirs
    assert len(ours) == (0 if root == "0" * 12 else 1)


def test_the_body_check_wants_the_wire_form() -> None:
    assert cancel_body_problem(CPF_BARE, "CPF") is None
    assert cancel_body_problem("12ABC34501DE35", "CNPJ") is None
    problems = [
        cancel_body_problem(CPF, "CPF"),  # formatted: Klavi receives the bare document
        cancel_body_problem(CPF_BARE, "cpf"),
        cancel_body_problem(CPF_BARE, "CNPJ"),
        cancel_body_problem("12abc34501de35", "CNPJ"),
        cancel_body_problem(52998224725, "CPF"),
        cancel_body_problem(CPF_BARE, None),
        cancel_body_problem(CPF_BARE, "RG"),
    ]
    assert all(problems)
    assert not any(CPF_BARE in p or "529.982" in p for p in problems if p)


async def test_an_sdk_validation_bug_is_caught_by_the_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Simulate an SDK bug: its CPF check accepts anything.  The emulator, checking on its
    # own, still refuses the invalid CPF (it used to call the SDK's validator and agree).
    monkeypatch.setattr(sdk_documents, "is_valid_cpf", lambda bare: len(bare) == 11)
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment()
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by="529.982.247-26")
        assert isinstance(result, CancelFailed)
        assert result.kind is ErrorKind.BAD_REQUEST
        assert result.http_status == 422
        assert emu.effects[payment_id] == 0
        assert emu.status_of(payment_id) == "PAYMENT_PENDING"


async def test_the_emulator_refuses_formatted_documents_on_the_wire() -> None:
    async with KlaviEmulator() as emu, aiohttp.ClientSession() as session:
        payment_id = emu.add_payment()
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        url = f"{emu.url}{BASE}/instant/payments/{payment_id}/cancel"
        for body in (
            {"cancelledBy": CPF, "identifierType": "CPF"},
            {"cancelledBy": CPF_BARE, "identifierType": "cpf"},
        ):
            async with session.post(url, json=body, headers=headers) as response:
                assert response.status == 422
                assert CPF_BARE not in await response.text()
        assert emu.effects[payment_id] == 0
        async with session.post(
            url, json={"cancelledBy": CPF_BARE, "identifierType": "CPF"}, headers=headers
        ) as response:
            assert response.status == 200
        assert emu.effects[payment_id] == 1


# -- 416 business errors with numeric codes ----------------------------------------------


async def test_a_numeric_416_code_is_a_refusal_and_is_reconciled() -> None:
    async with KlaviEmulator(refusal_code=4105) as emu, aiohttp.ClientSession() as session:
        settled = emu.add_payment("PAYMENT_COMPLETED")
        gone = emu.add_payment("CANCELED")
        async with client(emu) as klavi:
            refused = await klavi.cancel_payment(settled, cancelled_by=CPF)
            already = await klavi.cancel_payment(gone, cancelled_by=CPF)
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        url = f"{emu.url}{BASE}/instant/payments/{settled}/cancel"
        async with session.post(
            url, json={"cancelledBy": CPF_BARE, "identifierType": "CPF"}, headers=headers
        ) as response:
            assert response.status == 416
            assert (await response.json())["statusCode"] == 4105  # a JSON number
    assert isinstance(refused, CancelFailed)
    assert refused.kind is ErrorKind.NOT_CANCELLABLE
    assert refused.http_status == 416
    assert refused.code == "4105"
    assert refused.payment_status == "PAYMENT_COMPLETED"
    assert not refused.retryable and not refused.outcome_unknown
    assert isinstance(already, Cancelled)
    assert already.already_cancelled and already.reconciled
    assert emu.effects == {settled: 0, gone: 0}
    assert [r.route for r in emu.records() if r.route != "auth"] == [
        "cancel",
        "status",
        "cancel",
        "status",
        "cancel",
    ]


async def test_a_416_statuscode_wins_over_an_error_label(serve: ServerFactory) -> None:
    async def cancel(request: web.Request) -> web.Response:
        body = {"statusCode": 4101, "error": "BUSINESS_ERROR", "message": "not a Pix QR code"}
        return web.json_response(body, status=416)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"id": "pay-1", "status": "PAYMENT_COMPLETED"})

    app = web.Application()
    app.router.add_post(f"{BASE}/instant/payments/pay-1/cancel", cancel)
    app.router.add_get(f"{BASE}/instant/payments/pay-1/status", status)
    base_url = await serve(app)
    async with KlaviClient("tok-416", base_url=base_url, retry=FAST) as klavi:
        result = await klavi.cancel_payment("pay-1", cancelled_by=CPF)
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NOT_CANCELLABLE
    assert result.code == "4101"


def test_the_refusal_code_option_is_checked() -> None:
    with pytest.raises(TypeError):
        KlaviEmulator(refusal_code=True)
    with pytest.raises(TypeError):
        KlaviEmulator(refusal_code=4.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blank"):
        KlaviEmulator(refusal_code=" ")
    assert KlaviEmulator().refusal_code == REFUSAL


# -- empty 200 bodies ---------------------------------------------------------------------


async def test_an_empty_200_body_is_a_success() -> None:
    async with (
        KlaviEmulator(empty_cancel_body=True) as emu,
        aiohttp.ClientSession() as session,
    ):
        payment_id = emu.add_payment()
        other = emu.add_payment(consent_id="consent-1")
        raw = emu.add_payment()
        async with client(emu) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
            automatic = await klavi.cancel_automatic_payment("consent-1", other, cancelled_by=CPF)
        # On the wire: no body at all, and the replay of the stored answer is empty too.
        headers = {
            "Authorization": f"Bearer {await token_for(emu, session)}",
            "x-idempotency-key": "k1",
        }
        url = f"{emu.url}{BASE}/instant/payments/{raw}/cancel"
        for _ in range(2):
            async with session.post(url, data=BODY, headers=headers) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == "0"
                assert await response.read() == b""
    for cancelled in (result, automatic):
        assert isinstance(cancelled, Cancelled)
        assert cancelled.http_status == 200 and cancelled.body is None
        assert cancelled.attempts == 1 and not cancelled.reconciled
    assert emu.effects == {payment_id: 1, other: 1, raw: 1}
    assert [r.replayed for r in emu.records("cancel")] == [False, False, True]


async def test_an_empty_200_cut_short_is_not_taken_for_a_success() -> None:
    # Content-Length promises bytes that never come: the attempt is ambiguous, and only
    # the status read may say the payment is cancelled.
    async with KlaviEmulator(empty_cancel_body=True) as emu:
        payment_id = emu.add_payment()
        emu.script("cancel", [Fault.truncated()])
        async with client(emu, retry=RetryPolicy.disabled()) as klavi:
            result = await klavi.cancel_payment(payment_id, cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.reconciled
    assert emu.effects[payment_id] == 1


# -- single-use tokens --------------------------------------------------------------------


async def test_by_default_one_token_serves_many_payments() -> None:
    async with KlaviEmulator() as emu:
        ids = [emu.add_payment() for _ in range(3)]
        async with client(emu) as klavi:
            results = [await klavi.cancel_payment(p, cancelled_by=CPF) for p in ids]
    assert all(r.ok and r.attempts == 1 for r in results)
    assert emu.auth_calls == 1


async def test_a_single_use_token_serves_one_payment_only() -> None:
    async with (
        KlaviEmulator(single_use_tokens=True) as emu,
        aiohttp.ClientSession() as session,
    ):
        first, second = emu.add_payment(), emu.add_payment()
        headers = {"Authorization": f"Bearer {await token_for(emu, session)}"}

        async def status_of(payment_id: str) -> int:
            url = f"{emu.url}{BASE}/instant/payments/{payment_id}/status"
            async with session.get(url, headers=headers) as response:
                return response.status

        assert await status_of(first) == 200
        assert await status_of(first) == 200  # the same payment: still good
        assert await status_of(second) == 401
        async with session.post(
            f"{emu.url}{BASE}/instant/payments", json={"clientRequestId": "c-1"}, headers=headers
        ) as response:
            assert response.status == 401  # a used token cannot start another payment
        fresh = {"Authorization": f"Bearer {await token_for(emu, session)}"}
        async with session.post(
            f"{emu.url}{BASE}/instant/payments", json={"clientRequestId": "c-1"}, headers=fresh
        ) as response:
            assert response.status == 201
            created = (await response.json())["id"]
        url = f"{emu.url}{BASE}/instant/payments/{created}/status"
        async with session.get(url, headers=fresh) as response:
            assert response.status == 200  # bound to the payment it created
        async with session.get(f"{url[: -len('/status')]}", headers=fresh) as response:
            assert response.status == 200


async def test_a_batch_with_single_use_tokens_ends_ok_through_refresh_and_replay() -> None:
    async with KlaviEmulator(single_use_tokens=True) as emu:
        ids = [emu.add_payment() for _ in range(6)]
        requests = [CancelRequest(p, CPF) for p in ids]
        async with client(emu) as klavi, aclosing(klavi.cancel_many(requests, concurrency=1)) as it:
            results = {r.payment_id: r async for r in it}
    assert all(isinstance(r, Cancelled) for r in results.values())
    assert [r.http_status for r in results[ids[0]].history] == [200]
    for payment_id in ids[1:]:
        history = results[payment_id].history
        assert [a.http_status for a in history] == [401, 200]
        assert history[1].token_refreshed
    assert emu.auth_calls == len(ids)  # one token per payment initiation
    assert all(emu.effects[p] == 1 for p in ids)
    assert sum(r.status == 401 for r in emu.records("cancel")) == len(ids) - 1


async def test_a_refusal_reconciles_with_the_same_single_use_token() -> None:
    async with KlaviEmulator(single_use_tokens=True) as emu:
        pending, settled = emu.add_payment(), emu.add_payment("PAYMENT_COMPLETED")
        async with client(emu) as klavi:
            assert (await klavi.cancel_payment(pending, cancelled_by=CPF)).ok
            refused = await klavi.cancel_payment(settled, cancelled_by=CPF)
    assert isinstance(refused, CancelFailed)
    assert refused.kind is ErrorKind.NOT_CANCELLABLE
    assert refused.payment_status == "PAYMENT_COMPLETED"
    # 401 -> new token -> 416 -> status read, all with the token bound to that payment.
    assert [r.status for r in emu.records() if r.route != "auth"] == [200, 401, 416, 200]
    assert emu.auth_calls == 2


@pytest.mark.parametrize("concurrency", [8, 32])
async def test_a_concurrent_batch_with_single_use_tokens_ends_ok(concurrency: int) -> None:
    async with KlaviEmulator(single_use_tokens=True) as emu:
        ids = [emu.add_payment() for _ in range(200)]
        requests = [CancelRequest(p, CPF) for p in ids]
        own = ClientCredentials(emu.access_key, emu.secret_key, single_use=True)
        async with (
            KlaviClient(own, base_url=emu.url, retry=FAST) as klavi,
            aclosing(klavi.cancel_many(requests, concurrency=concurrency)) as it,
        ):
            results = [r async for r in it]
    assert all(r.ok for r in results), [getattr(r, "kind", None) for r in results]
    assert all(r.attempts == 1 for r in results)  # no 401 to recover from
    assert all(emu.effects[p] == 1 for p in ids)
    assert not [r for r in emu.records() if r.status == 401]
    assert emu.auth_calls == len(ids)  # one token per payment, none shared


async def test_shared_tokens_fail_a_concurrent_batch_against_single_use_tokens() -> None:
    """Why the mode exists: the cached token serves every call, and replays race."""
    async with KlaviEmulator(single_use_tokens=True) as emu:
        requests = [CancelRequest(emu.add_payment(), CPF) for _ in range(40)]
        async with client(emu) as klavi, aclosing(klavi.cancel_many(requests, concurrency=8)) as it:
            results = [r async for r in it]
    failed = [r for r in results if not r.ok]
    assert failed and all(r.kind is ErrorKind.UNAUTHORIZED for r in failed)


# -- Automatic Pix consent statuses --------------------------------------------------------


def test_the_automatic_pix_statuses_are_known() -> None:
    assert {"CONSENT_PARTIALLY_ACCEPTED", "CONSENT_REVOKED"} == AUTOMATIC_PIX_STATUSES
    assert AUTOMATIC_PIX_STATUSES <= KLAVI_STATUSES
    assert "CONSENT_PARTIALLY_ACCEPTED" in CANCELLABLE
    assert "CONSENT_REVOKED" not in CANCELLABLE


async def test_a_partially_accepted_consent_payment_can_be_cancelled() -> None:
    async with KlaviEmulator() as emu:
        payment_id = emu.add_payment("CONSENT_PARTIALLY_ACCEPTED", consent_id="consent-1")
        async with client(emu) as klavi:
            result = await klavi.cancel_automatic_payment("consent-1", payment_id, cancelled_by=CPF)
    assert isinstance(result, Cancelled)
    assert result.body["status"] == "CANCELED"
    assert emu.effects[payment_id] == 1


async def test_a_revoked_consent_refuses_the_cancel_and_says_so() -> None:
    async with KlaviEmulator() as emu:
        pending = emu.add_payment("PAYMENT_SCHEDULED", consent_id="consent-1")
        partial = emu.add_payment("CONSENT_PARTIALLY_ACCEPTED", consent_id="consent-1")
        settled = emu.add_payment("PAYMENT_COMPLETED", consent_id="consent-1")
        elsewhere = emu.add_payment("PAYMENT_SCHEDULED", consent_id="consent-2")
        assert emu.revoke_consent("consent-1") == 2
        assert emu.revoke_consent("consent-1") == 0
        assert [emu.status_of(p) for p in (pending, partial, settled, elsewhere)] == [
            "CONSENT_REVOKED",
            "CONSENT_REVOKED",
            "PAYMENT_COMPLETED",
            "PAYMENT_SCHEDULED",
        ]
        async with client(emu) as klavi:
            result = await klavi.cancel_automatic_payment("consent-1", pending, cancelled_by=CPF)
            status = await klavi.get_payment_status(pending, consent_id="consent-1")
    assert isinstance(result, CancelFailed)
    assert result.kind is ErrorKind.NOT_CANCELLABLE
    assert result.payment_status == "CONSENT_REVOKED"
    assert not result.outcome_unknown
    assert status.status == "CONSENT_REVOKED"
    assert emu.effects[pending] == 0
