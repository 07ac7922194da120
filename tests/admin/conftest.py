"""A runner with its admin server on 127.0.0.1:0, over a loopback journal, for the admin tests."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import grpc
import pytest
from ulid import ULID

from tailrunner import (
    EOF,
    Activity,
    ActivityContext,
    Done,
    EventStream,
    SilentRetryAfter,
    activity,
)
from tailrunner.activities.outcomes import Outcome
from tailrunner.admin.server import AdminServer
from tailrunner.admin.service import DEFAULT_CONTROL_TIMEOUT
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.lazy import LazyEngine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.proto.v1 import runner_pb2_grpc
from tailrunner.runner import Runner
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import TailStore
from tailrunner.testing import LoopbackJournal, loopback_journal

TOKEN = "s3cret-admin-token"


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


@dataclass
class Behaviour:
    """What the test activity does, by aggregate id; it reads to the end by default."""

    #: Read to the end, checkpoint, then wait here (RUNNING) until cancelled.
    park: set[uuid.UUID] = field(default_factory=set)
    #: Raise an error (a poison event) instead of reading.
    fail: set[uuid.UUID] = field(default_factory=set)
    #: The message of that error.
    error: str = "poison event"
    #: Read to the end and return Done.
    done: set[uuid.UUID] = field(default_factory=set)
    #: Raise ``SilentRetryAfter`` for this time instead of reading.
    retry_after: dict[uuid.UUID, datetime] = field(default_factory=dict)
    #: Read to the end, then wait (RUNNING), ignoring cancellation until ``release`` is set.
    stubborn: set[uuid.UUID] = field(default_factory=set)
    release: anyio.Event = field(default_factory=anyio.Event)
    parked: dict[uuid.UUID, anyio.Event] = field(default_factory=dict)
    #: The tail each run started from, by aggregate id.
    started_from: dict[uuid.UUID, list[ULID | None]] = field(default_factory=dict)

    def parked_event(self, aggregate_id: uuid.UUID) -> anyio.Event:
        return self.parked.setdefault(aggregate_id, anyio.Event())

    def activity(self, name: str = "follow", types: Sequence[str] = ("thing",)) -> Activity:
        @activity(name=name, aggregate_types=types)
        async def follow(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
            agg = ctx.aggregate.id
            self.started_from.setdefault(agg, []).append(tail)
            if agg in self.fail:
                raise ValueError(self.error)
            if agg in self.retry_after:
                raise SilentRetryAfter(self.retry_after[agg], tail=tail)
            async for batch in stream.batches():
                for event in batch.events:
                    tail = event.id
                if batch.will_block:
                    break
            if agg in self.park:
                await ctx.checkpoint(tail)
                self.parked_event(agg).set()
                await anyio.sleep_forever()
            if agg in self.stubborn:
                await ctx.checkpoint(tail)
                self.parked_event(agg).set()
                with anyio.CancelScope(shield=True):
                    await self.release.wait()
                await anyio.sleep_forever()  # the cancellation lands now
            return Done(tail) if agg in self.done else EOF(tail)

        return follow


class Changes:
    """Wakes waiters after every run the engine reports."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self, task: Task | None = None, result: object = None) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._event.wait()


@dataclass
class Served:
    """A running runner, its admin server, and a raw stub of it."""

    journal: LoopbackJournal
    runner: Runner
    tails: TailStore
    admin: AdminServer
    stub: runner_pb2_grpc.RunnerAsyncStub
    changes: Changes

    def task(self, aggregate: AggregateRef, activity: str = "follow") -> Task:
        task = self.runner.engine.find(activity, aggregate.id)
        assert task is not None, f"no task {activity}/{aggregate}"
        return task

    async def settled(self, *aggregates: AggregateRef, activity: str = "follow") -> None:
        """Wait until every task of ``aggregates`` has left PENDING and RUNNING."""

        def settled() -> bool:
            for agg in aggregates:
                task = self.runner.engine.find(activity, agg.id)
                if task is None or task.state in (TaskState.PENDING, TaskState.RUNNING):
                    return False
            return True

        await self.changes.wait_until(settled)


def fast_options(max_attempts: int | None = None) -> EngineOptions:
    return EngineOptions(
        kind="lazy",
        retry=RetryPolicy(initial=0.02, max_delay=0.2, jitter=0.0, max_attempts=max_attempts),
    )


@asynccontextmanager
async def serve_runner(
    journal: LoopbackJournal,
    activities: Sequence[Activity],
    *,
    tails: TailStore | None = None,
    token: str | None = None,
    options: EngineOptions | None = None,
    control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
) -> AsyncIterator[Served]:
    """Run a lazy runner over ``journal`` with its admin server, discovered and serving."""
    tails = tails if tails is not None else MemoryTailStore()
    runner = Runner(
        journal=journal.client,
        tails=tails,
        activities=activities,
        options=dataclasses.replace(options or fast_options(), discovery_interval=3600),
    )
    changes = Changes()
    runner.engine.add_observer(changes.notify)
    async with (
        AdminServer(
            engine=runner.engine,
            tails=tails,
            journal=journal.client,
            listen="127.0.0.1:0",
            token=token,
            control_timeout=control_timeout,
        ) as admin,
        grpc.aio.insecure_channel(admin.address) as channel,
        anyio.create_task_group() as tg,
    ):
        await tg.start(runner.run)
        with anyio.fail_after(5):
            await runner.discovered.wait()
            if isinstance(runner.engine, LazyEngine):
                # Its first signal batch (a resync) wakes every task once: let
                # that happen before a test waits for the tasks to settle.
                await runner.engine.connected.wait()
        yield Served(
            journal=journal,
            runner=runner,
            tails=tails,
            admin=admin,
            stub=runner_pb2_grpc.RunnerStub(channel),
            changes=changes,
        )
        tg.cancel_scope.cancel()


async def append(journal: LoopbackJournal, aggregate: AggregateRef, n: int = 1) -> list[ULID]:
    result = await journal.client.append(aggregate, [NewEvent(type="e")] * n)
    return list(result.event_ids)


def new_aggregate(aggregate_type: str = "thing") -> AggregateRef:
    return AggregateRef(type=aggregate_type, id=uuid.uuid4())
