"""The lazy engine: tasks sleep until the journal signals that their aggregate changed.

One ``AggregateSignals`` stream serves every task. grpclazy's rules: a signal
for a ``SLEEPING`` task makes it ready; for a ``RUNNING`` task it sets a flag
so that the task runs again right after this run (no event is missed between
the end of the stream and the return); ``PENDING`` and ``RETRY`` tasks ignore
it. When the stream (re)connects, or the journal says ``resync``, every task
is signalled once. Signals are hints: a sleeping task is also re-checked on a
slow backstop timer, spread with jitter, so a lost signal strands nothing for
long.

A sleeping task costs only its record: the engine holds very many.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import ClassVar

import anyio
import structlog
from anyio.abc import TaskGroup

from tailrunner.activities.decorator import Activity
from tailrunner.engines.base import Engine
from tailrunner.engines.execute import RunResult
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.ownership import TaskOwnership
from tailrunner.engines.task import Task, Waiting
from tailrunner.errors import AccessDenied, JournalError
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef, Signal
from tailrunner.reconnect import ConnectionWatch
from tailrunner.states import TaskState, WaitReason
from tailrunner.tails.store import TailStore

log = structlog.get_logger(__name__)

#: Called for a signal about an aggregate the engine has no task for.
UnknownAggregate = Callable[[AggregateRef], Awaitable[None]]

_BACKSTOP_JITTER = 0.2


class LazyEngine(Engine):
    """``options.backstop``: seconds after which a sleeping task is re-checked
    without a signal.

    :param on_unknown: awaited for a signal about an aggregate without tasks
        (the runner starts tasks for it).
    :param on_resync: called when the signal stream (re)connects or says
        ``resync`` (the runner re-lists aggregates: some may be new).
    """

    name: ClassVar[str] = "lazy"
    watch: ClassVar[bool] = False

    def __init__(
        self,
        options: EngineOptions,
        *,
        journal: JournalApi,
        tails: TailStore,
        activities: Sequence[Activity],
        on_unknown: UnknownAggregate | None = None,
        on_resync: Callable[[], None] | None = None,
        ownership: TaskOwnership | None = None,
    ) -> None:
        super().__init__(
            options, journal=journal, tails=tails, activities=activities, ownership=ownership
        )
        self._backstop = options.backstop
        self._on_unknown = on_unknown
        self._on_resync = on_resync
        self._types = sorted({t for a in self._activities.values() for t in a.aggregate_types})
        self._next_sweep: float | None = None
        #: Whether the signal stream is connected (for status and tests).
        self.connected = anyio.Event()
        self.reconnects = 0

    async def _start_background(self, tg: TaskGroup) -> None:
        tg.start_soon(self._signal_loop)

    async def _signal_loop(self) -> None:
        # Reconnects have their own short, bounded backoff (not the
        # activities' retry policy), and an outage is logged once.
        watch = ConnectionWatch(call="AggregateSignals", policy=self._reconnect)
        while True:
            try:
                async with aclosing(self._journal.signals(self._types)) as batches:
                    async for batch in batches:
                        watch.reachable()
                        if batch.resync:
                            self._resync()
                        for signal in batch.signals:
                            await self._signal(signal)
                log.info("signal stream ended", types=self._types)
                delay = watch.ended()
            except (JournalError, AccessDenied) as exc:  # a revoked token too
                delay = watch.unreachable(exc)
            except Exception as exc:
                # Not the journal: handling a signal failed (the runner's
                # on_unknown, say). The next connection's resync makes up for it.
                log.warning("signal handling failed", error=str(exc), exc_info=True)
                delay = watch.ended()
            # Tasks keep their state while the stream is down; the next
            # connection's resync wakes them all.
            self.connected = anyio.Event()
            self.reconnects += 1
            await anyio.sleep(delay)

    def _resync(self) -> None:
        """The journal says: re-check everything (first message of every connection)."""
        self.connected.set()
        if self._on_resync is not None:
            self._on_resync()
        for task in self.tasks():
            self._make_ready(task)

    async def _signal(self, signal: Signal) -> None:
        tasks = self._tasks_of(signal.aggregate_id)
        if not tasks:
            if self._on_unknown is not None:
                await self._on_unknown(signal.aggregate)
            return
        events = signal.events
        for task in tasks:
            if task.state is TaskState.SLEEPING and task.at(signal.head):
                continue  # already handled up to this head
            self._make_ready(task)
            if (
                events is not None
                and self._read_ahead is not None
                and task.state is TaskState.PENDING
                and not task.busy
            ):
                # The signal brought the new events: the run need not read them.
                self._read_ahead.give(task, events)

    def _after_eof(
        self, task: Task, result: RunResult, now: float
    ) -> tuple[TaskState, float | None]:
        if task.signalled:
            task.signalled = False
            return TaskState.PENDING, None
        task.recheck_at = now + self._backstop * random.uniform(
            1 - _BACKSTOP_JITTER, 1 + _BACKSTOP_JITTER
        )
        return TaskState.SLEEPING, None

    def _sleeping(self, task: Task) -> Waiting:
        # The next signal wakes it; the backstop re-checks it at the latest.
        return Waiting(reason=WaitReason.SIGNAL, recheck_at=self._wall_time(task.recheck_at))

    def _periodic(self, now: float) -> float | None:
        # The backstop is a sweep, not a timer per task: a timer per sleeping
        # task would leave a stale heap entry behind for every signal.
        sweep_every = max(self._backstop / 8, 0.01)
        if self._next_sweep is None:
            self._next_sweep = now + sweep_every
        elif now >= self._next_sweep:
            for task in self.tasks():
                if task.state is TaskState.SLEEPING and task.recheck_at <= now:
                    self._make_ready(task)
            self._next_sweep = now + sweep_every
        return self._next_sweep
