"""A hypothesis state machine drives one engine through random interleavings (issue 10).

One engine (lazy, cron, eager) runs on its own asyncio loop with a virtual
clock (:class:`~tests.engines.stateful_support.VirtualClockLoop`), over an
in-memory journal and a tail store whose saves can be slow. The state
machine's rules interleave, at random:

- signals: events appended to an aggregate (the journal signals each append);
- runs: every run of the scripted activity waits for the test, which tells it
  to read a batch, checkpoint, or finish with any outcome (``EOF``, ``Done``,
  ``SilentRetry``, ``SilentRetryAfter``, ``Failed``, another exception), with a
  tail the contract allows (``None``, its start tail, a checkpointed tail, or
  an event id its stream handed out);
- slow stores: saves wait until the test releases them (in any order), or
  until some virtual time passes;
- operator controls (``stop``, ``suspend``, ``resume``, ``restart(task,
  tail)``), each an operator's call that may wait while the test does other
  things;
- shutdown: the engine's task group is cancelled and a new engine is started
  on the same journal and store, as a restarted runner does;
- time: the virtual clock moves forward, and ``quiesce`` drives the engine to
  quiescence (every run finishes with ``EOF`` or, under eager, follows its
  watch stream; every save is released; time advances past every retry and
  tick) and checks what must hold there.

No wall clock decides anything: the loop runs by counted steps until nothing
is runnable, and only the ``advance_time`` and ``quiesce`` rules move its
clock. What must hold, checked after every step unless it says so:

1. **Never two runs of one task at once** (:class:`TwoRunsAtOnce`): a run is
   the activity's execution, from its call to its return or raise. And a
   run's stream hands out the aggregate's events after its start tail, in
   order, skipping and repeating none (:class:`StreamSkipped`).
2. **A signal during a run leads to another run that sees it**
   (:class:`SignalLost`; liveness, so checked at quiescence): an append while
   the task runs is handed out by that run's stream or a later run's, or a
   later run starts from a tail at or past it; unless the task is then
   ``COMPLETE``, ``STOPPED`` or ``SUSPENDED``.
3. **A ``Done`` task never runs again** (:class:`DoneRanAgain`): after a run
   returned ``Done``, no run of the task starts (across runner restarts too)
   unless an operator's ``restart`` was called after it (or was still in
   flight when the run returned). ``resume`` is not ``restart``: a
   ``stop`` + ``resume`` of a completed task must not run it.
4. **An operator's stop holds** (:class:`StopDidNotHold`): once ``await
   engine.stop(task)`` (or ``suspend``) has returned, no run of the task is
   still going and none starts (across runner restarts too) until a
   ``resume`` or ``restart`` of it is called; at quiescence it is ``STOPPED``
   or ``SUSPENDED`` (or ``COMPLETE``), in memory and in the store. A stop
   that overlapped a ``resume``/``restart`` of the same task is not checked
   (either may have taken effect last).
5. **At quiescence nothing sleeps behind its aggregate's head**
   (:class:`BehindHead`): every task that is not ``COMPLETE``, ``STOPPED``,
   ``SUSPENDED``, ``RETRY`` or ``WAITING`` has a tail at its aggregate's head.
   Lazy, also after every step: once the loop is idle with no save under way,
   every signal was delivered, so a ``SLEEPING`` task with no control in
   flight is caught up (the backstop is set beyond any test case, so only
   signals can wake it).

And, so that those are meaningful, at quiescence:

6. **No task is stranded** (:class:`TaskStranded`): lazy and cron tasks
   rest (``SLEEPING`` or final) with no run going; eager tasks rest in a run
   that waits on its watch stream with the task's tail at the head, or are
   final (a run that only reads, never checkpointing, relies on the engine
   recording its progress at ``will_block``: DESIGN §1, "Progress without
   checkpoints"). ``RUNNING``, ``PENDING``,
   ``RETRY`` or ``WAITING`` after 80 virtual seconds of draining (four times
   the longest retry delay) is a task that nothing will run.
7. **Every operator call returned** (:class:`ControlHung`).
8. **The store says what the engine believes** (:class:`StoreDiverged`): each
   task's stored tail equals its tail in memory, and the stored state is the
   same final state (``COMPLETE``/``STOPPED``/``SUSPENDED``) or, for a task
   that is not final, not a final one (a restart resumes what was stored).

Also after every step: the engine's ``run`` has not ended by itself
(:class:`EngineCrashed`), an operator call raised nothing but a refusal
(``TailrunnerError``/``ValueError``), and the loop never idles while busy
(:class:`EngineBusy`: with the clock stopped a correct engine does finitely
many steps).

CI runs a bounded, derandomized number of examples per engine (300 of up to
40 steps: seconds when they pass) and does not shrink a failure: shrinking
this machine takes minutes, so CI reports the first failing sequence as
found, with a trace of what the engine did in the message. Some defects
need a rarer interleaving (a stop queued behind a run that returns ``Done``,
then a resume: about one in a few thousand examples), so run it long after a
change to the engines. On demand:

- ``TAILRUNNER_STATEFUL_SHRINK=1``: the same examples, but each distinct
  failure is shrunk to a minimal sequence and all of them are reported;
- ``TAILRUNNER_STATEFUL_EXAMPLES=2000`` (and ``TAILRUNNER_STATEFUL_STEPS=80``,
  the default then): a longer, randomized run (new examples every time), shrunk::

    TAILRUNNER_STATEFUL_EXAMPLES=2000 .venv/bin/pytest \\
        tests/engines/test_engine_stateful.py -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, cast

import anyio
import structlog.testing
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from ulid import ULID

from tailrunner import (
    EOF,
    Activity,
    ActivityContext,
    Done,
    EventStream,
    Failed,
    SilentRetry,
    SilentRetryAfter,
    activity,
)
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.errors import TailrunnerError
from tailrunner.model import AggregateRef, EventBatch, NewEvent
from tailrunner.states import TaskState
from tailrunner.tails.store import TailRecord

from .stateful_support import FakeJournal, SlowTailStore, StoreMode, VirtualClockLoop, settle

ACTIVITY = "script"
AGGREGATE_TYPE = "thing"
RETRY = RetryPolicy(initial=1.0, multiplier=2.0, max_delay=8.0, jitter=0.0, max_attempts=4)
CRON_INTERVAL = 5.0
#: Never reached in a test case: lazy tasks must be woken by signals, not by the backstop.
BACKSTOP = 1e6
RETRY_AFTER_DELAYS = (0.5, 2.0, 5.0)
#: ``quiesce`` advances the clock by this much per round (more than any retry
#: delay, retry-after or cron interval), at most this many rounds.
DRAIN_STEP = 10.0
DRAIN_ROUNDS = 8
#: ``advance_time`` to the next timer moves at most this far.
MAX_JUMP = 10.0
#: The states a runner restart keeps from the store (as :mod:`tailrunner.runner` does).
KEPT_STATES = {s.value: s for s in (TaskState.COMPLETE, TaskState.STOPPED, TaskState.SUSPENDED)}
FINAL = frozenset({TaskState.COMPLETE, TaskState.STOPPED, TaskState.SUSPENDED})
#: Excluded from "caught up at quiescence" (the brief's list).
NOT_BOUND_TO_CATCH_UP = FINAL | {TaskState.RETRY, TaskState.WAITING}


# -- what can fail (one class per invariant, so hypothesis shrinks each apart) --


class InvariantViolated(AssertionError):
    """Base of the invariants this machine checks."""


class TwoRunsAtOnce(InvariantViolated):
    pass


class StreamSkipped(InvariantViolated):
    pass


class SignalLost(InvariantViolated):
    pass


class DoneRanAgain(InvariantViolated):
    pass


class StopDidNotHold(InvariantViolated):
    pass


class BehindHead(InvariantViolated):
    pass


class TaskStranded(InvariantViolated):
    pass


class ControlHung(InvariantViolated):
    pass


class StoreDiverged(InvariantViolated):
    pass


class EngineCrashed(InvariantViolated):
    pass


class EngineBusy(InvariantViolated):
    pass


class ControlRaised(InvariantViolated):
    pass


class HarnessBroke(InvariantViolated):
    """The test's own fakes saw something they should not (not an engine defect)."""


