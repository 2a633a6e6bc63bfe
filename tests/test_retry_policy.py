"""RetryPolicy: contract defaults, validation, backoff arithmetic and what it retries."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given, strategies as st
from multidict import CIMultiDict

from klavi_async import (
    ErrorKind,
    RetryPolicy,
)
from klavi_async._outcome import (
    REFUSAL_CODE,
    Outcome,
    classify_response,
    transport_outcome,
)

CONTRACT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


def response(status: int, body: bytes = b"") -> Outcome:
    return classify_response(status, CIMultiDict(), body)


def test_defaults_equal_the_contract() -> None:
    policy = RetryPolicy()
    assert attrs.asdict(policy) == {
        "max_attempts": 4,
        "initial_backoff": 0.5,
        "max_backoff": 8.0,
        "multiplier": 2.0,
        "jitter": True,
        "deadline": 30.0,
        "max_retry_after": 60.0,
        "retry_statuses": CONTRACT_STATUSES,
    }
    assert isinstance(policy.retry_statuses, frozenset)
    assert policy == RetryPolicy(4, 0.5, 8.0, 2.0, True, 30.0, 60.0, CONTRACT_STATUSES)


def test_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]
    assert hash(policy) == hash(RetryPolicy())


def test_disabled_is_one_attempt_and_otherwise_default() -> None:
    disabled = RetryPolicy.disabled()
    assert disabled.max_attempts == 1
    assert disabled == attrs.evolve(RetryPolicy(), max_attempts=1)


def test_conversions() -> None:
    policy = RetryPolicy(initial_backoff=1, max_backoff=2, deadline=5, retry_statuses=[503, 503])
    assert type(policy.initial_backoff) is float
    assert type(policy.deadline) is float
    assert policy.retry_statuses == frozenset({503})
    assert RetryPolicy(retry_statuses=()).retry_statuses == frozenset()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be >= 1"),
        ({"max_attempts": -3}, ValueError, "max_attempts must be >= 1"),
        ({"max_attempts": True}, TypeError, "max_attempts must be an int"),
        ({"max_attempts": 2.0}, TypeError, "max_attempts must be an int"),
        ({"max_attempts": "3"}, TypeError, "max_attempts must be an int"),
        ({"max_attempts": None}, TypeError, "max_attempts must be an int"),
        ({"initial_backoff": -0.1}, ValueError, "initial_backoff must be >= 0"),
        ({"initial_backoff": math.nan}, ValueError, "initial_backoff must be >= 0"),
        ({"max_backoff": -1}, ValueError, "max_backoff must be >= 0"),
        ({"max_retry_after": -1}, ValueError, "max_retry_after must be >= 0"),
        ({"multiplier": 0.5}, ValueError, "multiplier must be >= 1"),
        ({"multiplier": 0}, ValueError, "multiplier must be >= 1"),
        ({"multiplier": -2}, ValueError, "multiplier must be >= 0"),
        ({"deadline": 0}, ValueError, "deadline must be > 0"),
        ({"deadline": -5}, ValueError, "deadline must be > 0"),
        ({"deadline": math.nan}, ValueError, "deadline must be > 0"),
        ({"initial_backoff": "soon"}, ValueError, "could not convert"),
        ({"retry_statuses": {"500"}}, ValueError, "'500', which is not an HTTP status"),
        ({"retry_statuses": {500.0}}, ValueError, "not an HTTP status"),
        ({"retry_statuses": {True}}, ValueError, "not an HTTP status"),
        ({"retry_statuses": {99}}, ValueError, "99, which is not an HTTP status"),
        ({"retry_statuses": {600}}, ValueError, "600, which is not an HTTP status"),
        ({"retry_statuses": "500"}, TypeError, "collection of HTTP status codes"),
        ({"retry_statuses": b"\x01"}, TypeError, "collection of HTTP status codes"),
        ({"retry_statuses": 500}, TypeError, "collection of HTTP status codes"),
    ],
)
def test_validation(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_boundaries_that_are_allowed() -> None:
    policy = RetryPolicy(
        max_attempts=1,
        initial_backoff=0,
        max_backoff=0,
        multiplier=1,
        deadline=0.001,
        max_retry_after=0,
        retry_statuses={100, 599},
    )
    assert policy.retry_statuses == frozenset({100, 599})
    assert policy.backoff(3) == 0.0


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_without_jitter_doubles_and_caps() -> None:
    policy = RetryPolicy(jitter=False)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_backoff_follows_the_configured_curve() -> None:
    policy = RetryPolicy(jitter=False, initial_backoff=0.1, multiplier=3, max_backoff=2)
    assert [policy.backoff(n) for n in range(1, 6)] == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])
    flat = RetryPolicy(jitter=False, initial_backoff=0.25, multiplier=1)
    assert {flat.backoff(n) for n in range(1, 50)} == {0.25}


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.5), (0.5, 0.75), (0.999999, 0.9999995)])
def test_jitter_scales_the_base_by_half_plus_half_the_draw(draw: float, factor: float) -> None:
    policy = RetryPolicy()
    for n, base in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 8.0], start=1):
        assert policy.backoff(n, lambda: draw) == pytest.approx(base * factor)


def test_jitter_uses_the_injected_rng_once_per_call() -> None:
    draws = iter([0.0, 1.0, 0.5])
    policy = RetryPolicy()
    assert [policy.backoff(2, lambda: next(draws)) for _ in range(3)] == [0.5, 1.0, 0.75]
    assert RetryPolicy(jitter=False).backoff(2, lambda: 1 / 0) == 1.0  # rng not even called


@pytest.mark.parametrize("retry_number", [1_030, 10**6, 10**18])
def test_huge_retry_numbers_do_not_overflow(retry_number: int) -> None:
    assert RetryPolicy(jitter=False).backoff(retry_number) == 8.0
    jittered = RetryPolicy().backoff(retry_number, lambda: 0.0)
    assert jittered == 4.0
    assert math.isfinite(RetryPolicy(multiplier=1e308, jitter=False).backoff(retry_number))


@given(
    st.integers(1, 10_000),
    st.floats(0, 1, exclude_max=True),
    st.floats(0, 100),
    st.floats(1, 10),
    st.floats(0, 100),
)
def test_jittered_backoff_stays_inside_half_to_full_base(
    retry_number: int, draw: float, initial: float, multiplier: float, maximum: float
) -> None:
    policy = RetryPolicy(initial_backoff=initial, multiplier=multiplier, max_backoff=maximum)
    base = attrs.evolve(policy, jitter=False).backoff(retry_number)
    assert 0 <= base <= maximum
    wait = policy.backoff(retry_number, lambda: draw)
    assert 0.5 * base <= wait <= base


# -- what is retried ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "sent", "retried"),
    [
        (ErrorKind.TIMEOUT, True, True),
        (ErrorKind.TIMEOUT, False, True),
        (ErrorKind.NETWORK, True, True),
        (ErrorKind.NETWORK, False, True),
        (ErrorKind.AUTHENTICATION_FAILED, False, False),
        (ErrorKind.INVALID_REQUEST, False, False),
        (ErrorKind.UNEXPECTED_RESPONSE, True, False),
    ],
)
def test_transport_outcomes(kind: ErrorKind, sent: bool, retried: bool) -> None:
    outcome = transport_outcome(kind, sent=sent, message="m")
    assert RetryPolicy().should_retry(outcome) is retried


@pytest.mark.parametrize("status", sorted(CONTRACT_STATUSES))
def test_the_contract_statuses_are_retried(status: int) -> None:
    assert RetryPolicy().should_retry(response(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 416, 418, 422, 501, 505, 302])
def test_other_statuses_are_not(status: int) -> None:
    assert not RetryPolicy().should_retry(response(status))


@pytest.mark.parametrize("status", [200, 201, 204])
def test_success_is_never_retried(status: int) -> None:
    assert not RetryPolicy().should_retry(response(status))
    assert not RetryPolicy(retry_statuses={status}).should_retry(response(status))


@pytest.mark.parametrize("status", [200, 429, 500, 503, 529])
def test_a_refusal_is_never_retried_whatever_its_status(status: int) -> None:
    body = f'{{"errors": [{{"code": "{REFUSAL_CODE}"}}]}}'.encode()
    outcome = response(status, body)
    assert outcome.kind is ErrorKind.NOT_CANCELLABLE
    assert not RetryPolicy().should_retry(outcome)
    conflict = response(status, b'{"code": "ERRO_IDEMPOTENCIA"}')
    assert not RetryPolicy(retry_statuses={status}).should_retry(conflict)


def test_retry_statuses_are_configurable() -> None:
    policy = RetryPolicy(retry_statuses={418})
    assert policy.should_retry(response(418))
    assert not policy.should_retry(response(500))
    assert not policy.should_retry(response(429))
    assert policy.should_retry(transport_outcome(ErrorKind.TIMEOUT, sent=True, message="t"))
    assert not RetryPolicy(retry_statuses=()).should_retry(response(503))


def test_should_retry_reads_the_status_not_the_kind() -> None:
    odd = Outcome(ErrorKind.SERVER_ERROR, 599)
    assert not RetryPolicy().should_retry(odd)
    assert RetryPolicy(retry_statuses={599}).should_retry(odd)


# Folded in from test_units.py.


def test_policy_defaults_match_the_contract() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (4, 0.5, 8.0)
    assert (policy.multiplier, policy.jitter, policy.deadline) == (2.0, True, 30.0)
    assert policy.max_retry_after == 60.0
    assert policy.retry_statuses == frozenset({408, 429, 500, 502, 503, 504, 529})
    assert RetryPolicy.disabled().max_attempts == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": True}, TypeError),
        ({"max_attempts": 2.5}, TypeError),
        ({"initial_backoff": -1}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"deadline": 0}, ValueError),
        ({"retry_statuses": "503"}, TypeError),
        ({"retry_statuses": {700}}, ValueError),
        ({"retry_statuses": {True}}, ValueError),
    ],
)
def test_policy_validation(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_backoff_sequence_and_jitter() -> None:
    policy = RetryPolicy(jitter=False)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.backoff(10_000) == 8.0
    jittered = RetryPolicy()
    assert jittered.backoff(3, rng=lambda: 0.0) == 1.0
    assert jittered.backoff(3, rng=lambda: 0.999999) == pytest.approx(2.0, rel=1e-5)


def test_zero_backoff_stays_zero_for_huge_retry_numbers() -> None:
    assert RetryPolicy(initial_backoff=0, jitter=False).backoff(5000) == 0.0
