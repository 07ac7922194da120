"""``ListOperations``: every source's operations, newest first, in AIP-158 pages, filtered.

**Order.** Newest first by the key (create time, aggregate id), both
descending: the id breaks ties between operations created in the same
millisecond, so the order is total and the same on every call.

**Pages** (AIP-158). ``page_size`` 0 means :data:`DEFAULT_PAGE_SIZE`; above
:data:`MAX_PAGE_SIZE` it is coerced down; a negative one is
``INVALID_ARGUMENT``. The page token is opaque: it encodes the last key of
the page and a fingerprint of the filter, with a MAC, and the next page
lists the keys below it. An operation created between two pages is newer
than that key, so it is not on a later page (it is on the next first page),
and none is skipped or repeated; one deleted between pages is simply not
listed. A token made for another filter, damaged, made up or not a token at
all is ``INVALID_ARGUMENT`` naming ``page_token``. The MAC (HMAC-SHA256 under
a key the service is given, a fixed one by default) is an integrity check,
not a secret: a token only says where a listing goes on, so a forged one
grants nothing, but it is refused all the same instead of being read as
some other position.

**Filter** (seed 000's ``state=`` names, and more). Clauses ``FIELD=VALUE``
joined with ``AND`` (upper case only, as AIP-160 spells its operators; a
lower-case ``and`` is refused, naming the fix). Whitespace around ``=`` and
``AND`` is free. The fields:

==========  ==========================================================
``state``   ``RUNNING`` (pending or running), ``SUCCEEDED``, ``FAILED``,
            ``CANCELLED`` (:data:`~tailrunner.operations.state.FILTER_NAMES`)
``kind``    the operation's kind, e.g. ``ping-registry``; ``kind=""``
            for operations without one (values may be double-quoted,
            with ``\\"`` and ``\\\\`` escapes)
``parent``  ``operations/{id}``: the operations created as its children
``done``    ``true`` or ``false``
==========  ==========================================================

An unknown field, ``OR``/``NOT``, another operator, a bad value or a
malformed clause is ``INVALID_ARGUMENT`` naming ``filter`` and the problem
(seed 000 returned everything for a filter it did not understand). Clauses
on one field are ANDed too (``state=RUNNING AND state=FAILED`` selects
nothing).

The request's ``name`` is the collection: ``""``, ``operations`` or
``operations/``; anything else is ``INVALID_ARGUMENT`` naming ``name``.
Echoed input is cut to :data:`ECHO_LIMIT` characters in every message.

A listing views every aggregate of every source (the journal has no index
by create time); the views are incremental loads from the sources' caches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import anyio

from tailrunner.errors import InvalidArgument, InvalidOperationName
from tailrunner.journal.api import JournalApi
from tailrunner.operations.manager import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from tailrunner.operations.names import PREFIX, parse_name
from tailrunner.operations.sources import OperationSource, OperationView
from tailrunner.operations.state import FILTER_NAMES, Operation

#: The collection names ``ListOperations`` accepts in its ``name`` field.
COLLECTIONS = ("", PREFIX.rstrip("/"), PREFIX)
#: The fields a filter may name.
FIELDS = ("state", "kind", "parent", "done")
#: The ``state=`` values (seed 000's names).
STATE_NAMES = ("RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
#: The longest filter accepted, in characters.
MAX_FILTER_LENGTH = 1024
#: The most characters of caller input that a message repeats.
ECHO_LIMIT = 200
#: The key of the page tokens' MAC when the service is not given its own.
DEFAULT_TOKEN_KEY = b"tailrunner.operations.ListOperations.page_token/1"

_TOKEN_VERSION = 1
_FINGERPRINT_SIZE = 8
_MAC_SIZE = 12
# version, filter fingerprint, create time (µs since the epoch, signed), aggregate id
_BODY = struct.Struct(f">B{_FINGERPRINT_SIZE}sq16s")
_TOKEN_SIZE = _BODY.size + _MAC_SIZE
_MAX_TOKEN_LENGTH = 4 * ((_TOKEN_SIZE + 2) // 3)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How many aggregates a listing views at once.
_VIEW_CONCURRENCY = 16
#: Aggregates per page of the journal's listing.
_AGGREGATES_PAGE = 1000

_SPACE = re.compile(r"\s*")
_LEXEME = re.compile(r'(?P<string>"(?:[^"\\]|\\.)*")|(?P<eq>=)|(?P<word>[^\s="]+)|(?P<quote>")')
_OPERATORS = ("AND", "OR", "NOT")


def echo(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` as a message may repeat it: cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


# -- filter -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Clause:
    """``field=value``, its value checked and in its canonical spelling."""

    field: str
    value: str

    def matches(self, view: OperationView) -> bool:
        match self.field:
            case "state":
                return FILTER_NAMES.get(view.state) == self.value
            case "kind":
                return view.kind == self.value
            case "parent":
                return view.parent == self.value
            case "done":
                return view.done == (self.value == "true")
        raise AssertionError(f"unchecked field {self.field!r}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Filter:
    """The clauses of a filter (all must hold), sorted and without repeats."""

    clauses: tuple[Clause, ...] = ()

    def matches(self, view: OperationView) -> bool:
        return all(clause.matches(view) for clause in self.clauses)

    @property
    def fingerprint(self) -> bytes:
        """The same for every spelling of the same clauses (order, spaces, quotes)."""
        canonical = json.dumps([[c.field, c.value] for c in self.clauses])
        return hashlib.sha256(canonical.encode()).digest()[:_FINGERPRINT_SIZE]


def parse_filter(text: str) -> Filter:
    """The :class:`Filter` that ``text`` spells (see the module docstring).

    :raises InvalidArgument: naming ``filter`` and what is wrong with it.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise _bad_filter(f"is {len(text)} characters long, at most {MAX_FILTER_LENGTH}")
    lexemes = _lex(text)
    clauses: set[Clause] = set()
    index = 0
    while True:
        if index >= len(lexemes):
            if not lexemes:
                return Filter()
            raise _bad_filter(f"expected a clause after AND at the end of {echo(text)!r}")
        clause, index = _clause(lexemes, index)
        clauses.add(clause)
        if index >= len(lexemes):
            return Filter(tuple(sorted(clauses)))
        kind, word, position = lexemes[index]
        if kind == "word" and word == "AND":
            index += 1
            continue
        if kind == "word" and word.upper() == "AND":
            raise _bad_filter(
                f"{word!r} at position {position}: join clauses with AND (upper case)"
            )
        if kind == "word" and word in ("OR", "NOT"):
            raise _bad_filter(f"{word} is not supported: clauses are joined with AND")
        raise _bad_filter(
            f"expected AND after the clause {clause.field}=…, got {echo(word, 50)!r} "
            f"at position {position}"
        )


