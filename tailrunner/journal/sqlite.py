"""``SQLiteJournalStore``: the embedded default journal store.

One database file in WAL mode. An append is one ``BEGIN IMMEDIATE``
transaction on a dedicated write connection; reads go through a small pool of
read-only connections, so they never wait for a write (WAL readers see the
last commit). Every sqlite3 call runs in a worker thread, never on the event
loop.

Events are clustered by ``(aggregate_id, id)`` (a ``WITHOUT ROWID`` table), so
reading an aggregate is one range scan of its primary key.

Idempotent appends: an append with a request id records it, with its result,
in ``append_requests``, in the transaction (and savepoint) of the append
itself; a later append with that request id on that aggregate finds it there
and returns the recorded result. Each aggregate keeps the request ids of its
last ``request_ids_kept`` appends that had one (numbered by ``seq``); older
ones are deleted as new ones come.

Schema versions: 1 kept events as columns; 2 keeps their wire form; 3 adds
``append_requests``.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import anyio
import anyio.to_thread
import structlog
from ulid import ULID

from tailrunner.errors import AggregateTypeMismatch, InvalidArgument, StoreError, TailMismatch
from tailrunner.group_commit import GroupCommit, commit_each_alone_on
from tailrunner.ids import next_ulids
from tailrunner.journal.listeners import Listeners
from tailrunner.journal.store import (
    DEFAULT_REQUEST_IDS_KEPT,
    SKIPPED,
    AppendListener,
    FreshEvents,
    RawCursor,
    ReadBudget,
    ResyncListener,
    WireBatch,
    check_expect_new,
    check_request_id,
    check_request_ids_kept,
)
from tailrunner.journal.wire_format import decode_event, encode_event
from tailrunner.model import AggregateInfo, AggregateRef, AppendResult, Event, NewEvent
from tailrunner.sqlite_wal import (
    BUSY_TIMEOUT_MS,
    FILE_MODE,
    QUICK_CHECK_BUDGET,
    SYNCHRONOUS_LEVELS,
    Synchronous,
    check_database,
    connect,
    damage_hint,
    is_damage,
    quick_check,
    refuse_damaged_wal,
    use_wal,
)
from tailrunner.store_health import StoreHealth

log = structlog.get_logger(__name__)

_SCHEMA_VERSION = 3
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS aggregates (
    id BLOB PRIMARY KEY,
    type TEXT NOT NULL,
    head BLOB NOT NULL,
    event_count INTEGER NOT NULL
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS aggregates_by_type ON aggregates (type, id)",
    # ``wire``: the event as tailrunner.journal.wire_format stores it, the
    # bytes a reader is sent; its aggregate is the key and the aggregates row.
    """
CREATE TABLE IF NOT EXISTS events (
    aggregate_id BLOB NOT NULL,
    id BLOB NOT NULL,
    wire BLOB NOT NULL,
    PRIMARY KEY (aggregate_id, id)
) WITHOUT ROWID""",
    # Schema 3. ``seq`` numbers an aggregate's appends with a request id, so
    # that all but the last N are deleted; ``event_ids``: the 16-byte ids of
    # the append's events, one after the other.
    """
CREATE TABLE IF NOT EXISTS append_requests (
    aggregate_id BLOB NOT NULL,
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tail BLOB NOT NULL,
    event_ids BLOB NOT NULL,
    PRIMARY KEY (aggregate_id, request_id)
) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX IF NOT EXISTS append_requests_by_seq"
    " ON append_requests (aggregate_id, seq)",
)

