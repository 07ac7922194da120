"""``MemoryTailStore``: tails kept in a dict, gone with the process (tests, demos)."""

from __future__ import annotations

from uuid import UUID

from tailrunner.tails.store import TailRecord


class MemoryTailStore:
    """A :class:`~tailrunner.tails.store.TailStore` in memory."""

    def __init__(self) -> None:
        self._records: dict[str, dict[UUID, TailRecord]] = {}

    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        return dict(self._records.get(activity, {}))

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        return self._records.get(activity, {}).get(aggregate_id)

    async def save(self, record: TailRecord) -> None:
        self._records.setdefault(record.activity, {})[record.aggregate.id] = record

    async def aclose(self) -> None:
        return None