def _lex(text: str) -> list[tuple[str, str, int]]:
    lexemes: list[tuple[str, str, int]] = []
    position = _SPACE.match(text, 0).end()  # type: ignore[union-attr]  # \s* always matches
    while position < len(text):
        match = _LEXEME.match(text, position)
        assert match is not None  # every character starts one of the alternatives
        kind = match.lastgroup
        assert kind is not None
        if kind == "quote":
            raise _bad_filter(f"the string at position {position} is not closed")
        lexemes.append((kind, match.group(), position))
        position = _SPACE.match(text, match.end()).end()  # type: ignore[union-attr]
    return lexemes


def _clause(lexemes: list[tuple[str, str, int]], index: int) -> tuple[Clause, int]:
    kind, field, position = lexemes[index]
    if kind != "word" or field in _OPERATORS:
        raise _bad_filter(f"expected a field at position {position}, got {echo(field, 50)!r}")
    if field not in FIELDS:
        raise _bad_filter(f"unknown field {echo(field, 50)!r}: expected one of {', '.join(FIELDS)}")
    if index + 1 >= len(lexemes) or lexemes[index + 1][0] != "eq":
        got = "the end" if index + 1 >= len(lexemes) else repr(echo(lexemes[index + 1][1], 50))
        raise _bad_filter(f"expected '=' after {field}, got {got} (only = is supported)")
    if index + 2 >= len(lexemes) or lexemes[index + 2][0] == "eq":
        raise _bad_filter(f"{field}= needs a value")
    value_kind, raw, _ = lexemes[index + 2]
    if value_kind == "string":
        try:
            value = json.loads(raw)
        except ValueError:
            raise _bad_filter(f"{field}={echo(raw, 50)}: not a valid quoted string") from None
    else:
        value = raw
    return Clause(field, _checked_value(field, value)), index + 3


def _checked_value(field: str, value: str) -> str:
    if field == "state" and value not in STATE_NAMES:
        raise _bad_filter(f"state={echo(value, 50)!r}: expected one of {', '.join(STATE_NAMES)}")
    if field == "done" and value not in ("true", "false"):
        raise _bad_filter(f"done={echo(value, 50)!r}: expected true or false")
    if field == "parent":
        try:
            parse_name(value, field="filter")
        except InvalidOperationName as exc:
            raise _bad_filter(
                f"parent={echo(value, 80)!r} is not an operation name: {exc.reason}"
            ) from None
    return value


def _bad_filter(reason: str) -> InvalidArgument:
    return InvalidArgument("filter", reason)


