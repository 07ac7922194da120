"""The runner: discovery of aggregates and resuming tasks from stored tails."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.runner import Runner
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import TailRecord
from tailrunner.testing import LoopbackJournal, loopback_journal


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[uuid.UUID, ULID]] = []
        self.changed = anyio.Event()

    def add(self, aggregate_id: uuid.UUID, event_id: ULID) -> None:
        self.events.append((aggregate_id, event_id))
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.events) < count:
                await self.changed.wait()


def recording(seen: Seen, name: str = "rec", types: tuple[str, ...] = ("thing",)):  # type: ignore[no-untyped-def]
    @activity(name=name, aggregate_types=types)
    async def rec(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                seen.add(event.aggregate_id, event.id)
                tail = event.id
            if batch.will_block:
                break
        return EOF(tail)

    return rec


def options(kind: str) -> EngineOptions:
    return EngineOptions(
        kind=kind,
        retry=RetryPolicy(initial=0.02, max_delay=0.2, jitter=0.0),
        interval=0.05,
    )


async def add(journal: LoopbackJournal, aggregate: AggregateRef, n: int = 1) -> list[ULID]:
    result = await journal.client.append(aggregate, [NewEvent(type="e")] * n)
    return list(result.event_ids)


@pytest.mark.parametrize("kind", ["lazy", "eager", "cron"])
async def test_runner_finds_existing_and_new_aggregates(
    kind: str, journal: LoopbackJournal
) -> None:
    before = AggregateRef(type="thing", id=uuid.uuid4())
    other_type = AggregateRef(type="other", id=uuid.uuid4())
    await add(journal, before, 2)
    await add(journal, other_type, 1)
    seen = Seen()
    runner = Runner(
        journal=journal.client,
        tails=MemoryTailStore(),
        activities=[recording(seen)],
        options=dataclasses.replace(options(kind), discovery_interval=0.05),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        await seen.wait_for(2)
        later = AggregateRef(type="thing", id=uuid.uuid4())
        ids = await add(journal, later, 1)
        await seen.wait_for(3)
        tg.cancel_scope.cancel()
    assert (later.id, ids[0]) in seen.events
    assert all(agg != other_type.id for agg, _ in seen.events), "only its own types"


async def test_runner_resumes_from_stored_tails_and_keeps_completed_tasks_complete(
    journal: LoopbackJournal,
) -> None:
    resumed = AggregateRef(type="thing", id=uuid.uuid4())
    completed = AggregateRef(type="thing", id=uuid.uuid4())
    resumed_ids = await add(journal, resumed, 3)
    await add(journal, completed, 2)
    tails = MemoryTailStore()
    now = datetime.now(UTC)
    await tails.save(
        TailRecord(
            activity="rec", aggregate=resumed, tail=resumed_ids[1], state="SLEEPING", updated_at=now
        )
    )
    await tails.save(
        TailRecord(
            activity="rec",
            aggregate=completed,
            tail=None,
            state="COMPLETE",
            completed=True,
            updated_at=now,
        )
    )
    seen = Seen()
    runner = Runner(
        journal=journal.client, tails=tails, activities=[recording(seen)], options=options("lazy")
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        await seen.wait_for(1)
        with anyio.fail_after(5):
            await runner.discovered.wait()
        task = runner.engine.find("rec", completed.id)
        assert task is not None and task.state is TaskState.COMPLETE
        tg.cancel_scope.cancel()
    assert seen.events == [(resumed.id, resumed_ids[2])], "only the event after the stored tail"
