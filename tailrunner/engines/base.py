"""The machinery the three engines share: task table, ready queues, timers, capacity, controls.

A task that is not running is only a :class:`~tailrunner.engines.task.Task`
record; coroutines exist only for running tasks, and never more than the
capacity limit. One dispatcher loop moves ``PENDING`` tasks into runs (round
robin over activities, within the global and per-activity limits), fires
timers, and calls the engine's periodic hook (lazy backstop, cron ticks).
Engines subclass :class:`Engine` and decide what an ``EOF`` means and
what wakes a sleeping task.

One order for everything that changes a task: a task is **busy** from the
moment a run starts until its outcome is stored and acted on, and while an
operator's control is being stored. Nothing starts a busy task; wake-ups
that arrive meanwhile set its ``signalled`` flag, and controls queue on it
and are applied, in order, on top of the run's outcome when it settles. So
one task never runs twice at once, and a stop cannot be overwritten by the
outcome of the run it stopped.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from ulid import ULID

from tailrunner.activities.decorator import Activity
from tailrunner.engines.execute import RunResult, run_once
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.ownership import TaskOwnership
from tailrunner.engines.read_ahead import ReadAhead
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import FINAL_STATES, TIMED_STATES, Task, Waiting
from tailrunner.errors import (
    EngineStopped,
    JournalUnavailable,
    LeaseLost,
    StoreError,
    TaskNotControllable,
)
from tailrunner.journal.api import AggregatesReader, JournalApi
from tailrunner.model import AggregateRef
from tailrunner.states import OutcomeKind, TaskState, WaitReason
from tailrunner.tails.store import RunRecord, TailRecord, TailStore

log = structlog.get_logger(__name__)

#: Called after every run, once the task has its next state (tests, status, metrics).
RunObserver = Callable[[Task, RunResult], None]
#: Called with the number of events a task handled, as it makes progress.
ProgressObserver = Callable[[Task, int], None]

_Timer = tuple[float, int, Task, int]


@dataclass(slots=True)
class Control:
    """An operator's request: the state to put a task in, and maybe a new tail."""

    action: str
    state: TaskState
    replace_tail: bool = False
    tail: ULID | None = None
    #: Set once the control is applied and stored (or its save failed: ``error``).
    applied: anyio.Event = field(default_factory=anyio.Event, compare=False)
    error: Exception | None = None


@dataclass(slots=True)
class _RunStart:
    """Scale-out: the lease a run started under, and when and from which tail."""

    owner: str
    epoch: int
    started_at: datetime
    tail_before: ULID | None
    #: A watching run's record says ``SLEEPING`` (caught up) since its last write.
    idle_stored: bool = False


#: A task's next state, and the loop time of its timer if it waits for one.
NextState = tuple[TaskState, float | None]


