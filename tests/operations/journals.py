"""A journal wrapper for the operations tests: see watches open, race a writer, hold appends."""

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
class WatchJournal:
    """A :class:`JournalApi` over ``inner`` that the tests can watch and race.

    - ``watches`` counts ``events(watch=True)`` calls, ``caught_up`` the ones
      that got their first caught-up batch (the waiter is subscribed);
      :meth:`until_caught_up` waits for a number of them.
    - ``before_watch``, when set, runs once at the next watch call, before it
      reaches the journal (a completion between a waiter's check and its
      subscription).
    - ``hold_appends``: the first that many appends wait until all of them
      have arrived, so that racing writers all load before any appends.
    """

    inner: JournalApi
    watches: int = 0
    caught_up: int = 0
    before_watch: Callable[[], Awaitable[None]] | None = None
    hold_appends: int = 0
    appends: int = 0
    _thresholds: list[tuple[int, anyio.Event]] = field(default_factory=list)
    _held: int = 0
    _released: anyio.Event = field(default_factory=anyio.Event)

    async def until_caught_up(self, count: int) -> None:
        """Return once ``count`` watch streams have caught up."""
        if self.caught_up >= count:
            return
        event = anyio.Event()
        self._thresholds.append((count, event))
        await event.wait()

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None = None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        if self._held < self.hold_appends:
            self._held += 1
            if self._held == self.hold_appends:
                self._released.set()
            await self._released.wait()
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
        first = True
        if watch:
            self.watches += 1
            race, self.before_watch = self.before_watch, None
            if race is not None:
                await race()
        stream = self.inner.events(aggregate_id, after=after, watch=watch, max_batch=max_batch)
        async with aclosing(stream) as batches:
            async for batch in batches:
                if watch and first and batch.will_block:
                    first = False
                    self._caught_up()
                yield batch

    def _caught_up(self) -> None:
        self.caught_up += 1
        for count, event in self._thresholds:
            if self.caught_up >= count:
                event.set()

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