_SELECT_AGGREGATE = "SELECT type, head FROM aggregates WHERE id = ?"
_SELECT_TYPE = "SELECT type FROM aggregates WHERE id = ?"
_INSERT_EVENT = "INSERT INTO events (aggregate_id, id, wire) VALUES (?, ?, ?)"
_INSERT_AGGREGATE = "INSERT INTO aggregates (id, type, head, event_count) VALUES (?, ?, ?, ?)"
_UPDATE_AGGREGATE = "UPDATE aggregates SET head = ?, event_count = event_count + ? WHERE id = ?"
_SELECT_REQUEST = (
    "SELECT tail, event_ids FROM append_requests WHERE aggregate_id = ? AND request_id = ?"
)
_LAST_REQUEST_SEQ = "SELECT MAX(seq) FROM append_requests WHERE aggregate_id = ?"
_INSERT_REQUEST = (
    "INSERT INTO append_requests (aggregate_id, request_id, seq, tail, event_ids)"
    " VALUES (?, ?, ?, ?, ?)"
)
_FORGET_REQUESTS = "DELETE FROM append_requests WHERE aggregate_id = ? AND seq <= ?"
# An empty blob sorts before every id, so ``after`` = b"" reads from epoch.
_READ_EVENTS = "SELECT wire FROM events WHERE aggregate_id = ? AND id > ? ORDER BY id LIMIT ?"
# The same with the aggregate's type on each row: for an aggregate whose type
# is not cached, one statement instead of two (about 4.4 µs a read, not 7.5).
_READ_EVENTS_TYPED = (
    "SELECT e.wire, a.type FROM aggregates a JOIN events e ON e.aggregate_id = a.id"
    " WHERE a.id = ? AND e.id > ? ORDER BY e.id LIMIT ?"
)
_LIST_ALL = "SELECT id, type, head, event_count FROM aggregates WHERE id > ? ORDER BY id LIMIT ?"
_LIST_TYPE = (
    "SELECT id, type, head, event_count FROM aggregates"
    " WHERE type = ? AND id > ? ORDER BY id LIMIT ?"
)

#: Aggregate types are immutable, so they are cached; bounded, and simply
#: cleared when full (a miss costs one primary-key lookup).
_TYPE_CACHE_SIZE = 65_536

T = TypeVar("T")


