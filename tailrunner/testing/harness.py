"""Run one activity under a real engine until it is idle, and see what it reported."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from uuid import UUID

import anyio
from ulid import ULID

from tailrunner.activities.decorator import Activity
from tailrunner.engines.execute import RunResult
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.kinds import EngineKind
from tailrunner.engines.lazy import LazyEngine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef, EventBatch
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import TailStore

#: States in which a task waits for something outside the engine.
_IDLE = frozenset({TaskState.SLEEPING, TaskState.COMPLETE, TaskState.SUSPENDED, TaskState.STOPPED})


@dataclass(slots=True)
class ActivityRun:
    """What :func:`run_activity` saw."""

    task: Task
    results: list[RunResult] = field(default_factory=list)

    @property
    def outcomes(self) -> list[OutcomeKind]:
        return [r.kind for r in self.results]

    @property
    def tail(self) -> ULID | None:
        return self.task.tail


class _IdleWatchJournal:
    """Passes calls through; notes when a watch stream waits after catching up."""

    def __init__(self, inner: JournalApi, on_blocked: anyio.Event) -> None:
        self._inner = inner
        self.blocked = on_blocked

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def events(
        self,
        aggregate_id: UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        async with aclosing(
            self._inner.events(aggregate_id, after=after, watch=watch, max_batch=max_batch)
        ) as batches:
            async for batch in batches:
                yield batch
                # The activity asked for more after a will_block batch: under
                # the eager engine it now waits for new events, i.e. is idle.
                if watch and batch.will_block:
                    self.blocked.set()


async def run_activity(
    activity: Activity,
    *,
    journal: JournalApi,
    aggregate: AggregateRef,
    engine: EngineKind = "lazy",
    tail: ULID | None = None,
    tails: TailStore | None = None,
    retry: RetryPolicy | None = None,
    max_runs: int = 100,
    stop_on_retry: bool = True,
    time_limit: float = 10.0,
) -> ActivityRun:
    """Run ``activity`` on ``aggregate`` under ``engine`` until it is idle.

    Idle means: the task sleeps (caught up), completed, was suspended or
    stopped, or (with ``stop_on_retry``) waits to retry (``RETRY``, or
    ``WAITING`` for its ``SilentRetryAfter`` time); under the eager
    engine, also when the activity waits on its watch stream after catching up.

    :param retry: defaults to retries after 1 ms, so tests stay fast (a zero
        delay is refused: it would spin).
    :param max_runs: stop after this many runs, idle or not.
    :raises TimeoutError: when the activity is not idle within ``time_limit`` seconds.
    """
    blocked = anyio.Event()
    watched = _IdleWatchJournal(journal, blocked)
    options = EngineOptions(
        kind=engine,
        capacity=1,
        retry=retry or RetryPolicy(initial=0.001, max_delay=0.001, jitter=0.0),
        interval=0.01,
    )
    under_test = build_engine(
        options,
        journal=watched,  # type: ignore[arg-type]  # a pass-through proxy
        tails=tails or MemoryTailStore(),
        activities=[activity],
    )
    idle = anyio.Event()
    results: list[RunResult] = []

    def observe(observed: Task, result: RunResult) -> None:
        results.append(result)
        resting = observed.state in _IDLE or (
            stop_on_retry and observed.state in (TaskState.RETRY, TaskState.WAITING)
        )
        if resting or len(results) >= max_runs:
            idle.set()

    under_test.add_observer(observe)
    with anyio.fail_after(time_limit):
        async with anyio.create_task_group() as tg:
            await tg.start(under_test.run)
            if isinstance(under_test, LazyEngine):
                # Start the task after the signal stream's first resync, which
                # would otherwise make a task that is running at that moment
                # run once more: correct, but noise in a test.
                await under_test.connected.wait()
            task = under_test.start_activity(aggregate, activity, tail)

            async def on_blocked() -> None:
                await blocked.wait()
                idle.set()

            tg.start_soon(on_blocked)
            await idle.wait()
            tg.cancel_scope.cancel()
    return ActivityRun(task=task, results=results)
