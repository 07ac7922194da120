"""Fixtures of the journal tests: stores, a real gRPC server on 127.0.0.1:0, clients."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.postgres import PostgresJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef

#: Every journal store backend, for the tests that hold each to the contract.
STORES = ["memory", "sqlite", "postgres"]


async def open_test_store(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, **options: int
) -> JournalStore:
    """A fresh store of ``kind``: PostgreSQL's in a schema of its own (``pg_schema``)."""
    if kind == "memory":
        return MemoryJournalStore(**options)
    if kind == "sqlite":
        return await SQLiteJournalStore.open(tmp_path / "journal.db", **options)
    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("pg_schema")
    return await PostgresJournalStore.open(url, schema=schema, pool_size=4, **options)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalStore]:
    """Each store backend in turn."""
    journal_store = await open_test_store(request, request.param, tmp_path)
    try:
        yield journal_store
    finally:
        await journal_store.aclose()


@pytest.fixture
async def server(store: JournalStore) -> AsyncIterator[JournalServer]:
    """A journal server over ``store`` on an ephemeral loopback port."""
    async with JournalServer(store, listen="127.0.0.1:0") as journal_server:
        yield journal_server


@pytest.fixture
async def client(server: JournalServer) -> AsyncIterator[JournalClient]:
    async with JournalClient.connect(server.address, timeout=10) as journal_client:
        yield journal_client


@pytest.fixture
def ref() -> AggregateRef:
    """A fresh aggregate."""
    return AggregateRef(type="order", id=uuid4())


@pytest.fixture
def tailrunner_cli() -> list[str]:
    """How to run the ``tailrunner`` CLI in a subprocess (the console script of this venv)."""
    script = Path(sys.executable).with_name("tailrunner")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tailrunner.cli.main import main; main()"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedJournal:
    """A ``tailrunner journal serve`` subprocess."""

    process: Process
    address: str
    log: Path


ServeJournal = Callable[[str], AbstractAsyncContextManager[ServedJournal]]


@pytest.fixture
def serve_journal(tailrunner_cli: list[str], tmp_path: Path) -> ServeJournal:
    """``async with serve_journal(store_url) as served:`` runs ``journal serve`` on port 0.

    The process is killed on exit if it still runs; its stderr goes to
    ``served.log``.
    """

    @asynccontextmanager
    async def serve(store_url: str) -> AsyncIterator[ServedJournal]:
        log = tmp_path / "serve.log"
        command = [*tailrunner_cli, "journal", "serve", "--listen", "127.0.0.1:0"]
        with log.open("ab") as log_file:
            process = await anyio.open_process(
                [*command, "--store", store_url], stdout=subprocess.PIPE, stderr=log_file
            )
        try:
            assert process.stdout is not None
            stdout = BufferedByteReceiveStream(process.stdout)
            try:
                with anyio.fail_after(30):
                    line = await stdout.receive_until(b"\n", 4096)
            except (anyio.IncompleteRead, TimeoutError):
                pytest.fail(f"journal serve did not start:\n{log.read_text()}")
            address = line.decode().removeprefix("listening on ").strip()
            yield ServedJournal(process=process, address=address, log=log)
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.aclose()

    return serve
