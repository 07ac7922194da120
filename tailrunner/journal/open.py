"""Open the journal store that a store URL names (the journal's ``--store``)."""

from __future__ import annotations

from typing import cast

from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.sqlite_wal import SYNCHRONOUS_LEVELS, Synchronous
from tailrunner.stores import parse_store_url, store_options

DEFAULT_STORE = "sqlite:///journal.db"
#: What ``--store`` may be, for error messages.
ALLOWED = "sqlite:///PATH (e.g. sqlite:///journal.db, sqlite:////var/lib/journal.db) or memory:"


async def open_store(url: str, *, synchronous: Synchronous | None = None) -> JournalStore:
    """Open the journal store that ``url`` names.

    - ``sqlite:///PATH``: SQLite, the embedded default. ``sqlite:///journal.db``
      is relative to the working directory, ``sqlite:////var/lib/journal.db``
      absolute. ``?synchronous=NORMAL`` (or ``OFF``, ``FULL``, ``EXTRA``)
      sets the durability of writes; the default is ``FULL``.
    - ``memory:``: in memory, gone with the process.

    :param synchronous: overrides the URL's ``synchronous``.
    :raises InvalidArgument: naming ``--store`` when ``url`` is none of these.
    :raises StoreError: the store cannot be opened (the message names the path
        and the reason).
    """
    store = parse_store_url(url, field="--store", allowed=ALLOWED, schemes=("memory", "sqlite"))
    if store.scheme == "memory":
        return MemoryJournalStore()
    options = store_options(store, field="--store", choices={"synchronous": SYNCHRONOUS_LEVELS})
    level = cast(Synchronous, options.get("synchronous", "FULL"))
    return await SQLiteJournalStore.open(store.path, synchronous=synchronous or level)
