"""``PostgresJournalStore``: the journal in PostgreSQL (psycopg 3, async), shared by servers.

Several journal servers may serve one schema: PostgreSQL is what they share,
and all the journal's rules are checked inside its transactions.

An append is one transaction on a pooled connection: it locks its
aggregate's row in ``aggregates`` (``SELECT … FOR UPDATE``), checks the
type, the request id, ``expected_tail`` and ``expect_new`` against what it
locked, inserts the events and moves the head. Appends to one aggregate, from
whichever server, so queue on that row: of two racing appends with one
``expected_tail`` exactly one wins, and a request id is seen by the second
append with it. A first append has no row to lock: it inserts the row
(``ON CONFLICT DO NOTHING``); when another append inserted it first (and
committed: the insert waits for that), it locks that row and checks again.
Event ids are made from the locked head (:func:`~tailrunner.ids.next_ulids`),
so they are greater than it whatever the clock of the server that made it.
The writes (events, head, request id) go in one pipeline: an append costs
four round trips (five with a request id), however many events it carries.

Appends run one per transaction, up to the pool's size at once (PostgreSQL
syncs concurrent commits together); no group commit of its own.

The tables live in their own schema (default ``tailrunner``, which they may
share with the tail store), created and migrated on open, or by
:func:`migrate_schema` (``tailrunner journal migrate``), by
:data:`MIGRATIONS` under a transaction-level advisory lock: servers starting
at once migrate it exactly once. The version lives in
``<schema>.journal_schema_version``; a newer one is refused.

Listeners hear the appends of every store on the schema: those of this one
right after their commit, those of the others through LISTEN/NOTIFY
(:mod:`tailrunner.journal.pg_notify`): each append notifies inside its
transaction, and each store's LISTEN connection passes on the others'. A lost
LISTEN connection reconnects and makes every reader resync
(:meth:`Listeners.resync`).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar
from uuid import UUID

import anyio
import anyio.lowlevel
import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from ulid import ULID

from tailrunner.errors import AggregateTypeMismatch, InvalidArgument, StoreError, TailMismatch
from tailrunner.ids import next_ulids
from tailrunner.journal.listeners import Listeners
from tailrunner.journal.pg_notify import NotifyListener, channel_name, payload
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
from tailrunner.sql.dialect import POSTGRESQL
from tailrunner.sql.migrate import migrate
from tailrunner.sql.postgres import (
    DEFAULT_CALL_TIMEOUT,
    PooledConnections,
    PostgresMigration,
    libpq_timeout,
    open_pool,
    reason,
)
from tailrunner.sql.schema import JOURNAL_MIGRATIONS, JOURNAL_VERSION_TABLE
from tailrunner.store_health import StoreHealth
from tailrunner.stores import redact

log = structlog.get_logger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]
T = TypeVar("T")

DEFAULT_SCHEMA = "tailrunner"
#: The longest schema name PostgreSQL keeps (``NAMEDATALEN - 1`` bytes).
MAX_SCHEMA_LENGTH = 63

#: ``MIGRATIONS[i]`` takes a schema from version ``i`` to ``i + 1``
#: (:data:`tailrunner.sql.schema.JOURNAL_MIGRATIONS`); ``{schema}`` is the
#: quoted schema name.
MIGRATIONS: tuple[tuple[str, ...], ...] = tuple(
    tuple(POSTGRESQL.render(s) for s in step) for step in JOURNAL_MIGRATIONS
)
#: The schema version this tailrunner writes.
SCHEMA_VERSION = len(MIGRATIONS)

#: The advisory lock's first key ("jrnl"); the second is the schema name's hash.
_LOCK_CLASS = 0x6A726E6C

_r = POSTGRESQL.render
_STATEMENTS = {
    "lock": _r("SELECT type, head FROM {aggregates} WHERE id = ? FOR UPDATE"),
    "insert_aggregate": _r(
        "INSERT INTO {aggregates} (id, type, head, event_count) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING RETURNING id"
    ),
    "update_aggregate": _r(
        "UPDATE {aggregates} SET head = ?, event_count = event_count + ? WHERE id = ?"
    ),
    "insert_events": _r(
        "INSERT INTO {events} (aggregate_id, id, wire)"
        " SELECT ?, id, wire FROM unnest(?::bytea[], ?::bytea[]) AS e (id, wire)"
    ),
    "select_request": _r(
        "SELECT event_ids FROM {append_requests} WHERE aggregate_id = ? AND request_id = ?"
    ),
    # Record a request id with the next seq, and forget all but the last N:
    # (aggregate, request id, tail, event ids, aggregate, aggregate, N). Safe
    # under the aggregate's row lock: no other append numbers its requests.
    "record_request": _r(
        "WITH recorded AS (INSERT INTO {append_requests}"
        " (aggregate_id, request_id, seq, tail, event_ids)"
        " SELECT ?, ?, coalesce(max(seq), 0) + 1, ?, ? FROM {append_requests}"
        " WHERE aggregate_id = ? RETURNING seq)"
        " DELETE FROM {append_requests}"
        " WHERE aggregate_id = ? AND seq <= (SELECT seq FROM recorded) - ?"
    ),
    # One statement, one snapshot: the type and the events agree.
    "read": _r(
        "SELECT type, ARRAY(SELECT wire FROM {events} WHERE aggregate_id = a.id AND id > ?"
        " ORDER BY id LIMIT ?) FROM {aggregates} a WHERE id = ?"
    ),
    # Many reads in one statement (read_wire_many), given (aggregate ids,
    # afters, events per read, max events + 1, max bytes): in the order of
    # the reads, the rows the budget keeps and one more, which tells the
    # caller where it ran out. Everything on the events is inside the
    # lateral subquery (index scans by aggregate). One window: ``before`` is
    # the bytes of the events up to the one before the previous (so the
    # event after the line still comes), and row_number ignores the frame;
    # as the only window its run condition (PostgreSQL 15) stops the scan
    # once enough events are found (two windows would scan every read).
    "read_many": _r(
        "WITH c AS (SELECT * FROM unnest(?::uuid[], ?::bytea[]) WITH ORDINALITY"
        " AS c (aggregate_id, after, ord)),"
        " candidates AS (SELECT c.ord, e.id, e.type, e.wire, row_number() OVER w AS n,"
        " coalesce(sum(octet_length(e.wire)) OVER w, 0) AS before"
        " FROM c CROSS JOIN LATERAL (SELECT ev.id, a.type, ev.wire"
        " FROM {aggregates} a JOIN {events} ev ON ev.aggregate_id = a.id"
        " WHERE a.id = c.aggregate_id AND ev.id > c.after ORDER BY ev.id LIMIT ?) e"
        " WINDOW w AS (ORDER BY c.ord, e.id ROWS BETWEEN UNBOUNDED PRECEDING AND 2 PRECEDING))"
        " SELECT ord, type, wire FROM candidates WHERE n <= ? AND before < ? ORDER BY ord, id"
    ),
    "head": _r("SELECT head FROM {aggregates} WHERE id = ?"),
    "list_all": _r("SELECT id, type, head, event_count FROM {aggregates} ORDER BY id LIMIT ?"),
    "list_all_after": _r(
        "SELECT id, type, head, event_count FROM {aggregates} WHERE id > ? ORDER BY id LIMIT ?"
    ),
    "list_type": _r(
        "SELECT id, type, head, event_count FROM {aggregates} WHERE type = ? ORDER BY id LIMIT ?"
    ),
    "list_type_after": _r(
        "SELECT id, type, head, event_count FROM {aggregates} WHERE type = ? AND id > ?"
        " ORDER BY id LIMIT ?"
    ),
}


def check_schema(schema: str, *, field: str = "schema") -> str:
    """Refuse a schema name PostgreSQL would not keep as written.

    :raises InvalidArgument: naming ``field``: an empty name, or one over
        :data:`MAX_SCHEMA_LENGTH` bytes (PostgreSQL would cut it short).
    """
    if not schema:
        raise InvalidArgument(field, "the schema name must not be empty")
    if len(schema.encode()) > MAX_SCHEMA_LENGTH:
        raise InvalidArgument(
            field,
            f"schema {schema!r} is {len(schema.encode())} bytes,"
            f" over PostgreSQL's limit of {MAX_SCHEMA_LENGTH}",
        )
    return schema


async def migrate_schema(
    url: str, *, schema: str = DEFAULT_SCHEMA, connect_timeout: float = 10.0
) -> tuple[int, bool]:
    """Create or migrate the journal's tables in ``schema``; idempotent.

    :returns: the schema version the store is at now, and whether anything ran.
    :raises InvalidArgument: a bad schema name (:func:`check_schema`).
    :raises StoreError: the server cannot be reached or refused, or the
        schema was written by a newer tailrunner; the message names the URL
        (without its password) and the reason.
    """
    check_schema(schema)
    name = _store_name(url, schema)
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=libpq_timeout(connect_timeout)
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot open the journal store {name}: {reason(exc)}") from exc
    try:

        def refuse(why: str) -> StoreError:
            return StoreError(f"cannot open the journal store {name}: {why}")

        return await migrate(
            PostgresMigration(conn, schema, _LOCK_CLASS),
            POSTGRESQL,
            JOURNAL_VERSION_TABLE,
            MIGRATIONS,
            refuse,
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot open the journal store {name}: {reason(exc)}") from exc
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


class PostgresJournalStore:
    """A :class:`~tailrunner.journal.store.JournalStore` in a PostgreSQL schema.

    Open it with :meth:`open`; close it with :meth:`aclose`. Several
    instances (journal servers) may share one schema.
    """

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[Connection],
        *,
        schema: str = DEFAULT_SCHEMA,
        request_ids_kept: int = DEFAULT_REQUEST_IDS_KEPT,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        """Use :meth:`open` instead: it migrates the schema and opens the pool."""
        check_request_ids_kept(request_ids_kept)
        self._name = _store_name(url, schema)
        self._pool = pool
        self._connections = PooledConnections(
            pool, label=f"journal store {self._name}", timeout=call_timeout
        )
        self._schema = schema
        ident = sql.Identifier(schema)
        self._sql = {key: sql.SQL(text).format(schema=ident) for key, text in _STATEMENTS.items()}
        self._request_ids_kept = request_ids_kept
        self._listeners = Listeners()
        self._closed = False
        #: Names this store in its notifications, so that its LISTEN skips them.
        self._instance = secrets.token_hex(8)
        self._channel = channel_name(schema)
        self._notify_sql = sql.SQL("SELECT pg_notify(%s, %s)")
        self._notify_listener: NotifyListener | None = None
        #: Whether the database answers, as the calls find it (the server's health follows).
        self.health = StoreHealth()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        request_ids_kept: int = DEFAULT_REQUEST_IDS_KEPT,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> PostgresJournalStore:
        """Connect to ``url``, create or migrate the tables in ``schema``, open the pool.

        :param url: a libpq connection URL (``postgresql://user@host/db``).
        :param schema: the schema that holds the tables; created if missing.
        :param request_ids_kept: how many request ids of idempotent appends
            to remember per aggregate (the last ones).
        :param pool_size: at most this many connections, so this many
            appends and reads at once.
        :param connect_timeout: seconds to wait for the server.
        :param call_timeout: seconds a call may wait for the database before
            it fails (a black-holed network must not stall calls forever).
        :raises InvalidArgument: a bad schema name, ``request_ids_kept`` or
            ``pool_size`` below 1.
        :raises StoreError: see :func:`migrate_schema`.
        """
        check_schema(schema)
        check_request_ids_kept(request_ids_kept)
        if pool_size < 1:
            raise InvalidArgument("pool_size", f"{pool_size}: at least one connection is needed")
        version, migrated = await migrate_schema(
            url, schema=schema, connect_timeout=connect_timeout
        )
        name = _store_name(url, schema)
        if migrated:
            log.info("migrated", store=name, version=version)
        pool = await open_pool(
            url,
            max_size=pool_size,
            name="tailrunner-journal",
            connect_timeout=connect_timeout,
            what=f"the journal store {name}",
        )
        store = cls(
            url, pool, schema=schema, request_ids_kept=request_ids_kept, call_timeout=call_timeout
        )
        try:
            await store._start_listening(url, connect_timeout)
        except BaseException:
            await store.aclose()
            raise
        log.debug("opened", store=name, version=version)
        return store

    async def _start_listening(self, url: str, connect_timeout: float) -> None:
        self._notify_listener = NotifyListener(
            url,
            self._schema,
            self._instance,
            self._listeners,
            name=self._name,
            connect_timeout=libpq_timeout(connect_timeout),
        )
        await self._notify_listener.start(connect_timeout)

    @property
    def notify_listener(self) -> NotifyListener | None:
        """The LISTEN connection that brings other stores' appends (``None`` before open)."""
        return self._notify_listener

    @property
    def schema(self) -> str:
        """The schema that holds the tables."""
        return self._schema

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

        Cancelled, it raises the cancellation only once the append is
        settled (its transaction runs to its end, shielded): committed (and
        heard by the listeners) or rolled back. So reading the aggregate
        back tells a cancelled caller whether it is in. Not retried on a
        lost connection: the commit may have landed (a request id makes a
        retry by the caller safe).
        """
        if not events:
            raise InvalidArgument("events", "an append needs at least one event")
        if request_id is not None:
            check_request_id(request_id)
        check_expect_new(expect_new=expect_new, expected_tail=expected_tail)
        self._check_open()
        wires = [(new.type, bytes(new.data), new.metadata) for new in events]

        async def transaction(conn: Connection) -> tuple[list[ULID], FreshEvents | None]:
            async with conn.transaction():
                return await self._append_rows(
                    conn, aggregate, wires, expected_tail, request_id, expect_new=expect_new
                )

        with anyio.CancelScope(shield=True):
            ids, fresh = await self._with_connection("append", transaction, retry=False)
            if fresh is not None:  # else a repeat: nothing was appended
                self._listeners.notify(aggregate, ids[-1], fresh)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return AppendResult(tail=ids[-1], event_ids=tuple(ids))

    async def _append_rows(
        self,
        conn: Connection,
        aggregate: AggregateRef,
        events: list[tuple[str, bytes, Mapping[str, str]]],
        expected_tail: ULID | None,
        request_id: str | None,
        *,
        expect_new: bool,
    ) -> tuple[list[ULID], FreshEvents | None]:
        """The append's statements, in its transaction: the ids, and the rows it inserted
        (``None``: a repeat, nothing inserted)."""
        q = self._sql
        key = aggregate.id
        inserted = False
        head: ULID | None = None
        ids: list[ULID] = []
        while True:
            cursor = await conn.execute(q["lock"], (key,))
            row = await cursor.fetchone()
            if row is not None:
                break
            # A first append: its row, with its final values. No row came
            # back when another append inserted it first: lock that one.
            head = None
            _check_tail(expected_tail, head, expect_new=expect_new)
            ids = next_ulids(None, len(events))
            cursor = await conn.execute(
                q["insert_aggregate"], (key, aggregate.type, ids[-1].bytes, len(ids))
            )
            if await cursor.fetchone() is not None:
                inserted = True
                break
        if not inserted:
            assert row is not None
            if row[0] != aggregate.type:
                raise AggregateTypeMismatch(
                    f"aggregate {aggregate.id} has type {row[0]!r}, not {aggregate.type!r}"
                )
            head = ULID.from_bytes(bytes(row[1]))
            if request_id is not None:
                cursor = await conn.execute(q["select_request"], (key, request_id))
                recorded = await cursor.fetchone()
                if recorded is not None:
                    blob = bytes(recorded[0])
                    return [
                        ULID.from_bytes(blob[i : i + 16]) for i in range(0, len(blob), 16)
                    ], None
            _check_tail(expected_tail, head, expect_new=expect_new)
            ids = next_ulids(head, len(events))
        raw = [i.bytes for i in ids]
        parents = [None if head is None else head.bytes, *raw[:-1]]
        wires = [
            encode_event(id_, parent, type_, data, metadata)
            for id_, parent, (type_, data, metadata) in zip(raw, parents, events, strict=True)
        ]
        # The writes depend on no result: one round trip for all of them.
        async with conn.pipeline():
            if not inserted:
                await conn.execute(q["update_aggregate"], (raw[-1], len(raw), key))
            await conn.execute(q["insert_events"], (key, raw, wires))
            if request_id is not None:
                await conn.execute(
                    q["record_request"],
                    (key, request_id, raw[-1], b"".join(raw), key, key, self._request_ids_kept),
                )
            # Delivered to the other stores only if the transaction commits.
            await conn.execute(
                self._notify_sql,
                (self._channel, payload(self._instance, aggregate, ids[-1])),
            )
        return ids, FreshEvents(parents[0] or b"", wires)

    async def read(self, aggregate_id: UUID, *, after: ULID | None, limit: int) -> list[Event]:
        aggregate_type, rows = await self.read_wire(
            aggregate_id, after=b"" if after is None else after.bytes, limit=limit
        )
        return [decode_event(wire, aggregate_type, aggregate_id) for wire in rows]

    async def read_wire(
        self, aggregate_id: UUID, *, after: bytes, limit: int
    ) -> tuple[str, list[bytes]]:
        """Like :meth:`read`, in the stored form: the gRPC service's hot path.

        :param after: the raw id to read after (``b""`` for epoch).
        :returns: the aggregate's type (``""`` when no events came) and up to
            ``limit`` events as :mod:`~tailrunner.journal.wire_format` stores them.
        """
        rows = await self._fetch("read", "read", (after, limit, aggregate_id))
        if not rows or not rows[0][1]:
            return "", []
        aggregate_type, wires = rows[0]
        return aggregate_type, [bytes(wire) for wire in wires]

    async def read_wire_many(
        self, reads: Sequence[RawCursor], *, max_events: int, max_bytes: int
    ) -> list[WireBatch]:
        """Many reads in the stored form: one statement, so one snapshot, one round trip.

        The statement applies the budget across the reads: it returns the
        events the budget keeps and one more (where one read was cut, or
        the next read's first), and stops scanning soon after ``max_events
        + 1`` events (the run condition of its row count; the sort before
        it takes a few reads at a time), however many the aggregates have;
        :class:`ReadBudget` then cuts them as every store does.
        """
        if not reads:
            return []
        params = (
            [UUID(bytes=key) for key, _ in reads],
            [after for _, after in reads],
            max_events + 1,
            max_events + 1,
            max_bytes,
        )
        rows = await self._fetch("read_aggregates", "read_many", params)
        found: dict[int, tuple[str, list[bytes]]] = {}
        for index, aggregate_type, wire in rows:
            entry = found.get(index)
            if entry is None:
                entry = found[index] = (aggregate_type, [])
            entry[1].append(bytes(wire))
        budget = ReadBudget(max_events, max_bytes)
        batches: list[WireBatch] = []
        for index in range(1, len(reads) + 1):
            limit = budget.left
            if not limit:
                batches.append(SKIPPED)
                continue
            aggregate_type, wires = found.get(index, ("", []))
            wires, complete = budget.take(wires, limit)
            batches.append(WireBatch(aggregate_type, wires, complete))
        return batches

    async def head(self, aggregate_id: UUID) -> ULID | None:
        rows = await self._fetch("head", "head", (aggregate_id,))
        return ULID.from_bytes(bytes(rows[0][0])) if rows else None

    async def list_aggregates(
        self, aggregate_type: str | None, *, after_id: UUID | None, limit: int
    ) -> list[AggregateInfo]:
        params: tuple[object, ...]
        if aggregate_type is None:
            key = "list_all" if after_id is None else "list_all_after"
            params = (limit,) if after_id is None else (after_id, limit)
        else:
            key = "list_type" if after_id is None else "list_type_after"
            params = (
                (aggregate_type, limit) if after_id is None else (aggregate_type, after_id, limit)
            )
        rows = await self._fetch("list_aggregates", key, params)
        return [
            AggregateInfo(
                type=type_, id=id_, head=ULID.from_bytes(bytes(head)), event_count=int(count)
            )
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
        with anyio.CancelScope(shield=True):
            if self._notify_listener is not None:
                await self._notify_listener.aclose()
            await self._pool.close()
        log.debug("closed", store=self._name)

    async def _fetch(self, what: str, key: str, params: Sequence[object]) -> list[TupleRow]:
        statement = self._sql[key]

        async def run(conn: Connection) -> list[TupleRow]:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchall()

        # Reads may be repeated safely.
        return await self._with_connection(what, run, retry=True)

    async def _with_connection(
        self, what: str, func: Callable[[Connection], Awaitable[T]], *, retry: bool
    ) -> T:
        self._check_open()
        try:
            return await self._connections.run(what, func, retry=retry)
        except StoreError as exc:
            # The database is down or cut off, not a refused statement.
            if isinstance(exc.__cause__, psycopg.OperationalError | TimeoutError):
                self.health.failed(str(exc))
            raise

    async def probe(self) -> None:
        """Check that the database answers (``SELECT 1``); :attr:`health` follows.

        :raises StoreError: it does not.
        """

        async def ping(conn: Connection) -> None:
            await conn.execute("SELECT 1")

        self._check_open()
        await self._connections.run("probe", ping, retry=True)
        self.health.works()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"journal store {self._name} is closed")


def _check_tail(expected_tail: ULID | None, head: ULID | None, *, expect_new: bool) -> None:
    if expected_tail is not None and expected_tail != head:
        raise TailMismatch(expected_tail, head)
    if expect_new and head is not None:
        raise TailMismatch(None, head)


def _store_name(url: str, schema: str) -> str:
    return f"{redact(url)} (schema {schema})"
