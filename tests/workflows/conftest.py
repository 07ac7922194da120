"""A loopback journal and a spy over it for the aggregate tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tailrunner.testing import LoopbackJournal, loopback_journal
from tests.workflows.journals import SpyJournal


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


@pytest.fixture
def spy(journal: LoopbackJournal) -> SpyJournal:
    return SpyJournal(journal.client)
