"""Small questions to the journal that more than one part asks."""

from __future__ import annotations

from contextlib import aclosing
from uuid import UUID

from ulid import ULID

from tailrunner.journal.api import JournalApi


async def is_event_of(journal: JournalApi, aggregate_id: UUID, event_id: ULID) -> bool:
    """Whether ``event_id`` is one of the events of aggregate ``aggregate_id``.

    One short read: the first event after ``event_id - 1`` is the event itself
    if it exists.
    """
    if int(event_id) == 0:
        return False
    just_before = ULID.from_int(int(event_id) - 1)
    async with aclosing(journal.events(aggregate_id, after=just_before, max_batch=1)) as batches:
        async for batch in batches:
            if batch.events:
                return batch.events[0].id == event_id
    return False
