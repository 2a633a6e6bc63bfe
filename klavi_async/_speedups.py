"""
Every hot-path trick of the cancel path, in one place.

Strictly private.  Each trick does what a plain line of Python would do, faster; each is
named here, says what it gained when it went in (docs/performance.md, "Optimisations and
their measured gains": "SDK-only" is CPU per call with the transport stubbed out), and
tests/test_speedups.py checks it against the plain version (property tests where the
inputs are open-ended).  A trick whose gain is gone should go too: the plain version is
in the test.

1. `fast_constructor`: build `Attempt` and `Cancelled` by plain attribute stores on a
   twin class that is not frozen, then give the object its real class; attrs' `__init__`
   goes through `object.__setattr__` for a frozen class (part of 22.8 → 20.8 µs
   SDK-only, with the slots' own setters; the stores: about 5,000 instructions less per
   object again).  Generated from the attrs fields and keyword-only, so a swapped
   argument cannot pass and a new field cannot be forgotten.
2. `uuid4_pair`: two UUID4 strings from one `os.urandom` read, no `uuid.UUID` objects
   (1.25-1.35x → 1.10-1.17x raw aiohttp's CPU, with two other changes).
3. `cancel_body`: the cancel's JSON body from a template when the values need no JSON
   escaping (checked here, not assumed), `json.dumps` otherwise.
4. `parse_json`: the C scanner behind `json.loads`, called directly (23.4 → 22.8 µs).
5. `Turns`: `asyncio.Lock`'s turn-taking inline: a pull that meets no other costs a flag,
   not two coroutines (0.5 µs per pull).  `Slots`: `asyncio.Semaphore` the same way, for
   `cancel_many`'s slots: a free slot is taken by `take_now()`, no coroutine (3.11's
   `acquire()` is one, and its `locked()` builds a generator on every call).
6. `request_headers`: the headers a request sends: the caller's dict as it is when nothing
   is added, one copy otherwise, so no dict the caller keeps ever holds the token.
7. `PathURLs`: `base.with_path(path, encoded=True)` as yarl's own parser builds a URL (its
   slots set, its cache filled), with what depends only on the base (host, port, ...)
   worked out once per client instead of once per request by aiohttp's first look at it
   (and no `lru_cache` miss in yarl's `from_parts`: every cancel's path is new): about
   13,500 instructions per call end to end.
8. `slot_builder`: a plain slotted class (`Outcome`, `RetryLoop`) made with
   `object.__new__` and one store per slot, not by calling the class: a call of a class
   whose `__init__` is Python goes through `type_call`, `slot_tp_init` and, with
   keywords, a dict each way (CPython 3.11), about 2,500 instructions more per object.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable
from typing import Any, Final, TypeVar

import attrs
from yarl import URL

from ._results import Attempt, Cancelled
from ._turns import Slots, Turns

__all__ = [
    "PathURLs",
    "Slots",
    "Turns",
    "cancel_body",
    "fast_constructor",
    "new_attempt",
    "new_cancelled",
    "parse_json",
    "request_headers",
    "slot_builder",
    "uuid4",
    "uuid4_pair",
]

T = TypeVar("T")


# -- 1. fast constructors --------------------------------------------------------------


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """
    A keyword-only `cls(...)` that sets the slots directly.  No converter, no validator.

    Only for values already of the right types (the SDK's own, on the hot path).  Every
    field is a required keyword: the generated function is `build(*, a, b, ...)`.

    The object is made as an instance of a twin of *cls* that adds no slot and has
    `object`'s own `__setattr__` and `__delattr__` (both: they share one type slot, and
    a frozen `__delattr__` alone would keep every store on the slow path), so each field
    is one plain store the interpreter specialises; then `__class__` is set to *cls*,
    which Python allows between classes with the same slots.  What comes out is a *cls*,
    frozen like any other: only this function ever holds the twin.
    """
    names = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    twin = type(
        f"_{cls.__name__}Building",
        (cls,),
        {"__slots__": (), "__setattr__": object.__setattr__, "__delattr__": object.__delattr__},
    )
    namespace: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": cls}
    lines = [f"def build(*, {', '.join(names)}):", "    obj = _new(_twin)"]
    lines += [f"    obj.{name} = {name}" for name in names]
    lines += ["    obj.__class__ = _cls", "    return obj"]
    exec("\n".join(lines), namespace)  # noqa: S102  # nosec B102 - our own field names, as attrs does
    build: Callable[..., T] = namespace["build"]
    build.__qualname__ = build.__name__ = f"new_{cls.__name__.lower()}"
    build.__doc__ = f"`{cls.__name__}(...)` built fast, every field a keyword.  Strictly private."
    return build


new_attempt: Final[Callable[..., Attempt]] = fast_constructor(Attempt)
new_cancelled: Final[Callable[..., Cancelled]] = fast_constructor(Cancelled)


# -- 2. UUID4 strings ------------------------------------------------------------------

_urandom: Final = os.urandom
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid4_pair() -> tuple[str, str]:
    """
    Two independent random (version 4) UUID strings from one read of the system's randomness.

    Each is the same as `str(uuid.uuid4())`, without building UUID objects.
    """
    h = _urandom(32).hex()
    return (
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}",
        f"{h[32:40]}-{h[40:44]}-4{h[45:48]}-{_VARIANT[h[48]]}{h[49:52]}-{h[52:]}",
    )


def uuid4() -> str:
    """One random (version 4) UUID string."""
    return uuid4_pair()[0]


# -- 3. the cancel's JSON body -------------------------------------------------------


def cancel_body(document: str, identifier_type: str) -> bytes:
    """
    `json.dumps({"cancelledBy": document, "identifierType": identifier_type})`, compact.

    A validated document is `[0-9A-Z]` and the type `CPF` or `CNPJ`: nothing to escape,
    so a template does.  That guarantee lives in `_documents`; it is checked here, and
    anything else takes the `json.dumps` path, so the body is right whatever comes in.
    """
    if document.isascii() and document.isalnum() and identifier_type in ("CPF", "CNPJ"):
        return f'{{"cancelledBy":"{document}","identifierType":"{identifier_type}"}}'.encode()
    return json.dumps(
        {"cancelledBy": document, "identifierType": identifier_type}, separators=(",", ":")
    ).encode()


# -- 4. JSON parsing -----------------------------------------------------------------

# The C scanner behind `json.loads` (JSONDecoder sets it in __init__; typeshed leaves it
# out), called directly: this runs on every answer.
_DECODER: Final = json.JSONDecoder()
_scan_json: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_SPACE: Final = " \t\n\r"
_UTF8_BOM: Final = codecs.BOM_UTF8


def parse_json(raw: bytes) -> Any:
    """
    The JSON value in *raw*, or None when it is empty or not JSON.

    What `json.loads(raw)` gives (None where that raises), encoding detection included.
    Plain UTF-8 (what `json` would detect as such: no BOM, no NUL in the first two bytes)
    goes straight to the C scanner `json.loads` uses; anything else goes through
    `json.loads`.  The one difference: nesting a few levels short of Python's recursion
    limit, which `json.loads` refuses, parses here (three stack frames fewer).
    """
    if not raw:
        return None
    if raw[0] and (len(raw) == 1 or raw[1]) and not raw.startswith(_UTF8_BOM):
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            pass
        else:
            start = len(text) - len(text.lstrip(_JSON_SPACE))
            try:
                value, end = _scan_json(text, start)
            except (StopIteration, ValueError, RecursionError):
                return None
            if end != len(text) and text[end:].strip(_JSON_SPACE):
                return None  # json.loads: "Extra data"
            return value
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


# -- 5. turn-taking: `Turns` and `Slots` live in `_turns` (imported above) -------------


# -- 6. request headers --------------------------------------------------------------


def request_headers(
    headers: dict[str, str], authorization: str | None, user_agent: str | None
) -> dict[str, str]:
    """
    *headers* plus `Authorization` and `User-Agent` when given, in a dict of their own.

    With neither to add the caller's dict is sent as it is (no copy); otherwise one copy,
    so the token never lands in a dict a caller's frame holds.
    """
    if authorization is None and user_agent is None:
        return headers
    sent = {**headers}
    if authorization is not None:
        sent["Authorization"] = authorization
    if user_agent is not None:
        sent["User-Agent"] = user_agent
    return sent


# -- 7. request URLs -----------------------------------------------------------------

_URL_SLOTS: Final = ("_cache", "_scheme", "_netloc", "_path", "_query", "_fragment")
_BASE_KEYS: Final = (
    "absolute",
    "scheme",
    "raw_authority",
    "authority",
    "raw_user",
    "user",
    "raw_password",
    "password",
    "raw_host",
    "host",
    "host_subcomponent",
    "host_port_subcomponent",
    "port",
    "explicit_port",
    "raw_query_string",
    "query_string",
    "raw_fragment",
    "fragment",
)
"""yarl's cached properties that depend on the scheme and netloc alone (or on the empty
query and fragment every URL built here has): the same for every path on one base."""
_CHECKED: Final = (*_BASE_KEYS, "raw_path", "path", "raw_path_qs", "path_qs", "raw_parts", "name")
"""What a new client compares between a URL made here and one from `with_path`."""


class PathURLs:
    """
    `base.with_path(path, encoded=True)` for many encoded absolute paths on one base.

    yarl builds a URL from parts with an empty cache, so aiohttp's first look at each
    request's URL parses the netloc again and fills host, port and user one property at a
    time, and `from_parts` goes through an `lru_cache` that a new payment id always misses.
    Here the URL is made as yarl's own parser makes one (`object.__new__`, its six slots,
    a filled cache), the base's part of the cache copied from one URL worked out once.
    Used only when yarl's URL still has the slots this relies on and one URL made both
    ways reads alike (checked once per client); `with_path` otherwise.
    """

    __slots__ = ("_base", "_known", "_netloc", "_scheme")

    def __init__(self, base: URL) -> None:
        self._base = base
        sample = base.with_path("/", encoded=True)
        cache = getattr(sample, "_cache", None)
        self._known: dict[str, Any] | None = None
        self._scheme = self._netloc = ""
        if getattr(URL, "__slots__", None) == _URL_SLOTS and isinstance(cache, dict):
            for name in _BASE_KEYS:
                getattr(sample, name)  # cached by yarl as it is read
            self._known = {key: cache[key] for key in _BASE_KEYS if key in cache}
            self._scheme, self._netloc = sample._scheme, sample._netloc
            if not self._agrees(base):  # a yarl whose slots or cache mean something else
                self._known = None

    def _agrees(self, base: URL) -> bool:
        # Once per client: one URL made both ways must read alike wherever aiohttp reads.
        path = "/klavi-check/a%2Fb-1"
        fast, plain = self(path), base.with_path(path, encoded=True)
        return (
            fast == plain
            and str(fast) == str(plain)
            and all(getattr(fast, name) == getattr(plain, name) for name in _CHECKED)
        )

    def __call__(self, path: str) -> URL:
        """The base with *path* (encoded, starting with '/'), query and fragment dropped."""
        known = self._known
        if known is None:
            return self._base.with_path(path, encoded=True)
        url: Any = object.__new__(URL)
        url._scheme = self._scheme
        url._netloc = self._netloc
        url._path = path
        url._query = url._fragment = ""
        cache = known.copy()
        cache["raw_path"] = cache["raw_path_qs"] = path
        url._cache = cache
        built: URL = url  # no `cast()`: a call at run time
        return built


# -- 8. plain slotted objects without the class call ---------------------------------


def slot_builder(cls: type[T], /, **fixed: object) -> Callable[..., T]:
    """
    A keyword-only builder of *cls*, a plain slotted class: every slot is set, to the
    keyword of its name or to its value in *fixed*; `__init__` is not run.

    For the hot path's own objects, whose `__init__` only stores what it is given: the
    module that owns the class says which values are fixed, and a test holds the result
    next to what the class call makes, slot by slot.  A value in *fixed* is shared by
    every object built, so it must be immutable (None, a bool, a string, a function).
    """
    slots = [
        name
        for klass in reversed(cls.__mro__)
        for name in klass.__dict__.get("__slots__", ())
        if name != "__weakref__"
    ]
    unknown = set(fixed) - set(slots)
    if unknown:
        raise TypeError(f"{cls.__name__} has no slot {sorted(unknown)}")
    given = [name for name in slots if name not in fixed]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    namespace.update({f"_fixed{name}": value for name, value in fixed.items()})
    lines = [f"def build(*, {', '.join(given)}):", "    obj = _new(_cls)"]
    lines += [f"    obj.{n} = {'_fixed' + n if n in fixed else n}" for n in slots]
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # noqa: S102  # nosec B102 - slot names, as attrs does
    build: Callable[..., T] = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__.lower()}"
    return build
