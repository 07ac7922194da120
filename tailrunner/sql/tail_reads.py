"""``TailReads``: the reading half of a SQL tail store, written once for both databases."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, Generic, TypeVar
from uuid import UUID

from tailrunner.sql.codecs import TailRows
from tailrunner.sql.dialect import Dialect
from tailrunner.sql.query import tail_query
from tailrunner.sql.statements import TailStatements
from tailrunner.tails.store import QueryCursor, RunRecord, TailRecord, check_limit

Q = TypeVar("Q")


class TailReads(ABC, Generic[Q]):
    """:meth:`load`, :meth:`get`, :meth:`list_runs` and :meth:`query` over :meth:`_fetch`.

    A store sets the three attributes and runs statements of type ``Q`` in
    :meth:`_fetch`, mapping its driver's errors there.
    """

    _dialect: Dialect
    _sql: TailStatements[Q]
    _rows: TailRows

    @abstractmethod
    async def _fetch(self, what: str, statement: Q, params: Sequence[object]) -> list[Any]:
        """The rows of ``statement``; ``what`` names the store method in errors."""

    @abstractmethod
    def _extend(self, statement: Q, text: str) -> Q:
        """``statement`` followed by the dialect text ``text``."""

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

    def _prune_params(self, run: RunRecord, retention: int) -> tuple[object, ...]:
        """The parameters of :attr:`TailStatements.prune_runs` that keep ``retention`` runs."""
        activity, key = run.activity, self._dialect.codec.uuid_out(run.aggregate.id)
        return (activity, key, activity, key, retention - 1)
