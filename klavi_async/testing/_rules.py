"""
Klavi's rules, as the emulator's `_Rules` base: token issue and checks, the payment set-up
helpers a test calls, and the answer each route computes (auth, create, read, status, and
cancel with its `x-idempotency-key` replay), before the HTTP layer sends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ._checks import cancel_body_problem
from ._state import CANCELLABLE, KLAVI_STATUSES, Payment, _Answer, _now_iso


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Rules:
    """The payment and token state's rules; `KlaviEmulator.__init__` sets the state."""

    access_key: str
    secret_key: str
    token_lifetime: float
    refusal_code: str | int
    empty_cancel_body: bool
    single_use_tokens: bool
    payments: dict[str, Payment]
    by_client_request_id: dict[str, str]
    effects: dict[str, int]
    _clock: Callable[[], float]
    _signing_key: bytes
    _tokens: dict[str, float]
    _token_payment: dict[str, str]
    _stored: dict[str, tuple[str, _Answer]]

    # -- test helpers -----------------------------------------------------------------

    def add_payment(
        self,
        status: str = "PAYMENT_PENDING",
        *,
        payment_id: str | None = None,
        consent_id: str | None = None,
        amount: str = "10.00",
    ) -> str:
        """Create a payment in *status* (one of `KLAVI_STATUSES`); return its id."""
        if status not in KLAVI_STATUSES:
            raise ValueError(f"unknown Klavi status {status!r}")
        payment_id = payment_id or str(uuid.uuid4())
        payment = Payment(
            payment_id, str(uuid.uuid4()), status, amount=amount, consent_id=consent_id
        )
        self.payments[payment_id] = payment
        self.by_client_request_id[payment.client_request_id] = payment_id
        self.effects.setdefault(payment_id, 0)
        return payment_id

    def status_of(self, payment_id: str) -> str:
        """The payment's current status."""
        return self.payments[payment_id].status

    def set_status(self, payment_id: str, status: str) -> None:
        """Move a payment to *status* (e.g. to simulate settlement)."""
        if status not in KLAVI_STATUSES:
            raise ValueError(f"unknown Klavi status {status!r}")
        self.payments[payment_id].status = status
        self.payments[payment_id].status_update_at = _now_iso()

    def revoke_consent(self, consent_id: str) -> int:
        """
        Revoke an Automatic Pix consent: its payments not yet settled become CONSENT_REVOKED.

        Returns how many payments moved; later cancels of them are refused (416).
        """
        moved = 0
        for payment in self.payments.values():
            if payment.consent_id == consent_id and payment.status in CANCELLABLE:
                payment.status = "CONSENT_REVOKED"
                payment.status_update_at = _now_iso()
                moved += 1
        return moved

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (the next use answers 401)."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    # -- routes -------------------------------------------------------------------------

    def _issue_token(self) -> str:
        expires = self._clock() + self.token_lifetime
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": self.access_key, "exp": int(expires), "jti": str(uuid.uuid4())}
        payload = _b64(json.dumps(claims).encode())
        signature = hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256)
        token = f"{header}.{payload}.{_b64(signature.digest())}"
        self._tokens[token] = expires
        return token

    def _authorized(self, request: web.Request, payment_id: str | None = None) -> bool:
        """A live token; with `single_use_tokens`, one not bound to another payment."""
        value = request.headers.get("Authorization", "")
        if not value.startswith("Bearer "):
            return False
        token = value[7:]
        expires = self._tokens.get(token)
        if expires is None or self._clock() >= expires:
            return False
        if not self.single_use_tokens:
            return True
        bound = self._token_payment.get(token)
        if payment_id is None:  # creating a payment: the token must still be unused
            return bound is None
        return self._token_payment.setdefault(token, payment_id) == payment_id

    def _bind(self, request: web.Request, payment_id: str) -> None:
        if self.single_use_tokens:
            self._token_payment[request.headers["Authorization"][7:]] = payment_id

    async def _auth(self, request: web.Request, body: bytes) -> _Answer:
        data = _object(body)
        access_key = data.get("accessKey") if data else None
        secret_key = data.get("secretKey") if data else None
        if not isinstance(access_key, str) or not isinstance(secret_key, str):
            return _Answer(400, {"statusCode": 400, "error": "Bad Request", "message": "bad body"})
        # Bytes, not str: compare_digest refuses non-ASCII strings, and a key is any text.
        keys_ok = hmac.compare_digest(access_key.encode(), self.access_key.encode()) and (
            hmac.compare_digest(secret_key.encode(), self.secret_key.encode())
        )
        if not keys_ok:
            return _Answer(
                401,
                {
                    "statusCode": 401,
                    "error": "Unauthorized",
                    "message": "Invalid accessKey or secretKey",
                },
            )
        return _Answer(200, {"accessToken": self._issue_token(), "expireIn": self.token_lifetime})

    async def _create(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request):
            return _unauthorized()
        data = _object(body)
        if data is None:
            return _Answer(400, {"statusCode": 400, "message": "the body is not a JSON object"})
        client_request_id = data.get("clientRequestId")
        status = data.get("status", "PAYMENT_PENDING")
        if not isinstance(client_request_id, str) or not client_request_id:
            return _Answer(422, {"statusCode": 422, "message": "clientRequestId is required"})
        if status not in KLAVI_STATUSES:
            return _Answer(422, {"statusCode": 422, "message": "unknown status"})
        existing = self.by_client_request_id.get(client_request_id)
        if existing is not None:
            self._bind(request, existing)
            return _Answer(200, self.payments[existing].body())
        payment_id = self.add_payment(str(status), amount=str(data.get("amount", "10.00")))
        self._bind(request, payment_id)
        payment = self.payments[payment_id]
        del self.by_client_request_id[payment.client_request_id]
        payment.client_request_id = client_request_id
        payment.currency = str(data.get("currency", "BRL"))
        self.by_client_request_id[client_request_id] = payment_id
        return _Answer(201, payment.body())

    def _find(self, request: web.Request) -> Payment | None:
        payment = self.payments.get(request.match_info["payment_id"])
        consent_id = request.match_info.get("consent_id")
        if payment is None or payment.consent_id != consent_id:
            return None
        return payment

    async def _get(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request, request.match_info["payment_id"]):
            return _unauthorized()
        payment = self._find(request)
        return _not_found() if payment is None else _Answer(200, payment.body())

    async def _status(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request, request.match_info["payment_id"]):
            return _unauthorized()
        payment = self._find(request)
        return _not_found() if payment is None else _Answer(200, payment.status_body())

    async def _cancel(self, request: web.Request, body: bytes) -> _Answer:
        if not self._authorized(request, request.match_info["payment_id"]):
            return _unauthorized()
        key = request.headers.get("x-idempotency-key")
        fingerprint = hashlib.sha256(request.path.encode() + b"\x00" + body).hexdigest()
        if key is not None and key in self._stored:
            stored_fingerprint, stored = self._stored[key]
            if stored_fingerprint != fingerprint:
                return _Answer(
                    409,
                    {
                        "statusCode": "ERRO_IDEMPOTENCIA",
                        "message": "x-idempotency-key reused with another request",
                    },
                )
            return _Answer(stored.status, stored.body, replayed=True)
        answer = self._apply_cancel(request, body)
        if key is not None and (200 <= answer.status < 300 or answer.status == 416):
            self._stored[key] = (fingerprint, _Answer(answer.status, answer.body))
        return answer

    def _apply_cancel(self, request: web.Request, body: bytes) -> _Answer:
        data = _object(body)
        if data is None:
            return _Answer(400, {"statusCode": 400, "message": "the body is not a JSON object"})
        # The emulator's own check, not the SDK's: an SDK validation bug must show up here.
        problem = cancel_body_problem(data.get("cancelledBy"), data.get("identifierType"))
        if problem is not None:
            return _Answer(422, {"statusCode": 422, "message": problem})
        payment = self._find(request)
        if payment is None:
            return _not_found()
        if payment.status not in CANCELLABLE:
            return _Answer(
                416,
                {
                    "statusCode": self.refusal_code,
                    "error": "Business error",
                    "message": f"payment in status {payment.status} cannot be cancelled",
                },
            )
        payment.status = "CANCELED"
        payment.status_update_at = _now_iso()
        self.effects[payment.id] = self.effects.get(payment.id, 0) + 1
        return _Answer(200, None if self.empty_cancel_body else payment.body(), effect=True)


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _unauthorized() -> _Answer:
    return _Answer(401, {"statusCode": 401, "error": "Unauthorized", "message": "invalid token"})


def _not_found() -> _Answer:
    return _Answer(404, {"statusCode": 404, "error": "Not Found", "message": "no such payment"})
