"""Open a tail store from the URL in config (``tails.store``)."""

from __future__ import annotations

from pathlib import Path

from tailrunner.sqlite_wal import sqlite_options
from tailrunner.stores import parse_store_url
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import DEFAULT_RUN_RETENTION, TailStore

#: What ``tails.store`` may be, for error messages.
ALLOWED = "memory:, sqlite:///PATH (relative to the config's folder) or postgresql://…"


async def open_tail_store(
    url: str,
    *,
    base_dir: Path | None = None,
    run_retention: int = DEFAULT_RUN_RETENTION,
    postgres_schema: str = "tailrunner",
) -> TailStore:
    """Open the tail store that ``url`` names.

    - ``memory:``: in this process only, gone when it ends (tests, demos);
    - ``sqlite:///tails.db``: a SQLite file; a relative path is resolved
      against ``base_dir`` (the config file's folder), an absolute one is
      written ``sqlite:////var/lib/tailrunner/tails.db``; ``?file_mode=0640``
      the mode a new file is created with (default ``0600``), ``?check=off``
      skips the O(size) checks at open (:mod:`tailrunner.sqlite_wal`);
    - ``postgresql://user@host/db`` (or ``postgres://``): PostgreSQL; the
      tables are created in ``postgres_schema`` on first use.

    :param base_dir: where relative SQLite paths start; the working
        directory when ``None``.
    :param run_retention: how many runs per task the store keeps.
    :param postgres_schema: the PostgreSQL schema that holds the tables.
    :raises InvalidArgument: naming ``tails.store`` when the URL is none of
        those, or gives a SQLite file an unknown option or a bad value.
    :raises StoreError: the store cannot be opened; the message names the
        file or URL (without its password) and the reason.
    """
    store = parse_store_url(url, field="tails.store", allowed=ALLOWED)
    if store.scheme == "memory":
        return MemoryTailStore(run_retention=run_retention)
    if store.scheme == "sqlite":
        options = sqlite_options(store, field="tails.store", names=("file_mode", "check"))
        # Imported here so that a memory-only runner loads no database module.
        from tailrunner.tails.sqlite import SQLiteTailStore

        if base_dir is not None:
            store = store.resolved(base_dir)
        return await SQLiteTailStore.open(
            Path(store.path),
            run_retention=run_retention,
            file_mode=options.file_mode,
            check=options.check,
        )
    from tailrunner.tails.postgres import PostgresTailStore

    return await PostgresTailStore.open(url, schema=postgres_schema, run_retention=run_retention)
