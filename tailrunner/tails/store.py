"""The ``TailStore`` contract: how far each (activity, aggregate) got.

The engines write a task's record before they act on a run's outcome, so a
restarted runner resumes from the stored tail (at-least-once: an event may be
seen again after a crash, never skipped) and a completed task stays complete.

Each run is also recorded (:class:`RunRecord`, Spin Cycle's job log); a store
keeps the newest ``run_retention`` runs per task and drops older ones.

Backends: :class:`~tailrunner.tails.memory.MemoryTailStore` (tests),
:class:`~tailrunner.tails.sqlite.SQLiteTailStore` (the embedded default) and
:class:`~tailrunner.tails.postgres.PostgresTailStore`;
:func:`~tailrunner.tails.open.open_tail_store` opens one from a URL.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.model import AggregateRef
from tailrunner.states import OutcomeKind, TaskState

#: How many runs per task a store keeps unless told otherwise.
DEFAULT_RUN_RETENTION = 100

#: At most this many characters of a run's error (its traceback) are kept.
MAX_ERROR_TEXT = 8192

#: The values of :attr:`RunRecord.outcome`.
RUN_OUTCOMES = frozenset(kind.value for kind in OutcomeKind)

#: Where a page of :meth:`TailStore.query` ended: ``(updated_at, activity,
#: aggregate_id)`` of its last record (see :func:`query_cursor`).
QueryCursor = tuple[datetime, str, UUID]


@dataclass(frozen=True, slots=True, kw_only=True)
class TailRecord:
    """What the tail store keeps per (activity, aggregate)."""

    activity: str
    aggregate: AggregateRef
    #: The last event handled; ``None``: start from the first event.
    tail: ULID | None
    state: TaskState
    #: Consecutive errors at this tail.
    attempts: int = 0
    last_error: str | None = None
    #: The activity returned ``Done``: never start it again.
    completed: bool = False
    updated_at: datetime
    #: Consecutive runs that ended in neither ``EOF`` nor ``Done`` since the
    #: last progress: the backoff exponent, kept so that a restart resumes it.
    failures: int = 0
    #: ``RETRY`` and ``WAITING``: when the next try is due (aware, UTC), so
    #: that a restarted runner honours it; ``None`` otherwise.
    next_run_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One run of a task: what it started from, what it came to."""

    activity: str
    aggregate: AggregateRef
    #: The try number: 1 for the first run at a tail, counting up while runs fail.
    attempt: int
    started_at: datetime
    finished_at: datetime
    tail_before: ULID | None
    tail_after: ULID | None
    events_seen: int = 0
    outcome: OutcomeKind
    #: The error of a failed run: its traceback, bounded
    #: (:data:`MAX_ERROR_TEXT`), whose last line is ``"ValueError: bad event"``.
    error: str | None = None
    #: Scale-out: the incarnation id of the runner that ran it, and the
    #: epoch of the segment lease it ran under; ``None`` with one runner.
    owner: str | None = None
    epoch: int | None = None


def query_cursor(record: TailRecord) -> QueryCursor:
    """The ``after`` argument of :meth:`TailStore.query` that pages on past ``record``."""
    return (record.updated_at, record.activity, record.aggregate.id)


def require_aware(value: datetime, *, field: str) -> datetime:
    """Check that ``value`` names an instant (has a time zone); stores compare and sort them.

    :raises InvalidArgument: naming ``field`` when ``value`` is naive.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(field, f"{value.isoformat()} has no time zone")
    return value


def check_record(record: TailRecord) -> TailRecord:
    """Check what every store refuses in a :class:`TailRecord` before it saves it.

    :raises InvalidArgument: naming the field: a naive ``updated_at`` or
        ``next_run_at``, or ``failures`` below 0.
    """
    require_aware(record.updated_at, field="updated_at")
    if record.next_run_at is not None:
        require_aware(record.next_run_at, field="next_run_at")
    if record.failures < 0:
        raise InvalidArgument("failures", f"{record.failures}: must not be negative")
    return record


def check_retention(run_retention: int) -> int:
    """Validate a store's ``run_retention``.

    :raises InvalidArgument: when it is below 1.
    """
    if run_retention < 1:
        raise InvalidArgument("run_retention", f"{run_retention}: keep at least 1 run per task")
    return run_retention


def check_limit(limit: int) -> int:
    """Validate the ``limit`` of a listing.

    :raises InvalidArgument: when it is below 1.
    """
    if limit < 1:
        raise InvalidArgument("limit", f"{limit}: must be at least 1")
    return limit


def state_filter(states: Collection[str]) -> tuple[str, ...]:
    """The ``states`` argument of :meth:`TailStore.query` as a tuple; one string is one state."""
    return (states,) if isinstance(states, str) else tuple(states)


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

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        """:meth:`save` and :meth:`record_run` in one transaction: one commit per run."""
        ...

    async def record_run(self, run: RunRecord) -> None:
        """Add ``run`` to its task's run log, dropping all but the newest ``run_retention``.

        "Newest" is the order in which runs were recorded.
        """
        ...

    async def list_runs(
        self, activity: str, aggregate_id: UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        """Up to ``limit`` recorded runs of one task, newest first.

        :raises InvalidArgument: ``limit`` is below 1.
        """
        ...

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        """Records for an operator's status view, most recently updated first.

        Ties on ``updated_at`` are ordered by activity, then aggregate id
        (bytes order), both descending.

        :param activity: only this activity's records; ``None`` for all.
        :param states: only records in one of these states; empty for all
            (a single string is taken as one state, not as its letters).
        :param limit: at most this many records.
        :param after: the :func:`query_cursor` of the previous page's last
            record, to get the page after it.
        :raises InvalidArgument: ``limit`` is below 1.
        """
        ...

    def transaction(self, record: TailRecord) -> AbstractAsyncContextManager[Any]:
        """A database transaction that stores ``record`` when it commits (exactly-once effects).

        ``async with store.transaction(record) as conn:`` yields the
        backend's connection in an open transaction: a
        :class:`sqlite3.Connection` (SQLite), a :class:`psycopg.AsyncConnection`
        (PostgreSQL) or ``None`` (memory). The activity writes through it;
        when the block ends normally ``record`` is saved in the same
        transaction and everything commits together, durable when the block
        exits. When the block raises (or is cancelled) nothing commits.

        Keep the block short and do not call the same store inside it: it
        holds a connection (SQLite: the store's only one, so other saves wait).
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
