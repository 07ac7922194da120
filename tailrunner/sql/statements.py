"""The tail stores' statements, written once and rendered per dialect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Generic, TypeVar

from tailrunner.sql.dialect import Dialect
from tailrunner.sql.schema import RUN_COLUMNS, TAIL_COLUMNS, TAIL_KEY, TAIL_MIGRATIONS

Q = TypeVar("Q")
R = TypeVar("R")

_TAILS = ", ".join(TAIL_COLUMNS)
_RUNS = ", ".join(RUN_COLUMNS)
_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in TAIL_COLUMNS if c not in TAIL_KEY)


def _values(columns: tuple[str, ...]) -> str:
    return ", ".join("?" * len(columns))


@dataclass(frozen=True, slots=True)
class TailStatements(Generic[Q]):
    """The statements of a tail store; ``Q`` is what its driver executes.

    Parameters are those of :class:`~tailrunner.sql.codecs.TailRows`, or
    named in each field's comment.
    """

    #: Insert or replace a task's record (:meth:`TailRows.tail_params`).
    save: Q
    #: A task's record: (activity, aggregate id).
    get: Q
    #: Every record of one activity: (activity,).
    load: Q
    #: Add a run (:meth:`TailRows.run_params`).
    insert_run: Q
    #: Drop all but a task's newest runs (:func:`prune_params`).
    prune_runs: Q
    #: A task's newest runs: (activity, aggregate id, limit).
    list_runs: Q
    #: The start of a :func:`~tailrunner.sql.query.tail_query`.
    select: Q

    @staticmethod
    def render(dialect: Dialect) -> TailStatements[str]:
        """The statements in ``dialect``'s text."""
        r = dialect.render
        return TailStatements(
            save=r(
                f"INSERT INTO {{tails}} ({_TAILS}) VALUES ({_values(TAIL_COLUMNS)})"
                f" ON CONFLICT ({', '.join(TAIL_KEY)}) DO UPDATE SET {_UPDATE}"
            ),
            get=r(f"SELECT {_TAILS} FROM {{tails}} WHERE activity = ? AND aggregate_id = ?"),
            load=r(f"SELECT {_TAILS} FROM {{tails}} WHERE activity = ?"),
            insert_run=r(f"INSERT INTO {{tail_runs}} ({_RUNS}) VALUES ({_values(RUN_COLUMNS)})"),
            # Everything older than the task's newest N runs; the subquery is
            # NULL (nothing deleted) while the task has fewer.
            prune_runs=r(
                "DELETE FROM {tail_runs} WHERE activity = ? AND aggregate_id = ? AND seq < ("
                "SELECT seq FROM {tail_runs} WHERE activity = ? AND aggregate_id = ?"
                " ORDER BY seq DESC LIMIT 1 OFFSET ?)"
            ),
            list_runs=r(
                f"SELECT {_RUNS} FROM {{tail_runs}} WHERE activity = ? AND aggregate_id = ?"
                " ORDER BY seq DESC LIMIT ?"
            ),
            select=r(f"SELECT {_TAILS} FROM {{tails}}"),
        )

    def map(self, func: Callable[[Q], R]) -> TailStatements[R]:
        """Each statement through ``func`` (PostgreSQL: its schema filled in)."""
        return TailStatements(*(func(getattr(self, f.name)) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class FencedStatements:
    """The writes of a scale-out runner: each lands only while its segment's lease is held.

    ``INSERT … SELECT … WHERE {fence}``: the lease's condition
    (:meth:`tailrunner.sql.fencing.Fence.condition`, which locks the lease
    row ``FOR SHARE``) is in the same statement as the write, so a runner
    that lost its lease writes nothing, and the write's row count says so
    (0: fenced; the upsert otherwise always touches one row). ``{fence}``
    stays a placeholder for the caller to fill.
    """

    #: :attr:`TailStatements.save`, fenced.
    save: str
    #: :attr:`TailStatements.insert_run`, fenced.
    insert_run: str

    @staticmethod
    def render(dialect: Dialect) -> FencedStatements:
        r = dialect.render
        return FencedStatements(
            save=r(
                f"INSERT INTO {{tails}} ({_TAILS}) SELECT {_values(TAIL_COLUMNS)}"
                f" WHERE {{{{fence}}}} ON CONFLICT ({', '.join(TAIL_KEY)}) DO UPDATE SET {_UPDATE}"
            ),
            insert_run=r(
                f"INSERT INTO {{tail_runs}} ({_RUNS}) SELECT {_values(RUN_COLUMNS)}"
                " WHERE {{fence}}"
            ),
        )


def prune_params(activity: object, aggregate_id: object, retention: int) -> tuple[object, ...]:
    """The parameters of :attr:`TailStatements.prune_runs` that keep ``retention`` runs.

    :param aggregate_id: as the dialect stores it.
    """
    return (activity, aggregate_id, activity, aggregate_id, retention - 1)


def tail_migrations(dialect: Dialect) -> tuple[tuple[str, ...], ...]:
    """:data:`~tailrunner.sql.schema.TAIL_MIGRATIONS` in ``dialect``'s text."""
    return tuple(tuple(dialect.render(s) for s in step) for step in TAIL_MIGRATIONS)
