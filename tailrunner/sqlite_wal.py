"""Switching a SQLite file to WAL mode, as both SQLite stores open their files."""

from __future__ import annotations

import sqlite3
import time

#: How long opening a file waits for other connections' locks (ms), as
#: ``PRAGMA busy_timeout``.
BUSY_TIMEOUT_MS = 5000
_RETRY_EVERY = 0.01


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
