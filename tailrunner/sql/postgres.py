"""What the PostgreSQL stores share of psycopg: pooled connections, the migration
connection, error text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tailrunner.errors import StoreError

log = structlog.get_logger(__name__)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

#: The advisory lock's first key ("schm") while a schema is created, whatever
#: kind of store creates it; taken after the store's own lock, and never held
#: while waiting for another, so no two openers wait for each other in a ring.
SCHEMA_LOCK_CLASS = 0x7363686D


#: Seconds a store call may wait for the database before it fails: a database
#: behind a black-holed network must not stall a journal call or a run forever.
DEFAULT_CALL_TIMEOUT = 30.0

#: libpq's TCP settings: a peer that stops answering is noticed by the kernel
#: within about 30 s (keepalive probes while idle, unacknowledged data while busy).
_TCP_KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 4,
    "tcp_user_timeout": 30_000,
}


def libpq_timeout(seconds: float) -> int:
    """``connect_timeout`` as libpq takes it: whole seconds, at least 2."""
    return max(2, round(seconds))


async def open_pool(
    url: str,
    *,
    max_size: int,
    name: str,
    connect_timeout: float,
    what: str,
    prepare: bool = True,
) -> AsyncConnectionPool[Connection]:
    """An open pool of autocommit connections to ``url``, its first connection made.

    :param name: the pool's name (psycopg's logs).
    :param what: what is being opened, for the error: ``"the tail store …"``.
    :param prepare: let psycopg prepare statements on the server; off where
        pgbouncer in transaction mode must work (a prepared statement is
        session state).
    :raises StoreError: ``"cannot open {what}: {reason}"``; the pool is closed.
    """
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": libpq_timeout(connect_timeout),
        **_TCP_KEEPALIVE,
    }
    if not prepare:
        kwargs["prepare_threshold"] = None
    pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
        url, min_size=1, max_size=max_size, kwargs=kwargs, open=False, name=name
    )
    try:
        await pool.open(wait=True, timeout=connect_timeout)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await pool.close()
        if isinstance(exc, psycopg.Error):
            raise StoreError(f"cannot open {what}: {reason(exc)}") from exc
        raise
    return pool


class PooledConnections:
    """A store's pool, as every PostgreSQL store uses it.

    A connection is always given back (shielded, so a cancelled caller leaks
    none); a connection the server dropped (restart, failover) is retried
    once on a fresh one for calls that may be repeated; every psycopg error
    becomes a :class:`~tailrunner.errors.StoreError` naming the store.

    :param label: the store in messages, e.g. ``"tail store postgresql://… (schema x)"``.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        label: str,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        """:param timeout: seconds a call may take (:data:`DEFAULT_CALL_TIMEOUT`)."""
        self.pool = pool
        self._label = label
        self._timeout = timeout

    def error(self, what: str, exc: BaseException) -> StoreError:
        """The error of a failed ``what``."""
        return StoreError(f"{self._label}: {what} failed: {reason(exc)}")

    @asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[Connection]:
        """A connection of the pool for ``what``, given back afterwards."""
        try:
            conn = await self.pool.getconn()
        except psycopg.Error as exc:
            raise self.error(what, exc) from exc
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await self.pool.putconn(conn)

    async def run(self, what: str, func: Callable[[Connection], Awaitable[T]], *, retry: bool) -> T:
        """``func`` on a pooled connection.

        :param retry: ``func`` may be repeated safely (a read, an idempotent
            write): a dropped connection is then tried once more.
        :raises StoreError: psycopg failed, or the database did not answer in
            time (then not retried: a second wait would double the stall).
        """
        try:
            try:
                return await self._deadline(what, func)
            except psycopg.OperationalError as exc:
                if not retry or isinstance(exc, PoolTimeout):
                    raise
                log.warning("retrying", store=self._label, call=what, error=reason(exc))
                # A cut network breaks every pooled connection at once: drop
                # the broken idle ones first, or the retry gets one of them.
                await self.pool.check()
                return await self._deadline(what, func)
        except StoreError:
            raise
        except psycopg.Error as exc:
            raise self.error(what, exc) from exc

    async def _deadline(self, what: str, func: Callable[[Connection], Awaitable[T]]) -> T:
        """``func`` on a pooled connection, within the call's time."""
        try:
            with anyio.fail_after(self._timeout):
                async with self.connection(what) as conn:
                    # Cancelled in time, psycopg cancels the query on the
                    # server, or closes a connection that does not answer:
                    # the pool then drops it.
                    return await func(conn)
        except TimeoutError as exc:
            raise StoreError(
                f"{self._label}: {what} failed: no answer from the database in {self._timeout:g} s"
            ) from exc


class PostgresMigration:
    """The :class:`~tailrunner.sql.migrate.MigrationConnection` of a schema being opened.

    :param conn: an autocommit connection.
    :param schema: the store's schema; ``{schema}`` in statements is its
        quoted name, and it is created if missing.
    :param lock_class: the advisory lock's first key, one per kind of store;
        the second is the schema name's hash.
    """

    def __init__(
        self, conn: psycopg.AsyncConnection[TupleRow], schema: str, lock_class: int
    ) -> None:
        self._conn = conn
        self._schema = schema
        self._ident = sql.Identifier(schema)
        self._lock_class = lock_class

    async def fetch(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        query = sql.SQL(statement).format(schema=self._ident)
        cursor = await self._conn.execute(query, params)
        return await cursor.fetchall() if cursor.description is not None else []

    async def has_table(self, name: str) -> bool:
        cursor = await self._conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
            (self._schema, name),
        )
        return await cursor.fetchone() is not None

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            # Runners starting at once queue here; each re-reads the version.
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (self._lock_class, self._schema)
            )
            if not await self._has_schema():
                # Stores of other kinds (a journal server and a runner on the
                # default schema) hold other lock classes: creating the schema
                # itself queues under one lock of all kinds, then looks again.
                await self._conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (SCHEMA_LOCK_CLASS, self._schema),
                )
                if not await self._has_schema():
                    await self._conn.execute(sql.SQL("CREATE SCHEMA {}").format(self._ident))
            yield

    async def _has_schema(self) -> bool:
        cursor = await self._conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)
        )
        return await cursor.fetchone() is not None


def reason(exc: BaseException) -> str:
    """``exc``'s message on one line (libpq's span lines; a log line should not)."""
    return " ".join(str(exc).split()) or type(exc).__name__
