"""``SQLiteTailStore``: the embedded default tail store, one SQLite file in WAL mode.

One connection, serialized by an anyio lock; every sqlite3 call of the
store's own runs in a worker thread, never on the event loop. Tail writes
are small and the engines write one per run, so one connection is plenty,
and SQLite allows one writer at a time anyway.

The schema is built by :data:`MIGRATIONS`, applied in order; the version
lives in the table ``tails_schema_version`` (not ``PRAGMA user_version``,
so that the file may also hold another component's tables, such as the
journal's). A file written by a newer tailrunner is refused.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, get_args
from uuid import UUID

import anyio
import anyio.to_thread
import structlog
from ulid import ULID

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.group_commit import GroupCommit, commit_each_alone_on
from tailrunner.model import AggregateRef
from tailrunner.sqlite_wal import use_wal
from tailrunner.tails.store import (
    DEFAULT_RUN_RETENTION,
    QueryCursor,
    RunRecord,
    TailRecord,
    check_limit,
    check_record,
    check_retention,
    require_aware,
    state_filter,
)

log = structlog.get_logger(__name__)

#: ``PRAGMA synchronous`` levels. ``FULL`` (the default) syncs the WAL on
#: every commit, so a saved tail survives a power cut; ``NORMAL`` survives a
#: killed process but may lose the last commits on a power cut.
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SYNCHRONOUS_LEVELS: tuple[str, ...] = get_args(Synchronous)

#: The schema, one migration per version: ``MIGRATIONS[i]`` takes a file
#: from version ``i`` to ``i + 1``. Append only; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tails (
            activity TEXT NOT NULL,
            aggregate_id BLOB NOT NULL,
            aggregate_type TEXT NOT NULL,
            tail BLOB,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            completed INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (activity, aggregate_id)
        ) WITHOUT ROWID""",
        # For the status view (query): newest updated first, overall or by state.
        "CREATE INDEX tails_by_updated ON tails (updated_at, activity, aggregate_id)",
        "CREATE INDEX tails_by_state ON tails (state, updated_at, activity, aggregate_id)",
        """CREATE TABLE tail_runs (
            seq INTEGER PRIMARY KEY,
            activity TEXT NOT NULL,
            aggregate_id BLOB NOT NULL,
            aggregate_type TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            started_at INTEGER NOT NULL,
            finished_at INTEGER NOT NULL,
            tail_before BLOB,
            tail_after BLOB,
            events_seen INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT
        )""",
        "CREATE INDEX tail_runs_by_task ON tail_runs (activity, aggregate_id, seq)",
    ),
    (
        # Issue 10: the backoff exponent and the next try's time survive a
        # restart. Older rows read as "no failures, no time due".
        "ALTER TABLE tails ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tails ADD COLUMN next_run_at INTEGER",
    ),
)

_CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS tails_schema_version"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
)
_SELECT_VERSION = "SELECT version FROM tails_schema_version WHERE id = 1"
_SET_VERSION = (
    "INSERT INTO tails_schema_version (id, version) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
)
_VERSION_TABLE_EXISTS = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tails_schema_version'"
)

_TAIL_COLUMNS = (
    "activity, aggregate_id, aggregate_type, tail, state, attempts, last_error, completed,"
    " updated_at, failures, next_run_at"
)
_SAVE = (
    f"INSERT INTO tails ({_TAIL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (activity, aggregate_id) DO UPDATE SET"
    " aggregate_type = excluded.aggregate_type, tail = excluded.tail, state = excluded.state,"
    " attempts = excluded.attempts, last_error = excluded.last_error,"
    " completed = excluded.completed, updated_at = excluded.updated_at,"
    " failures = excluded.failures, next_run_at = excluded.next_run_at"
)
_GET = f"SELECT {_TAIL_COLUMNS} FROM tails WHERE activity = ? AND aggregate_id = ?"
_LOAD = f"SELECT {_TAIL_COLUMNS} FROM tails WHERE activity = ?"

