"""A runner with its admin server on 127.0.0.1:0, over a loopback journal, for the admin tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

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
from tailrunner.engines.scheduler import Scheduler
from tailrunner.engines.task import Task, TaskState, Waiting, WaitReason
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.proto.v1 import runner_pb2_grpc
from tailrunner.runner import Runner
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import TailStore
from tailrunner.testing import LoopbackJournal, loopback_journal

TOKEN = "s3cret-admin-token"

#: The engine's own ``Scheduler.waiting`` (the lead's engine rework fills it in).
_ENGINE_WAITING = Scheduler.waiting
#: A stand-in's reasons by state, until the engine says why a task waits.
_STAND_IN_REASONS = {
    TaskState.PENDING: WaitReason.CAPACITY,
    TaskState.SLEEPING: WaitReason.SIGNAL,
    TaskState.RETRY: WaitReason.BACKOFF,
    TaskState.WAITING: WaitReason.RETRY_AFTER,
    TaskState.SUSPENDED: WaitReason.SUSPENDED,
    TaskState.STOPPED: WaitReason.STOPPED,
}


def _waiting_or_stand_in(self: Scheduler, task: Task) -> Waiting:
    """The engine's answer; while it has none (NotImplementedError), the reason of the state."""
    try:
        return _ENGINE_WAITING(self, task)
    except NotImplementedError:
        pass
    control = getattr(task, "control", None)
    pending: str | None = None
    if control is not None:
        if control.state is TaskState.STOPPED:
            pending = "stop"
        elif control.state is TaskState.SUSPENDED:
            pending = "suspend"
        else:
            pending = "restart" if control.replace_tail else "resume"
    return Waiting(reason=_STAND_IN_REASONS.get(task.state), control=pending)


@pytest.fixture(autouse=True)
def _engine_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the admin tests run before ``Scheduler.waiting`` lands (test only).

    The engine's own answer is used as soon as it has one; tests of what
    only the engine can know (times) ask for the ``engine_says_why`` fixture.
    """
    monkeypatch.setattr(Scheduler, "waiting", _waiting_or_stand_in)


def _the_engine_says_why() -> bool:
    """Whether the lazy engine (the admin tests' engine) has its own ``waiting``."""
    for klass in LazyEngine.__mro__:
        if klass is Scheduler:
            break
        if "waiting" in vars(klass):
            return True
    try:
        _ENGINE_WAITING(cast(Any, None), cast(Any, None))
    except NotImplementedError:
        return False
    except Exception:  # a real implementation, handed nonsense
        return True
    return True


@pytest.fixture
def engine_says_why() -> None:
    """Expect the test to fail while the engine's ``waiting`` is a placeholder."""
    if not _the_engine_says_why():
        pytest.xfail("Scheduler.waiting is not implemented yet (issue 10's engine rework)")


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
        options=options or fast_options(),
        discovery_interval=3600,
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
