"""A real journal server with a memory store on 127.0.0.1, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.operations.pingregistry import workflows_service
from tailrunner.operations.service import operations_service


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
    """Serve a fresh in-memory journal on an ephemeral port for the ``async with`` body.

    It carries what ``tailrunner journal serve`` does: the journal, and the
    ``google.longrunning.Operations`` and ``tailrunner.v1.Workflows`` services.
    """
    async with (
        JournalServer(
            MemoryJournalStore(),
            listen="127.0.0.1:0",
            close_store=True,
            services=[operations_service(), workflows_service()],
        ) as server,
        JournalClient.connect(server.address) as client,
    ):
        yield LoopbackJournal(server=server, client=client)
