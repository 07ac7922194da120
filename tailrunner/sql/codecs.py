"""Row codecs: records to statement parameters and result rows back to records.

The mapping of a record's fields to columns is written once
(:class:`TailRows`); what differs between the databases is only how a value
is stored, the :class:`Codec`: SQLite keeps UUIDs as their 16 bytes, times as
microseconds since the epoch (``INTEGER``) and flags as 0/1; PostgreSQL keeps
``uuid``, ``timestamptz`` and ``boolean``, which psycopg converts itself.
ULIDs are their 16 bytes in both (``BLOB``/``bytea``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ulid import ULID

from tailrunner.instants import from_micros, micros
from tailrunner.model import AggregateRef
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.store import RunRecord, TailRecord, check_record, require_aware


def _same(value: Any) -> Any:
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _uuid_from_bytes(raw: bytes) -> UUID:
    return UUID(bytes=raw)


def _uuid_bytes(value: UUID) -> bytes:
    return value.bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Codec:
    """How one database stores UUIDs, times and flags: both ways.

    Each converter defaults to none at all: the driver converts the value.
    """

    uuid_out: Callable[[UUID], object] = _same
    uuid_in: Callable[[Any], UUID] = _same
    #: Takes an aware datetime.
    time_out: Callable[[datetime], object] = _same
    #: Gives an aware datetime in UTC.
    time_in: Callable[[Any], datetime] = _same
    flag_out: Callable[[bool], object] = _same
    flag_in: Callable[[Any], bool] = _same

    def ulid_out(self, value: ULID | None) -> bytes | None:
        """A ULID (or ``None``) as a column value: its 16 bytes."""
        return None if value is None else value.bytes

    def ulid_in(self, raw: bytes | memoryview | None) -> ULID | None:
        """A ULID column's value as a :class:`ULID` (or ``None``)."""
        return None if raw is None else ULID.from_bytes(bytes(raw))

    def maybe_time_out(self, value: datetime | None) -> object:
        """:attr:`time_out` of a time that may be ``None``."""
        return None if value is None else self.time_out(value)

    def maybe_time_in(self, value: Any) -> datetime | None:
        """:attr:`time_in` of a column that may be ``NULL``."""
        return None if value is None else self.time_in(value)


SQLITE_CODEC = Codec(
    uuid_out=_uuid_bytes,
    uuid_in=_uuid_from_bytes,
    time_out=micros,
    time_in=from_micros,
    flag_out=int,
    flag_in=bool,
)

#: psycopg converts ``uuid``, ``timestamptz`` and ``boolean`` itself; times
#: come back in the session's time zone.
POSTGRESQL_CODEC = Codec(time_in=_utc)


@dataclass(frozen=True, slots=True)
class TailRows:
    """:class:`TailRecord` and :class:`RunRecord` as rows of ``tails`` and ``tail_runs``.

    The parameters and rows are in the order of
    :data:`~tailrunner.sql.schema.TAIL_COLUMNS` and
    :data:`~tailrunner.sql.schema.RUN_COLUMNS`.
    """

    codec: Codec

    def tail_params(self, record: TailRecord) -> tuple[object, ...]:
        """``record``'s column values, checked (:func:`~tailrunner.tails.store.check_record`)."""
        check_record(record)
        c = self.codec
        return (
            record.activity,
            c.uuid_out(record.aggregate.id),
            record.aggregate.type,
            c.ulid_out(record.tail),
            str(record.state),
            record.attempts,
            record.last_error,
            c.flag_out(record.completed),
            c.time_out(record.updated_at),
            record.failures,
            c.maybe_time_out(record.next_run_at),
        )

    def tail_record(self, row: Sequence[Any]) -> TailRecord:
        """The record a ``tails`` row holds."""
        (
            activity,
            id_,
            type_,
            tail,
            state,
            attempts,
            last_error,
            completed,
            updated_at,
            failures,
            next_run_at,
        ) = row
        c = self.codec
        return TailRecord(
            activity=activity,
            aggregate=AggregateRef(type=type_, id=c.uuid_in(id_)),
            tail=c.ulid_in(tail),
            state=TaskState(state),
            attempts=attempts,
            last_error=last_error,
            completed=c.flag_in(completed),
            updated_at=c.time_in(updated_at),
            failures=failures,
            next_run_at=c.maybe_time_in(next_run_at),
        )

    def run_params(self, run: RunRecord) -> tuple[object, ...]:
        """``run``'s column values; its times must be aware."""
        c = self.codec
        return (
            run.activity,
            c.uuid_out(run.aggregate.id),
            run.aggregate.type,
            run.attempt,
            c.time_out(require_aware(run.started_at, field="started_at")),
            c.time_out(require_aware(run.finished_at, field="finished_at")),
            c.ulid_out(run.tail_before),
            c.ulid_out(run.tail_after),
            run.events_seen,
            str(run.outcome),
            run.error,
            run.owner,
            run.epoch,
        )

    def run_record(self, row: Sequence[Any]) -> RunRecord:
        """The run a ``tail_runs`` row holds."""
        (
            activity,
            id_,
            type_,
            attempt,
            started,
            finished,
            before,
            after,
            seen,
            outcome,
            error,
            owner,
            epoch,
        ) = row
        c = self.codec
        return RunRecord(
            activity=activity,
            aggregate=AggregateRef(type=type_, id=c.uuid_in(id_)),
            attempt=attempt,
            started_at=c.time_in(started),
            finished_at=c.time_in(finished),
            tail_before=c.ulid_in(before),
            tail_after=c.ulid_in(after),
            events_seen=seen,
            outcome=OutcomeKind.stored(outcome),
            error=error,
            owner=owner,
            epoch=epoch,
        )
