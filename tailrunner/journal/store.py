"""The ``JournalStore`` contract: where the journal keeps its events.

Backends: :class:`~tailrunner.journal.memory.MemoryJournalStore` (tests),
:class:`~tailrunner.journal.sqlite.SQLiteJournalStore` (the embedded
default) and :class:`~tailrunner.journal.postgres.PostgresJournalStore`
(several journal servers on one database). The gRPC service never touches a
database itself.

Reading many aggregates in one call (``ReadAggregates``) is the optional
:class:`WireManyReader`: every store here has it, each doing all the reads
of one call in one snapshot, under one :class:`ReadBudget`. The service
falls back to one :meth:`JournalStore.read` per cursor (not one snapshot)
for a store without it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable
from uuid import UUID

from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.model import AggregateInfo, AggregateRef, AppendResult, Event, NewEvent

#: Called after an append committed, with the aggregate and its new head. A
#: store whose appends can come from other processes (PostgreSQL with
#: LISTEN/NOTIFY) calls it for those too. Listeners must not block. A
#: listener marked with :func:`takes_fresh_events` is called with a third
#: argument, the appended events (:class:`FreshEvents`, ``None`` when unknown).
AppendListener = Callable[[AggregateRef, ULID], None]


class FreshEvents(NamedTuple):
    """The events one append committed, in the stored form (see :mod:`.wire_format`).

    ``rows`` are exactly what ``Events`` serves of them (each its ``Event``
    message without the aggregate fields), oldest first: each row's parent
    is the row before it, the last one is the append's head.
    """

    #: The aggregate's head before them, raw (``b""``: they are its first events).
    parent: bytes
    rows: Sequence[bytes]


#: What a listener marked with :func:`takes_fresh_events` is: called as
#: ``listener(aggregate, head, fresh)``; ``fresh`` is ``None`` when the
#: store does not have the events at hand (an append of another server).
FreshEventsListener = Callable[[AggregateRef, ULID, "FreshEvents | None"], None]

_TAKES_FRESH_EVENTS = "_tailrunner_takes_fresh_events"

F = TypeVar("F", bound=Callable[..., None])


def takes_fresh_events(listener: F) -> F:
    """Mark an append listener (a function or method) as a :data:`FreshEventsListener`.

    A mark on the listener, not an argument of ``add_listener``, so that
    whoever registers it (the journal server registers ``Hub.notify``) need
    not know; a 2-argument listener stays one.
    """
    setattr(listener, _TAKES_FRESH_EVENTS, True)
    return listener


def wants_fresh_events(listener: Callable[..., None]) -> bool:
    """``listener`` was marked by :func:`takes_fresh_events` (a bound method: its function)."""
    return getattr(listener, _TAKES_FRESH_EVENTS, False) is True


#: Called when appends may have been missed (a store whose appends also come
#: from other processes lost its link to them): re-check every aggregate.
ResyncListener = Callable[[], None]

#: The longest request id an append may carry, in characters.
MAX_REQUEST_ID_LENGTH = 128
#: How many request ids a store remembers per aggregate by default: those of
#: the aggregate's last appends that had one. There is no time limit: the
#: window is counted in appends, so it does not depend on clocks.
DEFAULT_REQUEST_IDS_KEPT = 10_000


def check_request_ids_kept(request_ids_kept: int) -> None:
    """Refuse a window of request ids that could not hold the one just appended.

    :raises InvalidArgument: naming ``request_ids_kept``.
    """
    if request_ids_kept < 1:
        raise InvalidArgument("request_ids_kept", f"must be at least 1, got {request_ids_kept}")


def check_request_id(request_id: str) -> None:
    """Refuse a malformed request id: empty, too long, or not printable ASCII.

    Printable ASCII (``!`` to ``~``) takes UUIDs, ULIDs and most tokens, and
    keeps request ids readable in logs.

    :raises InvalidArgument: naming ``request_id``.
    """
    if not request_id:
        raise InvalidArgument("request_id", "must not be empty (leave it out for none)")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument(
            "request_id",
            f"is {len(request_id)} characters, over the limit of {MAX_REQUEST_ID_LENGTH}",
        )
    bad = next((c for c in request_id if not "!" <= c <= "~"), None)
    if bad is not None:
        raise InvalidArgument(
            "request_id", f"{request_id!r} has {bad!r}: only printable ASCII (! to ~) is allowed"
        )


def check_expect_new(*, expect_new: bool, expected_tail: ULID | None) -> None:
    """Refuse an append that asks for two heads at once.

    ``expect_new`` asks for no events, ``expected_tail`` for that head: both
    cannot hold, and a caller that sets both has a bug worth naming.

    :raises InvalidArgument: naming ``expect_new``.
    """
    if expect_new and expected_tail is not None:
        raise InvalidArgument(
            "expect_new",
            f"cannot be set together with expected_tail ({expected_tail}): "
            "expect_new asks for an aggregate with no events, expected_tail for one at that head",
        )


class JournalStore(Protocol):
    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        """Append ``events`` in one transaction: all commit, or none.

        Gives each event a ULID strictly greater than the aggregate's head
        and records its parent. Returns only once the events are durable.

        :param expected_tail: ``None`` for no check; otherwise the head the
            aggregate must have.
        :param expect_new: the aggregate must have no events (the check that
            ``expected_tail=None`` cannot ask for); checked in the same
            transaction as the insert, so of two racing first appends one lands.
        :param request_id: makes the append idempotent. When an earlier
            append to the same aggregate had this request id, nothing is
            appended and its result is returned, whatever ``events``,
            ``expected_tail`` and ``expect_new`` are (the append already happened); listeners
            hear nothing. The check and the append are one transaction, so
            concurrent appends with one request id append once. A store
            remembers the request ids of each aggregate's last appends (a
            count set when it is made, :data:`DEFAULT_REQUEST_IDS_KEPT` by
            default); an older one is forgotten and appends again. An
            aggregate type mismatch is refused all the same.
        :raises InvalidArgument: a malformed ``request_id`` (see
            :func:`check_request_id`); ``expect_new`` with an
            ``expected_tail`` (see :func:`check_expect_new`).
        :raises TailMismatch: the head is not ``expected_tail``; or
            ``expect_new`` and the aggregate has events (``expected`` is
            ``None``, ``actual`` the head).
        :raises AggregateTypeMismatch: the aggregate exists with another type.
        """
        ...

    async def read(self, aggregate_id: UUID, *, after: ULID | None, limit: int) -> list[Event]:
        """Up to ``limit`` events of the aggregate with ids greater than ``after``, in order."""
        ...

    async def head(self, aggregate_id: UUID) -> ULID | None:
        """The aggregate's newest event id; ``None`` when it has no events."""
        ...

    async def list_aggregates(
        self, aggregate_type: str | None, *, after_id: UUID | None, limit: int
    ) -> list[AggregateInfo]:
        """Up to ``limit`` aggregates ordered by id (bytes order), ids above ``after_id``."""
        ...

    def add_listener(
        self, listener: AppendListener, on_resync: ResyncListener | None = None
    ) -> None:
        """Call ``listener`` after every committed append, and ``on_resync`` if some were missed.

        A listener marked with :func:`takes_fresh_events` also gets the
        appended events of this store's own appends (``None`` for appends
        heard from other servers).

        Appends of this store are never missed; a store shared by several
        servers (PostgreSQL) hears the others' appends over a link that may
        drop, and calls ``on_resync`` when it comes back.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files; appends after this fail."""
        ...


