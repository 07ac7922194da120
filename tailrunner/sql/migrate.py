"""The version-table migration runner, written once for every SQL store.

A store's schema version lives in a one-row table; migrations are a tuple
of steps, ``migrations[i]`` taking the schema from version ``i`` to
``i + 1``. :func:`migrate` reads the version and, when it is behind, takes
the store's exclusive lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
advisory lock in a transaction), reads it again (another process may have
migrated meanwhile), runs the missing steps and records the new version, all
in that one transaction. A version newer than the store knows is refused.

The database is reached through a :class:`MigrationConnection`, which each
store writes for its driver (a few lines: sqlite3 in a worker thread,
psycopg as it is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from tailrunner.sql.dialect import Dialect


class MigrationConnection(Protocol):
    """What :func:`migrate` needs of a database connection."""

    async def fetch(self, statement: str, params: Sequence[object] = ()) -> list[Any]:
        """Run ``statement`` (rendered; PostgreSQL's still holds ``{schema}``); its rows."""
        ...

    async def has_table(self, name: str) -> bool:
        """Whether the store's table ``name`` (unqualified) exists."""
        ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """A transaction that other openers of the same store queue behind.

        It commits when the block ends, and rolls back when it raises.
        """
        ...


async def migrate(
    conn: MigrationConnection,
    dialect: Dialect,
    version_table: str,
    migrations: Sequence[Sequence[str]],
    refuse: Callable[[str], Exception],
) -> tuple[int, bool]:
    """Bring the store to ``len(migrations)``; returns it, and whether anything ran.

    :param version_table: the unqualified name of the version table; its
        template word (``{name}``) must be known to ``dialect``.
    :param migrations: rendered for ``dialect``.
    :param refuse: makes the error for a store that cannot be opened, from
        the reason.
    :raises Exception: what ``refuse`` makes, when the stored version is
        newer than ``len(migrations)``; the driver's errors as they are.
    """
    latest = len(migrations)
    table = "{" + version_table + "}"
    select = dialect.render(f"SELECT version FROM {table} WHERE id = 1")

    async def read_version() -> int:
        if not await conn.has_table(version_table):
            return 0
        rows = await conn.fetch(select)
        return int(rows[0][0]) if rows else 0

    if await read_version() == latest:
        return latest, False
    async with conn.exclusive():
        await conn.fetch(
            dialect.render(
                f"CREATE TABLE IF NOT EXISTS {table}"
                " (id {int} PRIMARY KEY CHECK (id = 1), version {int} NOT NULL)"
            )
        )
        version = await read_version()
        if version > latest:
            raise refuse(f"its schema version {version} is newer than this tailrunner's ({latest})")
        for statements in migrations[version:]:
            for statement in statements:
                await conn.fetch(statement)
        await conn.fetch(
            dialect.render(
                f"INSERT INTO {table} (id, version) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = excluded.version"
            ),
            (latest,),
        )
    return latest, version < latest
