"""``LocalJournal``: the :class:`~tailrunner.journal.api.JournalApi` of the journal server's
own process, over its store and hub.

Services that the journal server carries beside the journal (the
``google.longrunning.Operations`` service) read and write the journal
through it: the same semantics as :class:`~tailrunner.journal.client.JournalClient`
(the same checks, batches, pages and push of new events), without a gRPC hop
to its own address, a channel to manage, or a server that must have started
before the service could be built. Watches and signals come from the same
:class:`~tailrunner.journal.hub.Hub` that serves the gRPC clients, so a
local watcher is woken by every append, whoever made it.

The store's errors reach the caller as they are (``TailMismatch``,
``AggregateTypeMismatch``, ``StoreError``), as the client raises them; a
watch ends when the hub closes (the server stops), as a client's stream
does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import nullcontext
from uuid import UUID

from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.journal.api import Cursor
from tailrunner.journal.append_checks import AppendLimits
from tailrunner.journal.hub import Hub
from tailrunner.journal.service import (
    DEFAULT_BATCH,
    DEFAULT_PAGE_SIZE,
    MAX_BATCH,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
    read_many,
)
from tailrunner.journal.store import JournalStore, check_expect_new, check_request_id
from tailrunner.journal.wire_format import decode_event
from tailrunner.model import (
    AggregateInfo,
    AggregateRef,
    AppendResult,
    EventBatch,
    NewEvent,
    SignalBatch,
)


class LocalJournal:
    """The journal of ``store`` in this process: a :class:`~tailrunner.journal.api.JournalApi`.

    :param hub: must be registered as a listener of ``store`` (as the
        :class:`~tailrunner.journal.server.JournalServer`'s is).
    :param limits: the appends' limits: the journal service's (the server
        passes them).
    """

    def __init__(
        self, store: JournalStore, hub: Hub, *, limits: AppendLimits | None = None
    ) -> None:
        self._store = store
        self._hub = hub
        self._limits = limits if limits is not None else AppendLimits()

    @property
    def limits(self) -> AppendLimits:
        """What an append may carry."""
        return self._limits

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None = None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        """Append events to one aggregate; the checks the journal service makes, then the store's.

        The same limits as the gRPC service's (:attr:`limits`), refused by the
        same :class:`~tailrunner.errors.InvalidArgument`: a hosted service
        cannot write what no client could.
        """
        check_expect_new(expect_new=expect_new, expected_tail=expected_tail)
        if request_id is not None:
            check_request_id(request_id)
        limits = self._limits
        limits.check_aggregate_type(aggregate.type)
        limits.check_event_count(len(events))
        for index, event in enumerate(events):
            limits.check_event(index, event.type, event.data, event.metadata)
        return await self._store.append(
            aggregate,
            events,
            expected_tail=expected_tail,
            request_id=request_id,
            expect_new=expect_new,
        )

    async def events(
        self,
        aggregate_id: UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        """Batches of the aggregate's events after ``after``, as the ``Events`` call sends them.

        With ``watch``, the hub's watch is entered before the first read (an
        append after that read still wakes it); an aggregate without events
        gives one empty batch with ``will_block`` first, so that a reader
        knows it is caught up; the generator ends when the hub closes.
        """
        limit = min(max_batch or DEFAULT_BATCH, MAX_BATCH)
        cursor = after
        with self._hub.watch(aggregate_id) if watch else nullcontext() as watcher:
            caught_up = False
            while True:
                # One event more than the batch tells whether it catches the reader up.
                found = await self._store.read(aggregate_id, after=cursor, limit=limit + 1)
                more = len(found) > limit
                if more:
                    found = found[:limit]
                if found:
                    cursor = found[-1].id
                    yield EventBatch(events=tuple(found), will_block=not more)
                    caught_up = caught_up or not more
                elif watcher is not None and not caught_up:
                    yield EventBatch(events=(), will_block=True)
                    caught_up = True
                if more:
                    continue
                if watcher is None or not await watcher.wait():
                    return

    async def read_aggregates(
        self, reads: Sequence[Cursor], *, max_events: int = 0
    ) -> list[EventBatch]:
        """The events of many aggregates after their tails, as ``ReadAggregates`` reads them.

        The same reads, budget and snapshot as the service's (one per call
        on a store that reads many at once).

        :raises InvalidArgument: more than 1000 reads, or a negative ``max_events``.
        """
        if max_events < 0:
            raise InvalidArgument("max_events", f"must not be negative, got {max_events}")
        cursors = [
            (aggregate_id.bytes, b"" if after is None else after.bytes)
            for aggregate_id, after in reads
        ]
        batches = await read_many(self._store, cursors, max_events=max_events)
        return [
            EventBatch(
                events=tuple(decode_event(wire, aggregate_type, aggregate_id) for wire in rows),
                will_block=complete,
            )
            for (aggregate_id, _), (aggregate_type, rows, complete) in zip(
                reads, batches, strict=True
            )
        ]

    async def signals(
        self, aggregate_types: Sequence[str] = ()
    ) -> AsyncGenerator[SignalBatch, None]:
        """The hub's signals (the first batch a resync), until the hub closes."""
        for index, type_ in enumerate(aggregate_types):
            if not type_:
                raise InvalidArgument(f"aggregate_types[{index}]", "must not be empty")
        with self._hub.subscribe(aggregate_types) as subscriber:
            while True:
                batch = await subscriber.take()
                if batch is None:
                    return
                yield batch

    async def list_aggregates(
        self,
        aggregate_type: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AggregateInfo], str]:
        """One page of aggregates ordered by id, and the next page's token ("" on the last).

        The tokens are the journal service's: one from either works with the other.
        """
        if page_size < 0:
            raise InvalidArgument("page_size", f"must not be negative, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        type_filter = aggregate_type or ""
        after_id = decode_page_token(page_token, type_filter)
        found = await self._store.list_aggregates(
            type_filter or None, after_id=after_id, limit=size + 1
        )
        page = found[:size]
        token = encode_page_token(page[-1].id, type_filter) if len(found) > size else ""
        return page, token
