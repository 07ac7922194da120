"""Journal wrappers for the aggregate tests: count reads, and race a writer before appends."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from uuid import UUID

import anyio
from ulid import ULID

from tailrunner.journal.api import JournalApi
from tailrunner.model import (
    AggregateInfo,
    AggregateRef,
    AppendResult,
    EventBatch,
    NewEvent,
    SignalBatch,
)


@dataclass
class SpyJournal:
    """A :class:`JournalApi` over ``inner`` that records reads and can race a writer.

    ``race`` runs before each append while ``races`` is positive (counting
    it down): it appends with ``inner`` directly, as another writer would.
    """

    inner: JournalApi
    #: ``after`` of each ``events`` call.
    reads: list[ULID | None] = field(default_factory=list)
    #: How many events those calls returned.
    events_read: int = 0
    appends: int = 0
    request_ids: list[str | None] = field(default_factory=list)
    races: int = 0
    race: Callable[[AggregateRef], Awaitable[None]] | None = None
    #: When set, the next ``events`` call reads to the end, then waits for it
    #: before it ends (a slow reader that overlaps other calls).
    hold: anyio.Event | None = None
    #: Set once that call waits.
    holding: anyio.Event = field(default_factory=anyio.Event)

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None = None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        self.request_ids.append(request_id)
        if self.race is not None and self.races > 0:
            self.races -= 1
            await self.race(aggregate)
        self.appends += 1
        return await self.inner.append(
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
        self.reads.append(after)
        hold, self.hold = self.hold, None
        stream = self.inner.events(aggregate_id, after=after, watch=watch, max_batch=max_batch)
        async with aclosing(stream) as batches:
            async for batch in batches:
                self.events_read += len(batch.events)
                yield batch
        if hold is not None:
            self.holding.set()
            await hold.wait()

    def signals(self, aggregate_types: Sequence[str] = ()) -> AsyncGenerator[SignalBatch, None]:
        return self.inner.signals(aggregate_types)

    async def list_aggregates(
        self,
        aggregate_type: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[AggregateInfo], str]:
        return await self.inner.list_aggregates(
            aggregate_type, page_size=page_size, page_token=page_token
        )
