"""Open a tail store from the URL in config (``tails.store``)."""

from __future__ import annotations

from pathlib import Path

from tailrunner.errors import InvalidArgument
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import DEFAULT_RUN_RETENTION, TailStore

#: What ``tails.store`` may be, for error messages.
ALLOWED = "memory:, sqlite:///PATH (relative to the config's folder) or postgresql://…"

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


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
      written ``sqlite:////var/lib/tailrunner/tails.db``;
    - ``postgresql://user@host/db`` (or ``postgres://``): PostgreSQL; the
      tables are created in ``postgres_schema`` on first use.

    :param base_dir: where relative SQLite paths start; the working
        directory when ``None``.
    :param run_retention: how many runs per task the store keeps.
    :param postgres_schema: the PostgreSQL schema that holds the tables.
    :raises InvalidArgument: naming ``tails.store`` when the URL is none of
        those.
    :raises StoreError: the store cannot be opened; the message names the
        file or URL (without its password) and the reason.
    """
    if url in ("memory:", "memory://"):
        return MemoryTailStore(run_retention=run_retention)
    if url.startswith(_SQLITE):
        # Imported here so that a memory-only runner loads no database module.
        from tailrunner.tails.sqlite import SQLiteTailStore

        raw = url.removeprefix(_SQLITE)
        if not raw:
            raise InvalidArgument("tails.store", f"{url!r} names no file: expected {ALLOWED}")
        path = Path(raw)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return await SQLiteTailStore.open(path, run_retention=run_retention)
    if url.startswith(_POSTGRES):
        from tailrunner.tails.postgres import PostgresTailStore

        return await PostgresTailStore.open(
            url, schema=postgres_schema, run_retention=run_retention
        )
    from tailrunner.tails.postgres import redact

    raise InvalidArgument("tails.store", f"{redact(url)!r}: expected {ALLOWED}")