class SQLiteJournalStore:
    """A :class:`~tailrunner.journal.store.JournalStore` in one SQLite file.

    Open it with :meth:`open`; close it with :meth:`aclose`.
    """

    def __init__(
        self,
        path: str,
        writer: sqlite3.Connection,
        *,
        read_connections: int = 4,
        request_ids_kept: int = DEFAULT_REQUEST_IDS_KEPT,
    ) -> None:
        """Use :meth:`open` instead: it creates the file and the schema."""
        self._path = path
        self._request_ids_kept = request_ids_kept
        self._writer = writer
        # No checkpoint when free: a lone writer does not yield to the loop for it.
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._group = GroupCommit(self._write_lock, self._commit_group, self._check_open)
        #: Whether the file works, as calls find it; :meth:`probe` clears a failure.
        self.health = StoreHealth()
        self._readers = _ReadPool(path, read_connections, self._read_failed)
        self._listeners = Listeners()
        self._types: dict[bytes, str] = {}
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "FULL",
        read_connections: int = 4,
        request_ids_kept: int = DEFAULT_REQUEST_IDS_KEPT,
        file_mode: int = FILE_MODE,
        check: bool = True,
        check_budget: float = QUICK_CHECK_BUDGET,
    ) -> SQLiteJournalStore:
        """Open (and create if needed) the journal in the file at ``path``.

        Before SQLite opens the file, its write-ahead log is checked: a log
        SQLite would discard (damaged header, or commits after a damaged
        frame) is refused, never deleted. Then ``PRAGMA quick_check``
        (see :mod:`tailrunner.sqlite_wal`).

        :param synchronous: the ``PRAGMA synchronous`` level of the writes.
        :param file_mode: the mode of a new file (an existing one keeps its own).
        :param check: ``False`` skips the O(size) checks (the WAL's frames,
            ``quick_check``); the WAL's header is always checked.
        :param check_budget: seconds ``quick_check`` may take; the store
            opens unchecked (with a warning) after that.
        :param read_connections: how many reads may run at once.
        :param request_ids_kept: how many request ids of idempotent appends
            to remember per aggregate (the last ones).
        :raises InvalidArgument: an unknown ``synchronous`` level.
        :raises StoreError: the file cannot be opened, is not a journal, or is
            damaged; the message names the path, the reason and what to do.
        """
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise InvalidArgument(
                "synchronous",
                f"{synchronous!r} is not one of {', '.join(SYNCHRONOUS_LEVELS)}",
            )
        if read_connections < 1:
            raise InvalidArgument("read_connections", "at least one read connection is needed")
        check_request_ids_kept(request_ids_kept)
        name = os.fspath(path)
        writer = await anyio.to_thread.run_sync(
            functools.partial(
                _open_writer,
                name,
                synchronous,
                file_mode=file_mode,
                check=check,
                check_budget=check_budget,
            )
        )
        log.debug("opened", path=name, synchronous=synchronous)
        return cls(
            name,
            writer,
            read_connections=read_connections,
            request_ids_kept=request_ids_kept,
        )

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    async def append(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        *,
        expected_tail: ULID | None,
        request_id: str | None = None,
        expect_new: bool = False,
    ) -> AppendResult:
        """Append ``events`` to ``aggregate``, durably, all or none.

        Group commit: while one commit syncs, other appends queue up;
        whoever takes the write lock next commits all of them in one
        transaction (one fsync), each in its own savepoint and in the order
        they came, so that one append's tail mismatch fails only that one.

        Cancelled, it raises the cancellation, and only once the append is
        settled: dropped if it was still queued; if its group's commit had
        begun, committed (and heard by the listeners) or failed with it. So
        reading the aggregate back tells a cancelled caller whether it is in.

        With a ``request_id``, the look-up of an earlier append with it is in
        the savepoint of this append: two appends with one request id in one
        group find the first one's record, so they append once. So are the
        checks of ``expected_tail`` and ``expect_new``: of two first appends
        with ``expect_new`` in one group, the second sees the first's events.
        """
        if not events:
            raise InvalidArgument("events", "an append needs at least one event")
        if request_id is not None:
            check_request_id(request_id)
        check_expect_new(expect_new=expect_new, expected_tail=expected_tail)
        self._check_open()
        request = _Append(aggregate, events, expected_tail, request_id, expect_new=expect_new)
        await self._group.submit(request)
        if request.error is not None:
            raise request.error
        ids = request.ids
        return AppendResult(tail=ids[-1], event_ids=tuple(ids))

    async def _commit_group(self, group: list[_Append]) -> None:
        await commit_each_alone_on(sqlite3.Error, self._commit_appends, group, self._failed)
        # Still under the write lock, so that listeners hear of commits in commit order.
        for request in group:
            if request.error is None and not request.repeated:
                aggregate = request.aggregate
                self._remember_type(aggregate.id.bytes, aggregate.type)
                self._listeners.notify(aggregate, request.ids[-1], request.fresh)

    async def _commit_appends(self, group: list[_Append]) -> None:
        for request in group:
            request.error = None  # a failed group's retry starts afresh
            request.repeated = False
            request.fresh = None
        await anyio.to_thread.run_sync(_append_group, self._writer, group, self._request_ids_kept)

    def _failed(self, request: _Append, exc: sqlite3.Error) -> None:
        request.error = StoreError(f"journal store {self._path}: append failed: {exc}")
        self._read_failed(exc)

    def _read_failed(self, exc: sqlite3.Error) -> None:
        if is_damage(exc):
            self.health.failed(f"journal store {self._path}: {exc}")

    async def probe(self) -> None:
        """Check that the file works, on a connection of its own; :attr:`health` follows.

        ``PRAGMA quick_check``, even with ``check=False`` (which is about the
        time to start; a cheap read would pass on a file whose other pages
        fail, and health would flap), or a cheap read when it runs out of
        time: O(size), so it is for a store that failed, not for every call.

        :raises StoreError: the file cannot be read, or is damaged.
        """
        self._check_open()
        try:
            found = await anyio.to_thread.run_sync(_probe, self._path)
        except sqlite3.Error as exc:
            raise StoreError(f"journal store {self._path}: probe failed: {exc}") from exc
        if found is not None:
            raise StoreError(f"journal store {self._path} is damaged (quick_check: {found})")
        self.health.works()

    async def read(self, aggregate_id: UUID, *, after: ULID | None, limit: int) -> list[Event]:
        self._check_open()
        key = aggregate_id.bytes
        events, aggregate_type = await self._readers.run(
            _read,
            aggregate_id,
            key,
            self._types.get(key),
            b"" if after is None else after.bytes,
            limit,
        )
        if events:
            self._remember_type(key, aggregate_type)
        return events

    async def read_wire(
        self, aggregate_id: UUID, *, after: bytes, limit: int
    ) -> tuple[str, list[bytes]]:
        """Like :meth:`read`, in the stored form: the gRPC service's hot path.

        :param after: the raw id to read after (``b""`` for epoch).
        :returns: the aggregate's type (``""`` when no events came) and up to
            ``limit`` events as :mod:`~tailrunner.journal.wire_format` stores them.
        """
        self._check_open()
        key = aggregate_id.bytes
        aggregate_type, rows = await self._readers.run(
            _read_wire, key, self._types.get(key), after, limit
        )
        if rows:
            self._remember_type(key, aggregate_type)
        return aggregate_type, rows

    async def read_wire_many(
        self, reads: Sequence[RawCursor], *, max_events: int, max_bytes: int
    ) -> list[WireBatch]:
        """Many reads in the stored form, in one thread hop and one read transaction.

        See :class:`~tailrunner.journal.store.WireManyReader`: ``ReadAggregates``'s
        hot path. One prepared range scan per cursor: ``sqlite3`` keeps the
        statement, so a read costs a few microseconds in the thread.
        """
        self._check_open()
        types = self._types
        known = [types.get(key) for key, _ in reads]
        batches = await self._readers.run(_read_wire_many, reads, known, max_events, max_bytes)
        for (key, _), aggregate_type, batch in zip(reads, known, batches, strict=True):
            if aggregate_type is None and batch.rows:
                self._remember_type(key, batch.aggregate_type)
        return batches

    async def head(self, aggregate_id: UUID) -> ULID | None:
        self._check_open()
        row = await self._readers.run(_fetchone, _SELECT_AGGREGATE, (aggregate_id.bytes,))
        return None if row is None else ULID(row[1])

    async def list_aggregates(
        self, aggregate_type: str | None, *, after_id: UUID | None, limit: int
    ) -> list[AggregateInfo]:
        self._check_open()
        after = b"" if after_id is None else after_id.bytes
        if aggregate_type is None:
            rows = await self._readers.run(_fetchall, _LIST_ALL, (after, limit))
        else:
            rows = await self._readers.run(_fetchall, _LIST_TYPE, (aggregate_type, after, limit))
        return [
            AggregateInfo(type=type_, id=UUID(bytes=id_), head=ULID(head), event_count=count)
            for id_, type_, head, count in rows
        ]

    def add_listener(
        self, listener: AppendListener, on_resync: ResyncListener | None = None
    ) -> None:
        self._listeners.add(listener, on_resync)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Closing finishes even when the caller is cancelled: a half-closed
        # store would keep its file open.
        with anyio.CancelScope(shield=True):
            async with self._write_lock:
                await anyio.to_thread.run_sync(self._writer.close)
            await self._readers.aclose()
        log.debug("closed", path=self._path)

    def _remember_type(self, key: bytes, aggregate_type: str) -> None:
        if key not in self._types:
            if len(self._types) >= _TYPE_CACHE_SIZE:
                self._types.clear()
            self._types[key] = aggregate_type

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"journal store {self._path} is closed")