#: One read of a many-read, raw: the aggregate's 16-byte id and the 16-byte
#: event id to read after (``b""``: from the first event).
RawCursor = tuple[bytes, bytes]


class WireBatch(NamedTuple):
    """What one read of a many-read found, in the stored form."""

    #: The aggregate's type; ``""`` when no events came.
    aggregate_type: str
    #: The events, as :mod:`~tailrunner.journal.wire_format` stores them.
    rows: list[bytes]
    #: ``rows`` are every event after the cursor (not cut by the budget).
    complete: bool


#: The batch of a read the budget left out: nothing, and not complete.
SKIPPED = WireBatch("", [], False)


class ReadBudget:
    """What is left of one many-read's budget: events, and bytes of events.

    The reads take from it in order. A read may take :attr:`left` events
    (it asks the database for one more, which tells whether it is
    complete); an event is kept while the bytes kept before it are under
    ``max_bytes``, so the first event is always kept, however big, and the
    event that crosses the line is kept too (as ``Events`` cuts its batches).
    Once spent, :attr:`left` is 0 and the reads after take nothing.
    """

    __slots__ = ("_bytes", "_events_left", "_max_bytes")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self._events_left = max_events
        self._bytes = 0
        self._max_bytes = max_bytes

    @property
    def left(self) -> int:
        """Events the next read may take (0: spent)."""
        return self._events_left

    def take(self, rows: list[bytes], limit: int) -> tuple[list[bytes], bool]:
        """Keep what fits of ``rows``, which a read of ``limit + 1`` events gave.

        :param limit: :attr:`left` when the read was made.
        :returns: the rows kept, and whether they are complete: every event
            after the read's cursor.
        """
        more = len(rows) > limit
        if more:
            rows = rows[:limit]
        size = self._bytes + sum(map(len, rows))
        if size >= self._max_bytes:
            # The byte line is reached in this read: keep the events that
            # start below it; then the budget is spent.
            starts = list(itertools.accumulate(map(len, rows), initial=self._bytes))
            kept = bisect.bisect_left(starts, self._max_bytes, hi=len(rows))
            if kept < len(rows):
                rows = rows[:kept]
                more = True
            self._events_left = 0
            return rows, not more
        self._bytes = size
        self._events_left -= len(rows)
        return rows, not more


@runtime_checkable
class WireManyReader(Protocol):
    """A store that reads many aggregates in one snapshot, in the stored form."""

    async def read_wire_many(
        self, reads: Sequence[RawCursor], *, max_events: int, max_bytes: int
    ) -> list[WireBatch]:
        """One batch per read, in order, all from one snapshot of the store.

        The reads take from one :class:`ReadBudget` of ``max_events`` and
        ``max_bytes`` in order; those after it is spent are :data:`SKIPPED`.
        Ids are not checked here (the service checked them).
        """
        ...
