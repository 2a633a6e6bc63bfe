"""
`_speedups`: each hot-path trick against the plain Python it replaces.

A trick is only worth keeping while it gives what the plain version gives; these tests
hold the plain version next to it (property tests where the inputs are open-ended).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from hypothesis import given, strategies as st
from yarl import URL

from klavi_async import Attempt, Cancelled, ErrorKind
from klavi_async._documents import validate_document
from klavi_async._speedups import (
    PathURLs,
    Slots,
    Turns,
    cancel_body,
    fast_constructor,
    new_attempt,
    new_cancelled,
    parse_json,
    request_headers,
    slot_builder,
    uuid4,
    uuid4_pair,
)

# -- 1. fast constructors ------------------------------------------------------------


def test_the_fast_constructors_cover_every_field() -> None:
    """Generated from the attrs fields: every field is a required keyword, nothing else."""
    for build, cls in ((new_attempt, Attempt), (new_cancelled, Cancelled)):
        parameters = inspect.signature(build).parameters
        assert {f.name for f in attrs.fields(cls)} == set(parameters)
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters.values())
        assert all(p.default is p.empty for p in parameters.values())


def test_a_fast_constructor_refuses_positional_missing_and_unknown_arguments() -> None:
    values = {f.name: None for f in attrs.fields(Attempt)}
    with pytest.raises(TypeError):
        new_attempt(*values.values())
    del values["token_refreshed"]
    with pytest.raises(TypeError, match="token_refreshed"):
        new_attempt(**values)
    with pytest.raises(TypeError, match="refreshed"):
        new_attempt(**values, refreshed=True)


def test_swapped_adjacent_bools_land_where_their_names_say() -> None:
    attempt = new_attempt(
        number=1,
        http_status=None,
        kind=ErrorKind.TIMEOUT,
        code=None,
        token_refreshed=False,
        ambiguous=True,  # given out of order: keywords put it in its place
        duration=0.5,
        delay=None,
        retry_after=None,
        request_id=None,
    )
    assert attempt.ambiguous is True
    assert attempt.token_refreshed is False


def test_fast_constructor_of_another_class() -> None:
    @attrs.frozen
    class Point:
        x: int
        y: int = 0

    build = fast_constructor(Point)
    assert build(x=1, y=2) == Point(1, 2)
    assert build.__name__ == "new_point"


@given(
    number=st.integers(1, 10),
    http_status=st.none() | st.integers(100, 599),
    kind=st.none() | st.sampled_from(ErrorKind),
    code=st.none() | st.text(max_size=5),
    ambiguous=st.booleans(),
    duration=st.floats(0, 10),
    retry_after=st.none() | st.floats(0, 10),
    request_id=st.none() | st.text(max_size=5),
    token_refreshed=st.booleans(),
)
def test_new_attempt_equals_the_attrs_constructor(**values: Any) -> None:
    fast = new_attempt(delay=None, **values)
    assert type(fast) is Attempt  # the twin it was built as is gone
    assert fast == Attempt(**values)
    assert repr(fast) == repr(Attempt(**values))
    assert hash(fast) == hash(Attempt(**values))
    assert fast.delay is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.number = 2  # type: ignore[misc]
    assert attrs.evolve(fast, delay=1.0).delay == 1.0


@given(
    payment_id=st.text(min_size=1, max_size=8),
    idempotency_key=st.none() | st.text(max_size=8),
    interaction_id=st.text(max_size=8),
    attempts=st.integers(1, 3),
    elapsed=st.floats(0, 10),
    consent_id=st.none() | st.text(max_size=8),
    http_status=st.none() | st.integers(100, 599),
    body=st.none() | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    already_cancelled=st.booleans(),
    reconciled=st.booleans(),
)
def test_new_cancelled_equals_the_attrs_constructor(attempts: int, **values: Any) -> None:
    history = tuple(Attempt(number=n, http_status=200, kind=None) for n in range(1, attempts + 1))
    fast = new_cancelled(history=history, attempts=len(history), **values)
    slow = Cancelled(history=history, attempts=attempts, **values)
    assert type(fast) is Cancelled
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.to_record() == slow.to_record()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.payment_id = "other"  # type: ignore[misc]


# -- 2. UUID4 strings ----------------------------------------------------------------

_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_uuid4_pair_is_two_distinct_version_4_uuids() -> None:
    for _ in range(200):
        first, second = uuid4_pair()
        assert first != second
        for text in (first, second, uuid4()):
            assert _UUID4.fullmatch(text)
            parsed = uuid.UUID(text)
            assert parsed.version == 4
            assert parsed.variant == uuid.RFC_4122
            assert str(parsed) == text  # what str(uuid.uuid4()) would print


@given(st.binary(min_size=32, max_size=32))
def test_uuid4_pair_formats_the_random_bytes_like_uuid(raw: bytes) -> None:
    import klavi_async._speedups as speedups

    original = speedups._urandom
    speedups._urandom = lambda n: raw  # type: ignore[misc]  # the module's own seam
    try:
        first, second = uuid4_pair()
    finally:
        speedups._urandom = original  # type: ignore[misc]
    assert first == str(uuid.UUID(bytes=raw[:16], version=4))
    assert second == str(uuid.UUID(bytes=raw[16:], version=4))


# -- 3. the cancel body ----------------------------------------------------------------


def _plain_body(document: str, identifier_type: str) -> bytes:
    return json.dumps(
        {"cancelledBy": document, "identifierType": identifier_type}, separators=(",", ":")
    ).encode()


@given(document=st.text(max_size=20), identifier_type=st.sampled_from(["CPF", "CNPJ", 'C"', "é"]))
def test_cancel_body_equals_json_dumps_whatever_it_gets(
    document: str, identifier_type: str
) -> None:
    assert cancel_body(document, identifier_type) == _plain_body(document, identifier_type)


@pytest.mark.parametrize(
    "document", ['52998224725"', "5299822472\\", "\u00b2" * 11, "529\n98224725", "١٢٣"]
)
def test_cancel_body_escapes_what_the_template_could_not(document: str) -> None:
    body = cancel_body(document, "CPF")
    assert json.loads(body) == {"cancelledBy": document, "identifierType": "CPF"}


@given(st.sampled_from(["529.982.247-25", "11.222.333/0001-81", "12.abc.345/01de-35"]))
def test_a_validated_document_takes_the_template(raw: str) -> None:
    document, kind = validate_document(raw, None)
    assert document.isascii() and document.isalnum()  # the guarantee the template needs
    assert cancel_body(document, kind) == _plain_body(document, kind)


# -- 4. JSON parsing -----------------------------------------------------------------


def test_parse_json() -> None:
    assert parse_json(b"") is None
    assert parse_json(b'{"a": 1}') == {"a": 1}
    assert parse_json('{"a": "\u00e9"}'.encode("utf-16")) == {"a": "\u00e9"}  # json sniffs it
    assert parse_json(b"\xff\xfe\xfd") is None
    assert parse_json(b"[" * 100_000) is None  # RecursionError is caught
    assert parse_json(b"NaN") != parse_json(b"NaN")  # json's NaN literal is kept as a float


def _reference_parse(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)


@given(
    value=_json_values,
    before=st.sampled_from(["", " ", "\n\t ", "\ufeff", "\x0b"]),
    after=st.sampled_from(["", " \r\n", "x", "}", " 1", "\x0c"]),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32"]),
)
def test_parse_json_agrees_with_json_loads(
    value: object, before: str, after: str, encoding: str
) -> None:
    raw = (before + json.dumps(value) + after).encode(encoding)
    assert parse_json(raw) == _reference_parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xef\xbb\xbf[]",  # UTF-8 BOM: json.loads(bytes) accepts it
        b"1\x00",  # json detects UTF-16-LE
        b"1\x00\x00\x00",  # UTF-32-LE
        b"\x001",  # UTF-16-BE
        b"a\x00b",
        b" {} \r\n",
        b"{} x",
        b"\x0b{}",
        b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
        b'"\xed\xa0\x80"',
        b"\x00",
        b"7",
    ],
)
def test_parse_json_edge_cases_match_json_loads(raw: bytes) -> None:
    assert json.dumps(parse_json(raw)) == json.dumps(_reference_parse(raw))


@given(st.binary(max_size=64))
def test_parse_json_agrees_with_json_loads_on_any_bytes(raw: bytes) -> None:
    # Compared as JSON text, so that NaN (which json accepts) equals itself.
    assert json.dumps(parse_json(raw)) == json.dumps(_reference_parse(raw))


# -- 5. turn-taking ------------------------------------------------------------------


async def test_turns_serve_one_holder_at_a_time_in_arrival_order() -> None:
    turns = Turns()
    order: list[int] = []
    inside = 0

    async def pull(n: int) -> None:
        nonlocal inside
        if turns.free:
            turns.take_now()
        else:
            await turns.take()
        try:
            inside += 1
            assert inside == 1
            order.append(n)
            await asyncio.sleep(0)
        finally:
            inside -= 1
            turns.give()

    await asyncio.gather(*(pull(n) for n in range(6)))
    assert order == list(range(6))  # what asyncio.Lock gives: first come, first served
    assert turns.free


async def _hand_to_a_cancelled_waiter(
    take: Callable[[], Awaitable[None]], give: Callable[[], None]
) -> None:
    """Two waiters; the one handed the turn (or slot) is cancelled before it runs."""
    first = asyncio.create_task(take())
    second = asyncio.create_task(take())
    await asyncio.sleep(0)
    give()  # hands it to `first` ...
    first.cancel()  # ... which is cancelled before it runs
    await asyncio.wait_for(second, 1.0)  # so `second` gets it, as with asyncio's own
    with pytest.raises(asyncio.CancelledError):
        await first
    give()


async def test_turns_pass_on_a_turn_handed_to_a_cancelled_waiter() -> None:
    turns = Turns()
    turns.take_now()
    await _hand_to_a_cancelled_waiter(turns.take, turns.give)
    assert turns.free


async def test_turns_behave_like_asyncio_lock_under_cancellation() -> None:
    async def run(enter: Any, leave: Any) -> list[int]:
        order: list[int] = []

        async def pull(n: int) -> None:
            await enter()
            try:
                order.append(n)
                await asyncio.sleep(0)
            finally:
                leave()

        tasks = [asyncio.create_task(pull(n)) for n in range(5)]
        await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return order

    turns = Turns()

    async def take() -> None:
        if turns.free:
            turns.take_now()
        else:
            await turns.take()

    lock = asyncio.Lock()
    assert await run(take, turns.give) == await run(lock.acquire, lock.release)


# -- 6. request headers ----------------------------------------------------------------


def test_request_headers_send_the_callers_dict_when_nothing_is_added() -> None:
    headers = {"Accept": "application/json"}
    assert request_headers(headers, None, None) is headers


@given(
    headers=st.dictionaries(st.sampled_from(["Accept", "X-A", "X-B"]), st.text(max_size=4)),
    authorization=st.none() | st.just("Bearer t"),
    user_agent=st.none() | st.just("ua/1"),
)
def test_request_headers_equal_the_plain_merge_and_never_touch_the_callers_dict(
    headers: dict[str, str], authorization: str | None, user_agent: str | None
) -> None:
    before = dict(headers)
    plain = {**headers}
    if authorization is not None:
        plain["Authorization"] = authorization
    if user_agent is not None:
        plain["User-Agent"] = user_agent
    assert request_headers(headers, authorization, user_agent) == plain
    assert headers == before


# -- 7. request URLs -------------------------------------------------------------------

_BASES = [
    "https://api.klavi.ai",
    "https://api-sandbox.klavi.ai/",
    "https://user:pass@h.example:8443/base/",
    "http://[::1]:9000/prefix",
    "http://127.0.0.1:45567",
    "https://EXAMPLE.com.",
    "https://h.example:443/x?q=1#f",
]


def _url_values(url: URL) -> dict[str, object]:
    """Every public property of *url*: what aiohttp, or anyone, may read from it."""
    names = [n for n in dir(URL) if not n.startswith("_")]
    return {n: getattr(url, n) for n in names if not callable(getattr(url, n))}


@given(
    base=st.sampled_from(_BASES),
    segments=st.lists(st.text("abcXYZ019-._~%2F", min_size=1, max_size=12), min_size=1, max_size=4),
)
def test_path_urls_equal_with_path_in_every_property(base: str, segments: list[str]) -> None:
    parsed = URL(base, encoded=True)
    path = "/" + "/".join(segments)
    fast, plain = PathURLs(parsed)(path), parsed.with_path(path, encoded=True)
    assert type(fast) is URL
    assert fast == plain and hash(fast) == hash(plain) and str(fast) == str(plain)
    assert _url_values(fast) == _url_values(plain)
    # Read in the other order too: nothing one filled in differs from the other's.
    again = PathURLs(parsed)(path)
    assert _url_values(plain) == _url_values(again)


def test_path_urls_share_nothing_mutable_between_urls() -> None:
    urls = PathURLs(URL("https://api.klavi.ai", encoded=True))
    first, second = urls("/a/1"), urls("/a/2")
    assert first.raw_path_qs == "/a/1" and second.raw_path_qs == "/a/2"
    assert first.path == "/a/1" and second.path == "/a/2"
    assert first.parent != second


def test_path_urls_fall_back_to_with_path_on_a_yarl_it_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import klavi_async._speedups as speedups

    monkeypatch.setattr(speedups, "_URL_SLOTS", ("_val", "_cache"))
    urls = PathURLs(URL("https://api.klavi.ai/v1", encoded=True))
    assert urls._known is None
    assert urls("/a/1") == URL("https://api.klavi.ai/a/1")


def test_path_urls_fall_back_when_a_url_made_both_ways_reads_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a yarl whose cache keeps something that depends on the path under a base key.
    import klavi_async._speedups as speedups

    monkeypatch.setattr(speedups, "_BASE_KEYS", (*speedups._BASE_KEYS, "path"))
    urls = PathURLs(URL("https://api.klavi.ai/v1", encoded=True))
    assert urls._known is None
    assert urls("/a/1").path == "/a/1"
    monkeypatch.undo()
    assert PathURLs(URL("https://api.klavi.ai/v1", encoded=True))._known is not None


# -- 8. plain slotted objects without the class call -----------------------------------


def _slots(obj: object) -> dict[str, object]:
    names = [n for k in type(obj).__mro__ for n in k.__dict__.get("__slots__", ())]
    return {n: getattr(obj, n) for n in names if n != "__weakref__"}


def test_slot_builder_sets_every_slot_and_refuses_what_is_no_slot() -> None:
    class Point:
        __slots__ = ("x", "y")

        def __init__(self, x: int, y: int = 0) -> None:
            self.x, self.y = x, y

    build = slot_builder(Point, y=0)
    assert _slots(build(x=1)) == _slots(Point(1))
    with pytest.raises(TypeError):
        build(1)  # keyword-only
    with pytest.raises(TypeError, match="no slot"):
        slot_builder(Point, z=1)


@given(
    status=st.integers(200, 299),
    body=st.none() | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    request_id=st.none() | st.text(max_size=8),
)
def test_a_success_outcome_equals_the_class_call(
    status: int, body: object, request_id: str | None
) -> None:
    from klavi_async._outcome import Outcome, _new_success

    fast = _new_success(http_status=status, body=body, request_id=request_id)
    assert type(fast) is Outcome
    assert _slots(fast) == _slots(Outcome(None, status, body=body, request_id=request_id))


@pytest.mark.parametrize("start", [None, 5.0])
@pytest.mark.parametrize(("safe", "counted"), [(False, True), (True, False)])
def test_new_retry_loop_equals_the_class_call(
    start: float | None, safe: bool, counted: bool
) -> None:
    from klavi_async import RetryBudget, RetryPolicy
    from klavi_async._retry import RetryLoop, new_retry_loop

    policy, budget, observer = RetryPolicy(), RetryBudget(), object()

    async def sleep(_: float) -> None: ...

    kwargs: dict[str, Any] = {"clock": lambda: 3.0, "sleep": sleep, "observer": observer}
    kwargs.update(start=start, safe=safe, counted=counted)
    fast, plain = new_retry_loop(policy, budget, **kwargs), RetryLoop(policy, budget, **kwargs)
    assert type(fast) is RetryLoop
    assert _slots(fast) == _slots(plain)
    assert fast.history is not new_retry_loop(policy, budget, **kwargs).history  # fresh


# -- 5b. slots ---------------------------------------------------------------------------


async def _semaphore_story(take: Any, give: Any) -> list[str]:
    """Six pullers over two slots, one cancelled while it queues: who got a slot, in order."""
    order: list[str] = []

    async def pull(n: int) -> None:
        await take()
        order.append(f"in {n}")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        order.append(f"out {n}")
        give()

    tasks = [asyncio.create_task(pull(n)) for n in range(6)]
    await asyncio.sleep(0)
    tasks[3].cancel()  # queued: it must not take a slot, nor lose one
    await asyncio.gather(*tasks, return_exceptions=True)
    await take()
    await take()  # both slots are back
    order.append("end")
    return order


async def test_slots_give_what_asyncio_semaphore_gives() -> None:
    slots = Slots(2)

    async def take() -> None:
        if not slots.take_now():
            await slots.take()

    semaphore = asyncio.Semaphore(2)
    assert await _semaphore_story(take, slots.give) == await _semaphore_story(
        semaphore.acquire, semaphore.release
    )


async def test_slots_pass_on_a_slot_handed_to_a_cancelled_waiter() -> None:
    slots = Slots(1)
    assert slots.take_now()
    assert not slots.take_now()
    await _hand_to_a_cancelled_waiter(slots.take, slots.give)
    assert slots.take_now()


async def test_slots_take_a_free_slot_past_waiters_that_were_all_cancelled() -> None:
    slots = Slots(1)
    assert slots.take_now()
    queued = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    queued.cancel()  # still in the queue until it runs
    slots.give()
    assert not slots.take_now()  # someone queues: the inline path does not decide
    await asyncio.wait_for(slots.take(), 1.0)  # Semaphore.acquire(): the slot is free
    with pytest.raises(asyncio.CancelledError):
        await queued


def test_turns_try_take_is_free_then_take_now() -> None:
    turns = Turns()
    assert turns.try_take()
    assert not turns.free
    assert not turns.try_take()
    turns.give()
    assert turns.free


async def test_turns_take_a_free_turn_at_once_as_asyncio_lock_does() -> None:
    turns = Turns()
    await asyncio.wait_for(turns.take(), 1.0)  # nobody holds it: no queue, no hang
    assert not turns.free
    turns.give()
    assert turns.free