class _ReadPool:
    """Up to ``size`` read-only connections, each used by one thread at a time."""

    def __init__(self, path: str, size: int, on_error: Callable[[sqlite3.Error], None]) -> None:
        self._path = path
        self._on_error = on_error
        self._idle: list[sqlite3.Connection] = []
        self._limiter = anyio.CapacityLimiter(size)
        self._closed = False

    async def run(self, func: Callable[..., T], *args: object) -> T:
        async with self._limiter:
            idle = self._idle.pop() if self._idle else None
            try:
                conn, result = await anyio.to_thread.run_sync(
                    _with_reader, self._path, idle, func, args
                )
            except sqlite3.Error as exc:
                self._on_error(exc)
                raise StoreError(f"journal store {self._path}: read failed: {exc}") from exc
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
            return result

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await anyio.to_thread.run_sync(conn.close)


def _with_reader(
    path: str,
    conn: sqlite3.Connection | None,
    func: Callable[..., T],
    args: tuple[object, ...],
) -> tuple[sqlite3.Connection, T]:
    fresh = conn is None
    if conn is None:
        conn = _connect(path)
    try:
        if fresh:
            conn.execute("PRAGMA query_only = 1")
        return conn, func(conn, *args)
    except BaseException:
        # A connection in an unknown state is not given back to the pool.
        conn.close()
        raise


def _connect(path: str) -> sqlite3.Connection:
    return connect(path)


def _probe(path: str) -> str | None:
    """What is wrong with the file at ``path`` (``None``: nothing), read afresh, read-only."""
    # Read-only and without creating: a file that vanished is a failure, not a new journal.
    conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        found = quick_check(conn, budget=QUICK_CHECK_BUDGET, quiet=True)
        if found is not None:
            return found
        for table in ("aggregates", "events"):
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        return None
    finally:
        conn.close()


