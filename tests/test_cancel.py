"""
`_cancel` and `_attempt` without sockets: one cancel through a `MockTransport`.

What reaches the transport (URL, headers, body, token), the 401 replay, reconciliation
and the outcome-unknown rule, step by step.  Behaviour on the wire (TLS, resets, cut
bodies) is tested against real loopback servers elsewhere.
"""

from __future__ import annotations

import json
import uuid

from klavi_async import ErrorKind
from klavi_async._transport import Response, TransportFailure

from .conftest import CPF, CPF_BARE
from .fakes import Sent, json_response, mock_client


async def test_a_cancel_sends_its_body_headers_and_token_to_the_transport() -> None:
    client, transport = mock_client(lambda sent: json_response(200, {"status": "CANCELED"}))
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert result.ok
    (sent,) = transport.sent
    assert sent.method == "POST"
    assert sent.url == "http://127.0.0.1:9/payment/customer/v1/instant/payments/pay-1/cancel"
    assert sent.json() == {"cancelledBy": CPF_BARE, "identifierType": "CPF"}
    assert sent.body == json.dumps(sent.json(), separators=(",", ":")).encode()
    assert sent.authorization == "Bearer tok-mock"
    assert "Authorization" not in sent.headers  # the transport adds it, in a dict of its own
    assert sent.headers["x-idempotency-key"] == result.idempotency_key
    assert sent.headers["x-fapi-interaction-id"] == result.interaction_id
    for value in (result.idempotency_key, result.interaction_id):
        assert uuid.UUID(value or "").version == 4
    assert transport.closed  # aclose() closed it


async def test_a_401_is_replayed_once_with_a_fresh_token() -> None:
    tokens = iter(["tok-1", "tok-2"])

    async def provider() -> str:
        return next(tokens)

    def handler(sent: Sent) -> Response:
        return json_response(401 if sent.authorization == "Bearer tok-1" else 200)

    client, _ = mock_client(handler, provider)
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert result.ok
    assert [a.http_status for a in result.history] == [401, 200]
    assert [a.token_refreshed for a in result.history] == [False, True]
    assert client.token_fetches == 2


async def test_an_ambiguous_answer_is_reconciled_by_a_status_read() -> None:
    def handler(sent: Sent) -> Response:
        if sent.method == "POST":
            return json_response(500, {"message": "boom"})
        return json_response(200, {"id": "pay-1", "status": "CANCELED"})

    client, transport = mock_client(handler, retry_disabled=True)
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert result.ok and result.reconciled and not result.already_cancelled
    methods = [s.method for s in transport.sent]
    assert methods == ["POST", "GET"]
    assert [a.http_status for a in result.history] == [500]  # the read is not the cancel's


async def test_a_timeout_whose_status_read_fails_is_outcome_unknown() -> None:
    def handler(sent: Sent) -> Response | TransportFailure:
        if sent.method == "POST":
            return TransportFailure(ErrorKind.TIMEOUT, "no response", sent=True)
        return json_response(503)

    client, transport = mock_client(handler, retry_disabled=True)
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert not result.ok
    assert result.kind is ErrorKind.TIMEOUT
    assert result.outcome_unknown
    assert result.retryable
    reads = [s for s in transport.sent if s.method == "GET"]
    assert len(reads) == 1  # retries disabled: the read gets one attempt, like the cancel


async def test_a_refusal_whose_read_finds_it_settled_is_final() -> None:
    def handler(sent: Sent) -> Response:
        if sent.method == "POST":
            return json_response(416, {"errors": [{"code": "PAGAMENTO_NAO_PERMITE_CANCELAMENTO"}]})
        return json_response(200, {"status": "PAYMENT_COMPLETED"})

    client, _ = mock_client(handler)
    async with client:
        result = await client.cancel_payment("pay-1", cancelled_by=CPF)
    assert not result.ok
    assert result.kind is ErrorKind.NOT_CANCELLABLE
    assert result.payment_status == "PAYMENT_COMPLETED"
    assert not result.outcome_unknown and not result.retryable
