"""The machinery the three engines share: task table, ready queues, timers, capacity.

A task that is not running is only a :class:`~tailrunner.engines.task.Task`
record; coroutines exist only for running tasks, and never more than the
capacity limit. One dispatcher loop moves ``PENDING`` tasks into runs (round
robin over activities, within the global and per-activity limits), fires
retry timers, and calls the engine's periodic hook (lazy backstop, cron
ticks). Engines subclass :class:`Scheduler` and decide what an ``EOF``
means and what wakes a sleeping task.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from ulid import ULID

from tailrunner.activities.decorator import Activity
from tailrunner.engines.execute import OutcomeKind, RunResult, run_once
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import FINAL_STATES, Task, TaskState, Waiting
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef
from tailrunner.tails.store import RunRecord, TailRecord, TailStore

log = structlog.get_logger(__name__)

#: Called after every run, once the task has its next state (tests, status, metrics).
RunObserver = Callable[[Task, RunResult], None]

_Timer = tuple[float, int, Task, int]


@dataclass(frozen=True, slots=True)
class Control:
    """An operator's request: the state to put a task in, and maybe a new tail."""

    state: TaskState
    replace_tail: bool = False
    tail: ULID | None = None
    #: Set once the control is applied and stored.
    applied: anyio.Event = field(default_factory=anyio.Event, compare=False)


#: A task's next state, and the loop time of its timer if it waits for one.
NextState = tuple[TaskState, float | None]


