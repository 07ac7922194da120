"""``SQLiteTailStore``: the embedded default tail store, one SQLite file in WAL mode.

One connection, serialized by an anyio lock; every sqlite3 call of the
store's own runs in a worker thread, never on the event loop. Tail writes
are small and the engines write one per run, so one connection is plenty,
and SQLite allows one writer at a time anyway.

The schema is built by :data:`MIGRATIONS`, applied in order; the version
lives in the table ``tails_schema_version`` (not ``PRAGMA user_version``,
so that the file may also hold another component's tables, such as the
journal's). A file written by a newer tailrunner is refused. The tables,
statements, row codec and migration runner are :mod:`tailrunner.sql`'s,
shared with the PostgreSQL store.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import structlog

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.group_commit import GroupCommit, commit_each_alone_on
from tailrunner.sql.codecs import TailRows
from tailrunner.sql.dialect import SQLITE
from tailrunner.sql.migrate import migrate
from tailrunner.sql.schema import TAILS_VERSION_TABLE
from tailrunner.sql.sqlite import SQLiteMigration, fetchall, rollback
from tailrunner.sql.statements import TailStatements, prune_params, tail_migrations
from tailrunner.sql.tail_store import SQLTailStore
from tailrunner.sqlite_wal import (
    FILE_MODE,
    QUICK_CHECK_BUDGET,
    SYNCHRONOUS_LEVELS,
    Synchronous,
    check_database,
    connect,
    damage_hint,
    is_damage,
    refuse_damaged_wal,
    use_wal,
)
from tailrunner.tails.store import (
    DEFAULT_RUN_RETENTION,
    RunRecord,
    TailRecord,
    check_retention,
)

if TYPE_CHECKING:
    from tailrunner.sql.fencing import Fence

log = structlog.get_logger(__name__)

#: The schema, one migration per version: ``MIGRATIONS[i]`` takes a file
#: from version ``i`` to ``i + 1`` (:data:`tailrunner.sql.schema.TAIL_MIGRATIONS`).
MIGRATIONS: tuple[tuple[str, ...], ...] = tail_migrations(SQLITE)

_SQL = TailStatements.render(SQLITE)
_ROWS = TailRows(SQLITE.codec)
_tail_params = _ROWS.tail_params
_run_params = _ROWS.run_params

T = TypeVar("T")


class SQLiteTailStore(SQLTailStore[str, sqlite3.Connection]):
    """A :class:`~tailrunner.tails.store.TailStore` in one SQLite file.

    Open it with :meth:`open`; close it with :meth:`aclose`.

    :meth:`transaction` yields the store's connection in a ``BEGIN
    IMMEDIATE`` transaction. The block runs on the event loop thread and may
    call the connection directly (SQLite calls are short); the store's lock
    is held until the block ends, so other saves wait.
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
        self._dialect = SQLITE
        self._sql = _SQL
        self._rows = _ROWS
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
        file_mode: int = FILE_MODE,
        check: bool = True,
        check_budget: float = QUICK_CHECK_BUDGET,
    ) -> SQLiteTailStore:
        """Open (and create or migrate if needed) the tail store in the file at ``path``.

        Checked as it opens, as the journal's store is
        (:mod:`tailrunner.sqlite_wal`): the write-ahead log before SQLite
        opens the file, then ``PRAGMA quick_check``.

        :param synchronous: the ``PRAGMA synchronous`` level of the writes.
        :param file_mode: the mode of a new file (an existing one keeps its own).
        :param check: ``False`` skips the O(size) checks (the WAL's frames,
            ``quick_check``); the WAL's header is always checked.
        :param check_budget: seconds ``quick_check`` may take.
        :param run_retention: how many runs per task :meth:`record_run` keeps.
        :raises InvalidArgument: an unknown ``synchronous`` level, or
            ``run_retention`` below 1.
        :raises StoreError: the file cannot be opened, is not a tail store,
            is damaged, or was written by a newer tailrunner; the message
            names the path and the reason.
        """
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise InvalidArgument(
                "synchronous", f"{synchronous!r} is not one of {', '.join(SYNCHRONOUS_LEVELS)}"
            )
        check_retention(run_retention)
        name = os.fspath(path)
        conn, version, migrated = await _open(
            name, synchronous, file_mode=file_mode, check=check, check_budget=check_budget
        )
        if migrated:
            log.info("migrated", path=name, version=version)
        log.debug("opened", path=name, synchronous=synchronous, version=version)
        return cls(name, conn, run_retention=run_retention)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    async def save(self, record: TailRecord) -> None:
        await self._commit("save", _Write(tail=_tail_params(record)))

    async def record_run(self, run: RunRecord) -> None:
        await self._commit("record_run", _Write(run=_run_params(run)))

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await self._commit("save_with_run", _Write(tail=_tail_params(record), run=_run_params(run)))

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

    async def _fetch(self, what: str, statement: str, params: Sequence[object]) -> list[Any]:
        return await self._call(what, fetchall, statement, params)

    def _extend(self, statement: str, text: str) -> str:
        return statement + text

    @asynccontextmanager
    async def _transaction_connection(self) -> AsyncIterator[sqlite3.Connection]:
        # The store's only connection: other saves wait for the block.
        async with self._lock:
            self._check_open()
            yield self._conn

    async def _begin(self, conn: sqlite3.Connection) -> None:
        try:
            # In a thread: it may wait for another process's write lock.
            await anyio.to_thread.run_sync(conn.execute, "BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error("transaction", exc) from exc

    async def _rollback(self, conn: sqlite3.Connection) -> None:
        try:
            await anyio.to_thread.run_sync(rollback, conn)
        except sqlite3.Error as exc:
            log.error("rollback failed", path=self._path, error=str(exc))

    async def _save_and_commit(
        self, conn: sqlite3.Connection, params: tuple[object, ...], fence: Fence | None
    ) -> None:
        # ``fence`` is always None: this store does not fence (``_fences``).
        try:
            await anyio.to_thread.run_sync(_save_and_commit, conn, params)
        except sqlite3.Error as exc:
            raise self._error("transaction", exc) from exc

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


async def _open(
    path: str, synchronous: str, *, file_mode: int, check: bool, check_budget: float
) -> tuple[sqlite3.Connection, int, bool]:
    def refuse(reason: str) -> StoreError:
        return StoreError(f"cannot open the tail store {path}: {reason}")

    await anyio.to_thread.run_sync(
        functools.partial(refuse_damaged_wal, path, what="tail store", frames=check)
    )
    try:
        conn = await anyio.to_thread.run_sync(functools.partial(connect, path, file_mode=file_mode))
    except sqlite3.Error as exc:
        raise refuse(str(exc)) from exc
    try:
        mode = await anyio.to_thread.run_sync(use_wal, conn)
        if mode != "wal":
            raise refuse(f"it needs a file that can use WAL (journal mode is {mode})")
        if check:
            await anyio.to_thread.run_sync(
                functools.partial(
                    check_database, conn, path, what="tail store", budget=check_budget
                )
            )
        await anyio.to_thread.run_sync(conn.execute, f"PRAGMA synchronous = {synchronous}")
        version, migrated = await migrate(
            SQLiteMigration(conn), SQLITE, TAILS_VERSION_TABLE, MIGRATIONS, refuse
        )
    except sqlite3.Error as exc:
        conn.close()
        raise refuse(f"{exc}; {damage_hint(path)}" if is_damage(exc) else str(exc)) from exc
    except BaseException:
        conn.close()
        raise
    return conn, version, migrated


def _save_and_commit(conn: sqlite3.Connection, params: tuple[object, ...]) -> None:
    if not conn.in_transaction:
        raise sqlite3.OperationalError("the block ended the transaction itself; nothing was saved")
    try:
        conn.execute(_SQL.save, params)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
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
                conn.execute(_SQL.save, write.tail)
            if write.run is not None:
                activity, aggregate_id = write.run[0], write.run[1]
                conn.execute(_SQL.insert_run, write.run)
                conn.execute(_SQL.prune_runs, prune_params(activity, aggregate_id, retention))
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
