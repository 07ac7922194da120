"""What the SQLite stores share of sqlite3: the migration connection, rolling back."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread


class SQLiteMigration:
    """The :class:`~tailrunner.sql.migrate.MigrationConnection` of a file being opened.

    Each statement runs in a worker thread. The connection must be in
    autocommit mode (``isolation_level=None``): transactions are ours.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def fetch(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        return await anyio.to_thread.run_sync(fetchall, self._conn, statement, params)

    async def has_table(self, name: str) -> bool:
        rows = await self.fetch(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return bool(rows)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        # The write lock: another process migrating the same file waits here.
        await self.fetch("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(rollback, self._conn)
            raise
        await self.fetch("COMMIT")


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back ``conn``'s transaction, if it is in one."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def fetchall(conn: sqlite3.Connection, statement: str, params: Sequence[object]) -> list[Any]:
    """The rows of ``statement``: for a worker thread."""
    return conn.execute(statement, params).fetchall()
