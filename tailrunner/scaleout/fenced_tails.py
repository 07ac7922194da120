"""``FencedTailStore``: the tail store a scale-out runner writes through.

Every write of a task (its record, its run, an activity's transaction)
goes to the PostgreSQL tail store with the fence of the task's segment
(:meth:`~tailrunner.scaleout.membership.Membership.fence`), checked in the
same statement. A write for a segment not held is not sent; one that finds
the lease gone writes nothing, is counted, and makes the runner stop that
segment's tasks (:meth:`~tailrunner.scaleout.membership.Membership.refused`).
Both raise :class:`~tailrunner.errors.LeaseLost`. Reads pass through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Collection
from contextlib import asynccontextmanager
from uuid import UUID

from tailrunner.errors import InvalidArgument, LeaseLost
from tailrunner.scaleout.membership import Membership
from tailrunner.sql.fencing import Fence
from tailrunner.tails.postgres import Connection, PostgresTailStore
from tailrunner.tails.store import QueryCursor, RunRecord, TailRecord


class FencedTailStore:
    """A :class:`~tailrunner.tails.store.TailStore` whose writes hold the segment's lease."""

    def __init__(self, store: PostgresTailStore, membership: Membership) -> None:
        if store.schema != membership.leases.schema:
            raise InvalidArgument(
                "scaleout",
                f"the segment leases live in schema {membership.leases.schema!r} but the tails in"
                f" {store.schema!r}: a fenced write checks its lease in the same statement,"
                " so both must be in one schema",
            )
        self._store = store
        self._membership = membership

    @property
    def store(self) -> PostgresTailStore:
        """The store written through."""
        return self._store

    def _fence(self, task: TailRecord | RunRecord) -> Fence:
        fence = self._membership.fence(task.activity, task.aggregate.id)
        if fence is None:
            raise LeaseLost(
                f"not written for {task.activity}/{task.aggregate.id}: this runner does not"
                f" hold segment {self._membership.segment(task.activity, task.aggregate.id)}"
            )
        return fence

    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        return await self._store.load(activity)

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        return await self._store.get(activity, aggregate_id)

    async def list_runs(
        self, activity: str, aggregate_id: UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        return await self._store.list_runs(activity, aggregate_id, limit=limit)

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        return await self._store.query(activity, states, limit, after)

    async def save(self, record: TailRecord) -> None:
        fence = self._fence(record)
        await self._fenced(fence, self._store.save(record, fence))

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        fence = self._fence(record)
        await self._fenced(fence, self._store.save_with_run(record, run, fence))

    async def record_run(self, run: RunRecord) -> None:
        fence = self._fence(run)
        await self._fenced(fence, self._store.record_run(run, fence))

    async def _fenced(self, fence: Fence, write: Awaitable[None]) -> None:
        """Await ``write``; a refusal is counted and stops the segment, then re-raised."""
        try:
            await write
        except LeaseLost:
            self._membership.refused(fence)
            raise

    @asynccontextmanager
    async def transaction(self, record: TailRecord) -> AsyncIterator[Connection]:
        fence = self._fence(record)
        committing = False
        try:
            async with self._store.transaction(record, fence) as conn:
                yield conn
                committing = True
        except LeaseLost:
            # The commit's refusal only: a LeaseLost the block itself raised
            # (a nested write) was counted where it happened.
            if committing:
                self._membership.refused(fence)
            raise

    async def aclose(self) -> None:
        await self._store.aclose()
