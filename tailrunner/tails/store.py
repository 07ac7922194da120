"""The ``TailStore`` contract: how far each (activity, aggregate) got.

The engines write a task's record before they act on a run's outcome, so a
restarted runner resumes from the stored tail (at-least-once: an event may be
seen again after a crash, never skipped) and a completed task stays complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from ulid import ULID

from tailrunner.model import AggregateRef


@dataclass(frozen=True, slots=True, kw_only=True)
class TailRecord:
    """What the tail store keeps per (activity, aggregate)."""

    activity: str
    aggregate: AggregateRef
    #: The last event handled; ``None``: start from the first event.
    tail: ULID | None
    #: The task state name (:class:`~tailrunner.engines.task.TaskState`).
    state: str
    #: Consecutive errors at this tail.
    attempts: int = 0
    last_error: str | None = None
    #: The activity returned ``Done``: never start it again.
    completed: bool = False
    updated_at: datetime


class TailStore(Protocol):
    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        """Every record of ``activity``, by aggregate id."""
        ...

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        """The record of one task, or ``None`` when it never ran."""
        ...

    async def save(self, record: TailRecord) -> None:
        """Store ``record``, replacing the task's previous one; durable when it returns."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