_RUN_COLUMNS = (
    "activity, aggregate_id, aggregate_type, attempt, started_at, finished_at, tail_before,"
    " tail_after, events_seen, outcome, error"
)
_INSERT_RUN = f"INSERT INTO tail_runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Everything older than the task's newest ``retention`` runs; the subquery
# is NULL (nothing deleted) while the task has fewer.
_PRUNE_RUNS = (
    "DELETE FROM tail_runs WHERE activity = ? AND aggregate_id = ? AND seq < ("
    "SELECT seq FROM tail_runs WHERE activity = ? AND aggregate_id = ?"
    " ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)
_LIST_RUNS = (
    f"SELECT {_RUN_COLUMNS} FROM tail_runs WHERE activity = ? AND aggregate_id = ?"
    " ORDER BY seq DESC LIMIT ?"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

T = TypeVar("T")


class SQLiteTailStore:
    """A :class:`~tailrunner.tails.store.TailStore` in one SQLite file.

    Open it with :meth:`open`; close it with :meth:`aclose`.
    """

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        *,
        run_retention: int = DEFAULT_RUN_RETENTION,
    ) -> None:
        """Use :meth:`open` instead: it creates the file and migrates the schema."""
        self._path = path
        self._conn = conn
        self._lock = anyio.Lock()
        self._group = GroupCommit(self._lock, self._commit_batch, self._check_open)
        self._run_retention = check_retention(run_retention)
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        run_retention: int = DEFAULT_RUN_RETENTION,
    ) -> SQLiteTailStore:
        """Open (and create or migrate if needed) the tail store in the file at ``path``.

        :param synchronous: the ``PRAGMA synchronous`` level of the writes.
        :param run_retention: how many runs per task :meth:`record_run` keeps.
        :raises InvalidArgument: an unknown ``synchronous`` level, or
            ``run_retention`` below 1.
        :raises StoreError: the file cannot be opened, is not a tail store,
            or was written by a newer tailrunner; the message names the path
            and the reason.
        """
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise InvalidArgument(
                "synchronous", f"{synchronous!r} is not one of {', '.join(SYNCHRONOUS_LEVELS)}"
            )
        check_retention(run_retention)
        name = os.fspath(path)
        conn, version, migrated = await anyio.to_thread.run_sync(_open, name, synchronous)
        if migrated:
            log.info("migrated", path=name, version=version)
        log.debug("opened", path=name, synchronous=synchronous, version=version)
        return cls(name, conn, run_retention=run_retention)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        rows = await self._call("load", _fetchall, _LOAD, (activity,))
        records = (_tail_record(row) for row in rows)
        return {r.aggregate.id: r for r in records}

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        rows = await self._call("get", _fetchall, _GET, (activity, aggregate_id.bytes))
        return _tail_record(rows[0]) if rows else None

    async def save(self, record: TailRecord) -> None:
        await self._commit("save", _Write(tail=_tail_params(record)))

    async def record_run(self, run: RunRecord) -> None:
        await self._commit("record_run", _Write(run=_run_params(run)))

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await self._commit("save_with_run", _Write(tail=_tail_params(record), run=_run_params(run)))

    async def list_runs(
        self, activity: str, aggregate_id: UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        check_limit(limit)
        rows = await self._call(
            "list_runs", _fetchall, _LIST_RUNS, (activity, aggregate_id.bytes, limit)
        )
        return [_run_record(row) for row in rows]

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        check_limit(limit)
        where: list[str] = []
        params: list[object] = []
        if activity is not None:
            where.append("activity = ?")
            params.append(activity)
        if states:
            wanted = state_filter(states)
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if after is not None:
            updated_at, after_activity, after_id = after
            where.append("(updated_at, activity, aggregate_id) < (?, ?, ?)")
            params.extend(
                (_micros(require_aware(updated_at, field="after")), after_activity, after_id.bytes)
            )
        sql = f"SELECT {_TAIL_COLUMNS} FROM tails"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, activity DESC, aggregate_id DESC LIMIT ?"
        params.append(limit)
        rows = await self._call("query", _fetchall, sql, tuple(params))
        return [_tail_record(row) for row in rows]

    @asynccontextmanager
    async def transaction(self, record: TailRecord) -> AsyncIterator[sqlite3.Connection]:
        """Yield the store's connection in a ``BEGIN IMMEDIATE`` transaction.

        The block runs on the event loop thread and may call the connection
        directly (SQLite calls are short); the store's lock is held until the
        block ends, so other saves wait. ``record`` is saved and everything
        commits, durably, when the block ends normally; on an exception or
        cancellation everything is rolled back.

        :raises StoreError: the transaction could not begin or commit, or the
            block ended the transaction itself.
        """
        params = _tail_params(record)
        async with self._lock:
            self._check_open()
            conn = self._conn
            try:
                # In a thread: it may wait for another process's write lock.
                await anyio.to_thread.run_sync(conn.execute, "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error("transaction", exc) from exc
            try:
                yield conn
            except BaseException:
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(_rollback, conn)
                    except sqlite3.Error as exc:
                        # Not raised: it would hide the block's own exception.
                        log.error("rollback failed", path=self._path, error=str(exc))
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(_save_and_commit, conn, params)
                except sqlite3.Error as exc:
                    raise self._error("transaction", exc) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await anyio.to_thread.run_sync(self._conn.close)
        log.debug("closed", path=self._path)

    async def _commit(self, what: str, write: _Write) -> None:
        """Commit ``write`` durably, in a group with the writes queued meanwhile.

        Each caller returns once its own write is committed, or raises its
        own error. A cancelled caller gets its cancellation once the write
        is settled: dropped if it was still queued, else committed (or
        failed) with the group whose commit had begun; reading it back tells.
        """
        write.what = what
        await self._group.submit(write)
        if write.error is not None:
            raise write.error

    async def _commit_batch(self, batch: list[_Write]) -> None:
        await commit_each_alone_on(sqlite3.Error, self._commit_writes, batch, self._failed)

    async def _commit_writes(self, writes: list[_Write]) -> None:
        await anyio.to_thread.run_sync(_commit_writes, self._conn, writes, self._run_retention)

    def _failed(self, write: _Write, exc: sqlite3.Error) -> None:
        write.error = self._error(write.what, exc)

    async def _call(self, what: str, func: Callable[..., T], *args: object) -> T:
        async with self._lock:
            self._check_open()
            try:
                return await anyio.to_thread.run_sync(func, self._conn, *args)
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"tail store {self._path}: {what} failed: {exc}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"tail store {self._path} is closed")


def _open(path: str, synchronous: str) -> tuple[sqlite3.Connection, int, bool]:
    def refuse(reason: str) -> StoreError:
        return StoreError(f"cannot open the tail store {path}: {reason}")

    try:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise refuse(str(exc)) from exc
    try:
        mode = use_wal(conn)
        if mode != "wal":
            raise refuse(f"it needs a file that can use WAL (journal mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        latest = len(MIGRATIONS)
        version = _read_version(conn)
        migrated = False
        if version != latest:
            # Re-read under the write lock: another process may be migrating too.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_CREATE_VERSION_TABLE)
                version = _read_version(conn)
                if version > latest:
                    raise refuse(
                        f"its schema version {version} is newer than this tailrunner's ({latest})"
                    )
                for statements in MIGRATIONS[version:]:
                    for statement in statements:
                        conn.execute(statement)
                migrated = version < latest
                conn.execute(_SET_VERSION, (latest,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
    except sqlite3.Error as exc:
        conn.close()
        raise refuse(str(exc)) from exc
    except BaseException:
        conn.close()
        raise
    return conn, latest, migrated


def _read_version(conn: sqlite3.Connection) -> int:
    if conn.execute(_VERSION_TABLE_EXISTS).fetchone() is None:
        return 0
    row = conn.execute(_SELECT_VERSION).fetchone()
    return 0 if row is None else int(row[0])


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _save_and_commit(conn: sqlite3.Connection, params: tuple[object, ...]) -> None:
    if not conn.in_transaction:
        raise sqlite3.OperationalError("the block ended the transaction itself; nothing was saved")
    try:
        conn.execute(_SAVE, params)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


class _Write:
    """One caller's write, waiting for a group commit: a tail, a run record, or both."""

    __slots__ = ("error", "run", "tail", "what")

    def __init__(
        self, *, tail: tuple[object, ...] | None = None, run: tuple[object, ...] | None = None
    ) -> None:
        #: The store method that made it, for error messages (set by _commit).
        self.what = ""
        self.tail = tail
        self.run = run
        self.error: StoreError | None = None


def _commit_writes(conn: sqlite3.Connection, writes: Sequence[_Write], retention: int) -> None:
    """The tails and run records of ``writes`` (pruning old runs), in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            if write.tail is not None:
                conn.execute(_SAVE, write.tail)
            if write.run is not None:
                activity, aggregate_id = write.run[0], write.run[1]
                conn.execute(_INSERT_RUN, write.run)
                conn.execute(
                    _PRUNE_RUNS, (activity, aggregate_id, activity, aggregate_id, retention - 1)
                )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _fetchall(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _ulid_bytes(value: ULID | None) -> bytes | None:
    return None if value is None else value.bytes


def _ulid(raw: bytes | None) -> ULID | None:
    return None if raw is None else ULID.from_bytes(raw)


def _tail_params(record: TailRecord) -> tuple[object, ...]:
    check_record(record)
    return (
        record.activity,
        record.aggregate.id.bytes,
        record.aggregate.type,
        _ulid_bytes(record.tail),
        record.state,
        record.attempts,
        record.last_error,
        int(record.completed),
        _micros(record.updated_at),
        record.failures,
        None if record.next_run_at is None else _micros(record.next_run_at),
    )


def _tail_record(row: Sequence[Any]) -> TailRecord:
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
    return TailRecord(
        activity=activity,
        aggregate=AggregateRef(type=type_, id=UUID(bytes=id_)),
        tail=_ulid(tail),
        state=state,
        attempts=attempts,
        last_error=last_error,
        completed=bool(completed),
        updated_at=_from_micros(updated_at),
        failures=failures,
        next_run_at=None if next_run_at is None else _from_micros(next_run_at),
    )


def _run_params(run: RunRecord) -> tuple[object, ...]:
    return (
        run.activity,
        run.aggregate.id.bytes,
        run.aggregate.type,
        run.attempt,
        _micros(require_aware(run.started_at, field="started_at")),
        _micros(require_aware(run.finished_at, field="finished_at")),
        _ulid_bytes(run.tail_before),
        _ulid_bytes(run.tail_after),
        run.events_seen,
        run.outcome,
        run.error,
    )


def _run_record(row: Sequence[Any]) -> RunRecord:
    (activity, id_, type_, attempt, started, finished, before, after, seen, outcome, error) = row
    return RunRecord(
        activity=activity,
        aggregate=AggregateRef(type=type_, id=UUID(bytes=id_)),
        attempt=attempt,
        started_at=_from_micros(started),
        finished_at=_from_micros(finished),
        tail_before=_ulid(before),
        tail_after=_ulid(after),
        events_seen=seen,
        outcome=outcome,
        error=error,
    )
