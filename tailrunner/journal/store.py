"""The ``JournalStore`` contract: where the journal keeps its events.

Backends: :class:`~tailrunner.journal.memory.MemoryJournalStore` (tests),
:class:`~tailrunner.journal.sqlite.SQLiteJournalStore` (the embedded
default); PostgreSQL comes later behind the same contract. The gRPC service
never touches a database itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol
from uuid import UUID

from ulid import ULID

from tailrunner.model import AggregateInfo, AggregateRef, AppendResult, Event, NewEvent

#: Called after an append committed, with the aggregate and its new head. A
#: store whose appends can come from other processes (PostgreSQL with
#: LISTEN/NOTIFY) calls it for those too. Listeners must not block.
AppendListener = Callable[[AggregateRef, ULID], None]


class JournalStore(Protocol):
    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None,
    ) -> AppendResult:
        """Append ``events`` in one transaction: all commit, or none.

        Gives each event a ULID strictly greater than the aggregate's head
        and records its parent. Returns only once the events are durable.

        :param expected_tail: ``None`` for no check; otherwise the head the
            aggregate must have.
        :raises TailMismatch: the head is not ``expected_tail``.
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

    def add_listener(self, listener: AppendListener) -> None:
        """Call ``listener`` after every committed append."""
        ...

    async def aclose(self) -> None:
        """Release connections and files; appends after this fail."""
        ...