class ScriptedError(Exception):
    """The exception a run raises when the test tells it to fail without a tail."""


# -- the records the machine keeps --------------------------------------------

#: What a waiting run may be told to do, weighted: ``eof`` (read to the end,
#: return ``EOF``) is the common case; ``error`` raises an exception with no tail.
RUN_STEPS = (
    "eof",
    "eof",
    "eof",
    "read",
    "read",
    "checkpoint",
    "checkpoint",
    "done",
    "silent_retry",
    "retry_after",
    "failed",
    "error",
)
#: The saves rule: release a waiting save (weighted), or set the speed of saves.
STORE_STEPS = ("release", "release", "release", "gate", "instant", "sleep")


@dataclass(frozen=True, slots=True)
class Action:
    """What a waiting run does next; ``pick`` chooses among the tails it may return."""

    kind: str
    pick: int = 0
    delay: float = 0.5


@dataclass(eq=False, slots=True)
class Run:
    number: int
    key: uuid.UUID
    engine_generation: int
    start_tail: ULID | None
    handed: list[ULID] = field(default_factory=list)
    checkpointed: list[ULID | None] = field(default_factory=list)
    inbox: deque[Action] = field(default_factory=deque)
    wakeup: anyio.Event | None = None
    #: Waiting for the test's next action.
    waiting: bool = False
    #: Waiting in a read of its stream (eager: for new events).
    reading: bool = False
    caught_up: bool = False
    exhausted: bool = False

    @property
    def position(self) -> ULID | None:
        """The newest event this run was handed, else its start tail."""
        return self.handed[-1] if self.handed else self.start_tail

    def valid_tails(self) -> list[ULID | None]:
        """What an outcome of this run may carry, by the activity contract."""
        tails: list[ULID | None] = []
        for tail in (None, self.start_tail, *self.checkpointed, *self.handed):
            if tail not in tails:
                tails.append(tail)
        return tails


