"""pytest fixtures for plugin authors (registered through the ``pytest11`` entry point).

::

    async def test_counter_catches_up(tailrunner_journal, run_activity):
        agg = AggregateRef(type="demo", id=uuid4())
        await tailrunner_journal.client.append(agg, [NewEvent(type="hello")])
        run = await run_activity(counter, aggregate=agg, engine="lazy")
        assert run.outcomes == [OutcomeKind.EOF]

Async tests need anyio's pytest plugin (it ships with anyio): mark them with
``@pytest.mark.anyio`` or set ``anyio_mode = "auto"``. gRPC's asyncio API
needs the asyncio backend, which ``anyio_backend`` here selects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tailrunner.activities.decorator import Activity
from tailrunner.activities.stream import EventStream
from tailrunner.model import AggregateRef
from tailrunner.testing.fakes import fake_stream as _fake_stream
from tailrunner.testing.harness import ActivityRun
from tailrunner.testing.harness import run_activity as _run_activity
from tailrunner.testing.loopback import LoopbackJournal, loopback_journal


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """grpc.aio runs on asyncio only; session scope keeps one loop for the session.

    (grpc.aio's completion-queue poller is process-wide and misbehaves when
    loops come and go between tests that used gRPC.)
    """
    return "asyncio"


@pytest.fixture
def fake_stream() -> Callable[..., EventStream]:
    """A factory: ``fake_stream(events, batch_size=100)`` gives an EventStream that ends (EOF)."""
    return _fake_stream


@pytest.fixture
async def tailrunner_journal() -> AsyncIterator[LoopbackJournal]:
    """A real journal server (memory store) on 127.0.0.1, with a connected client."""
    async with loopback_journal() as journal:
        yield journal


@pytest.fixture
def run_activity(
    tailrunner_journal: LoopbackJournal,
) -> Callable[..., Awaitable[ActivityRun]]:
    """``await run_activity(activity, aggregate=…, engine="lazy", tail=None, …)``.

    Runs the activity on the loopback journal under a real engine until it is
    idle; see :func:`tailrunner.testing.run_activity` for the options.
    """

    async def run(activity: Activity, *, aggregate: AggregateRef, **options: Any) -> ActivityRun:
        return await _run_activity(
            activity, journal=tailrunner_journal.client, aggregate=aggregate, **options
        )

    return run
