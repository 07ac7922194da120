"""No acknowledged append is lost when the journal process is killed (kill -9)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest
from ulid import ULID

from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent

pytestmark = pytest.mark.slow

ServeJournal = Callable[[str], AbstractAsyncContextManager[Any]]


async def test_a_killed_server_loses_no_acknowledged_append(
    serve_journal: ServeJournal, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    refs = [AggregateRef(type="order", id=uuid4()) for _ in range(3)]
    acknowledged: dict[AggregateRef, list[ULID]] = {ref: [] for ref in refs}

    async with (
        serve_journal(url) as served,
        JournalClient.connect(served.address, timeout=10) as client,
    ):
        with anyio.fail_after(30):
            for i in range(60):
                ref = refs[i % len(refs)]
                events = [
                    NewEvent(type=f"e{i}-{j}", data=b'{"i": %d}' % i) for j in range(i % 3 + 1)
                ]
                result = await client.append(ref, events)
                acknowledged[ref].extend(result.event_ids)
        # Every append above was acknowledged; now no clean shutdown at all.
        served.process.kill()
        with anyio.fail_after(10):
            assert await served.process.wait() == -signal.SIGKILL

    async with (
        serve_journal(url) as served,
        JournalClient.connect(served.address, timeout=10) as client,
    ):
        with anyio.fail_after(30):
            for ref in refs:
                ids = [e.id async for b in client.events(ref.id) for e in b.events]
                assert ids == acknowledged[ref]
