"""``PostgresTailStore``: tails and run records in PostgreSQL (psycopg 3, async).

Connections come from a :class:`psycopg_pool.AsyncConnectionPool` in
autocommit mode: a save is one statement, committed (and durable) when it
returns, and :meth:`PostgresTailStore.transaction` holds its own pooled
connection for the block, so the other tasks' saves need not wait for it.

The tables live in their own schema (default ``tailrunner``), created on
first use by :data:`MIGRATIONS`, applied in order under a transaction-level
advisory lock, so several runners starting at once migrate it exactly once.
The version lives in ``<schema>.tails_schema_version``; a schema written by
a newer tailrunner is refused. The tables, statements, row codec and
migration runner are :mod:`tailrunner.sql`'s, shared with the SQLite store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
import psycopg
import structlog
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tailrunner.errors import InvalidArgument, LeaseLost, StoreError
from tailrunner.sql.codecs import TailRows
from tailrunner.sql.dialect import POSTGRESQL
from tailrunner.sql.fencing import Fence
from tailrunner.sql.migrate import migrate
from tailrunner.sql.postgres import (
    PooledConnections,
    PostgresMigration,
    libpq_timeout,
    open_pool,
    reason,
)
from tailrunner.sql.schema import TAILS_VERSION_TABLE
from tailrunner.sql.statements import (
    FencedStatements,
    TailStatements,
    prune_params,
    tail_migrations,
)
from tailrunner.sql.tail_store import SQLTailStore
from tailrunner.stores import redact
from tailrunner.tails.store import (
    DEFAULT_RUN_RETENTION,
    RunRecord,
    TailRecord,
    check_retention,
)

log = structlog.get_logger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]
T = TypeVar("T")

DEFAULT_SCHEMA = "tailrunner"

#: The schema, one migration per version: ``MIGRATIONS[i]`` takes a schema
#: from version ``i`` to ``i + 1``; ``{schema}`` is the quoted schema name
#: (:data:`tailrunner.sql.schema.TAIL_MIGRATIONS`).
MIGRATIONS: tuple[tuple[str, ...], ...] = tail_migrations(POSTGRESQL)

_STATEMENTS = TailStatements.render(POSTGRESQL)
_FENCED = FencedStatements.render(POSTGRESQL)
_ROWS = TailRows(POSTGRESQL.codec)

#: The advisory lock's first key ("tail"); the second is the schema name's hash.
_LOCK_CLASS = 0x7461696C


class PostgresTailStore(SQLTailStore[sql.Composed, Connection]):
    """A :class:`~tailrunner.tails.store.TailStore` in a PostgreSQL schema.

    Open it with :meth:`open`; close it with :meth:`aclose`.

    :meth:`transaction` yields a pooled connection in an open transaction
    (``BEGIN`` … ``COMMIT``); the block writes through it, and its own
    ``conn.transaction()`` blocks become savepoints.
    """

    _fences = True

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
        self._connections = PooledConnections(pool, label=f"tail store {self._name}")
        self._schema = schema
        ident = sql.Identifier(schema)
        self._dialect = POSTGRESQL
        self._sql = _STATEMENTS.map(lambda text: sql.SQL(text).format(schema=ident))
        self._rows = _ROWS
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
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=libpq_timeout(connect_timeout)
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the tail store {name}: {reason(exc)}") from exc
        try:
            version, migrated = await _migrate(conn, schema, name)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the tail store {name}: {reason(exc)}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()
        if migrated:
            log.info("migrated", store=name, version=version)
        pool = await open_pool(
            url,
            max_size=pool_size,
            name="tailrunner-tails",
            connect_timeout=connect_timeout,
            what=f"the tail store {name}",
        )
        log.debug("opened", store=name, version=version)
        return cls(url, pool, schema=schema, run_retention=run_retention)

    @property
    def schema(self) -> str:
        """The schema that holds the tables."""
        return self._schema

    async def save(self, record: TailRecord, fence: Fence | None = None) -> None:
        """Store ``record``; with a ``fence``, only while that segment lease is held.

        :raises LeaseLost: ``fence``'s lease is no longer held: nothing was written.
        """
        params = self._rows.tail_params(record)
        if fence is None:
            # Autocommit: the one statement commits (durably) before it returns.
            await self._run("save", self._sql.save, params, fetch=False)
            return
        query = self._fenced(_FENCED.save, fence)

        async def save(conn: Connection) -> bool:
            cursor = await conn.execute(query, params)
            return cursor.rowcount > 0

        # Retried like the plain save: the upsert may be repeated safely.
        if not await self._with_connection("save", save, retry=True):
            raise self._lease_lost(fence, record)

    async def record_run(self, run: RunRecord, fence: Fence | None = None) -> None:
        """:meth:`~tailrunner.tails.store.TailStore.record_run`, fenced as :meth:`save`."""
        await self._record_run("record_run", run, None, fence)

    async def save_with_run(
        self, record: TailRecord, run: RunRecord, fence: Fence | None = None
    ) -> None:
        """:meth:`~tailrunner.tails.store.TailStore.save_with_run`, fenced as :meth:`save`."""
        await self._record_run("save_with_run", run, record, fence)

    async def _record_run(
        self, what: str, run: RunRecord, record: TailRecord | None, fence: Fence | None
    ) -> None:
        params = self._rows.run_params(run)
        prune = prune_params(run.activity, run.aggregate.id, self._run_retention)
        if fence is not None:
            save, insert = (
                self._fenced(_FENCED.save, fence),
                self._fenced(_FENCED.insert_run, fence),
            )

        async def insert_and_prune(conn: Connection) -> bool:
            async with conn.transaction():
                if record is not None:
                    await conn.execute(self._sql.save, self._rows.tail_params(record))
                await conn.execute(self._sql.insert_run, params)
                await conn.execute(self._sql.prune_runs, prune)
            return True

        async def fenced_insert_and_prune(conn: Connection) -> bool:
            assert fence is not None
            # One round trip (a pipeline): the fenced writes lock the lease
            # row FOR SHARE until the commit, so that window is kept short
            # and bounded (hold_limit). Both writes carry the same fence, so
            # a lost lease writes neither; the prune alone changes nothing new.
            limit = fence.hold_limit()
            async with conn.pipeline(), conn.transaction():
                if limit is not None:
                    await conn.execute(limit)
                cursors = []
                if record is not None:
                    cursors.append(await conn.execute(save, self._rows.tail_params(record)))
                cursors.append(await conn.execute(insert, params))
                await conn.execute(self._sql.prune_runs, prune)
            return all(cursor.rowcount > 0 for cursor in cursors)

        # Not retried: a lost connection may have committed the insert.
        if fence is None:
            await self._with_connection(what, insert_and_prune, retry=False)
        elif not await self._with_connection(what, fenced_insert_and_prune, retry=False):
            raise self._lease_lost(fence, record or run)

    def _fenced(self, statement: str, fence: Fence) -> sql.Composed:
        if fence.schema != self._schema:
            raise InvalidArgument(
                "fence",
                f"the lease table's schema {fence.schema!r} is not the tail store's"
                f" ({self._schema!r}): a fenced write checks its lease in the same statement",
            )
        return sql.SQL(statement).format(
            schema=sql.Identifier(self._schema), fence=fence.condition()
        )

    def _lease_lost(self, fence: Fence, task: TailRecord | RunRecord) -> LeaseLost:
        return LeaseLost(
            f"tail store {self._name}: not written for {task.activity}/{task.aggregate.id}:"
            f" segment {fence.segment}'s lease (epoch {fence.epoch}) is no longer held"
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()
        log.debug("closed", store=self._name)

    async def _fetch(
        self, what: str, statement: sql.Composed, params: Sequence[object]
    ) -> list[Any]:
        return await self._run(what, statement, params)

    def _extend(self, statement: sql.Composed, text: str) -> sql.Composed:
        return statement + sql.SQL(text)

    @asynccontextmanager
    async def _transaction_connection(self) -> AsyncIterator[Connection]:
        # Its own pooled connection: the other tasks' saves need not wait.
        self._check_open()
        async with self._connection("transaction") as conn:
            yield conn

    async def _begin(self, conn: Connection) -> None:
        try:
            await conn.execute("BEGIN")
        except psycopg.Error as exc:
            raise self._error("transaction", exc) from exc

    async def _save_and_commit(
        self, conn: Connection, params: tuple[object, ...], fence: Fence | None
    ) -> None:
        try:
            status = conn.info.transaction_status
            if status is not TransactionStatus.INTRANS:
                raise StoreError(
                    f"tail store {self._name}: the transaction block ended"
                    f" in state {status.name}; nothing was saved"
                )
            if fence is None:
                await conn.execute(self._sql.save, params)
            else:
                # The lease row is locked FOR SHARE from here to the commit:
                # bounded, in case this host vanishes in between.
                limit = fence.hold_limit()
                async with conn.pipeline():
                    if limit is not None:
                        await conn.execute(limit)
                    cursor = await conn.execute(self._fenced(_FENCED.save, fence), params)
                if cursor.rowcount == 0:
                    # The activity's writes go with the tail: none of them commit.
                    raise LeaseLost(
                        f"tail store {self._name}: transaction rolled back: segment"
                        f" {fence.segment}'s lease (epoch {fence.epoch}) is no longer held"
                    )
            await conn.execute("COMMIT")
        except BaseException as exc:
            await self._rollback(conn)
            if isinstance(exc, psycopg.Error):
                raise self._error("transaction", exc) from exc
            raise

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
        return await self._connections.run(what, func, retry=retry)

    def _connection(self, what: str) -> AbstractAsyncContextManager[Connection]:
        return self._connections.connection(what)

    async def _rollback(self, conn: Connection) -> None:
        try:
            await conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            # Not raised: it would hide the error that led here. The pool
            # discards a connection left in a bad state.
            log.warning("rollback failed", store=self._name, error=reason(exc))

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        return self._connections.error(what, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"tail store {self._name} is closed")


async def _migrate(conn: Connection, schema: str, name: str) -> tuple[int, bool]:
    """Bring ``schema`` to the newest version; returns it, and whether anything changed."""

    def refuse(why: str) -> StoreError:
        return StoreError(f"cannot open the tail store {name}: {why}")

    return await migrate(
        PostgresMigration(conn, schema, _LOCK_CLASS),
        POSTGRESQL,
        TAILS_VERSION_TABLE,
        MIGRATIONS,
        refuse,
    )