class Scheduler:
    """Base of the engines. Subclasses set :attr:`name` and :attr:`watch`.

    :param journal: where streams are opened.
    :param tails: where tails are stored before an outcome is acted on.
    :param activities: the activities this engine may run.
    :param capacity: at most this many runs (open streams) at once.
    :param retry: the default retry policy.
    :param retry_overrides: retry policies by activity name.
    :param activity_limits: at most this many runs at once, by activity name
        (also :attr:`Activity.max_concurrency`; the lower wins).
    """

    name: ClassVar[str]
    #: Open streams with ``watch=True`` (eager) or read to the end (lazy, cron).
    watch: ClassVar[bool]

    def __init__(
        self,
        *,
        journal: JournalApi,
        tails: TailStore,
        activities: Sequence[Activity],
        capacity: int = 100,
        retry: RetryPolicy | None = None,
        retry_overrides: Mapping[str, RetryPolicy] | None = None,
        activity_limits: Mapping[str, int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity {capacity}: must be at least 1")
        self._journal = journal
        self._tails = tails
        self._activities = {a.name: a for a in activities}
        self._capacity = capacity
        self._retry = retry or RetryPolicy()
        self._retry_overrides = dict(retry_overrides or {})
        self._limits: dict[str, int] = {}
        for a in activities:
            limits = [n for n in ((activity_limits or {}).get(a.name), a.max_concurrency) if n]
            if limits:
                self._limits[a.name] = min(limits)
        self._tasks: dict[UUID, list[Task]] = {}
        self._ready: dict[str, deque[Task]] = {a.name: deque() for a in activities}
        self._running_by_activity: dict[str, int] = dict.fromkeys(self._activities, 0)
        self._running = 0
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._observers: list[RunObserver] = []

    # -- the public interface every engine offers ---------------------------

    def start_activity(
        self,
        aggregate: AggregateRef,
        activity: Activity,
        tail: ULID | None,
        *,
        state: TaskState = TaskState.PENDING,
    ) -> Task:
        """Start following ``aggregate`` with ``activity`` from ``tail``.

        Starting a task that exists already returns it unchanged, so discovery
        may offer the same aggregate again and again.

        :param state: ``PENDING`` to run it as soon as there is capacity; a
            stored ``SUSPENDED``, ``STOPPED`` or ``COMPLETE`` task keeps its
            state across a restart.
        """
        if self._activities.get(activity.name) is not activity:
            raise ValueError(f"activity {activity.name!r} is not one of this engine's activities")
        tasks = self._tasks.setdefault(aggregate.id, [])
        for task in tasks:
            if task.activity is activity:
                return task
        task = Task(activity, aggregate, tail)
        tasks.append(task)
        self._set_state(task, state)
        return task

    def add_observer(self, observer: RunObserver) -> None:
        """Call ``observer`` after every run (the task already has its next state)."""
        self._observers.append(observer)

    def tasks(self) -> Iterator[Task]:
        """Every task this engine knows, in no particular order."""
        for tasks in self._tasks.values():
            yield from tasks

    @property
    def activities(self) -> Mapping[str, Activity]:
        """The activities this engine may run, by name."""
        return self._activities

    def find(self, activity: str, aggregate_id: UUID) -> Task | None:
        for task in self._tasks.get(aggregate_id, ()):
            if task.activity.name == activity:
                return task
        return None

    def waiting(self, task: Task) -> Waiting:
        """Why ``task`` waits and when it runs next (the operator's status view)."""
        raise NotImplementedError  # filled in by the engine rework (issue 10)

    @property
    def running(self) -> int:
        """How many runs (open streams) there are right now."""
        return self._running

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run tasks until cancelled; cancelling it stops every run promptly."""
        async with anyio.create_task_group() as tg:
            self._wake = anyio.Event()
            await self._start_background(tg)
            task_status.started()
            await self._dispatch_loop(tg)

    # -- operator control (the seams for the runner's admin service) --------

    async def stop(self, task: Task) -> None:
        """Cancel a running task, or keep a waiting one from running: ``STOPPED``.

        The state is stored, so a stopped task stays stopped after a restart.
        """
        await self._control(task, Control(TaskState.STOPPED))

    async def suspend(self, task: Task) -> None:
        """Like :meth:`stop`, but ``SUSPENDED``: set aside until an operator resumes it."""
        await self._control(task, Control(TaskState.SUSPENDED))

    async def resume(self, task: Task) -> None:
        """Run a stopped or suspended task again, with a fresh attempt count."""
        if task.state in (TaskState.STOPPED, TaskState.SUSPENDED):
            await self._control(task, Control(TaskState.PENDING))

    async def restart(self, task: Task, tail: ULID | None) -> None:
        """Run the task again from ``tail`` (``None``: from the first event), even if complete."""
        await self._control(task, Control(TaskState.PENDING, replace_tail=True, tail=tail))

    async def _control(self, task: Task, control: Control) -> None:
        if task.scope is not None:
            # Running: the run applies the control when its cancellation
            # lands; wait for that, so the caller sees the new state.
            task.control = control
            task.scope.cancel()
            await control.applied.wait()
            return
        self._apply_control(task, control)
        await self._store(task, None, task.errors + 1)
        control.applied.set()
        log.info("controlled", state=task.state.value, **_fields(task))

    def _apply_control(self, task: Task, control: Control) -> None:
        if control.replace_tail:
            task.tail = control.tail
        if control.state is TaskState.PENDING:
            task.errors = task.failures = 0
            task.last_error = None
        self._set_state(task, control.state)

    # -- hooks for the engines ----------------------------------------------

    async def _start_background(self, tg: TaskGroup) -> None:
        """Start the engine's own loops (signals, ticks) in ``tg``."""

    def _periodic(self, now: float) -> float | None:
        """Called by the dispatcher on every pass; returns when it wants the next call."""
        return None

    def _after_eof(
        self, task: Task, result: RunResult, now: float
    ) -> tuple[TaskState, float | None]:
        """The next state (and timer) of a task whose run returned ``EOF``."""
        raise NotImplementedError

    def _retry_due(self, now: float, delay: float) -> float:
        """When a failed task runs again; cron waits for the next tick too."""
        return now + delay

    # -- internals ------------------------------------------------------------

    def _policy(self, task: Task) -> RetryPolicy:
        return self._retry_overrides.get(task.activity.name, self._retry)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _set_state(self, task: Task, state: TaskState, due: float | None = None) -> None:
        # The generation voids any timer set for the task's previous state.
        task.generation += 1
        task.state = state
        if state is TaskState.PENDING:
            self._ready[task.activity.name].append(task)
            self._poke()
        elif due is not None:
            heapq.heappush(self._timers, (due, next(self._seq), task, task.generation))
            self._poke()

    def _make_ready(self, task: Task) -> None:
        """A wake-up (signal, tick, backstop) for a task; only sleeping tasks react."""
        if task.state is TaskState.SLEEPING:
            self._set_state(task, TaskState.PENDING)
        elif task.state is TaskState.RUNNING:
            task.signalled = True

    def _fire_timers(self, now: float) -> float | None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, task, generation = heapq.heappop(timers)
            if generation == task.generation and task.state in (
                TaskState.RETRY,
                TaskState.SLEEPING,
            ):
                self._set_state(task, TaskState.PENDING)
        return timers[0][0] if timers else None

    def _start_ready(self, tg: TaskGroup) -> None:
        while self._running < self._capacity:
            popped = False
            for name, queue in self._ready.items():
                if self._running >= self._capacity:
                    break
                if not queue:
                    continue
                limit = self._limits.get(name)
                if limit is not None and self._running_by_activity[name] >= limit:
                    continue
                task = queue.popleft()
                popped = True
                if task.state is not TaskState.PENDING:
                    continue  # stopped or suspended while it waited
                task.state = TaskState.RUNNING
                task.signalled = False
                self._running += 1
                self._running_by_activity[name] += 1
                tg.start_soon(self._run_task, task)
            if not popped:
                return

    async def _dispatch_loop(self, tg: TaskGroup) -> None:
        while True:
            self._wake = anyio.Event()
            now = anyio.current_time()
            deadlines = [d for d in (self._fire_timers(now), self._periodic(now)) if d is not None]
            self._start_ready(tg)
            if deadlines:
                with anyio.move_on_after(max(0.0, min(deadlines) - anyio.current_time())):
                    await self._wake.wait()
            else:
                await self._wake.wait()

    async def _run_task(self, task: Task) -> None:
        # The run keeps its capacity slot until its outcome is stored: the
        # store is part of the run, and finished runs must not pile up behind
        # a slow tail store while new ones start.
        try:
            await self._run_and_settle(task)
        finally:
            self._running -= 1
            self._running_by_activity[task.activity.name] -= 1
            self._poke()

    async def _run_and_settle(self, task: Task) -> None:
        attempt = task.errors + 1
        try:
            with anyio.CancelScope() as scope:
                task.scope = scope
                result = await run_once(
                    task,
                    journal=self._journal,
                    engine=self.name,
                    watch=self.watch,
                    checkpoint=self._save_checkpoint,
                    transaction=self._transaction,
                )
        finally:
            task.scope = None
        task.runs += 1
        if scope.cancelled_caught:
            # An operator's control: run_once already saved the checkpoint.
            control, task.control = task.control or Control(TaskState.STOPPED), None
            self._apply_control(task, control)
            await self._store(task, None, attempt)
            control.applied.set()
            log.info("controlled", state=task.state.value, **_fields(task))
            return
        state, due = self._decide(task, result)
        # The tail is stored before the outcome is acted on, so a restart
        # resumes from it: an event may be seen twice, never skipped.
        if not await self._store(task, result, attempt, state=state) and state not in FINAL_STATES:
            # Not durable, so not acted on: run again after a backoff. (A final
            # state is kept in memory; only a restart could repeat its run.)
            state = TaskState.RETRY
            due = anyio.current_time() + self._policy(task).delay(max(task.failures, 1))
        if state is TaskState.SLEEPING and task.signalled:
            # A signal came while the outcome was being stored (the task was
            # still RUNNING): it must not be lost to the backstop.
            task.signalled = False
            state, due = TaskState.PENDING, None
        self._set_state(task, state, due)
        self._log(task, result, state, due)
        for observer in self._observers:
            observer(task, result)

    async def _store(
        self,
        task: Task,
        result: RunResult | None,
        attempt: int,
        *,
        state: TaskState | None = None,
    ) -> bool:
        """Save the task's tail and the run record; ``False`` when the store failed.

        A failed save must not be acted on as if it were durable: the caller
        retries the task, which still resumes from ``task.tail`` in memory; a
        crash before the next save replays from the stored tail (at-least-once).
        """
        record = self._tail_record(task, state=state)
        now = datetime.now(UTC)
        run = RunRecord(
            activity=task.activity.name,
            aggregate=task.aggregate,
            attempt=attempt,
            started_at=result.started_at if result else now,
            finished_at=result.finished_at if result else now,
            tail_before=result.tail_before if result else task.tail,
            tail_after=task.tail,
            events_seen=result.events_seen if result else 0,
            outcome=result.kind.value if result else "stopped",
            error=result.error_text if result else None,
        )
        try:
            with anyio.CancelScope(shield=True):
                await self._tails.save_with_run(record, run)
        except Exception as exc:
            log.error("tail store failed", error=f"{type(exc).__name__}: {exc}", **_fields(task))
            return False
        return True

    def _decide(self, task: Task, result: RunResult) -> NextState:
        now = anyio.current_time()
        task.tail = result.tail
        kind = result.kind
        if kind is OutcomeKind.DONE:
            task.errors = task.failures = 0
            task.last_error = None
            return TaskState.COMPLETE, None
        if kind is OutcomeKind.CANCELLED:
            return TaskState.STOPPED, None
        if kind is OutcomeKind.EOF:
            task.errors = task.failures = 0
            task.last_error = None
            return self._after_eof(task, result, now)
        task.signalled = False  # the retry reads everything there is anyway
        if kind is OutcomeKind.RETRY_AFTER:
            assert result.when is not None
            wait = (result.when - datetime.now(UTC)).total_seconds()
            return TaskState.RETRY, now + max(0.0, wait)
        task.failures += 1
        policy = self._policy(task)
        if kind is OutcomeKind.ERROR:
            task.errors = 1 if result.progressed else task.errors + 1
            task.last_error = result.error_text
            if policy.exhausted(task.errors):
                return TaskState.SUSPENDED, None
        return TaskState.RETRY, self._retry_due(now, policy.delay(task.failures))

    def _tail_record(self, task: Task, *, state: TaskState | None = None) -> TailRecord:
        state = state or task.state
        return TailRecord(
            activity=task.activity.name,
            aggregate=task.aggregate,
            tail=task.tail,
            state=state.value,
            attempts=task.errors,
            last_error=task.last_error,
            completed=state is TaskState.COMPLETE,
            updated_at=datetime.now(UTC),
        )

    async def _save_checkpoint(self, task: Task, tail: ULID | None) -> None:
        if tail == task.tail:
            return
        record = replace(self._tail_record(task), tail=tail)
        with anyio.CancelScope(shield=True):
            await self._tails.save(record)
        task.tail = tail

    @asynccontextmanager
    async def _transaction(self, task: Task, tail: ULID | None) -> AsyncIterator[Any]:
        record = replace(self._tail_record(task), tail=tail)
        async with self._tails.transaction(record) as conn:
            yield conn
        task.tail = tail

    def _log(self, task: Task, result: RunResult, state: TaskState, due: float | None) -> None:
        fields = _fields(task)
        kind = result.kind
        delay = None if due is None else round(max(0.0, due - anyio.current_time()), 3)
        if kind is OutcomeKind.DONE:
            log.info("completed", events=result.events_seen, **fields)
        elif kind is OutcomeKind.EOF:
            if result.progressed:
                log.info("progressed", events=result.events_seen, **fields)
            else:
                log.debug("caught up", **fields)
        elif kind is OutcomeKind.CANCELLED:
            log.info("stopped", **fields)
        elif kind is OutcomeKind.SILENT_RETRY:
            log.debug("silent retry", delay=delay, reason=str(result.error), **fields)
        elif kind is OutcomeKind.RETRY_AFTER:
            assert result.when is not None
            log.debug("retry after", when=result.when.isoformat(), **fields)
        elif state is TaskState.SUSPENDED:
            log.error("suspended", error=result.error_text, attempts=task.errors, **fields)
        else:
            log.warning(
                "will retry", error=result.error_text, attempt=task.errors, delay=delay, **fields
            )


def _fields(task: Task) -> dict[str, object]:
    return {
        "activity": task.activity.name,
        "aggregate_type": task.aggregate.type,
        "aggregate_id": str(task.aggregate.id),
        "tail": None if task.tail is None else str(task.tail),
    }
