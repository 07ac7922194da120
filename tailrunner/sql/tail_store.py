"""``SQLTailStore``: what a SQL tail store does the same way in every database.

The reads (:meth:`~SQLTailStore.load`, :meth:`~SQLTailStore.get`,
:meth:`~SQLTailStore.list_runs`, :meth:`~SQLTailStore.query`) and the shape
of :meth:`~SQLTailStore.transaction`; a store supplies its driver: running
a statement, and beginning, rolling back and committing a transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

import anyio

from tailrunner.errors import InvalidArgument
from tailrunner.sql.codecs import TailRows
from tailrunner.sql.dialect import Dialect
from tailrunner.sql.query import tail_query
from tailrunner.sql.statements import TailStatements
from tailrunner.tails.store import QueryCursor, RunRecord, TailRecord, check_limit

if TYPE_CHECKING:
    from tailrunner.sql.fencing import Fence

Q = TypeVar("Q")
C = TypeVar("C")


class SQLTailStore(ABC, Generic[Q, C]):
    """A :class:`~tailrunner.tails.store.TailStore` over statements ``Q`` and connections ``C``.

    A store sets the three attributes below and implements the abstract
    methods, mapping its driver's errors to
    :class:`~tailrunner.errors.StoreError` there.
    """

    _dialect: Dialect
    _sql: TailStatements[Q]
    _rows: TailRows
    #: Whether its writes can be fenced by a segment lease (scale-out: PostgreSQL).
    _fences: bool = False

    @abstractmethod
    async def _fetch(self, what: str, statement: Q, params: Sequence[object]) -> list[Any]:
        """The rows of ``statement``; ``what`` names the store method in errors."""

    @abstractmethod
    def _extend(self, statement: Q, text: str) -> Q:
        """``statement`` followed by the dialect text ``text``."""

    @abstractmethod
    def _transaction_connection(self) -> AbstractAsyncContextManager[C]:
        """The connection a :meth:`transaction` holds for its block (the store must be open)."""

    @abstractmethod
    async def _begin(self, conn: C) -> None:
        """Begin the transaction."""

    @abstractmethod
    async def _rollback(self, conn: C) -> None:
        """Roll back, logging rather than raising a failure (it would hide the cause)."""

    @abstractmethod
    async def _save_and_commit(
        self, conn: C, params: tuple[object, ...], fence: Fence | None
    ) -> None:
        """Save a record (:attr:`TailStatements.save`) and commit; roll back on a failure.

        Refuses (a :class:`~tailrunner.errors.StoreError`) a transaction the
        block ended or broke itself: then nothing was saved. With a
        ``fence`` (only where :attr:`_fences`), the save is fenced, and a
        lost lease rolls everything back (:class:`~tailrunner.errors.LeaseLost`).
        """

    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        rows = await self._fetch("load", self._sql.load, (activity,))
        records = (self._rows.tail_record(row) for row in rows)
        return {r.aggregate.id: r for r in records}

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        key = self._dialect.codec.uuid_out(aggregate_id)
        rows = await self._fetch("get", self._sql.get, (activity, key))
        return self._rows.tail_record(rows[0]) if rows else None

    async def list_runs(
        self, activity: str, aggregate_id: UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        check_limit(limit)
        key = self._dialect.codec.uuid_out(aggregate_id)
        rows = await self._fetch("list_runs", self._sql.list_runs, (activity, key, limit))
        return [self._rows.run_record(row) for row in rows]

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        check_limit(limit)
        text, params = tail_query(self._dialect, activity, states, limit, after)
        rows = await self._fetch("query", self._extend(self._sql.select, text), params)
        return [self._rows.tail_record(row) for row in rows]

    @asynccontextmanager
    async def transaction(self, record: TailRecord, fence: Fence | None = None) -> AsyncIterator[C]:
        """Yield a connection in an open transaction; commit it with ``record`` saved.

        ``record`` is saved and everything commits when the block ends
        normally; on an exception or cancellation everything is rolled back.
        Both run to their end even if the caller is cancelled meanwhile.

        :param fence: scale-out: commit only while this segment lease is held.
        :raises StoreError: the transaction could not begin or commit (the
            block ended it, or its own writes failed and it swallowed the
            error).
        :raises LeaseLost: ``fence``'s lease was lost: nothing committed.
        """
        if fence is not None and not self._fences:
            raise InvalidArgument(
                "fence",
                f"{type(self).__name__} cannot fence its writes: scale-out needs PostgreSQL",
            )
        params = self._rows.tail_params(record)
        async with self._transaction_connection() as conn:
            await self._begin(conn)
            try:
                yield conn
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._rollback(conn)
                raise
            with anyio.CancelScope(shield=True):
                await self._save_and_commit(conn, params, fence)