# -- page tokens --------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class ListKey:
    """Where an operation stands in the listing (larger: newer, listed first)."""

    create_time_us: int
    aggregate_id: bytes

    @classmethod
    def of(cls, view: OperationView, aggregate_id: UUID) -> ListKey:
        return cls((view.create_time - _EPOCH) // _MICROSECOND, aggregate_id.bytes)


def encode_page_token(last: ListKey, filter: Filter, key: bytes = DEFAULT_TOKEN_KEY) -> str:
    """The token of the page after ``last``, for listings with ``filter``."""
    body = _BODY.pack(_TOKEN_VERSION, filter.fingerprint, last.create_time_us, last.aggregate_id)
    mac = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_SIZE]
    return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode("ascii")


def decode_page_token(
    token: str, filter: Filter, filter_text: str, key: bytes = DEFAULT_TOKEN_KEY
) -> ListKey | None:
    """The last key of the previous page (``None`` for ``""``: the first page).

    :param filter_text: the request's filter as sent, for the message.
    :raises InvalidArgument: naming ``page_token``: not a token of this
        service, damaged or made up, or made for another filter.
    """
    if not token:
        return None
    not_ours = InvalidArgument(
        "page_token",
        f"{echo(token, 80)!r} is not a page token of ListOperations "
        "(pass the next_page_token of the previous page, or nothing for the first)",
    )
    if len(token) > _MAX_TOKEN_LENGTH:
        raise not_ours
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise not_ours from None
    if len(raw) != _TOKEN_SIZE:
        raise not_ours
    body, mac = raw[: _BODY.size], raw[_BODY.size :]
    expected = hmac.new(key, body, hashlib.sha256).digest()[:_MAC_SIZE]
    if not hmac.compare_digest(mac, expected):
        raise not_ours
    version, fingerprint, create_time_us, aggregate_id = _BODY.unpack(body)
    if version != _TOKEN_VERSION:
        raise not_ours
    if fingerprint != filter.fingerprint:
        raise InvalidArgument(
            "page_token",
            f"was made for another filter than {echo(filter_text, 80)!r}: "
            "send the filter of the first page with each of its pages",
        )
    return ListKey(create_time_us, aggregate_id)


# -- listing ------------------------------------------------------------------


def check_collection(name: str) -> None:
    """:raises InvalidArgument: naming ``name`` unless it is one of :data:`COLLECTIONS`."""
    if name not in COLLECTIONS:
        raise InvalidArgument(
            "name",
            f"{echo(name, 80)!r} is not a collection of operations: "
            "expected 'operations' (or '' or 'operations/')",
        )


def page_size_of(page_size: int) -> int:
    """The page size AIP-158 makes of the request's.

    :raises InvalidArgument: naming ``page_size`` when it is negative.
    """
    if page_size < 0:
        raise InvalidArgument("page_size", f"must be 0 or more, not {page_size}")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


async def list_operations(
    journal: JournalApi,
    sources: Sequence[OperationSource],
    *,
    filter: str = "",
    page_size: int = 0,
    page_token: str = "",
    token_key: bytes = DEFAULT_TOKEN_KEY,
) -> tuple[list[Operation], str]:
    """One page of the operations of ``sources`` and the next page's token ("" on the last).

    :raises InvalidArgument: a bad ``filter``, ``page_size`` or ``page_token`` (named).
    :raises JournalUnavailable: the journal cannot be reached.
    """
    parsed = parse_filter(filter)
    size = page_size_of(page_size)
    after = decode_page_token(page_token, parsed, filter, token_key)
    found: list[tuple[ListKey, OperationView]] = []
    failures: list[Exception] = []
    limiter = anyio.CapacityLimiter(_VIEW_CONCURRENCY)

    async def view(source: OperationSource, aggregate_id: UUID) -> None:
        try:
            async with limiter:
                seen = await source.view(aggregate_id)
        except Exception as exc:  # reraised below, unwrapped from the task group's group
            failures.append(exc)
            return
        if seen is None or not parsed.matches(seen):
            return
        key = ListKey.of(seen, aggregate_id)
        if after is None or key < after:
            found.append((key, seen))

    for source in sources:
        token = ""
        while True:
            infos, token = await journal.list_aggregates(
                source.aggregate_type, page_size=_AGGREGATES_PAGE, page_token=token
            )
            async with anyio.create_task_group() as group:
                for info in infos:
                    group.start_soon(view, source, info.id)
            if failures:
                raise failures[0]
            if not token:
                break
    newest = heapq.nlargest(size + 1, found, key=lambda item: item[0])
    page = newest[:size]
    next_token = encode_page_token(page[-1][0], parsed, token_key) if len(newest) > size else ""
    return [seen.operation for _, seen in page], next_token
