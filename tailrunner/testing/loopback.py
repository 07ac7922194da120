"""A real journal server with a memory store on 127.0.0.1, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer


@dataclass(frozen=True, slots=True)
class LoopbackJournal:
    """A running journal server and a client connected to it."""

    server: JournalServer
    client: JournalClient

    @property
    def address(self) -> str:
        return self.server.address


@asynccontextmanager
async def loopback_journal() -> AsyncIterator[LoopbackJournal]:
    """Serve a fresh in-memory journal on an ephemeral port for the ``async with`` body."""
    async with (
        JournalServer(MemoryJournalStore(), listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address) as client,
    ):
        yield LoopbackJournal(server=server, client=client)
