"""A real journal server on 127.0.0.1 (memory and SQLite stores), and Operations over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.operations import Operations
from tests.operations.journals import WatchJournal


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalClient]:
    """A client of a real journal server on 127.0.0.1, over each store in turn."""
    store: JournalStore
    if request.param == "memory":
        store = MemoryJournalStore()
    else:
        store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address, timeout=10) as journal_client,
    ):
        yield journal_client


@pytest.fixture
def journal(client: JournalClient) -> WatchJournal:
    return WatchJournal(client)


@pytest.fixture
def ops(journal: WatchJournal) -> Operations:
    return Operations(journal)
