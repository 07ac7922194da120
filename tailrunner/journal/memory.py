"""``MemoryJournalStore``: events kept in dicts, gone with the process (tests, demos)."""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from uuid import UUID

from ulid import ULID

from tailrunner.errors import AggregateTypeMismatch, InvalidArgument, StoreError, TailMismatch
from tailrunner.ids import next_ulids, ulid_to_bytes
from tailrunner.journal.listeners import Listeners
from tailrunner.journal.store import (
    DEFAULT_REQUEST_IDS_KEPT,
    SKIPPED,
    AppendListener,
    FreshEvents,
    RawCursor,
    ReadBudget,
    ResyncListener,
    WireBatch,
    check_expect_new,
    check_request_id,
    check_request_ids_kept,
)
from tailrunner.journal.wire_format import encode_event
from tailrunner.model import AggregateInfo, AggregateRef, AppendResult, Event, NewEvent

_NO_METADATA: MappingProxyType[str, str] = MappingProxyType({})


@dataclass(slots=True)
class _Aggregate:
    type: str
    events: list[Event] = field(default_factory=list)
    #: The events' ids as bytes, for bisecting (bytes order is ULID order).
    keys: list[bytes] = field(default_factory=list)
    #: The results of the last appends that had a request id, oldest first.
    requests: OrderedDict[str, AppendResult] = field(default_factory=OrderedDict)


class MemoryJournalStore:
    """A :class:`~tailrunner.journal.store.JournalStore` in memory.

    Appends never await, so an append and its listeners run in one step of the
    event loop: nothing interleaves with them.
    """

    def __init__(self, *, request_ids_kept: int = DEFAULT_REQUEST_IDS_KEPT) -> None:
        """:param request_ids_kept: how many request ids to remember per aggregate."""
        check_request_ids_kept(request_ids_kept)
        self._request_ids_kept = request_ids_kept
        self._aggregates: dict[UUID, _Aggregate] = {}
        #: Aggregate ids as bytes, sorted, for ``list_aggregates``.
        self._order: list[bytes] = []
        self._listeners = Listeners()
        self._closed = False

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        if self._closed:
            raise StoreError("the memory journal store is closed")
        if not events:
            raise InvalidArgument("events", "an append needs at least one event")
        if request_id is not None:
            check_request_id(request_id)
        check_expect_new(expect_new=expect_new, expected_tail=expected_tail)
        state = self._aggregates.get(aggregate.id)
        if state is not None and state.type != aggregate.type:
            raise AggregateTypeMismatch(
                f"aggregate {aggregate.id} has type {state.type!r}, not {aggregate.type!r}"
            )
        if state is not None and request_id is not None:
            first = state.requests.get(request_id)
            if first is not None:
                return first
        head = state.events[-1].id if state is not None and state.events else None
        if expected_tail is not None and expected_tail != head:
            raise TailMismatch(expected_tail, head)
        if expect_new and head is not None:
            raise TailMismatch(None, head)
        ids = next_ulids(head, len(events))
        # Build every event before changing anything: all commit, or none.
        parents = [head, *ids[:-1]]
        built = [
            Event(
                id=event_id,
                parent=parent,
                aggregate_type=aggregate.type,
                aggregate_id=aggregate.id,
                type=new.type,
                data=bytes(new.data),
                metadata=MappingProxyType(dict(new.metadata)) if new.metadata else _NO_METADATA,
            )
            for event_id, parent, new in zip(ids, parents, events, strict=True)
        ]
        if state is None:
            state = _Aggregate(type=aggregate.type)
            self._aggregates[aggregate.id] = state
            bisect.insort(self._order, aggregate.id.bytes)
        state.events.extend(built)
        state.keys.extend(event_id.bytes for event_id in ids)
        result = AppendResult(tail=ids[-1], event_ids=tuple(ids))
        if request_id is not None:
            state.requests[request_id] = result
            if len(state.requests) > self._request_ids_kept:
                state.requests.popitem(last=False)
        fresh = None
        if self._listeners.wants_fresh_events:
            # The stored form a wire-form store would serve (see read_wire_many).
            fresh = FreshEvents(ulid_to_bytes(head), [_stored_form(e) for e in built])
        self._listeners.notify(aggregate, ids[-1], fresh)
        return result

    async def read(self, aggregate_id: UUID, *, after: ULID | None, limit: int) -> list[Event]:
        if self._closed:
            raise StoreError("the memory journal store is closed")
        state = self._aggregates.get(aggregate_id)
        if state is None:
            return []
        start = 0 if after is None else bisect.bisect_right(state.keys, after.bytes)
        return state.events[start : start + limit]

    async def read_wire_many(
        self, reads: Sequence[RawCursor], *, max_events: int, max_bytes: int
    ) -> list[WireBatch]:
        """Many reads in the stored form; one snapshot, as nothing here awaits.

        Events are kept as :class:`Event`s here, so they are encoded for the
        wire (and their sizes for the budget) as the service would encode them.
        """
        if self._closed:
            raise StoreError("the memory journal store is closed")
        budget = ReadBudget(max_events, max_bytes)
        batches: list[WireBatch] = []
        for key, after in reads:
            limit = budget.left
            if not limit:
                batches.append(SKIPPED)
                continue
            state = self._aggregates.get(UUID(bytes=key))
            if state is None:
                batches.append(WireBatch("", [], True))
                continue
            start = bisect.bisect_right(state.keys, after) if after else 0
            rows, complete = budget.take(
                [_stored_form(e) for e in state.events[start : start + limit + 1]], limit
            )
            batches.append(WireBatch(state.type if rows else "", rows, complete))
        return batches

    async def head(self, aggregate_id: UUID) -> ULID | None:
        state = self._aggregates.get(aggregate_id)
        return state.events[-1].id if state is not None and state.events else None

    async def list_aggregates(
        self, aggregate_type: str | None, *, after_id: UUID | None, limit: int
    ) -> list[AggregateInfo]:
        if self._closed:
            raise StoreError("the memory journal store is closed")
        start = 0 if after_id is None else bisect.bisect_right(self._order, after_id.bytes)
        found: list[AggregateInfo] = []
        for key in itertools.islice(self._order, start, None):
            if len(found) >= limit:
                break
            aggregate_id = UUID(bytes=key)
            state = self._aggregates[aggregate_id]
            if aggregate_type is not None and state.type != aggregate_type:
                continue
            found.append(
                AggregateInfo(
                    type=state.type,
                    id=aggregate_id,
                    head=state.events[-1].id if state.events else None,
                    event_count=len(state.events),
                )
            )
        return found

    def add_listener(
        self, listener: AppendListener, on_resync: ResyncListener | None = None
    ) -> None:
        self._listeners.add(listener, on_resync)

    async def aclose(self) -> None:
        self._closed = True


def _stored_form(event: Event) -> bytes:
    """``event`` as a store that keeps the wire form keeps it."""
    return encode_event(
        event.id.bytes, ulid_to_bytes(event.parent), event.type, event.data, event.metadata or None
    )
