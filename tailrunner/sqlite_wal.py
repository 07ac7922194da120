"""How both SQLite stores open their files: WAL mode, and the ``synchronous`` levels."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Literal, get_args

#: ``PRAGMA synchronous`` levels. ``FULL`` (the stores' default) syncs the WAL
#: on every commit, so what was acknowledged survives a power cut; ``NORMAL``
#: survives a killed process but may lose the last commits on a power cut.
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SYNCHRONOUS_LEVELS: tuple[str, ...] = get_args(Synchronous)

#: How long opening a file waits for other connections' locks (ms), as
#: ``PRAGMA busy_timeout``.
BUSY_TIMEOUT_MS = 5000
_RETRY_EVERY = 0.01


#: The mode a store creates its database file with: its owner's only. SQLite
#: gives the ``-wal`` and ``-shm`` files the database file's mode.
FILE_MODE = 0o600


def connect(path: str) -> sqlite3.Connection:
    """A connection to the database file ``path``, created owner-only if it is new.

    ``isolation_level=None``: transactions are the store's (``BEGIN
    IMMEDIATE``), not the module's. An existing file keeps its mode.
    """
    # An empty file is an empty database; O_EXCL: never touch one that exists.
    # Any other failure (no such folder, no permission) sqlite3 reports as it did.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def use_wal(conn: sqlite3.Connection) -> str:
    """Set the busy timeout and WAL mode on ``conn``; the journal mode the file ends in.

    Switching a file into WAL needs an exclusive lock, and SQLite reports
    "database is locked" at once, without its busy handler, while another
    connection holds the file (two processes opening a new file together):
    so the switch is retried here, within the busy timeout. Runs in a
    worker thread (it may sleep).
    """
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_EVERY)
            continue
        return str(mode).lower()
