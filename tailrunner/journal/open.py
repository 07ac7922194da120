"""Open the journal store that a store URL names (the journal's ``--store``)."""

from __future__ import annotations

import urllib.parse

from tailrunner.errors import InvalidArgument
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.sqlite_wal import Synchronous, sqlite_options
from tailrunner.stores import StoreUrl, parse_store_url, redact

DEFAULT_STORE = "sqlite:///journal.db"
#: What ``--store`` may be, for error messages.
ALLOWED = (
    "sqlite:///PATH (e.g. sqlite:///journal.db, sqlite:////var/lib/journal.db),"
    " postgresql://USER@HOST/DB (optionally ?schema=NAME) or memory:"
)
#: The schema of a PostgreSQL journal whose URL names none.
DEFAULT_POSTGRES_SCHEMA = "tailrunner"


async def open_store(url: str, *, synchronous: Synchronous | None = None) -> JournalStore:
    """Open the journal store that ``url`` names.

    - ``sqlite:///PATH``: SQLite, the embedded default. ``sqlite:///journal.db``
      is relative to the working directory, ``sqlite:////var/lib/journal.db``
      absolute. ``?synchronous=NORMAL`` (or ``OFF``, ``FULL``, ``EXTRA``)
      sets the durability of writes; the default is ``FULL``.
      ``?file_mode=0640`` the mode a new file is created with (default
      ``0600``; octal, never world-writable). The file is checked as it
      opens (:mod:`tailrunner.sqlite_wal`): its write-ahead log, then
      ``PRAGMA quick_check``, which reads the whole file; ``?check=off``
      skips all but the log's header.
    - ``postgresql://USER@HOST/DB`` (or ``postgres://``): PostgreSQL, shared
      by every journal server given the same URL. ``?schema=NAME`` names the
      schema of its tables (default ``tailrunner``), created and migrated on
      open; the URL's other parameters are libpq's.
    - ``memory:``: in memory, gone with the process.

    :param synchronous: overrides the URL's ``synchronous`` (SQLite only).
    :raises InvalidArgument: naming ``--store`` when ``url`` is none of these.
    :raises StoreError: the store cannot be opened (the message names the path
        or URL, without its password, and the reason).
    """
    store = _parse(url)
    if store.scheme == "memory":
        return MemoryJournalStore()
    if store.scheme == "postgresql":
        # Imported here so that a SQLite journal loads no PostgreSQL driver.
        from tailrunner.journal.postgres import PostgresJournalStore

        conninfo, schema = postgres_target(store)
        return await PostgresJournalStore.open(conninfo, schema=schema)
    options = sqlite_options(store, field="--store")
    return await SQLiteJournalStore.open(
        store.path,
        synchronous=synchronous or options.synchronous,
        file_mode=options.file_mode,
        check=options.check,
    )


async def migrate_store(url: str) -> int:
    """Create or migrate the tables of the store ``url`` names; the version it is at now.

    Idempotent. A SQLite store migrates as it opens (so this opens and
    closes it); a PostgreSQL one without a pool.

    :raises InvalidArgument: naming ``--store`` for a URL that is none of
        ``open_store``'s, or ``memory:`` (it has no tables).
    :raises StoreError: the store cannot be opened or migrated.
    """
    store = _parse(url)
    if store.scheme == "memory":
        raise InvalidArgument("--store", "memory: has no tables to migrate")
    if store.scheme == "postgresql":
        from tailrunner.journal.postgres import migrate_schema

        conninfo, schema = postgres_target(store)
        version, _ = await migrate_schema(conninfo, schema=schema)
        return version
    options = sqlite_options(store, field="--store")
    sqlite_store = await SQLiteJournalStore.open(
        store.path, file_mode=options.file_mode, check=options.check
    )
    await sqlite_store.aclose()
    return await _sqlite_version(store.path)


def postgres_target(store: StoreUrl) -> tuple[str, str]:
    """A PostgreSQL store URL as libpq's URL (without ``schema``) and the schema.

    :raises InvalidArgument: naming ``--store``: ``schema`` given twice or
        empty, or over PostgreSQL's 63 bytes.
    """
    from tailrunner.journal.postgres import check_schema

    parts = urllib.parse.urlsplit(store.url)
    # libpq's parameters stay as written (re-encoding could turn %20 into +,
    # which libpq does not read as a space); only ``schema`` is taken out.
    kept: list[str] = []
    schemas: list[str] = []
    for item in parts.query.split("&") if parts.query else []:
        key, _, value = item.partition("=")
        if urllib.parse.unquote(key) == "schema":
            schemas.append(urllib.parse.unquote(value))
        else:
            kept.append(item)
    if len(schemas) > 1:
        raise InvalidArgument(
            "--store",
            f"schema is given {len(schemas)} times in {redact(store.url)!r}: give it once",
        )
    schema = schemas[0] if schemas else DEFAULT_POSTGRES_SCHEMA
    check_schema(schema, field="--store")
    if not schemas:
        return store.url, schema
    return urllib.parse.urlunsplit(parts._replace(query="&".join(kept))), schema


def _parse(url: str) -> StoreUrl:
    return parse_store_url(
        url, field="--store", allowed=ALLOWED, schemes=("memory", "sqlite", "postgresql")
    )


async def _sqlite_version(path: str) -> int:
    import sqlite3

    import anyio.to_thread

    def read() -> int:
        conn = sqlite3.connect(path)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            return int(version)
        finally:
            conn.close()

    return await anyio.to_thread.run_sync(read)
