"""Fake event streams for unit-testing an activity without a journal."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any
from uuid import UUID, uuid4

from ulid import ULID

from tailrunner.activities.stream import EventStream
from tailrunner.ids import next_ulid
from tailrunner.model import Event, EventBatch


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
