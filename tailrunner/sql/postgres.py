"""What the PostgreSQL stores share of psycopg: the migration connection, error text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

#: The advisory lock's first key ("schm") while a schema is created, whatever
#: kind of store creates it; taken after the store's own lock, and never held
#: while waiting for another, so no two openers wait for each other in a ring.
SCHEMA_LOCK_CLASS = 0x7363686D


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