class Engine:
    """Base of the engines. Subclasses set :attr:`name` and :attr:`watch`.

    :param options: its settings (capacity, retry and reconnect policies,
        limits, shutdown grace; each engine reads its own fields too).
    :param journal: where streams are opened.
    :param tails: where tails are stored before an outcome is acted on.
    :param activities: the activities this engine may run.
    :param ownership: scale-out: which tasks this runner may run now (the
        segments it holds); ``None``: every task is this engine's.
    """

    name: ClassVar[str]
    #: Open streams with ``watch=True`` (eager) or read to the end (lazy, cron).
    watch: ClassVar[bool]

    def __init__(
        self,
        options: EngineOptions,
        *,
        journal: JournalApi,
        tails: TailStore,
        activities: Sequence[Activity],
        ownership: TaskOwnership | None = None,
    ) -> None:
        self._options = options
        self._ownership = ownership
        #: Scale-out: the lease each run started under, and when and where.
        self._run_starts: dict[Task, _RunStart] = {}
        #: Scale-out: runs cut short (shutdown, eviction), for their run records.
        self._cut_runs: dict[Task, _RunStart] = {}
        #: Scale-out: tasks whose runs :meth:`evict` is ending.
        self._evicting: set[Task] = set()
        #: Scale-out: retired tasks whose runs have not ended yet, by key: a
        #: new task of the same key must not run beside them.
        self._lingering: dict[tuple[str, UUID], Task] = {}
        self._journal = journal
        #: Runs that read to the end find their events read for many tasks
        #: at once, when the journal can (see tailrunner.engines.read_ahead).
        self._read_ahead = (
            ReadAhead(
                journal if isinstance(journal, AggregatesReader) else None,
                batch=options.read_ahead,
            )
            if not self.watch and options.read_ahead
            else None
        )
        self._tails = tails
        self._activities = {a.name: a for a in activities}
        self._capacity = options.capacity
        self._retry = options.retry
        self._retry_overrides = dict(options.retry_overrides)
        self._reconnect = options.reconnect
        self._shutdown_grace = options.shutdown_grace
        self._limits: dict[str, int] = {}
        for a in activities:
            limits = [n for n in (options.activity_limits.get(a.name), a.max_concurrency) if n]
            if limits:
                self._limits[a.name] = min(limits)
        #: The tasks of each aggregate, by its id's integer (Task.aggregate_key):
        #: the task itself when it has one (the usual case: a list per
        #: aggregate would weigh 88 bytes), else a list.
        self._tasks: dict[int, Task | list[Task]] = {}
        self._task_count = 0
        #: Ready tasks per activity, with the generation they were queued at.
        self._ready: dict[str, deque[tuple[Task, int]]] = {a.name: deque() for a in activities}
        #: The activities in the order the dispatcher serves them next (round robin).
        self._turns: deque[str] = deque(self._activities)
        self._running_by_activity: dict[str, int] = dict.fromkeys(self._activities, 0)
        self._running = 0
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._observers: list[RunObserver] = []
        self._progress_observers: list[ProgressObserver] = []
        #: Runs in progress: their asyncio tasks, and the scope shutdown cancels.
        self._runs: dict[Task, asyncio.Task[None]] = {}
        self._run_scopes: dict[Task, anyio.CancelScope] = {}
        self._runs_changed = anyio.Event()
        self._stopping = False
        #: Tasks whose state is not stored yet: a final state whose save
        #: failed, or a crashed attempt found on restore; saved until it works.
        self._unsaved: set[Task] = set()
        self._unsaved_added = anyio.Event()
        self._over_capacity_logged = False
        #: Runs still going when shutdown gave up waiting (after the grace period).
        self.abandoned: list[Task] = []

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
        task, new = self._task_for(aggregate, activity, tail)
        if new:
            self._set_state(task, state)
        return task

    def restore(self, aggregate: AggregateRef, activity: Activity, record: TailRecord) -> Task:
        """Start a task from its stored record, as a restarted runner does.

        A ``COMPLETE``, ``STOPPED`` or ``SUSPENDED`` task keeps its state; a
        ``RETRY`` or ``WAITING`` task waits until its stored ``next_run_at``
        (its backoff goes on where it was); any other runs as soon as it can.
        The attempt count and backoff exponent carry over.
        """
        task, new = self._task_for(aggregate, activity, record.tail)
        if not new:
            return task
        task.errors = record.attempts
        task.failures = record.failures
        task.last_error = record.last_error
        stored = record.state
        if record.completed:
            stored = TaskState.COMPLETE
        if stored is TaskState.RUNNING and self._ownership is not None:
            # A cluster marks each run RUNNING before it starts (fenced): a
            # record still RUNNING was cut short (its runner died or lost the
            # lease). It counts as an attempt, so an event that kills
            # runners is suspended after max_attempts, not handed on forever.
            self._cut_short(task)
            return task
        if stored in FINAL_STATES:
            self._set_state(task, stored)
        elif stored in TIMED_STATES and record.next_run_at is not None:
            self._set_state(task, stored, self._loop_time(record.next_run_at))
        else:
            self._set_state(task, TaskState.PENDING)
        return task

    def _cut_short(self, task: Task) -> None:
        task.errors += 1
        task.failures += 1
        task.last_error = "the run was cut short: its runner died or lost its segment's lease"
        policy = self._policy(task)
        log.warning("run cut short", attempt=task.errors, **task.log_fields())
        if policy.exhausted(task.errors):
            self._set_state(task, TaskState.SUSPENDED)
            log.error("suspended", error=task.last_error, attempts=task.errors, **task.log_fields())
        else:
            due = anyio.current_time() + policy.delay(task.failures)
            self._set_state(task, TaskState.RETRY, due)
        # Stored by the unsaved loop (or the next run's settle), so the
        # attempt and the suspension survive this runner too.
        self._unsaved.add(task)
        self._unsaved_added.set()

    def retire(self, tasks: Iterable[Task]) -> list[Task]:
        """Scale-out: the tasks' segment is lost; drop them now, writing nothing more.

        A running task's run is cancelled; whatever it still tries to store
        is refused (its lease is gone, and a retired task writes nothing).
        Their new owner starts them again from the stored tails. Returns
        the tasks retired.
        """
        retired = []
        for task in tasks:
            if task.retired:
                continue
            task.retired = True
            if self._read_ahead is not None:
                self._read_ahead.forget(task)
            task.generation += 1  # voids its timers and ready-queue entries
            siblings = self._tasks.get(task.aggregate_key)
            if siblings is task:
                del self._tasks[task.aggregate_key]
                self._task_count -= 1
            elif isinstance(siblings, list) and task in siblings:
                siblings.remove(task)
                self._task_count -= 1
                if len(siblings) == 1:
                    self._tasks[task.aggregate_key] = siblings[0]
            self._unsaved.discard(task)
            self._cut_runs.pop(task, None)
            scope = self._run_scopes.get(task)
            if scope is not None:
                scope.cancel()
                self._lingering[(task.activity.name, task.aggregate.id)] = task
            for control in task.controls or ():
                if not control.applied.is_set():
                    control.error = LeaseLost(
                        f"task {task.activity.name}/{task.aggregate.id}: its segment moved to"
                        f" another runner before {control.action} was applied"
                    )
                    control.applied.set()
            retired.append(task)
        if retired:
            log.info("tasks handed over", tasks=len(retired), engine=self.name)
        return retired

    async def evict(self, tasks: Iterable[Task], *, wait: float) -> list[Task]:
        """Scale-out: give the tasks up between runs, tails flushed, then :meth:`retire` them.

        The caller has already kept new runs of them from starting (their
        segment is draining). Runs going on get ``wait`` seconds to end by
        themselves; the rest are cancelled, saving their progress. A task
        whose run was cut is stored ``PENDING`` (not ``RUNNING``: its next
        owner must not count it as a crashed attempt). Writes are still
        fenced by the lease, which the caller releases afterwards.

        :returns: the tasks whose runs had still not ended (an activity that
            ignores cancellation): their segment must not be released yet.
        """
        evicted = [task for task in tasks if not task.retired]
        self._evicting.update(evicted)
        try:
            with anyio.move_on_after(wait):
                await self._until_no_runs(evicted)
            for task in evicted:
                scope = self._run_scopes.get(task)
                if scope is not None:
                    scope.cancel()
            with anyio.move_on_after(self._shutdown_grace):
                await self._until_no_runs(evicted)
            for task in evicted:
                cut = self._cut_runs.pop(task, None)
                # Busy: a control is being stored, and stores no RUNNING (_settle).
                if task.retired or task in self._runs or task.busy:
                    continue
                if task.state is TaskState.RUNNING or task in self._unsaved:
                    # Stored as a control is: busy meanwhile, so a control that
                    # comes now lands on top of it instead of under it. The
                    # cut run goes in the run log too (the lease it held, how
                    # far it got), so the log shows every run's span.
                    task.controls = []
                    task.generation += 1
                    run = None if cut is None else self._cut_run_record(task, cut)
                    await self._settle(task, None, cut=run)
        finally:
            self._evicting.difference_update(evicted)
            stuck = [task for task in evicted if task in self._runs]
            self.retire(evicted)
        return stuck

    def _cut_run_record(self, task: Task, cut: _RunStart) -> RunRecord:
        return RunRecord(
            activity=task.activity.name,
            aggregate=task.aggregate,
            attempt=task.errors + 1,
            started_at=cut.started_at,
            finished_at=datetime.now(UTC),
            tail_before=cut.tail_before,
            tail_after=task.tail,
            outcome=OutcomeKind.STOPPED,
            owner=cut.owner,
            epoch=cut.epoch,
        )

    async def _until_no_runs(self, tasks: Sequence[Task]) -> None:
        while any(task in self._runs for task in tasks):
            await self._runs_changed.wait()

    def add_observer(self, observer: RunObserver) -> None:
        """Call ``observer`` after every run (the task already has its next state).

        An observer that raises is logged and does not stop the engine.
        """
        self._observers.append(observer)

    def add_progress_observer(self, observer: ProgressObserver) -> None:
        """Call ``observer(task, events)`` as runs hand events to activities.

        A watching run (eager) reports when its reader catches up, so its
        events count although the run does not end; every run reports the
        rest when it ends.
        """
        self._progress_observers.append(observer)

    def tasks(self) -> Iterator[Task]:
        """Every task this engine knows, in no particular order."""
        for tasks in self._tasks.values():
            if isinstance(tasks, Task):
                yield tasks
            else:
                yield from tasks

    def _tasks_of(self, aggregate_id: UUID) -> Sequence[Task]:
        """The tasks of one aggregate (none if it has none)."""
        tasks = self._tasks.get(aggregate_id.int)
        if tasks is None:
            return ()
        return (tasks,) if isinstance(tasks, Task) else tasks

    @property
    def activities(self) -> Mapping[str, Activity]:
        """The activities this engine may run, by name."""
        return self._activities

    @property
    def capacity(self) -> int:
        return self._capacity

    def find(self, activity: str, aggregate_id: UUID) -> Task | None:
        for task in self._tasks_of(aggregate_id):
            if task.activity.name == activity:
                return task
        return None

    @property
    def running(self) -> int:
        """How many runs (open streams) there are right now."""
        return self._running

    def waiting(self, task: Task) -> Waiting:
        """Why ``task`` waits and when it runs next (the operator's status view)."""
        control = task.controls[-1].action if task.controls else None
        state = task.state
        if task.busy or state is TaskState.RUNNING:
            return Waiting(reason=None, control=control)
        if state is TaskState.PENDING:
            limit = self._limits.get(task.activity.name)
            full = self._running >= self._capacity or (
                limit is not None and self._running_by_activity[task.activity.name] >= limit
            )
            return Waiting(reason=WaitReason.CAPACITY if full else None)
        if state is TaskState.RETRY:
            return Waiting(reason=WaitReason.BACKOFF, next_run_at=self._wall_time(task.due))
        if state is TaskState.WAITING:
            return Waiting(reason=WaitReason.RETRY_AFTER, next_run_at=self._wall_time(task.due))
        if state is TaskState.SLEEPING:
            return self._sleeping(task)
        if state is TaskState.SUSPENDED:
            return Waiting(reason=WaitReason.SUSPENDED)
        if state is TaskState.STOPPED:
            return Waiting(reason=WaitReason.STOPPED)
        return Waiting(reason=None)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run tasks until cancelled; cancelling it stops every run.

        Each run saves its progress when cancelled. Runs that have not ended
        after the shutdown grace period are logged by activity and aggregate
        and left behind (:attr:`abandoned`): shutdown does not wait forever
        for an activity that ignores cancellation.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._wake = anyio.Event()
                await self._start_background(tg)
                tg.start_soon(self._save_unsaved_loop)
                task_status.started()
                await self._dispatch_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_runs()
                if self._read_ahead is not None:
                    await self._read_ahead.aclose()

    # -- operator control (the seams for the runner's admin service) --------

    async def stop(self, task: Task) -> None:
        """Cancel a running task, or keep a waiting one from running: ``STOPPED``.

        The state is stored, so a stopped task stays stopped after a restart.
        Returns once the control is applied and stored; for a running task,
        once its run has ended (an activity that ignores cancellation delays
        that: wrap the call in a timeout; the control stays queued and lands
        when the run ends).

        :raises TaskNotControllable: the task is ``COMPLETE``.
        :raises StoreError: the state could not be stored; it is applied and
            the engine keeps trying to store it.
        """
        self._refuse_if_complete(task, "stop")
        await self._control(task, Control("stop", TaskState.STOPPED))

    async def suspend(self, task: Task) -> None:
        """Like :meth:`stop`, but ``SUSPENDED``: set aside until an operator resumes it."""
        self._refuse_if_complete(task, "suspend")
        await self._control(task, Control("suspend", TaskState.SUSPENDED))

    async def resume(self, task: Task) -> None:
        """Run a stopped or suspended task again, with a fresh attempt count.

        :raises TaskNotControllable: the task is neither ``STOPPED`` nor
            ``SUSPENDED`` (nor about to be, by a control queued before this one).
        """
        state = self._effective_state(task)
        if state not in (TaskState.STOPPED, TaskState.SUSPENDED):
            raise TaskNotControllable(
                f"task {task.activity.name}/{task.aggregate.id} is {state.value}: only a"
                " SUSPENDED or STOPPED task can be resumed"
            )
        await self._control(task, Control("resume", TaskState.PENDING))

    async def restart(self, task: Task, tail: ULID | None) -> None:
        """Run the task again from ``tail`` (``None``: from the first event), even if complete."""
        await self._control(
            task, Control("restart", TaskState.PENDING, replace_tail=True, tail=tail)
        )

    def _refuse_if_complete(self, task: Task, action: str) -> None:
        if self._effective_state(task) is TaskState.COMPLETE:
            # Stopping a complete task would let a resume run it again.
            raise TaskNotControllable(
                f"task {task.activity.name}/{task.aggregate.id} is COMPLETE: cannot {action}"
                " it; restart it to run it again"
            )

    def _effective_state(self, task: Task) -> TaskState:
        """The state the task is in, or will be in once its queued controls land."""
        if task.controls:
            return task.controls[-1].state
        return task.state

    async def _control(self, task: Task, control: Control) -> None:
        if task.controls is not None:
            # Busy: the control lands when the run (or the control before it)
            # settles, in arrival order; a running activity is cancelled.
            task.controls.append(control)
            if task.scope is not None:
                task.scope.cancel()
        else:
            task.controls = [control]
            # Void its timers and queued entries while the control is stored;
            # shielded: the task must leave the busy state whatever the caller does.
            task.generation += 1
            with anyio.CancelScope(shield=True):
                await self._settle(task, None)
        await control.applied.wait()
        if control.error is not None:
            raise control.error

    def _apply_control(self, task: Task, control: Control, state: TaskState) -> TaskState:
        """The state after ``control``, given the state before it."""
        if control.replace_tail:
            task.tail = control.tail
        elif control.state is TaskState.PENDING:
            if state not in (TaskState.STOPPED, TaskState.SUSPENDED):
                # Queued behind a run that ended otherwise (Done, say): nothing to resume.
                control.error = TaskNotControllable(
                    f"task {task.activity.name}/{task.aggregate.id} is {state.value}: only a"
                    " SUSPENDED or STOPPED task can be resumed"
                )
                return state
        elif state is TaskState.COMPLETE:
            return state  # the run it was to stop completed: nothing runs again anyway
        if control.state is TaskState.PENDING:
            task.errors = task.failures = 0
            task.last_error = None
        return control.state

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

    def _sleeping(self, task: Task) -> Waiting:
        """Why a ``SLEEPING`` task of this engine waits, and until when."""
        return Waiting(reason=None, next_run_at=self._wall_time(task.due))

    # -- internals: states, queues, timers ------------------------------------

    def _task_for(
        self, aggregate: AggregateRef, activity: Activity, tail: ULID | None
    ) -> tuple[Task, bool]:
        if self._activities.get(activity.name) is not activity:
            raise ValueError(f"activity {activity.name!r} is not one of this engine's activities")
        siblings = self._tasks.get(aggregate.id.int)
        for task in self._tasks_of(aggregate.id):
            if task.activity is activity:
                return task, False
        task = Task(activity, aggregate, tail)
        if siblings is None:
            self._tasks[task.aggregate_key] = task
        elif isinstance(siblings, Task):
            self._tasks[task.aggregate_key] = [siblings, task]
        else:
            siblings.append(task)
        self._task_count += 1
        if self.watch and self._task_count > self._capacity and not self._over_capacity_logged:
            # Each eager task holds a slot for as long as it watches.
            self._over_capacity_logged = True
            log.warning(
                "tasks exceed capacity",
                engine=self.name,
                tasks=self._task_count,
                capacity=self._capacity,
                hint="tasks beyond the capacity wait for a slot (status: capacity);"
                " raise engine.capacity",
            )
        return task, True

    def _policy(self, task: Task) -> RetryPolicy:
        return self._retry_overrides.get(task.activity.name, self._retry)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _set_state(self, task: Task, state: TaskState, due: float | None = None) -> None:
        # The generation voids any timer and queue entry of the previous state,
        # and the read-ahead, which may be older than the reason for the change.
        task.generation += 1
        if self._read_ahead is not None:
            self._read_ahead.forget(task)
        task.state = state
        task.due = due
        if state is TaskState.PENDING:
            self._ready[task.activity.name].append((task, task.generation))
            self._poke()
        elif due is not None:
            heapq.heappush(self._timers, (due, next(self._seq), task, task.generation))
            self._poke()

    def _make_ready(self, task: Task) -> None:
        """A wake-up (signal, tick, backstop) for a task; only sleeping tasks react."""
        if task.busy:
            # It runs again right after this run, which may use a read-ahead
            # older than the wake-up: the next run reads anew.
            task.signalled = True
            return
        if self._read_ahead is not None:
            self._read_ahead.forget(task)  # it may not hold what woke the task
        if task.state is TaskState.SLEEPING:
            self._set_state(task, TaskState.PENDING)

    def _fire_timers(self, now: float) -> float | None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, task, generation = heapq.heappop(timers)
            if (
                generation == task.generation
                and not task.busy
                and task.state in (TaskState.RETRY, TaskState.WAITING, TaskState.SLEEPING)
            ):
                self._set_state(task, TaskState.PENDING)
        return timers[0][0] if timers else None

    def _pop_ready(self, name: str) -> Task | None:
        limit = self._limits.get(name)
        if limit is not None and self._running_by_activity[name] >= limit:
            return None
        queue = self._ready[name]
        ownership = self._ownership
        while queue:
            task, generation = queue.popleft()
            if generation == task.generation and task.state is TaskState.PENDING and not task.busy:
                if ownership is not None and not ownership.allows(name, task.aggregate.id):
                    # Its segment is lost (it is retired meanwhile) or being
                    # given back (evict retires it): it never runs here again.
                    continue
                if self._lingering and (name, task.aggregate.id) in self._lingering:
                    # Held again, but the retired task's run is still going
                    # (a shielded save): queued again when that run ends.
                    continue
                return task
        return None

    def _start_ready(self) -> None:
        started = self._start_runs()
        if started and self._read_ahead is not None:
            # Before any of them runs: one call reads for all of them, and
            # for the tasks next in line.
            self._read_ahead.plan(started, self._upcoming())

    def _start_runs(self) -> list[Task]:
        # Round robin: each pass serves the next activity in turn, so one
        # activity with many ready tasks cannot starve the others.
        turns = self._turns
        started: list[Task] = []
        while self._running < self._capacity:
            progressed = False
            for _ in range(len(turns)):
                if self._running >= self._capacity:
                    return started
                name = turns[0]
                turns.rotate(-1)
                task = self._pop_ready(name)
                if task is not None:
                    self._start(task)
                    started.append(task)
                    progressed = True
            if not progressed:
                return started
        return started

    def _upcoming(self) -> Iterator[Task]:
        """Ready tasks, roughly in the order they will start (for the read-ahead)."""
        for name in self._turns:
            for task, generation in self._ready[name]:
                if generation == task.generation and task.state is TaskState.PENDING:
                    yield task

    def _start(self, task: Task) -> None:
        task.state = TaskState.RUNNING
        task.generation += 1
        task.due = None
        task.signalled = False
        task.controls = []
        if self._ownership is not None:
            lease = self._ownership.lease(task.activity.name, task.aggregate.id)
            if lease is not None:
                self._run_starts[task] = _RunStart(
                    lease.owner, lease.epoch, datetime.now(UTC), task.tail
                )
        self._running += 1
        self._running_by_activity[task.activity.name] += 1
        # A run is an asyncio task of its own, not a child of a task group:
        # shutdown must be able to give up on an activity that ignores
        # cancellation. The engine owns these tasks and waits for them.
        self._runs[task] = asyncio.get_running_loop().create_task(
            self._run_task(task), name=f"tailrunner run {task.activity.name} {task.aggregate.id}"
        )

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            now = anyio.current_time()
            deadlines = [d for d in (self._fire_timers(now), self._periodic(now)) if d is not None]
            self._start_ready()
            if deadlines:
                with anyio.move_on_after(max(0.0, min(deadlines) - anyio.current_time())):
                    await self._wake.wait()
            else:
                await self._wake.wait()

    # -- internals: runs --------------------------------------------------------

    async def _run_task(self, task: Task) -> None:
        # The run keeps its capacity slot until its outcome is stored: the
        # store is part of the run, and finished runs must not pile up behind
        # a slow tail store while new ones start.
        settled = False
        try:
            with anyio.CancelScope() as outer:
                self._run_scopes[task] = outer
                if self._stopping:
                    outer.cancel()
                if self._ownership is not None and not await self._mark_running(task):
                    return
                result = await run_once(
                    task,
                    journal=self._journal,
                    engine=self.name,
                    watch=self.watch,
                    checkpoint=self._save_checkpoint,
                    transaction=self._transaction,
                    on_progress=self._on_progress,
                    on_resumed=None if self._ownership is None else self._save_handling,
                    read_ahead=None if self._read_ahead is None else self._read_ahead.take,
                )
            if not outer.cancel_called:
                await self._settle(task, result)
                settled = True
        except Exception:
            # A defect of the engine's own, not the activity's (run_once
            # classifies those): never leave the task stranded as RUNNING.
            log.exception("run failed inside the engine", **task.log_fields())
        finally:
            del self._run_scopes[task]
            del self._runs[task]
            start = self._run_starts.pop(task, None)
            if not settled and start is not None and not task.retired:
                self._cut_runs[task] = start
            if task.retired:
                self._run_ended_retired(task)
            self._running -= 1
            self._running_by_activity[task.activity.name] -= 1
            if not settled:
                self._unsettled(task)
            # Replaced by the notifier, never by a waiter: several wait at
            # once (shutdown, evictions), and each must hear every change.
            self._runs_changed.set()
            self._runs_changed = anyio.Event()
            self._poke()

    async def _mark_running(self, task: Task) -> bool:
        """Scale-out: store the task as ``RUNNING`` before its run; whether it may run.

        The write is fenced: it proves the lease right before the run, and
        a runner that dies during the run leaves the mark, so the next
        owner counts the run as an attempt (:meth:`restore`).
        """
        if await self._save(task, TaskState.RUNNING, None, None):
            return True
        if not task.retired:
            # The store failed: not run, and not settled: retried after a backoff.
            log.warning("run not started: its mark was not stored", **task.log_fields())
        return False

    def _run_ended_retired(self, task: Task) -> None:
        key = (task.activity.name, task.aggregate.id)
        if self._lingering.get(key) is task:
            del self._lingering[key]
            successor = self.find(*key)
            if successor is not None and successor.state is TaskState.PENDING:
                self._set_state(successor, TaskState.PENDING)  # queued again

    def _unsettled(self, task: Task) -> None:
        """A run ended without settling (shutdown, an engine defect, or a lost lease)."""
        controls, task.controls = task.controls or [], None
        for control in controls:
            control.error = EngineStopped(
                f"task {task.activity.name}/{task.aggregate.id}: the engine stopped before"
                f" {control.action} was applied"
            )
            control.applied.set()
        if task.retired or task in self._evicting:
            return  # leaving the engine: evict stores what is left, or nothing may be
        if not self._stopping and task.state is TaskState.RUNNING:
            delay = self._policy(task).delay(max(task.failures, 1))
            self._set_state(task, TaskState.RETRY, anyio.current_time() + delay)

    async def _stop_runs(self) -> None:
        self._stopping = True
        for scope in self._run_scopes.values():
            scope.cancel()
        with anyio.move_on_after(self._shutdown_grace):
            while self._runs:
                await self._runs_changed.wait()
        for task in list(self._unsaved):
            # A last try: a Done that is not stored would run again after a restart.
            if not task.busy and await self._save(task, task.state, task.due, None):
                self._unsaved.discard(task)
        for task in self._unsaved:
            log.error("state not stored at shutdown", state=task.state.value, **task.log_fields())
        if self._runs:
            self.abandoned = list(self._runs)
            for task in self.abandoned:
                log.error(
                    "still running after the shutdown grace period",
                    grace=self._shutdown_grace,
                    hint="the activity ignores cancellation; its progress since the last"
                    " save is not stored",
                    **task.log_fields(),
                )
            for task in self.abandoned:
                for control in task.controls or ():
                    control.error = EngineStopped(
                        f"task {task.activity.name}/{task.aggregate.id}: the engine stopped"
                        f" before {control.action} was applied"
                    )
                    control.applied.set()

    async def _settle(
        self, task: Task, result: RunResult | None, *, cut: RunRecord | None = None
    ) -> None:
        """Store the task's next state, and only then act on it (the task is busy).

        ``result`` is the run's outcome, or ``None`` for a control on an idle
        task (or an evicted one: ``cut`` is then its cut run's record).
        Controls that arrive while this stores are applied and stored before
        the task leaves the busy state.
        """
        assert task.controls is not None
        if result is not None:
            task.runs += 1
            attempt = task.errors + 1
            state, due = self._decide(task, result)
            run: RunRecord | None = self._run_record(task, result, attempt)
        else:
            state, due = task.state, task.due
            run = cut
            if state is TaskState.RUNNING:
                # Idle but RUNNING: its run was cut (shutdown, eviction). Not
                # stored RUNNING, or its next owner would count a crash.
                state, due = TaskState.PENDING, None
        applied: list[Control] = []
        saved = True
        while True:
            controls, task.controls = task.controls, []
            for control in controls:
                before = state
                state = self._apply_control(task, control, state)
                if state is not before or control.replace_tail:
                    due = None
                applied.append(control)
            # The tail is stored before the outcome is acted on, so a restart
            # resumes from it: an event may be seen twice, never skipped.
            saved = await self._save(task, state, due, run)
            run = None
            if not task.controls:
                break
        task.controls = None
        if task.retired:
            # The lease went while it stored: the next owner decides.
            for control in applied:
                control.error = control.error or LeaseLost(
                    f"task {task.activity.name}/{task.aggregate.id}: its segment moved to"
                    " another runner"
                )
                control.applied.set()
            return
        if not saved:
            if state in FINAL_STATES:
                # Not durable yet: keep the state (the task must not run
                # again) and store it as soon as the store takes it.
                self._unsaved.add(task)
                self._unsaved_added.set()
            else:
                # Not durable, so not acted on: run again after a backoff.
                state = TaskState.RETRY
                due = anyio.current_time() + self._policy(task).delay(max(task.failures, 1))
            for control in applied:
                control.error = control.error or StoreError(
                    f"the tail store failed to store {state.value}"
                )
        else:
            self._unsaved.discard(task)
        if task.signalled and state is TaskState.SLEEPING:
            # A wake-up came while the task was busy: it must not be lost.
            state, due = TaskState.PENDING, None
        task.signalled = False
        self._set_state(task, state, due)
        for control in applied:
            control.applied.set()
            log.info("controlled", action=control.action, state=state.value, **task.log_fields())
        if result is not None:
            self._log(task, result, state, due)
            self._notify(task, result)

    def _decide(self, task: Task, result: RunResult) -> NextState:
        now = anyio.current_time()
        task.tail = result.tail
        kind = result.kind
        if kind is OutcomeKind.DONE:
            task.errors = task.failures = 0
            task.last_error = None
            return TaskState.COMPLETE, None
        if kind is OutcomeKind.STOPPED:
            # The controls queued on the task say what comes next.
            return TaskState.STOPPED, None
        if kind is OutcomeKind.EOF:
            task.errors = task.failures = 0
            task.last_error = None
            return self._after_eof(task, result, now)
        task.signalled = False  # the next run reads everything there is anyway
        if kind is OutcomeKind.RETRY_AFTER:
            assert result.when is not None
            wait = (result.when - datetime.now(UTC)).total_seconds()
            return TaskState.WAITING, now + max(0.0, wait)
        # Progress resets the backoff: the policy counts failures at one tail.
        task.failures = 1 if result.progressed else task.failures + 1
        if kind is OutcomeKind.ERROR and isinstance(result.error, JournalUnavailable):
            # The journal is down, not the activity wrong: the reconnect
            # backoff (short, bounded), and no attempt counted against it.
            return TaskState.RETRY, now + self._reconnect.delay(task.failures)
        policy = self._policy(task)
        if kind is OutcomeKind.ERROR:
            task.errors = 1 if result.progressed else task.errors + 1
            task.last_error = result.error_text
            if policy.exhausted(task.errors):
                return TaskState.SUSPENDED, None
        return TaskState.RETRY, self._retry_due(now, policy.delay(task.failures))

    # -- internals: storing -------------------------------------------------------

    async def _save(
        self, task: Task, state: TaskState, due: float | None, run: RunRecord | None
    ) -> bool:
        """Save the task's record (and the run's); ``False`` when the store failed."""
        if task.retired:
            return False
        record = self._tail_record(task, state, due)
        try:
            with anyio.CancelScope(shield=True):
                if run is None:
                    await self._tails.save(record)
                else:
                    await self._tails.save_with_run(record, run)
        except LeaseLost as exc:
            # Fenced: nothing written; the task is retired by now.
            log.info("not stored: lease lost", error=str(exc), **task.log_fields())
            return False
        except Exception as exc:
            log.error(
                "tail store failed", error=f"{type(exc).__name__}: {exc}", **task.log_fields()
            )
            return False
        return True

    async def _save_unsaved_loop(self) -> None:
        failures = 0
        while True:
            await self._unsaved_added.wait()
            self._unsaved_added = anyio.Event()
            while self._unsaved:
                for task in list(self._unsaved):
                    if task.retired:
                        self._unsaved.discard(task)
                        continue
                    # A busy task is stored by its own settle. Busy while this
                    # stores, so that no run starts meanwhile and is then
                    # overwritten by this older record.
                    if not task.busy:
                        task.controls = []
                        await self._settle(task, None)
                        if task not in self._unsaved:
                            log.info(
                                "stored after all", state=task.state.value, **task.log_fields()
                            )
                if self._unsaved:
                    failures += 1
                    await anyio.sleep(self._reconnect.delay(failures))
            failures = 0

    def _run_record(self, task: Task, result: RunResult, attempt: int) -> RunRecord:
        start = self._run_starts.get(task)
        owner, epoch = (None, None) if start is None else (start.owner, start.epoch)
        return RunRecord(
            activity=task.activity.name,
            aggregate=task.aggregate,
            attempt=attempt,
            started_at=result.started_at,
            finished_at=result.finished_at,
            tail_before=result.tail_before,
            tail_after=result.tail,
            events_seen=result.events_seen,
            outcome=result.kind,
            error=result.traceback,
            owner=owner,
            epoch=epoch,
        )

    def _tail_record(
        self, task: Task, state: TaskState | None = None, due: float | None = None
    ) -> TailRecord:
        state = state or task.state
        return TailRecord(
            activity=task.activity.name,
            aggregate=task.aggregate,
            tail=task.tail,
            state=state,
            attempts=task.errors,
            last_error=task.last_error,
            completed=state is TaskState.COMPLETE,
            updated_at=datetime.now(UTC),
            failures=task.failures,
            next_run_at=self._wall_time(due) if state in TIMED_STATES else None,
        )

    async def _save_checkpoint(self, task: Task, tail: ULID | None) -> None:
        if tail == task.tail or task.retired:
            return  # a retired task's run is being cancelled: nothing to store
        record = replace(self._tail_record(task), tail=tail)
        with anyio.CancelScope(shield=True):
            await self._tails.save(record)
        task.tail = tail
        start = self._run_starts.get(task)
        if start is not None:
            start.idle_stored = False  # stored RUNNING again: handling events

    async def _on_progress(self, task: Task, tail: ULID | None, events: int) -> None:
        # A watching run caught up: store how far it got, so that status,
        # lag and a restart see it although the run does not end.
        try:
            if self._ownership is not None:
                await self._save_caught_up(task, tail)
            else:
                await self._save_checkpoint(task, tail)
        except Exception as exc:
            log.warning(
                "progress not stored", error=f"{type(exc).__name__}: {exc}", **task.log_fields()
            )
        if events:
            self._notify_progress(task, events)

    async def _save_caught_up(self, task: Task, tail: ULID | None) -> None:
        """Scale-out: a watching run caught up: store it ``SLEEPING``, not ``RUNNING``.

        The ``RUNNING`` mark means "handling events": a runner that dies
        while a watch waits for events cut no handling short, so its next
        owner must not count an attempt. The next checkpoint of the run
        (handling new events) stores ``RUNNING`` again.
        """
        start = self._run_starts.get(task)
        if task.retired or (tail == task.tail and start is not None and start.idle_stored):
            return
        record = replace(self._tail_record(task, TaskState.SLEEPING), tail=tail)
        with anyio.CancelScope(shield=True):
            await self._tails.save(record)
        task.tail = tail
        if start is not None:
            start.idle_stored = True

    async def _save_handling(self, task: Task) -> None:
        """Scale-out: a caught-up watch gets new events: store ``RUNNING`` before handing them.

        So a runner that dies handling them leaves the mark, and the next
        owner counts the attempt (see :meth:`_save_caught_up`).
        """
        start = self._run_starts.get(task)
        if task.retired or start is None or not start.idle_stored:
            return
        # Raises what the store raised, so the events are not handed out: a
        # lost lease (the run is being cancelled, the next owner goes on) or
        # a failed store (the run fails and is retried: unmarked, a crash
        # while handling them would not count as an attempt).
        with anyio.CancelScope(shield=True):
            await self._tails.save(self._tail_record(task))
        start.idle_stored = False

    @asynccontextmanager
    async def _transaction(self, task: Task, tail: ULID | None) -> AsyncIterator[Any]:
        if task.retired:
            raise LeaseLost(
                f"task {task.activity.name}/{task.aggregate.id}: its segment moved to another"
                " runner; the transaction was not begun"
            )
        record = replace(self._tail_record(task), tail=tail)
        async with self._tails.transaction(record) as conn:
            yield conn
        task.tail = tail
        start = self._run_starts.get(task)
        if start is not None:
            start.idle_stored = False  # stored RUNNING: handling events

    # -- internals: time, observers, logs ----------------------------------------

    def _wall_time(self, due: float | None) -> datetime | None:
        """The wall-clock instant of loop time ``due``."""
        if due is None:
            return None
        return datetime.now(UTC) + timedelta(seconds=due - anyio.current_time())

    def _loop_time(self, when: datetime) -> float:
        """The loop time of the wall-clock instant ``when`` (now, if it has passed)."""
        now = anyio.current_time()
        return now + max(0.0, (when - datetime.now(UTC)).total_seconds())

    def _notify(self, task: Task, result: RunResult) -> None:
        if result.events_seen:
            self._notify_progress(task, result.events_seen)
        for observer in self._observers:
            try:
                observer(task, result)
            except Exception:
                log.exception("observer failed", observer=repr(observer), **task.log_fields())

    def _notify_progress(self, task: Task, events: int) -> None:
        for observer in self._progress_observers:
            try:
                observer(task, events)
            except Exception:
                log.exception("observer failed", observer=repr(observer), **task.log_fields())

    def _log(self, task: Task, result: RunResult, state: TaskState, due: float | None) -> None:
        fields = task.log_fields()
        kind = result.kind
        delay = None if due is None else round(max(0.0, due - anyio.current_time()), 3)
        if kind is OutcomeKind.DONE:
            log.info("completed", events=result.events_seen, **fields)
        elif kind is OutcomeKind.EOF:
            if result.progressed:
                log.info("progressed", events=result.events_seen, **fields)
            else:
                log.debug("caught up", **fields)
        elif kind is OutcomeKind.STOPPED:
            log.info("stopped", events=result.events_seen, **fields)
        elif kind is OutcomeKind.SILENT_RETRY:
            log.debug("silent retry", delay=delay, reason=str(result.error), **fields)
        elif kind is OutcomeKind.RETRY_AFTER:
            assert result.when is not None
            log.debug("retry after", when=result.when.isoformat(), **fields)
        elif isinstance(result.error, JournalUnavailable):
            # The outage is logged once by the connection's watch, not per task.
            log.debug("journal unreachable", delay=delay, error=result.error_text, **fields)
        elif state is TaskState.SUSPENDED:
            log.error(
                "suspended",
                error=result.error_text,
                attempts=task.errors,
                traceback=result.traceback,
                **fields,
            )
        else:
            log.warning(
                "will retry",
                error=result.error_text,
                attempt=task.errors,
                delay=delay,
                traceback=result.traceback,
                **fields,
            )
