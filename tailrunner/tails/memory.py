"""``MemoryTailStore``: tails kept in a dict, gone with the process (tests, demos)."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from uuid import UUID

from tailrunner.tails.store import (
    DEFAULT_RUN_RETENTION,
    QueryCursor,
    RunRecord,
    TailRecord,
    check_limit,
    check_record,
    check_retention,
    query_cursor,
    require_aware,
    state_filter,
)


class MemoryTailStore:
    """A :class:`~tailrunner.tails.store.TailStore` in memory.

    :param run_retention: how many runs per task :meth:`record_run` keeps.
    :raises InvalidArgument: ``run_retention`` is below 1.
    """

    def __init__(self, *, run_retention: int = DEFAULT_RUN_RETENTION) -> None:
        self._records: dict[str, dict[UUID, TailRecord]] = {}
        self._runs: dict[tuple[str, UUID], deque[RunRecord]] = {}
        self._run_retention = check_retention(run_retention)

    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        return dict(self._records.get(activity, {}))

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        return self._records.get(activity, {}).get(aggregate_id)

    async def save(self, record: TailRecord) -> None:
        check_record(record)
        self._records.setdefault(record.activity, {})[record.aggregate.id] = record

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await self.save(record)
        await self.record_run(run)

    async def record_run(self, run: RunRecord) -> None:
        require_aware(run.started_at, field="started_at")
        require_aware(run.finished_at, field="finished_at")
        key = (run.activity, run.aggregate.id)
        runs = self._runs.get(key)
        if runs is None:
            runs = self._runs[key] = deque(maxlen=self._run_retention)
        runs.append(run)

    async def list_runs(
        self, activity: str, aggregate_id: UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        check_limit(limit)
        runs = self._runs.get((activity, aggregate_id), ())
        return list(reversed(runs))[:limit]

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        check_limit(limit)
        if activity is None:
            records = [r for by_id in self._records.values() for r in by_id.values()]
        else:
            records = list(self._records.get(activity, {}).values())
        if states:
            wanted = set(state_filter(states))
            records = [r for r in records if r.state in wanted]
        # UUIDs compare as their integers, which is their bytes order: the
        # same order as the SQL stores.
        records.sort(key=query_cursor, reverse=True)
        if after is not None:
            records = [r for r in records if query_cursor(r) < after]
        return records[:limit]

    @asynccontextmanager
    async def transaction(self, record: TailRecord) -> AsyncIterator[None]:
        """Yield ``None``; save ``record`` when the block ends without an exception."""
        check_record(record)
        yield None
        await self.save(record)

    async def aclose(self) -> None:
        return None
