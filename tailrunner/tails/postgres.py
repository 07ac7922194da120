"""``PostgresTailStore``: tails and run records in PostgreSQL (psycopg 3, async).

Connections come from a :class:`psycopg_pool.AsyncConnectionPool` in
autocommit mode: a save is one statement, committed (and durable) when it
returns, and :meth:`PostgresTailStore.transaction` holds its own pooled
connection for the block, so the other tasks' saves need not wait for it.

The tables live in their own schema (default ``tailrunner``), created on
first use by :data:`MIGRATIONS`, applied in order under a transaction-level
advisory lock, so several runners starting at once migrate it exactly once.
The version lives in ``<schema>.tails_schema_version``; a schema written by
a newer tailrunner is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import anyio
import psycopg
import structlog
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from ulid import ULID

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.model import AggregateRef
from tailrunner.stores import redact
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

Connection = psycopg.AsyncConnection[TupleRow]
T = TypeVar("T")

DEFAULT_SCHEMA = "tailrunner"

#: The schema, one migration per version: ``MIGRATIONS[i]`` takes a schema
#: from version ``i`` to ``i + 1``; ``{schema}`` is the quoted schema name.
#: Append only; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # COLLATE "C": activities sort by bytes, as in the other stores.
        """CREATE TABLE {schema}.tails (
            activity text COLLATE "C" NOT NULL,
            aggregate_id uuid NOT NULL,
            aggregate_type text NOT NULL,
            tail bytea CHECK (octet_length(tail) = 16),
            state text NOT NULL,
            attempts integer NOT NULL,
            last_error text,
            completed boolean NOT NULL,
            updated_at timestamptz NOT NULL,
            PRIMARY KEY (activity, aggregate_id)
        )""",
        # For the status view (query): newest updated first, overall or by state.
        "CREATE INDEX tails_by_updated ON {schema}.tails (updated_at, activity, aggregate_id)",
        "CREATE INDEX tails_by_state ON {schema}.tails (state, updated_at, activity, aggregate_id)",
        """CREATE TABLE {schema}.tail_runs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            activity text COLLATE "C" NOT NULL,
            aggregate_id uuid NOT NULL,
            aggregate_type text NOT NULL,
            attempt integer NOT NULL,
            started_at timestamptz NOT NULL,
            finished_at timestamptz NOT NULL,
            tail_before bytea,
            tail_after bytea,
            events_seen bigint NOT NULL,
            outcome text NOT NULL,
            error text
        )""",
        "CREATE INDEX tail_runs_by_task ON {schema}.tail_runs (activity, aggregate_id, seq)",
    ),
    (
        # Issue 10: the backoff exponent and the next try's time survive a
        # restart. Older rows read as "no failures, no time due".
        "ALTER TABLE {schema}.tails ADD COLUMN failures integer NOT NULL DEFAULT 0",
        "ALTER TABLE {schema}.tails ADD COLUMN next_run_at timestamptz",
    ),
)

#: The advisory lock's first key ("tail"); the second is the schema name's hash.
_LOCK_CLASS = 0x7461696C

_TAIL_COLUMNS = (
    "activity, aggregate_id, aggregate_type, tail, state, attempts, last_error, completed,"
    " updated_at, failures, next_run_at"
)
_RUN_COLUMNS = (
    "activity, aggregate_id, aggregate_type, attempt, started_at, finished_at, tail_before,"
    " tail_after, events_seen, outcome, error"
)


@dataclass(frozen=True, slots=True)
class _Statements:
    """The store's SQL with the schema name filled in, built once."""

    save: sql.Composed
    get: sql.Composed
    load: sql.Composed
    insert_run: sql.Composed
    prune_runs: sql.Composed
    list_runs: sql.Composed
    query: sql.Composed

    @classmethod
    def for_schema(cls, schema: str) -> _Statements:
        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(schema=sql.Identifier(schema))

        return cls(
            save=q(
                f"INSERT INTO {{schema}}.tails ({_TAIL_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (activity, aggregate_id) DO UPDATE SET"
                " aggregate_type = excluded.aggregate_type, tail = excluded.tail,"
                " state = excluded.state, attempts = excluded.attempts,"
                " last_error = excluded.last_error, completed = excluded.completed,"
                " updated_at = excluded.updated_at, failures = excluded.failures,"
                " next_run_at = excluded.next_run_at"
            ),
            get=q(
                f"SELECT {_TAIL_COLUMNS} FROM {{schema}}.tails"
                " WHERE activity = %s AND aggregate_id = %s"
            ),
            load=q(f"SELECT {_TAIL_COLUMNS} FROM {{schema}}.tails WHERE activity = %s"),
            insert_run=q(
                f"INSERT INTO {{schema}}.tail_runs ({_RUN_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ),
            # Everything older than the task's newest N runs; the subquery is
            # NULL (nothing deleted) while the task has fewer.
            prune_runs=q(
                "DELETE FROM {schema}.tail_runs"
                " WHERE activity = %(activity)s AND aggregate_id = %(id)s AND seq < ("
                "SELECT seq FROM {schema}.tail_runs"
                " WHERE activity = %(activity)s AND aggregate_id = %(id)s"
                " ORDER BY seq DESC OFFSET %(offset)s LIMIT 1)"
            ),
            list_runs=q(
                f"SELECT {_RUN_COLUMNS} FROM {{schema}}.tail_runs"
                " WHERE activity = %s AND aggregate_id = %s ORDER BY seq DESC LIMIT %s"
            ),
            query=q(f"SELECT {_TAIL_COLUMNS} FROM {{schema}}.tails"),
        )


class PostgresTailStore:
    """A :class:`~tailrunner.tails.store.TailStore` in a PostgreSQL schema.

    Open it with :meth:`open`; close it with :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        pool: AsyncConnectionPool[Connection],
        *,
        schema: str = DEFAULT_SCHEMA,
        run_retention: int = DEFAULT_RUN_RETENTION,
    ) -> None:
        """Use :meth:`open` instead: it migrates the schema and opens the pool."""
        self._name = f"{redact(url)} (schema {schema})"
        self._pool = pool
        self._schema = schema
        self._sql = _Statements.for_schema(schema)
        self._run_retention = check_retention(run_retention)
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        run_retention: int = DEFAULT_RUN_RETENTION,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> PostgresTailStore:
        """Connect to ``url``, create or migrate the tables in ``schema``, open the pool.

        :param url: a libpq connection URL (``postgresql://user@host/db``).
        :param schema: the schema that holds the tables; created if missing.
        :param run_retention: how many runs per task :meth:`record_run` keeps.
        :param pool_size: at most this many connections; a
            :meth:`transaction` holds one for its whole block.
        :param connect_timeout: seconds to wait for the server.
        :raises InvalidArgument: an empty schema name, ``run_retention`` or
            ``pool_size`` below 1.
        :raises StoreError: the server cannot be reached or refused, or the
            schema was written by a newer tailrunner; the message names the
            URL (without its password) and the reason.
        """
        if not schema:
            raise InvalidArgument("schema", "the schema name must not be empty")
        if pool_size < 1:
            raise InvalidArgument("pool_size", f"{pool_size}: at least one connection is needed")
        check_retention(run_retention)
        name = f"{redact(url)} (schema {schema})"
        # libpq takes whole seconds, at least 2.
        timeout = max(2, round(connect_timeout))
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=timeout
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the tail store {name}: {_reason(exc)}") from exc
        try:
            version, migrated = await _migrate(conn, schema, name)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the tail store {name}: {_reason(exc)}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()
        if migrated:
            log.info("migrated", store=name, version=version)
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": timeout},
            open=False,
            name="tailrunner-tails",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await pool.close()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"cannot open the tail store {name}: {_reason(exc)}") from exc
            raise
        log.debug("opened", store=name, version=version)
        return cls(url, pool, schema=schema, run_retention=run_retention)

    @property
    def schema(self) -> str:
        """The schema that holds the tables."""
        return self._schema

    async def load(self, activity: str) -> dict[UUID, TailRecord]:
        rows = await self._run("load", self._sql.load, (activity,))
        records = (_tail_record(row) for row in rows)
        return {r.aggregate.id: r for r in records}

    async def get(self, activity: str, aggregate_id: UUID) -> TailRecord | None:
        rows = await self._run("get", self._sql.get, (activity, aggregate_id))
        return _tail_record(rows[0]) if rows else None

    async def save(self, record: TailRecord) -> None:
        # Autocommit: the one statement commits (durably) before it returns.
        await self._run("save", self._sql.save, _tail_params(record), fetch=False)

    async def record_run(self, run: RunRecord) -> None:
        await self._record_run("record_run", run, None)

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await self._record_run("save_with_run", run, record)

    async def _record_run(self, what: str, run: RunRecord, record: TailRecord | None) -> None:
        params = _run_params(run)
        prune = {
            "activity": run.activity,
            "id": run.aggregate.id,
            "offset": self._run_retention - 1,
        }

        async def insert_and_prune(conn: Connection) -> None:
            async with conn.transaction():
                if record is not None:
                    await conn.execute(self._sql.save, _tail_params(record))
                await conn.execute(self._sql.insert_run, params)
                await conn.execute(self._sql.prune_runs, prune)

        # Not retried: a lost connection may have committed the insert.
        await self._with_connection(what, insert_and_prune, retry=False)

    async def list_runs(
        self, activity: str, aggregate_id: UUID, *, limit: int = 100
    ) -> list[RunRecord]:
        check_limit(limit)
        rows = await self._run("list_runs", self._sql.list_runs, (activity, aggregate_id, limit))
        return [_run_record(row) for row in rows]

    async def query(
        self,
        activity: str | None = None,
        states: Collection[str] = (),
        limit: int = 100,
        after: QueryCursor | None = None,
    ) -> list[TailRecord]:
        check_limit(limit)
        where: list[sql.Composable] = []
        params: list[object] = []
        if activity is not None:
            where.append(sql.SQL("activity = %s"))
            params.append(activity)
        if states:
            where.append(sql.SQL("state = ANY(%s)"))
            params.append(list(state_filter(states)))
        if after is not None:
            updated_at, after_activity, after_id = after
            where.append(sql.SQL("(updated_at, activity, aggregate_id) < (%s, %s, %s)"))
            params.extend((require_aware(updated_at, field="after"), after_activity, after_id))
        parts: list[sql.Composable] = [self._sql.query]
        if where:
            parts += [sql.SQL(" WHERE "), sql.SQL(" AND ").join(where)]
        parts.append(
            sql.SQL(" ORDER BY updated_at DESC, activity DESC, aggregate_id DESC LIMIT %s")
        )
        params.append(limit)
        rows = await self._run("query", sql.Composed(parts), tuple(params))
        return [_tail_record(row) for row in rows]

    @asynccontextmanager
    async def transaction(self, record: TailRecord) -> AsyncIterator[Connection]:
        """Yield a pooled connection in an open transaction (``BEGIN`` … ``COMMIT``).

        The block writes through the connection (its own
        ``conn.transaction()`` blocks become savepoints); ``record`` is saved
        and everything commits when the block ends normally. On an exception
        or cancellation everything is rolled back.

        :raises StoreError: the transaction could not begin or commit (the
            block's own writes failed and it swallowed the error, or it ended
            the transaction itself).
        """
        params = _tail_params(record)
        self._check_open()
        async with self._connection("transaction") as conn:
            try:
                await conn.execute("BEGIN")
            except psycopg.Error as exc:
                raise self._error("transaction", exc) from exc
            try:
                yield conn
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._rollback(conn)
                raise
            with anyio.CancelScope(shield=True):
                try:
                    status = conn.info.transaction_status
                    if status is not TransactionStatus.INTRANS:
                        raise StoreError(
                            f"tail store {self._name}: the transaction block ended"
                            f" in state {status.name}; nothing was saved"
                        )
                    await conn.execute(self._sql.save, params)
                    await conn.execute("COMMIT")
                except BaseException as exc:
                    await self._rollback(conn)
                    if isinstance(exc, psycopg.Error):
                        raise self._error("transaction", exc) from exc
                    raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()
        log.debug("closed", store=self._name)

    async def _run(
        self,
        what: str,
        query: sql.Composed,
        params: Sequence[object] | dict[str, object],
        *,
        fetch: bool = True,
    ) -> list[TupleRow]:
        async def run(conn: Connection) -> list[TupleRow]:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall() if fetch else []

        # Every statement run this way may be repeated safely.
        return await self._with_connection(what, run, retry=True)

    async def _with_connection(
        self, what: str, func: Callable[[Connection], Awaitable[T]], *, retry: bool
    ) -> T:
        self._check_open()
        try:
            try:
                async with self._connection(what) as conn:
                    return await func(conn)
            except psycopg.OperationalError as exc:
                # A pooled connection the server dropped (restart, failover)
                # fails once; the pool discards it, and a fresh one works.
                if not retry or isinstance(exc, PoolTimeout):
                    raise
                log.warning("retrying", store=self._name, call=what, error=_reason(exc))
                async with self._connection(what) as conn:
                    return await func(conn)
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Connection]:
        try:
            conn = await self._pool.getconn()
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc
        try:
            yield conn
        finally:
            # Shielded, or a cancelled caller would leak the connection.
            with anyio.CancelScope(shield=True):
                await self._pool.putconn(conn)

    async def _rollback(self, conn: Connection) -> None:
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            # Not raised: it would hide the error that led here. The pool
            # discards a connection left in a bad state.
            log.warning("rollback failed", store=self._name, error=_reason(exc))

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        return StoreError(f"tail store {self._name}: {what} failed: {_reason(exc)}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"tail store {self._name} is closed")


async def _migrate(conn: Connection, schema: str, name: str) -> tuple[int, bool]:
    """Bring ``schema`` to the newest version; returns it, and whether anything changed."""
    latest = len(MIGRATIONS)
    ident = sql.Identifier(schema)
    if await _read_version(conn, schema) == latest:
        return latest, False
    async with conn.transaction():
        # Runners starting at once queue here; each re-reads the version.
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
        cursor = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cursor.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.tails_schema_version"
                " (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
            ).format(ident)
        )
        version = await _read_version(conn, schema)
        if version > latest:
            raise StoreError(
                f"cannot open the tail store {name}: its schema version {version} is newer"
                f" than this tailrunner's ({latest})"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                await conn.execute(sql.SQL(statement).format(schema=ident))
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.tails_schema_version (id, version) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
            ).format(ident),
            (latest,),
        )
    return latest, version < latest


async def _read_version(conn: Connection, schema: str) -> int:
    cursor = await conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'tails_schema_version'",
        (schema,),
    )
    if await cursor.fetchone() is None:
        return 0
    cursor = await conn.execute(
        sql.SQL("SELECT version FROM {}.tails_schema_version WHERE id = 1").format(
            sql.Identifier(schema)
        )
    )
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


def _reason(exc: BaseException) -> str:
    # libpq's messages span lines; a log line or an error message should not.
    return " ".join(str(exc).split()) or type(exc).__name__


def _ulid_bytes(value: ULID | None) -> bytes | None:
    return None if value is None else value.bytes


def _ulid(raw: bytes | None) -> ULID | None:
    return None if raw is None else ULID.from_bytes(bytes(raw))


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _tail_params(record: TailRecord) -> tuple[object, ...]:
    check_record(record)
    return (
        record.activity,
        record.aggregate.id,
        record.aggregate.type,
        _ulid_bytes(record.tail),
        record.state,
        record.attempts,
        record.last_error,
        record.completed,
        record.updated_at,
        record.failures,
        record.next_run_at,
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
        aggregate=AggregateRef(type=type_, id=id_),
        tail=_ulid(tail),
        state=state,
        attempts=attempts,
        last_error=last_error,
        completed=completed,
        updated_at=_utc(updated_at),
        failures=failures,
        next_run_at=None if next_run_at is None else _utc(next_run_at),
    )


def _run_params(run: RunRecord) -> tuple[object, ...]:
    return (
        run.activity,
        run.aggregate.id,
        run.aggregate.type,
        run.attempt,
        require_aware(run.started_at, field="started_at"),
        require_aware(run.finished_at, field="finished_at"),
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
        aggregate=AggregateRef(type=type_, id=id_),
        attempt=attempt,
        started_at=_utc(started),
        finished_at=_utc(finished),
        tail_before=_ulid(before),
        tail_after=_ulid(after),
        events_seen=seen,
        outcome=outcome,
        error=error,
    )