def _open_writer(
    path: str, synchronous: str, *, file_mode: int, check: bool, check_budget: float
) -> sqlite3.Connection:
    refuse_damaged_wal(path, what="journal store", frames=check)
    try:
        conn = connect(path, file_mode=file_mode)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the journal store {path}: {exc}") from exc
    try:
        mode = use_wal(conn)
        if mode != "wal":
            raise StoreError(
                f"cannot open the journal store {path}: it needs a file that can use WAL"
                f" (journal mode is {mode})"
            )
        if check:
            check_database(conn, path, what="journal store", budget=check_budget)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise StoreError(
                f"cannot open the journal store {path}: schema version {version} is newer"
                f" than this tailrunner's ({_SCHEMA_VERSION})"
            )
        if version < _SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Again under the write lock: another process may have migrated meanwhile.
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version == 1:
                    _migrate_from_1(conn)
                # 2 → 3 only adds append_requests: _SCHEMA creates it.
                if 1 <= version < 3:
                    log.info("migrating the journal store to schema 3 (append request ids)")
                # Statement by statement: executescript() would commit on its own.
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        conn.close()
        hint = f"; {damage_hint(path)}" if is_damage(exc) else ""
        raise StoreError(f"cannot open the journal store {path}: {exc}{hint}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 kept events as columns (``parent, type, data, metadata``);
    schema 2 keeps their wire form. Runs inside the opening transaction."""
    conn.execute("ALTER TABLE events RENAME TO events_1")
    conn.execute(_SCHEMA[2])
    rows = conn.execute(
        "SELECT aggregate_id, id, parent, type, data, metadata FROM events_1"
        " ORDER BY aggregate_id, id"
    )
    conn.executemany(
        _INSERT_EVENT,
        (
            (
                key,
                id_,
                encode_event(id_, parent, type_, data, None if meta is None else json.loads(meta)),
            )
            for key, id_, parent, type_, data, meta in rows
        ),
    )
    conn.execute("DROP TABLE events_1")
    log.info("migrated the journal store to schema 2 (events in their wire form)")


class _Append:
    """One caller's append, waiting for a group commit, and then its outcome."""

    __slots__ = (
        "aggregate",
        "error",
        "events",
        "expect_new",
        "expected_tail",
        "fresh",
        "ids",
        "repeated",
        "request_id",
    )

    def __init__(
        self,
        aggregate: AggregateRef,
        events: Sequence[NewEvent],
        expected_tail: ULID | None,
        request_id: str | None,
        *,
        expect_new: bool,
    ) -> None:
        self.aggregate = aggregate
        self.events = events
        self.expected_tail = expected_tail
        self.expect_new = expect_new
        self.request_id = request_id
        self.ids: list[ULID] = []
        #: The request id was known: ``ids`` are the first append's, nothing was appended.
        self.repeated = False
        self.error: Exception | None = None
        #: The committed rows and the head before them, for the listeners.
        self.fresh: FreshEvents | None = None


def _append_group(
    conn: sqlite3.Connection, group: Sequence[_Append], request_ids_kept: int
) -> None:
    """Commit the appends of ``group`` in one transaction, each in a savepoint.

    An append refused by the journal's rules (a tail or type mismatch) is
    rolled back alone and gets its error; a SQLite error rolls back all.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        for request in group:
            conn.execute("SAVEPOINT one_append")
            try:
                _append_rows(conn, request, request_ids_kept)
            except sqlite3.Error:
                raise
            except Exception as exc:  # the append's own outcome, raised to its caller
                conn.execute("ROLLBACK TO one_append")
                request.error = exc
            conn.execute("RELEASE one_append")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _append_rows(conn: sqlite3.Connection, request: _Append, request_ids_kept: int) -> None:
    """Insert one append's events and move its aggregate's head; sets ``request.ids``.

    An append whose request id is recorded inserts nothing and gets the
    recorded ids (``request.repeated``).
    """
    aggregate, events, expected_tail = request.aggregate, request.events, request.expected_tail
    key = aggregate.id.bytes
    row = conn.execute(_SELECT_AGGREGATE, (key,)).fetchone()
    head: ULID | None = None
    if row is not None:
        if row[0] != aggregate.type:
            raise AggregateTypeMismatch(
                f"aggregate {aggregate.id} has type {row[0]!r}, not {aggregate.type!r}"
            )
        head = ULID(row[1])
        if request.request_id is not None:
            recorded = conn.execute(_SELECT_REQUEST, (key, request.request_id)).fetchone()
            if recorded is not None:
                blob: bytes = recorded[1]
                request.ids = [ULID(blob[i : i + 16]) for i in range(0, len(blob), 16)]
                request.repeated = True
                return
    if expected_tail is not None and expected_tail != head:
        raise TailMismatch(expected_tail, head)
    if request.expect_new and head is not None:
        raise TailMismatch(None, head)
    ids = next_ulids(head, len(events))
    raw = [i.bytes for i in ids]
    parents = [None if head is None else head.bytes, *raw[:-1]]
    rows = [
        encode_event(id_, parent, new.type, new.data, new.metadata)
        for id_, parent, new in zip(raw, parents, events, strict=True)
    ]
    conn.executemany(_INSERT_EVENT, [(key, id_, wire) for id_, wire in zip(raw, rows, strict=True)])
    if row is None:
        conn.execute(_INSERT_AGGREGATE, (key, aggregate.type, raw[-1], len(raw)))
    else:
        conn.execute(_UPDATE_AGGREGATE, (raw[-1], len(raw), key))
    if request.request_id is not None:
        _record_request(conn, key, request.request_id, raw, request_ids_kept)
    request.ids = ids
    request.fresh = FreshEvents(parents[0] or b"", rows)


def _record_request(
    conn: sqlite3.Connection, key: bytes, request_id: str, raw_ids: list[bytes], kept: int
) -> None:
    """Record an append's request id and result; forget all but the last ``kept``."""
    (last,) = conn.execute(_LAST_REQUEST_SEQ, (key,)).fetchone()
    seq = 1 if last is None else last + 1
    conn.execute(_INSERT_REQUEST, (key, request_id, seq, raw_ids[-1], b"".join(raw_ids)))
    conn.execute(_FORGET_REQUESTS, (key, seq - kept))


def _read(  # noqa: PLR0917 (a worker-thread entry point: positional args only)
    conn: sqlite3.Connection,
    aggregate_id: UUID,
    key: bytes,
    aggregate_type: str | None,
    after: bytes,
    limit: int,
) -> tuple[list[Event], str]:
    aggregate_type, rows = _read_wire(conn, key, aggregate_type, after, limit)
    return [decode_event(wire, aggregate_type, aggregate_id) for wire in rows], aggregate_type


def _read_wire(
    conn: sqlite3.Connection,
    key: bytes,
    aggregate_type: str | None,
    after: bytes,
    limit: int,
) -> tuple[str, list[bytes]]:
    rows = conn.execute(_READ_EVENTS, (key, after, limit)).fetchall()
    if not rows:
        return aggregate_type or "", []
    if aggregate_type is None:
        (aggregate_type,) = conn.execute(_SELECT_TYPE, (key,)).fetchone()
    return aggregate_type, [wire for (wire,) in rows]


def _read_wire_many(
    conn: sqlite3.Connection,
    reads: Sequence[RawCursor],
    types: Sequence[str | None],
    max_events: int,
    max_bytes: int,
) -> list[WireBatch]:
    budget = ReadBudget(max_events, max_bytes)
    batches: list[WireBatch] = []
    append, execute, take = batches.append, conn.execute, budget.take
    # One deferred transaction: every read sees the snapshot of the first one.
    conn.execute("BEGIN")
    try:
        for (key, after), known in zip(reads, types, strict=True):
            limit = budget.left
            if not limit:
                append(SKIPPED)
                continue
            if known is not None:
                found = [wire for (wire,) in execute(_READ_EVENTS, (key, after, limit + 1))]
                aggregate_type = known
            else:
                typed = execute(_READ_EVENTS_TYPED, (key, after, limit + 1)).fetchall()
                found = [wire for wire, _ in typed]
                aggregate_type = typed[0][1] if typed else ""
            rows, complete = take(found, limit)
            append(WireBatch(aggregate_type, rows, complete))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return batches


def _fetchone(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> Any:
    return conn.execute(sql, params).fetchone()


def _fetchall(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()
