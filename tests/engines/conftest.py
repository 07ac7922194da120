"""Shared fixtures for the engine conformance suite: a real journal on loopback."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from ulid import ULID

from tailrunner import Activity, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.base import Engine
from tailrunner.engines.execute import RunResult
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.errors import StoreError
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import RunRecord, TailRecord
from tailrunner.testing import LoopbackJournal, loopback_journal

ENGINES = ["lazy", "eager", "cron"]

#: Fast settings so that no test waits longer than it must.
FAST_RETRY = RetryPolicy(initial=0.02, multiplier=2.0, max_delay=1.0, jitter=0.0)
CRON_INTERVAL = 0.05


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


class _Changes:
    """Wakes waiters after every activity return and every engine transition."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


CHANGES = _Changes()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, re-checking after every run and state change."""
    with anyio.fail_after(timeout):
        while not predicate():
            await CHANGES.wait()


@dataclass
class Call:
    """One run of a scripted activity, as the activity saw it."""

    tail: ULID | None
    events: list[ULID] = field(default_factory=list)
    started: float = 0.0


@dataclass
class Script:
    """An activity whose behaviour per run is a list of steps, recording every call.

    Each step is ``async (ctx, tail, stream, call) -> Outcome``; the last step
    repeats. The default step reads the stream to the point where it catches
    up and returns ``EOF`` of the last event.
    """

    steps: list[Callable[..., Awaitable[Outcome]]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def activity(self, name: str = "script", types: Sequence[str] = ("thing",)) -> Activity:
        @activity(name=name, aggregate_types=types)
        async def scripted(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
            call = Call(tail=tail, started=time.monotonic())
            self.calls.append(call)
            step = self.steps[min(len(self.calls) - 1, len(self.steps) - 1)] if self.steps else None
            try:
                return await (step or read_to_eof)(ctx, tail, stream, call)
            finally:
                CHANGES.notify()

        return scripted

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after every run and state change."""
        await wait_until(predicate, timeout)

    def seen(self) -> list[ULID]:
        return [e for c in self.calls for e in c.events]


async def read(stream: EventStream, call: Call, tail: ULID | None) -> ULID | None:
    """Read until the reader catches up; record events; return the new tail."""
    async for batch in stream.batches():
        for event in batch.events:
            call.events.append(event.id)
            tail = event.id
        if batch.will_block:
            break
    return tail


async def read_to_eof(
    ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
) -> Outcome:
    from tailrunner import EOF

    return EOF(await read(stream, call, tail))


def make_engine(
    kind: str,
    journal: LoopbackJournal,
    activities: Sequence[Activity],
    **options: Any,
) -> Engine:
    opts: dict[str, Any] = {"retry": FAST_RETRY, "interval": CRON_INTERVAL, "capacity": 100}
    opts.update(options)
    tails = opts.pop("tails", None) or MemoryTailStore()
    engine = build_engine(
        EngineOptions(kind=kind, **opts),
        journal=journal.client,
        tails=tails,
        activities=activities,
    )
    engine.add_observer(lambda task, result: CHANGES.notify())
    return engine


@asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[Engine]:
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        yield engine
        tg.cancel_scope.cancel()


async def append(journal: LoopbackJournal, aggregate: AggregateRef, *types: str) -> list[ULID]:
    result = await journal.client.append(aggregate, [NewEvent(type=t, data=b"{}") for t in types])
    return list(result.event_ids)


def new_aggregate(aggregate_type: str = "thing") -> AggregateRef:
    return AggregateRef(type=aggregate_type, id=uuid.uuid4())


def observed(engine: Engine) -> list[tuple[Task, RunResult]]:
    """Every (task, result) the engine reports, in order."""
    seen: list[tuple[Task, RunResult]] = []
    engine.add_observer(lambda task, result: seen.append((task, result)))
    return seen


class GatedTails(MemoryTailStore):
    """A memory tail store whose saves can be held (a slow store) or made to fail.

    While :attr:`gate` is set, every save waits for it and :attr:`entered`
    is set when the first one does; :attr:`fail` makes saves raise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()
        self.fail: Callable[[TailRecord], bool] = lambda record: False
        self.saves: list[TailRecord] = []
        #: Set (and replaced) after every save that stored something.
        self.saved = anyio.Event()

    async def _hold(self, record: TailRecord) -> None:
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if self.fail(record):
            raise StoreError(f"tail store down (saving {record.state})")
        self.saves.append(record)
        self.saved.set()
        self.saved = anyio.Event()

    async def save(self, record: TailRecord) -> None:
        await self._hold(record)
        await super().save(record)

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await self._hold(record)
        await super().save_with_run(record, run)

    def hold(self) -> anyio.Event:
        """Hold the next saves until the returned event is set."""
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        return self.gate

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.gate = None