@dataclass(eq=False, slots=True)
class ControlCall:
    number: int
    op: str
    key: uuid.UUID
    tail: ULID | None
    step: int
    engine_generation: int
    #: stop/suspend: resume/restart calls of the task issued before this one.
    resumes_before: int = 0
    #: stop/suspend: a resume/restart of the task was in flight when this was called.
    overlapped: bool = False
    runner: asyncio.Task[None] | None = None


@dataclass(slots=True)
class Book:
    """What the machine knows of one task (by aggregate), across runner restarts."""

    resumes_issued: int = 0
    done_hold: str | None = None
    stop_hold: str | None = None


@dataclass(frozen=True, slots=True)
class Obligation:
    """An event appended while its task ran: that run or a later one must be handed it."""

    key: uuid.UUID
    event: ULID
    what: str


# -- the machine ----------------------------------------------------------------


class EngineMachine(RuleBasedStateMachine):
    """Drives one engine of kind :attr:`KIND`; subclasses pick the kind."""

    KIND: ClassVar[str] = "lazy"
    #: What a run may raise out of the activity besides the scripted outcomes' exceptions.
    PASSED_THROUGH: ClassVar[tuple[type[Exception], ...]] = (
        SilentRetry,
        SilentRetryAfter,
        Failed,
        ScriptedError,
    )

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualClockLoop()
        self.loop.set_exception_handler(self._loop_exception)
        self._logs = structlog.testing.capture_logs()
        self._logs.__enter__()
        self.journal = FakeJournal()
        self.store = SlowTailStore()
        self.activity = self._make_activity()
        self.aggregates: list[AggregateRef] = []
        self.names: dict[ULID, str] = {}
        self.capacity = 1
        self.engine: Engine | None = None
        self.engine_generation = 0
        self.engine_scope: anyio.CancelScope | None = None
        self.host: asyncio.Task[None] | None = None
        self.shutting_down = False
        self.closing = False
        self.auto = False
        self.step = 0
        self.booted_at = 0
        self.quiesced_at = 0
        self.live: list[Run] = []
        self.run_count = 0
        self.calls: list[ControlCall] = []
        self.call_count = 0
        self.books: dict[uuid.UUID, Book] = {}
        self.obligations: list[Obligation] = []
        self.violations: list[InvariantViolated] = []
        self.trace: list[str] = []
        #: The store's records as ``quiesce`` left them.
        self.stored: dict[uuid.UUID, TailRecord | None] = {}

    # -- rules ----------------------------------------------------------------

    @initialize(
        capacity=st.integers(1, 3),
        aggregates=st.integers(1, 3),
        initial=st.lists(st.integers(0, 3), min_size=3, max_size=3),
        store=st.sampled_from(["instant", "gate", "sleep"]),
    )
    def start(self, capacity: int, aggregates: int, initial: list[int], store: StoreMode) -> None:
        # Eager holds a stream per task: capacity below the task count is a
        # configuration the engine may refuse, not what this test is about.
        self.capacity = max(capacity, aggregates) if self.KIND == "eager" else capacity
        self.aggregates = [
            AggregateRef(type=AGGREGATE_TYPE, id=uuid.UUID(int=i + 1)) for i in range(aggregates)
        ]
        self.books = {a.id: Book() for a in self.aggregates}

        async def go() -> None:
            for aggregate, count in zip(self.aggregates, initial, strict=False):
                if count:
                    await self._append(aggregate, count)
            await self._boot()
            self.store.mode = store

        self._drive(go)

    @rule(which=st.integers(0, 2), count=st.integers(1, 3))
    def append(self, which: int, count: int) -> None:
        """A signal: new events on an aggregate."""
        aggregate = self._pick_aggregate(which)

        async def go() -> None:
            await self._append(aggregate, count)

        self._drive(go)

    # Few rules, with weighted choices inside them: hypothesis turns rules off
    # at random per example (swarm testing), and a defect that needs a run
    # step, a store step and a control is found only with all three on.

    @precondition(lambda self: any(r.waiting for r in self.live))
    @rule(
        which=st.integers(0, 3),
        step=st.builds(
            Action,
            kind=st.sampled_from(RUN_STEPS),
            pick=st.integers(0, 5),
            delay=st.sampled_from(RETRY_AFTER_DELAYS),
        ),
    )
    def run_step(self, which: int, step: Action) -> None:
        """Tell a waiting run what to do: read a batch, checkpoint, or end with an outcome.

        ``eof`` reads to the end first; ``pick`` chooses the tail an outcome
        carries among those the contract allows.
        """
        waiting = sorted((r for r in self.live if r.waiting), key=lambda r: r.number)
        run = waiting[which % len(waiting)]

        async def go() -> None:
            run.inbox.append(step)
            if run.wakeup is not None:
                run.wakeup.set()

        self._note(f"run {run.number} of {self._agg(run.key)}: {step.kind}")
        self._drive(go)

    @rule(op=st.sampled_from(STORE_STEPS), which=st.integers(0, 3))
    def saves(self, op: str, which: int) -> None:
        """Release one waiting save, or set the speed of saves from now on.

        Any waiting save may be released, not only the oldest: commits may
        land out of order. Speeds: instant, waiting for a release (``gate``),
        or taking virtual time (``sleep``).
        """
        if op != "release":
            self.store.mode = cast(StoreMode, op)
            self._note(f"store: {op}")
            return
        if not self.store.pending:
            return

        async def go() -> None:
            pending = self.store.release(which % len(self.store.pending))
            record = pending.record
            self._note(
                f"released save #{pending.seq} {pending.what} of {self._agg(record.aggregate.id)}"
                f" state={record.state} tail={self._tail(record.tail)}"
            )

        self._drive(go)

    @rule(
        which=st.integers(0, 2),
        op=st.sampled_from(["stop", "suspend", "resume", "restart"]),
        at=st.none() | st.integers(0, 9),
    )
    def control(self, which: int, op: str, at: int | None) -> None:
        """An operator's call; it may still wait when the next rule runs."""
        aggregate = self._pick_aggregate(which)
        ids = self.journal.event_ids(aggregate.id)
        tail = ids[at % len(ids)] if at is not None and ids else None

        async def go() -> None:
            self._issue(op, aggregate.id, tail)

        self._drive(go)

    @rule(by=st.sampled_from([None, 0.5, 1.0, 2.0, 5.0, 10.0]))
    def advance_time(self, by: float | None) -> None:
        """Move the virtual clock by ``by`` seconds, or to the next timer (``None``)."""

        async def go() -> None:
            if by is None:
                due = self.loop.next_timer()
                jump = MAX_JUMP if due is None else min(MAX_JUMP, max(0.0, due - self.loop.time()))
            else:
                jump = by
            self.loop.advance(jump)
            self._note(f"time +{jump:g}s")

        self._drive(go)

    # Rules without arguments come first in hypothesis's rule order, which it
    # favours; these two would otherwise crowd out the interleavings.
    @precondition(lambda self: self.step - self.booted_at >= 3)
    @rule()
    def restart_runner(self) -> None:
        """Shut the engine down (cancel its task group) and start a new one on the same store."""

        async def go() -> None:
            await self._shutdown()
            if self.host is not None and self.host.done():
                await self._boot()

        self._drive(go)

    @precondition(lambda self: self.step - self.quiesced_at >= 3)
    @rule()
    def quiesce(self) -> None:
        """Drive to quiescence, then check what must hold there."""
        self.quiesced_at = self.step + 1
        self._drive(self._drain)
        try:
            self._raise_recorded()
            self._check_quiescence()
        finally:
            self.auto = False

    # -- invariants after every step -------------------------------------------

    @invariant()
    def nothing_went_wrong(self) -> None:
        self._raise_recorded()
        if self.host is not None and self.host.done() and not self.shutting_down:
            error = None if self.host.cancelled() else self.host.exception()
            raise EngineCrashed(self._message(f"engine.run ended by itself: {error!r}"))

    @invariant()
    def no_lazy_task_sleeps_behind_its_head(self) -> None:
        """Lazy: once the loop is idle every signal was delivered, so a sleeping task is caught up.

        Checked after every step, not only at quiescence, because a later
        signal would heal a lost wake-up before ``quiesce`` sees it. Not while
        a save is under way or a control of the task is in flight (the task
        is still settling then).
        """
        if self.KIND != "lazy" or self.engine is None or self.shutting_down or self.store.busy:
            return
        for task in self.engine.tasks():
            key = task.aggregate.id
            if (
                task.state is TaskState.SLEEPING
                and not self._caught_up(task)
                and not self._live_runs(key)
                and not any(c.key == key for c in self.calls)
            ):
                raise BehindHead(
                    self._message(
                        f"{self._agg(key)} sleeps at {self._tail(task.tail)} behind its head"
                        f" {self._tail(self.journal.head(key))} with every signal delivered"
                    )
                )

    # -- checks at quiescence ----------------------------------------------------

    def _check_quiescence(self) -> None:
        assert self.engine is not None
        for call in self.calls:
            raise ControlHung(
                self._message(
                    f"{call.op} #{call.number} of {self._agg(call.key)} (called at step"
                    f" {call.step}) never returned"
                )
            )
        tasks = {t.aggregate.id: t for t in self.engine.tasks()}
        for obligation in self.obligations:
            task = tasks[obligation.key]
            if task.state not in FINAL:
                raise SignalLost(
                    self._message(
                        f"{obligation.what}: no run was handed it; the task is"
                        f" {task.state.value} at {self._tail(task.tail)}"
                    )
                )
        for key, task in tasks.items():
            if not self._at_rest(task):
                rest = (
                    "a run waiting on its watch stream, caught up, or a final state"
                    if self.KIND == "eager"
                    else "SLEEPING or a final state, with no run going"
                )
                raise TaskStranded(
                    self._message(
                        f"{self._agg(key)} is {task.state.value} at {self._tail(task.tail)}"
                        f" with {len(self._live_runs(key))} run(s) going after"
                        f" {DRAIN_ROUNDS * DRAIN_STEP:g} s of draining; at rest means {rest}"
                    )
                )
        for key, task in tasks.items():
            if task.state not in NOT_BOUND_TO_CATCH_UP and not self._caught_up(task):
                raise BehindHead(
                    self._message(
                        f"{self._agg(key)} is {task.state.value} at {self._tail(task.tail)},"
                        f" behind its head {self._tail(self.journal.head(key))}"
                    )
                )
        for key, task in tasks.items():
            hold = self.books[key].stop_hold
            stored = self._stored(key)
            stored_state = stored.state if stored is not None else None
            if hold is not None and (
                task.state not in FINAL or stored_state not in {s.value for s in FINAL}
            ):
                raise StopDidNotHold(
                    self._message(
                        f"{hold}, but {self._agg(key)} is {task.state.value} (stored:"
                        f" {stored_state})"
                    )
                )
        for key, task in tasks.items():
            stored = self._stored(key)
            stored_tail = stored.tail if stored is not None else None
            stored_state = stored.state if stored is not None else None
            memory_final = task.state.value if task.state in FINAL else None
            stored_final = stored_state if stored_state in KEPT_STATES else None
            if stored_tail != task.tail or stored_final != memory_final:
                raise StoreDiverged(
                    self._message(
                        f"{self._agg(key)}: memory {task.state.value} at {self._tail(task.tail)},"
                        f" store {stored_state} at {self._tail(stored_tail)}"
                    )
                )

    def _stored(self, key: uuid.UUID) -> TailRecord | None:
        return self.stored.get(key)

    def _at_rest(self, task: Task) -> bool:
        live = self._live_runs(task.aggregate.id)
        if task.state in FINAL:
            return not live
        if self.KIND == "eager":
            return (
                task.state is TaskState.RUNNING
                and len(live) == 1
                and live[0].reading
                and self._caught_up(task)
            )
        return task.state is TaskState.SLEEPING and not live

    def _caught_up(self, task: Task) -> bool:
        head = self.journal.head(task.aggregate.id)
        return head is None or (task.tail is not None and task.tail >= head)

    # -- driving the loop ----------------------------------------------------------

    def _drive(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` on the loop, then let the loop run until nothing is runnable."""
        self.step += 1

        async def go() -> None:
            await action()
            if not await settle(self.loop):
                self._violate(EngineBusy, "the loop never idled with the clock stopped")

        self.loop.run_until_complete(go())

    async def _drain(self) -> None:
        self.auto = True
        self._note("quiesce")
        try:
            await self._drain_rounds()
        finally:
            self.stored = {
                a.id: await self.store.inner.get(ACTIVITY, a.id) for a in self.aggregates
            }

    async def _drain_rounds(self) -> None:
        for _ in range(DRAIN_ROUNDS):
            self.store.mode = "instant"
            self.store.release_all()
            for run in self.live:
                if run.wakeup is not None:
                    run.wakeup.set()
            if not await settle(self.loop):
                self._violate(EngineBusy, "the loop never idled while draining")
                return
            assert self.engine is not None
            if (
                not self.store.busy
                and not self.calls
                and all(
                    self._at_rest(t) and (t.state in NOT_BOUND_TO_CATCH_UP or self._caught_up(t))
                    for t in self.engine.tasks()
                )
            ):
                return
            self.loop.advance(DRAIN_STEP)
            if not await settle(self.loop):
                self._violate(EngineBusy, "the loop never idled while draining")
                return

    async def _boot(self) -> None:
        """Start an engine on the journal and store, with tasks from the stored records."""
        self.engine_generation += 1
        self.booted_at = self.step
        engine = self._build_engine()
        self.engine = engine
        self.shutting_down = False
        started = anyio.Event()

        async def host() -> None:
            async with anyio.create_task_group() as tg:
                self.engine_scope = tg.cancel_scope
                await tg.start(engine.run)
                started.set()
                await anyio.sleep_forever()

        self.host = asyncio.get_running_loop().create_task(host())
        await settle(self.loop)
        if not started.is_set():
            self._violate(EngineCrashed, "engine.run did not start")
            return
        for aggregate in self._boot_aggregates():
            record = await self.store.inner.get(ACTIVITY, aggregate.id)
            # As the runner does: the stored state, tail and backoff carry over.
            if record is None:
                engine.start_activity(aggregate, self.activity, None)
            else:
                engine.restore(aggregate, self.activity, record)
        self._note(f"engine #{self.engine_generation} started ({self.KIND})")

    def _build_engine(self) -> Engine:
        return build_engine(
            EngineOptions(
                kind=self.KIND,
                capacity=self.capacity,
                retry=RETRY,
                backstop=BACKSTOP,
                interval=CRON_INTERVAL,
            ),
            journal=self.journal,
            tails=self.store,
            activities=[self.activity],
        )

    def _boot_aggregates(self) -> list[AggregateRef]:
        """The aggregates a new engine starts tasks for (all of them; a subclass may hold fewer)."""
        return self.aggregates

    async def _shutdown(self) -> None:
        assert self.engine_scope is not None and self.host is not None
        self.shutting_down = True
        self._note(f"shutdown of engine #{self.engine_generation}")
        self.engine_scope.cancel()
        for _ in range(10):
            self.store.mode = "instant"
            self.store.release_all()
            await settle(self.loop)
            if self.host.done():
                break
            if self.store.busy:
                self.loop.advance(self.store.delay)  # saves that take time
        if not self.host.done():
            self._violate(EngineCrashed, "shutdown did not finish with every save released")
            return
        if not self.host.cancelled() and self.host.exception() is not None:
            self._violate(
                EngineCrashed, f"engine.run raised on shutdown: {self.host.exception()!r}"
            )
        for run in self.live:
            self._violate(EngineCrashed, f"run {run.number} still runs after shutdown")
        # The old process's pending operator calls die with it.
        for call in list(self.calls):
            assert call.runner is not None
            call.runner.cancel()
        await settle(self.loop)

    # -- signals and controls ----------------------------------------------------------

    async def _append(self, aggregate: AggregateRef, count: int) -> None:
        running = self._live_runs(aggregate.id) or self._state(aggregate.id) is TaskState.RUNNING
        result = await self.journal.append(aggregate, [NewEvent(type="e")] * count)
        ids = self.journal.event_ids(aggregate.id)
        for event_id in result.event_ids:
            self.names[event_id] = f"{self._agg(aggregate.id)}.e{ids.index(event_id) + 1}"
        last = result.event_ids[-1]
        if running:
            what = f"{self._tail(last)} appended at step {self.step} while the task ran"
            self.obligations.append(Obligation(aggregate.id, last, what))
        self._note(f"append {count} to {self._agg(aggregate.id)} (head {self._tail(last)})")

    def _issue(self, op: str, key: uuid.UUID, tail: ULID | None) -> None:
        engine = self.engine
        assert engine is not None
        task = engine.find(ACTIVITY, key)
        if task is None:  # not this runner's (a subclass holds fewer aggregates)
            self._note(f"{op} of {self._agg(key)} not called: no task here")
            return
        book = self.books[key]
        self.call_count += 1
        call = ControlCall(
            self.call_count, op, key, tail, self.step, self.engine_generation, book.resumes_issued
        )
        if op in ("resume", "restart"):
            book.resumes_issued += 1
            book.stop_hold = None
            if op == "restart":
                book.done_hold = None
        else:
            call.overlapped = any(
                c.key == key and c.op in ("resume", "restart") for c in self.calls
            )
        self.calls.append(call)
        suffix = f"({self._tail(tail)})" if op == "restart" else ""
        self._note(f"{op}{suffix} #{call.number} of {self._agg(key)} called ({task.state.value})")
        call.runner = asyncio.get_running_loop().create_task(self._operate(call, engine, task))

    async def _operate(self, call: ControlCall, engine: Engine, task: Task) -> None:
        try:
            if call.op == "stop":
                await engine.stop(task)
            elif call.op == "suspend":
                await engine.suspend(task)
            elif call.op == "resume":
                await engine.resume(task)
            else:
                await engine.restart(task, call.tail)
        except (TailrunnerError, ValueError) as exc:
            self._note(f"{call.op} #{call.number} refused: {exc}")
        except Exception as exc:
            self._violate(ControlRaised, f"{call.op} #{call.number} raised {exc!r}")
        else:
            self._returned(call)
        finally:
            self.calls.remove(call)

    def _returned(self, call: ControlCall) -> None:
        self._note(f"{call.op} #{call.number} of {self._agg(call.key)} returned")
        if call.op not in ("stop", "suspend") or call.engine_generation != self.engine_generation:
            return
        book = self.books[call.key]
        if call.overlapped or book.resumes_issued != call.resumes_before:
            return  # a resume/restart overlapped it: either may have won
        hold = f"{call.op} #{call.number} of {self._agg(call.key)} returned at step {self.step}"
        for run in self._live_runs(call.key):
            self._violate(StopDidNotHold, f"{hold}, but run {run.number} still runs")
        book.stop_hold = hold

    # -- the scripted activity --------------------------------------------------------

    def _make_activity(self) -> Activity:
        machine = self

        @activity(name=ACTIVITY, aggregate_types=[AGGREGATE_TYPE])
        async def scripted(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
            run = machine._enter(ctx.aggregate.id, tail)
            result = "raised"
            try:
                async with aclosing(stream.batches()) as batches:
                    outcome = await machine._play(run, ctx, batches)
                result = f"returned {type(outcome).__name__}({machine._tail(outcome.tail)})"
                if isinstance(outcome, Done):
                    machine._on_done(run)
                return outcome
            except anyio.get_cancelled_exc_class():
                result = "cancelled"
                raise
            except machine.PASSED_THROUGH as exc:
                result = f"raised {type(exc).__name__}"
                raise
            except Exception as exc:
                machine._violate(HarnessBroke, f"run {run.number} raised {exc!r}")
                raise
            finally:
                machine._leave(run, result)

        return scripted

    async def _play(
        self, run: Run, ctx: ActivityContext, batches: AsyncGenerator[EventBatch, None]
    ) -> Outcome:
        while True:
            action = await self._next_action(run)
            if action is None:  # quiescing: behave as a plain activity would
                if self.KIND == "eager" and await self._follow(run, ctx, batches):
                    continue
                await self._read_to_end(run, batches)
                return EOF(run.position)
            tails = run.valid_tails()
            picked = tails[action.pick % len(tails)]
            match action.kind:
                case "read":
                    await self._read(run, batches)
                case "checkpoint":
                    run.checkpointed.append(run.position)
                    await ctx.checkpoint(run.position)
                case "eof":
                    await self._read_to_end(run, batches)
                    return EOF(run.position)
                case "done":
                    return Done(picked)
                case "silent_retry":
                    return SilentRetry(tail=picked, reason="scripted")
                case "retry_after":
                    when = datetime.now(UTC) + timedelta(seconds=action.delay)
                    raise SilentRetryAfter(when, tail=picked, reason="scripted")
                case "failed":
                    raise Failed("scripted", tail=picked)
                case _:
                    raise ScriptedError("scripted error")

    async def _next_action(self, run: Run) -> Action | None:
        while not run.inbox:
            if self.auto:
                return None
            run.wakeup = anyio.Event()
            run.waiting = True
            try:
                await run.wakeup.wait()
            finally:
                run.waiting = False
                run.wakeup = None
        return run.inbox.popleft()

    async def _read(self, run: Run, batches: AsyncGenerator[EventBatch, None]) -> None:
        run.reading = True
        try:
            batch = await anext(batches)
        except StopAsyncIteration:
            run.exhausted = True
            return
        finally:
            run.reading = False
        ids = self.journal.event_ids(run.key)
        for event in batch.events:
            # The next of the aggregate's events after what this run was handed
            # (or its start tail): a stream skips none and repeats none.
            position = run.position
            expected = ids[0 if position is None else ids.index(position) + 1]
            if event.id != expected:
                raise StreamSkipped(
                    f"run {run.number} of {run.key} was handed {event.id} after"
                    f" {position}; the journal's next event is {expected}"
                )
            run.handed.append(event.id)
            self._discharge(run.key, event.id)
        run.caught_up = batch.will_block

    async def _read_to_end(self, run: Run, batches: AsyncGenerator[EventBatch, None]) -> None:
        while not run.caught_up and not run.exhausted:
            await self._read(run, batches)

    async def _follow(
        self, run: Run, ctx: ActivityContext, batches: AsyncGenerator[EventBatch, None]
    ) -> bool:
        """Eager, quiescing: read and checkpoint as events come; ``False`` if the stream ended."""
        while self.auto:
            if run.position != ctx.tail:
                run.checkpointed.append(run.position)
                await ctx.checkpoint(run.position)
                continue
            await self._read(run, batches)
            if run.exhausted:
                return False
        return True

    def _enter(self, key: uuid.UUID, tail: ULID | None) -> Run:
        self.run_count += 1
        run = Run(self.run_count, key, self.engine_generation, tail)
        name = f"run {run.number} of {self._agg(key)}"
        for other in self._live_runs(key):
            self._violate(TwoRunsAtOnce, f"{name} started while run {other.number} still runs")
        book = self.books[key]
        if book.done_hold is not None:
            self._violate(DoneRanAgain, f"{name} started, but {book.done_hold}")
        if book.stop_hold is not None:
            self._violate(StopDidNotHold, f"{name} started, but {book.stop_hold}")
        self.live.append(run)
        if tail is not None:
            self.obligations = [
                o for o in self.obligations if not (o.key == key and o.event <= tail)
            ]
        self._note(f"{name} starts from {self._tail(tail)}")
        return run

    def _leave(self, run: Run, result: str) -> None:
        self.live.remove(run)
        self._note(f"run {run.number} of {self._agg(run.key)} {result}")

    def _on_done(self, run: Run) -> None:
        if any(c.key == run.key and c.op == "restart" for c in self.calls):
            return  # a restart in flight may take effect after this Done
        self.books[
            run.key
        ].done_hold = f"run {run.number} of {self._agg(run.key)} returned Done at step {self.step}"

    def _discharge(self, key: uuid.UUID, event: ULID) -> None:
        self.obligations = [o for o in self.obligations if not (o.key == key and o.event <= event)]

    # -- bookkeeping ---------------------------------------------------------------

    def _pick_aggregate(self, which: int) -> AggregateRef:
        """The ``which``-th aggregate, those whose task is busy first.

        Busy: a run going, a save of it under way, or a control in flight.
        Signals and controls that land on a busy task are where the races
        are, and hypothesis draws small indexes more often.
        """
        pending = {p.record.aggregate.id for p in self.store.pending}

        def idle(aggregate: AggregateRef) -> bool:
            key = aggregate.id
            return not (
                self._live_runs(key) or key in pending or any(c.key == key for c in self.calls)
            )

        ordered = sorted(self.aggregates, key=idle)
        return ordered[which % len(ordered)]

    def _live_runs(self, key: uuid.UUID) -> list[Run]:
        return [r for r in self.live if r.key == key]

    def _state(self, key: uuid.UUID) -> TaskState | None:
        task = self.engine.find(ACTIVITY, key) if self.engine is not None else None
        return task.state if task is not None else None

    def _violate(self, kind: type[InvariantViolated], what: str) -> None:
        self._note(f"VIOLATION {kind.__name__}: {what}")
        if not self.closing:
            self.violations.append(kind(self._message(what)))

    def _raise_recorded(self) -> None:
        if self.violations:
            raise self.violations[0]

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An exception nobody awaited (a task the engine started and lost).
        self._violate(EngineCrashed, f"unhandled in the loop: {context.get('message')} {context}")

    def _note(self, line: str) -> None:
        self.trace.append(f"[{self.step}] t={self.loop.time() - 1000:g} {line}")

    def _message(self, what: str) -> str:
        states = []
        if self.engine is not None:
            for task in sorted(self.engine.tasks(), key=lambda t: t.aggregate.id):
                states.append(
                    f"{self._agg(task.aggregate.id)}={task.state.value}@{self._tail(task.tail)}"
                )
        recent = "\n    ".join(self.trace[-40:])
        return f"{what}\n  tasks: {', '.join(states)}\n  trace (newest last):\n    {recent}"

    def _agg(self, key: uuid.UUID) -> str:
        return f"a{key.int}"

    def _tail(self, tail: ULID | None) -> str:
        return "epoch" if tail is None else self.names.get(tail, str(tail))

    # -- teardown --------------------------------------------------------------------

    def teardown(self) -> None:
        self.closing = True
        loop = self.loop

        async def close() -> None:
            if self.engine_scope is not None:
                self.engine_scope.cancel()
            for call in list(self.calls):
                if call.runner is not None:
                    call.runner.cancel()
            for _ in range(10):
                self.store.mode = "instant"
                self.store.release_all()
                await settle(loop)
                if self.host is None or self.host.done():
                    break
                loop.advance(self.store.delay)

        try:
            loop.run_until_complete(close())
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for leftover in leftovers:
                leftover.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            if self.host is not None and self.host.done() and not self.host.cancelled():
                self.host.exception()  # retrieved: a crash was reported by the invariant
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self._logs.__exit__(None, None, None)


ALL_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _settings() -> settings:
    examples = os.environ.get("TAILRUNNER_STATEFUL_EXAMPLES")
    shrink = bool(examples) or os.environ.get("TAILRUNNER_STATEFUL_SHRINK") == "1"
    common: dict[str, Any] = {
        # Shrinking a failure of this machine takes minutes (see the module
        # docstring): CI reports the first failing sequence as found.
        "phases": ALL_PHASES if shrink else NO_SHRINK,
        "report_multiple_bugs": shrink,
        "deadline": None,
        "database": None,
        "print_blob": False,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    }
    if examples:
        return settings(
            max_examples=int(examples),
            stateful_step_count=int(os.environ.get("TAILRUNNER_STATEFUL_STEPS", "80")),
            derandomize=False,
            **common,
        )
    return settings(max_examples=300, stateful_step_count=40, derandomize=True, **common)


class LazyMachine(EngineMachine):
    KIND = "lazy"


class CronMachine(EngineMachine):
    KIND = "cron"


class EagerMachine(EngineMachine):
    KIND = "eager"


# Plain test functions rather than ``Machine.TestCase``: the hypothesis pytest
# plugin cannot read a TestCase's settings, and trips on the suite's
# parametrized fixtures when it tries.


def test_lazy_engine_invariants_hold_under_random_interleavings() -> None:
    run_state_machine_as_test(LazyMachine, settings=_settings())


def test_cron_engine_invariants_hold_under_random_interleavings() -> None:
    run_state_machine_as_test(CronMachine, settings=_settings())


def test_eager_engine_invariants_hold_under_random_interleavings() -> None:
    run_state_machine_as_test(EagerMachine, settings=_settings())
