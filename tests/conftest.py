"""Project-wide fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """grpc.aio runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_event_loop(anyio_backend: str) -> AsyncIterator[None]:
    """Keep one event loop for the whole session.

    grpc.aio's completion-queue poller is process-wide: a loop closed between
    tests while it still holds completions for that loop's calls makes it
    raise "Event loop is closed" into the next test's loop. Holding the
    anyio test runner open for the session gives every test the same loop.
    """
    yield
