"""Lag: how many events of its aggregate a task has still to handle (head minus tail).

The journal numbers no events, so the position of a tail is not known from
the tail itself. Two ways are used:

- :func:`count_after` reads the events after the tail (``Events`` without
  ``watch``) and counts them: exact, and it costs what the lag is, so a
  caught-up task costs one empty stream.
- :class:`LagTracker` (the metrics) starts from ``ListAggregates``, which
  gives every aggregate's head and event count in pages of a thousand. A task
  at the head has no lag; one at epoch lags by the event count; otherwise the
  events between the tail and the listed head are counted once, which gives
  the tail's position (``event_count - counted``). An event's position never
  changes in an append-only journal, so it is kept and the next refresh costs
  only the listing: ``lag = event_count - position``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from uuid import UUID

import anyio
import structlog
from ulid import ULID

from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateInfo, AggregateRef

log = structlog.get_logger(__name__)

#: The largest batch the journal sends: fewer messages while counting.
_COUNT_BATCH = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Lag:
    """Where an aggregate's journal is, seen from one task's tail."""

    #: The aggregate's newest event id (``None``: it has no events).
    head: ULID | None
    #: Events after the tail.
    events: int


async def count_after(
    journal: JournalApi, aggregate_id: UUID, tail: ULID | None, *, upto: ULID | None = None
) -> Lag:
    """Count the aggregate's events after ``tail`` (all of them for ``None``).

    :param upto: count only events up to this id, inclusive (events appended
        meanwhile are left out, so the count matches a listed head).
    :raises JournalError: the journal failed or cannot be reached.
    """
    head, count = tail, 0
    async with aclosing(
        journal.events(aggregate_id, after=tail, watch=False, max_batch=_COUNT_BATCH)
    ) as batches:
        async for batch in batches:
            events = batch.events
            if not events:
                continue
            if upto is not None and events[-1].id > upto:
                kept = [e for e in events if e.id <= upto]
                count += len(kept)
                if kept:
                    head = kept[-1].id
                break
            count += len(events)
            head = events[-1].id
    return Lag(head=head, events=count)


#: One task as the tracker sees it: its activity, aggregate and tail.
TaskTail = tuple[str, AggregateRef, ULID | None]


class LagTracker:
    """Sums the lag of many tasks per activity, cheaply from the second time on.

    :param journal: where heads, counts and events are read.
    :param concurrency: at most this many counting streams at once.
    """

    def __init__(self, journal: JournalApi, *, concurrency: int = 4) -> None:
        self._journal = journal
        self._limiter = anyio.CapacityLimiter(concurrency)
        #: The position (1-based index) of a tail in its aggregate.
        self._positions: dict[tuple[UUID, ULID], int] = {}

    async def lag_by_activity(
        self, tasks: Iterable[TaskTail], activities: Iterable[str] = ()
    ) -> dict[str, int]:
        """The summed lag of ``tasks`` per activity (0 for ``activities`` without any).

        A task whose aggregate the journal does not list (no events) lags by 0.

        :raises JournalError: the journal failed or cannot be reached.
        """
        lags = dict.fromkeys(activities, 0)
        by_type: dict[str, dict[UUID, list[tuple[str, ULID | None]]]] = {}
        for activity, aggregate, tail in tasks:
            lags.setdefault(activity, 0)
            by_type.setdefault(aggregate.type, {}).setdefault(aggregate.id, []).append(
                (activity, tail)
            )
        to_count: list[tuple[str, AggregateInfo, ULID]] = []
        used: dict[tuple[UUID, ULID], int] = {}
        for aggregate_type, wanted in by_type.items():
            async for info in self._aggregates(aggregate_type, wanted):
                for activity, tail in wanted[info.id]:
                    if tail is None:
                        lags[activity] += info.event_count
                    elif tail == info.head:
                        continue
                    elif (position := self._positions.get((info.id, tail))) is not None:
                        used[info.id, tail] = position
                        lags[activity] += max(0, info.event_count - position)
                    else:
                        to_count.append((activity, info, tail))

        async def count(activity: str, info: AggregateInfo, tail: ULID) -> None:
            async with self._limiter:
                lag = await count_after(self._journal, info.id, tail, upto=info.head)
            used[info.id, tail] = info.event_count - lag.events
            lags[activity] += lag.events

        async with anyio.create_task_group() as tg:
            for activity, info, tail in to_count:
                tg.start_soon(count, activity, info, tail)
        # Only the tails seen now are kept: the cache stays as large as the task table.
        self._positions = used
        return lags

    async def _aggregates(
        self, aggregate_type: str, wanted: Mapping[UUID, object]
    ) -> AsyncIterator[AggregateInfo]:
        """The listed aggregates of ``aggregate_type`` that ``wanted`` holds."""
        token = ""
        while True:
            page, token = await self._journal.list_aggregates(
                aggregate_type, page_size=1000, page_token=token
            )
            for info in page:
                if info.id in wanted:
                    yield info
            if not token:
                return
