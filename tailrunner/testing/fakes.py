"""Fakes for unit-testing an activity without a journal: events, streams, a context."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any
from uuid import UUID, uuid4

from ulid import ULID

from tailrunner.activities.context import ActivityContext
from tailrunner.activities.stream import EventStream
from tailrunner.ids import next_ulid
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef, Event, EventBatch


def make_events(
    types_and_data: Iterable[tuple[str, Any]],
    *,
    aggregate_type: str = "test",
    aggregate_id: UUID | None = None,
    after: ULID | None = None,
) -> list[Event]:
    """Events as a journal would store them: increasing ids, each with its parent.

    :param types_and_data: ``(event type, payload)`` pairs; a payload that is
        not ``bytes`` is encoded as JSON.
    :param after: the id the first event's parent is (``None``: the first event).
    """
    aggregate_id = aggregate_id or uuid4()
    events: list[Event] = []
    parent = after
    for event_type, data in types_and_data:
        event_id = next_ulid(parent)
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        events.append(
            Event(
                id=event_id,
                parent=parent,
                aggregate_type=aggregate_type,
                aggregate_id=aggregate_id,
                type=event_type,
                data=payload,
            )
        )
        parent = event_id
    return events


def fake_stream(events: Sequence[Event], *, batch_size: int = 100) -> EventStream:
    """An :class:`EventStream` that yields ``events`` in batches and then ends (EOF).

    The last batch has ``will_block`` set, as the journal's has.
    """

    async def batches() -> AsyncGenerator[EventBatch, None]:
        if not events:
            yield EventBatch(events=(), will_block=True)
            return
        for start in range(0, len(events), batch_size):
            chunk = tuple(events[start : start + batch_size])
            yield EventBatch(events=chunk, will_block=start + batch_size >= len(events))

    return EventStream(batches())


class _NoJournal:
    """Stands in for the journal in a context made for a unit test."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(
            f"journal.{name}: this test context has no journal; pass"
            " activity_context(journal=...) (e.g. the tailrunner_journal fixture's client)"
        )


def activity_context(
    activity: str = "test",
    *,
    aggregate: AggregateRef | None = None,
    engine: str = "lazy",
    attempt: int = 1,
    journal: JournalApi | None = None,
) -> ActivityContext:
    """An :class:`ActivityContext` for calling an activity directly in a unit test.

    ``await ctx.checkpoint(tail)`` only records the tail (see ``ctx.tail``).
    """
    return ActivityContext(
        activity=activity,
        aggregate=aggregate or AggregateRef(type="test", id=uuid4()),
        engine=engine,
        attempt=attempt,
        journal=journal if journal is not None else _NoJournal(),  # type: ignore[arg-type]
    )
