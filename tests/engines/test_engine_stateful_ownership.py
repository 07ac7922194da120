"""The engines' state machine (test_engine_stateful.py) with scale-out ownership moving at random.

:class:`OwnershipMachine` is :class:`~tests.engines.test_engine_stateful.EngineMachine`
(every rule and invariant of it still applies to the tasks this runner holds)
with a fake :class:`~tailrunner.engines.ownership.TaskOwnership` whose held
set its rules change, as :class:`~tailrunner.scaleout.membership.Membership`
and :class:`~tailrunner.runner.Runner` do:

- ``grant``: an aggregate is held again (a new epoch); the task is started
  from its stored record (``restore`` / ``start_activity``), as the runner's
  discovery does after a claim;
- ``lose``: the lease is gone; ownership drops the aggregate, then
  ``engine.retire`` its task at once (``Membership.on_lost``);
- ``give_back``: the aggregate drains (``allows`` is ``False``), ``await
  engine.evict(tasks, wait=...)`` (virtual seconds), then ownership drops it.
  It runs beside the other rules until it returns.

The tail store is fenced as :class:`~tailrunner.scaleout.fenced_tails.FencedTailStore`
is: a write takes its aggregate's epoch when it is called (refused with
``LeaseLost`` when not held) and commits only if that epoch is still held.

What must hold, besides the base machine's invariants:

1. **Never two runs of one task at once**, counting runs of retired ``Task``
   objects (:class:`~tests.engines.test_engine_stateful.TwoRunsAtOnce`): the
   base check counts every run of the aggregate still inside the activity,
   whichever ``Task`` object it belongs to; a retired task never starts a
   new run (:class:`RetiredRan`).
2. **No run starts unheld** (:class:`RanUnheld`): a run enters the activity
   only while its aggregate is held; while it drains, only a run dispatched
   before the drain began (it was storing its ``RUNNING`` mark) may enter.
3. **A retired task writes nothing** (:class:`RetiredWrote`): no store write
   is *called* for an aggregate after ``retire`` returned until it is granted
   again, nor ever by a run of a retired ``Task`` (fencing would refuse most
   of these, but after a re-grant the old task's write would pass the fence).
4. **Evict leaves nothing RUNNING** (:class:`EvictLeftRunning`): when evict
   returns its tasks are retired, no run of them is still going unless
   ``wait`` plus the shutdown grace passed, and the stored record is not
   ``RUNNING``. Not checked when the aggregate was lost meanwhile, when evict
   gave up on a run after the grace, or when the record is still the
   previous owner's ``RUNNING`` mark the task was restored from (a crashed
   attempt counted in memory only, never run here: its next owner counts
   the same attempt, no more).
5. At quiescence every ``give_back`` returned (:class:`GiveBackHung`), each
   held aggregate has its task and each unheld one has none
   (:class:`OwnershipDiverged`), and the held tasks rest as the base machine
   expects.

Engine defects this machine found, each fixed and replayed, as hypothesis
shrank it, in a regression test at the end of this module:

- D1: a control called while a run stores its ``RUNNING`` mark never cancelled
  that run (eager: the control hung);
- D2: a stop of a task that evict cut was overwritten by evict's ``PENDING``;
- D3: evict and shutdown stole each other's wake-ups (one shared event);
- D4: a re-granted task ran beside its retired predecessor's run, still in
  the activity inside a shielded save.

A ``Done`` whose save the fence refused (the lease went first) is not
durable: the next owner runs the task again, so a grant forgets the
machine's done-hold unless the stored record is ``COMPLETE``.

Runs by default: a bounded, derandomized number of examples per engine;
``TAILRUNNER_STATEFUL_EXAMPLES`` / ``TAILRUNNER_STATEFUL_STEPS`` /
``TAILRUNNER_STATEFUL_SHRINK`` work as for the base machine::

    TAILRUNNER_STATEFUL_EXAMPLES=2000 .venv/bin/pytest \\
        tests/engines/test_engine_stateful_ownership.py -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test
from ulid import ULID

from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.task import Task
from tailrunner.errors import LeaseLost
from tailrunner.model import AggregateRef
from tailrunner.states import TaskState
from tailrunner.tails.store import RunRecord, TailRecord

from .stateful_support import SlowTailStore, settle
from .test_engine_stateful import (
    ACTIVITY,
    BACKSTOP,
    CRON_INTERVAL,
    DRAIN_ROUNDS,
    DRAIN_STEP,
    RETRY,
    EngineMachine,
    InvariantViolated,
    Run,
    _settings,
)

#: Shorter than the default, so that ``advance_time`` reaches it: evict cuts a run after it.
SHUTDOWN_GRACE = 2.0
EVICT_WAITS = (0.0, 1.0, 5.0)


class RetiredRan(InvariantViolated):
    pass


class RanUnheld(InvariantViolated):
    pass


class RetiredWrote(InvariantViolated):
    pass


class EvictLeftRunning(InvariantViolated):
    pass


class GiveBackHung(InvariantViolated):
    pass


class OwnershipDiverged(InvariantViolated):
    pass


@dataclass(frozen=True, slots=True)
class FakeLease:
    owner: str
    epoch: int


class FakeOwnership:
    """Holds the aggregates in :attr:`epochs`, each under an epoch of its own.

    A draining aggregate (in :attr:`draining`) is still held but refuses new runs.
    """

    def __init__(self) -> None:
        self.epochs: dict[uuid.UUID, int] = {}
        self.draining: set[uuid.UUID] = set()
        self._epoch = 0

    def allows(self, activity: str, aggregate_id: uuid.UUID) -> bool:
        return aggregate_id in self.epochs and aggregate_id not in self.draining

    def lease(self, activity: str, aggregate_id: uuid.UUID) -> FakeLease | None:
        epoch = self.epochs.get(aggregate_id)
        return None if epoch is None else FakeLease("me", epoch)

    def hold(self, key: uuid.UUID) -> int:
        self._epoch += 1
        self.epochs[key] = self._epoch
        return self._epoch

    def drop(self, key: uuid.UUID) -> None:
        self.epochs.pop(key, None)
        self.draining.discard(key)


class FencedSlowTailStore(SlowTailStore):
    """A :class:`SlowTailStore` whose writes are fenced by the aggregate's epoch.

    ``on_write(what, record)`` is called first for every write called, held
    or not (the machine checks who writes).
    """

    def __init__(
        self, ownership: FakeOwnership, on_write: Callable[[str, TailRecord], None]
    ) -> None:
        super().__init__()
        self.ownership = ownership
        self.on_write = on_write
        self.refused = 0

    def _fence(self, what: str, key: uuid.UUID, record: TailRecord | None) -> int:
        if record is not None:
            self.on_write(what, record)
        epoch = self.ownership.epochs.get(key)
        if epoch is None:
            self.refused += 1
            raise LeaseLost(f"{what} of {key}: not held")
        return epoch

    def _check(self, what: str, key: uuid.UUID, epoch: int) -> None:
        if self.ownership.epochs.get(key) != epoch:
            self.refused += 1
            raise LeaseLost(f"{what} of {key}: epoch {epoch} no longer held")

    async def save(self, record: TailRecord) -> None:
        key = record.aggregate.id
        epoch = self._fence("save", key, record)
        await self._wait("save", record)
        try:
            self._check("save", key, epoch)
            await self.inner.save(record)
            self._committed("save", record)
        finally:
            self.busy -= 1

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        what = f"save_with_run({run.outcome})"
        key = record.aggregate.id
        epoch = self._fence(what, key, record)
        await self._wait(what, record)
        try:
            self._check(what, key, epoch)
            await self.inner.save_with_run(record, run)
            self._committed(what, record)
        finally:
            self.busy -= 1

    async def record_run(self, run: RunRecord) -> None:
        self._check(
            "record_run", run.aggregate.id, self._fence("record_run", run.aggregate.id, None)
        )
        await self.inner.record_run(run)

    @asynccontextmanager
    async def transaction(self, record: TailRecord) -> AsyncIterator[Any]:
        key = record.aggregate.id
        epoch = self._fence("transaction", key, record)
        async with self.inner.transaction(record) as conn:
            yield conn
            self._check("transaction", key, epoch)


@dataclass(eq=False, slots=True)
class GiveBack:
    number: int
    key: uuid.UUID
    step: int
    engine: Engine
    task: Task | None
    epoch: int
    #: The task was dispatched but its run not yet in the activity when the
    #: drain began: that run may still enter (once).
    entry_allowed: bool
    runner: asyncio.Task[None] | None = None


class OwnershipMachine(EngineMachine):
    PASSED_THROUGH: ClassVar[tuple[type[Exception], ...]] = (
        *EngineMachine.PASSED_THROUGH,
        LeaseLost,  # a checkpoint the fence refused, in a run being cancelled
    )

    def __init__(self) -> None:
        super().__init__()
        self.ownership = FakeOwnership()
        self.store = FencedSlowTailStore(self.ownership, self._on_write)
        self.engines: list[Engine] = []
        self.held_from_start = False
        #: Aggregates lost or given back, not granted again: why.
        self.released: dict[uuid.UUID, str] = {}
        #: The ``Task`` object each run (by number) belongs to.
        self.run_owner: dict[int, Task] = {}
        self.give_backs: list[GiveBack] = []
        self.give_back_count = 0
        #: Records found ``RUNNING`` when a task was restored from them.
        self.restored_running: dict[uuid.UUID, TailRecord] = {}

    # -- rules ---------------------------------------------------------------------

    def _unheld(self) -> list[uuid.UUID]:
        """Aggregates that may be granted: not held."""
        return [a.id for a in self.aggregates if a.id not in self.ownership.epochs]

    def _retired_runs(self, key: uuid.UUID) -> list[Run]:
        return [
            r
            for r in self._live_runs(key)
            if (owner := self.run_owner.get(r.number)) is not None and owner.retired
        ]

    def _held(self, *, draining: bool) -> list[uuid.UUID]:
        """Held aggregates, busy ones first (as the base machine picks them)."""
        keys = [
            a.id
            for a in self.aggregates
            if a.id in self.ownership.epochs and (draining or a.id not in self.ownership.draining)
        ]
        pending = {p.record.aggregate.id for p in self.store.pending}
        return sorted(keys, key=lambda k: not (self._live_runs(k) or k in pending))

    @precondition(lambda self: self._unheld())
    @rule(which=st.integers(0, 2))
    def grant(self, which: int) -> None:
        """Held again: start the task from its stored record, as discovery after a claim does."""
        unheld = self._unheld()
        key = unheld[which % len(unheld)]

        async def go() -> None:
            epoch = self.ownership.hold(key)
            self.released.pop(key, None)
            record = await self.store.inner.get(ACTIVITY, key)
            if record is None or not record.completed:
                self.books[key].done_hold = None  # its Done was refused by the fence
            engine = self.engine
            assert engine is not None
            aggregate = next(a for a in self.aggregates if a.id == key)
            if engine.find(ACTIVITY, key) is not None:
                self._violate(OwnershipDiverged, f"{self._agg(key)} has a task before its grant")
            elif record is None:
                engine.start_activity(aggregate, self.activity, None)
            else:
                self._restored(key, record)
                engine.restore(aggregate, self.activity, record)
            stored = "nothing" if record is None else f"{record.state}@{self._tail(record.tail)}"
            self._note(f"grant {self._agg(key)} (epoch {epoch}), stored {stored}")

        self._drive(go)

    @precondition(lambda self: self.ownership.epochs)
    @rule(which=st.integers(0, 2))
    def lose(self, which: int) -> None:
        """The lease is gone: ownership drops it, then the engine retires its task at once."""
        held = self._held(draining=True)
        key = held[which % len(held)]

        async def go() -> None:
            self.ownership.drop(key)
            engine = self.engine
            assert engine is not None
            task = engine.find(ACTIVITY, key)
            state = "no task" if task is None else task.state.value
            engine.retire([task] if task is not None else [])
            for give in self.give_backs:
                if give.key == key and give.task is not None:
                    # Lost while draining (an older engine's evict, say): the
                    # runner retires it in that engine too.
                    give.engine.retire([give.task])
            self.released[key] = f"{self._agg(key)} lost at step {self.step}"
            self._note(f"lose {self._agg(key)} ({state})")

        self._drive(go)

    @precondition(lambda self: self._held(draining=False))
    @rule(which=st.integers(0, 2), wait=st.sampled_from(EVICT_WAITS))
    def give_back(self, which: int, wait: float) -> None:
        """Drain the aggregate, ``await engine.evict(tasks, wait=...)``, then drop it."""
        held = self._held(draining=False)
        key = held[which % len(held)]

        async def go() -> None:
            engine = self.engine
            assert engine is not None
            self.ownership.draining.add(key)
            task = engine.find(ACTIVITY, key)
            self.give_back_count += 1
            give = GiveBack(
                self.give_back_count,
                key,
                self.step,
                engine,
                task,
                self.ownership.epochs[key],
                entry_allowed=task is not None
                and task.state is TaskState.RUNNING
                and not self._runs_of(task),
            )
            self.give_backs.append(give)
            state = "no task" if task is None else task.state.value
            self._note(f"give_back #{give.number} of {self._agg(key)} ({state}), wait {wait:g}s")
            give.runner = asyncio.get_running_loop().create_task(self._give_back(give, wait))

        self._drive(go)

    async def _give_back(self, give: GiveBack, wait: float) -> None:
        name = f"give_back #{give.number} of {self._agg(give.key)}"
        began = self.loop.time()
        try:
            await give.engine.evict([give.task] if give.task is not None else [], wait=wait)
        except Exception as exc:
            self._violate(EvictLeftRunning, f"{name}: evict raised {exc!r}")
        finally:
            self.give_backs.remove(give)
        lost = self.ownership.epochs.get(give.key) != give.epoch
        if not lost:
            self.ownership.drop(give.key)
            self.released[give.key] = f"{name} returned at step {self.step}"
        self._note(f"{name} returned{' (lost meanwhile)' if lost else ''}")
        if give.task is not None and not give.task.retired:
            self._violate(EvictLeftRunning, f"{name} returned, but its task is not retired")
        if lost:
            return  # the lease went mid-drain: nothing was to be stored
        # Private: the run is still going (storing, shielded). Evict may give
        # up on it only after ``wait`` and then the shutdown grace.
        if give.task is not None and give.task in give.engine._runs:
            if self.loop.time() - began < wait + SHUTDOWN_GRACE:
                self._violate(
                    EvictLeftRunning,
                    f"{name} returned after {self.loop.time() - began:g}s with its run going",
                )
            else:
                self._note(f"{name}: evict gave up on its run after the grace")
            return
        record = await self.store.inner.get(ACTIVITY, give.key)
        if record is None or record.state != TaskState.RUNNING:
            return
        restored = self.restored_running.get(give.key)
        if restored is not None and restored.updated_at == record.updated_at:
            # The previous owner's mark, untouched: the task was restored
            # (a crashed attempt, RETRY in memory only) and never ran here.
            # Its next owner counts that same attempt again: no double count.
            self._note(f"{name}: the previous owner's RUNNING mark is left as it was")
            return
        self._violate(EvictLeftRunning, f"{name} returned, but the store holds it RUNNING")

    def _restored(self, key: uuid.UUID, record: TailRecord | None) -> None:
        if record is not None and record.state == TaskState.RUNNING:
            self.restored_running[key] = record

    # -- what the runs and the store see ---------------------------------------------

    def _current_owner(self) -> Task | None:
        """The ``Task`` whose run the current asyncio task is, in any engine of this example."""
        current = asyncio.current_task()
        for engine in self.engines:
            # Private: the engine's runs by task; the only way to tell two
            # Task objects of one aggregate apart from inside a run.
            for task, handle in engine._runs.items():
                if handle is current:
                    return task
        return None

    def _runs_of(self, task: Task) -> list[Run]:
        return [r for r in self.live if self.run_owner.get(r.number) is task]

    def _enter(self, key: uuid.UUID, tail: ULID | None) -> Run:
        owner = self._current_owner()
        run = super()._enter(key, tail)
        name = f"run {run.number} of {self._agg(key)}"
        if owner is None:
            self._violate(RetiredRan, f"{name}: not a run of any engine's task")
            return run
        self.run_owner[run.number] = owner
        if owner.retired:
            self._violate(RetiredRan, f"{name} started for a retired task")
        if key not in self.ownership.epochs:
            self._violate(RanUnheld, f"{name} started unheld: {self.released.get(key)}")
        elif key in self.ownership.draining:
            give = next((g for g in self.give_backs if g.task is owner), None)
            if give is None or not give.entry_allowed:
                self._violate(RanUnheld, f"{name} started while its aggregate drains")
            else:
                give.entry_allowed = False
        return run

    def _on_write(self, what: str, record: TailRecord) -> None:
        key = record.aggregate.id
        owner = self._current_owner()
        line = f"{what} of {self._agg(key)} ({record.state}@{self._tail(record.tail)})"
        if owner is not None and owner.retired:
            self._violate(RetiredWrote, f"{line} called by a run of a retired task")
        elif key in self.released:
            self._violate(RetiredWrote, f"{line} called after {self.released[key]}")

    # -- engines -----------------------------------------------------------------------

    def _build_engine(self) -> Engine:
        engine = build_engine(
            EngineOptions(
                kind=self.KIND,
                capacity=self.capacity,
                retry=RETRY,
                backstop=BACKSTOP,
                interval=CRON_INTERVAL,
                shutdown_grace=SHUTDOWN_GRACE,
            ),
            journal=self.journal,
            tails=self.store,
            activities=[self.activity],
            ownership=self.ownership,
        )
        self.engines.append(engine)
        return engine

    async def _boot(self) -> None:
        for aggregate in self.aggregates:
            self._restored(aggregate.id, await self.store.inner.get(ACTIVITY, aggregate.id))
        await super()._boot()

    def _boot_aggregates(self) -> list[AggregateRef]:
        if not self.held_from_start:
            self.held_from_start = True
            for aggregate in self.aggregates:
                self.ownership.hold(aggregate.id)
        # A draining aggregate is being given back by the old engine.
        return [
            a
            for a in self.aggregates
            if a.id in self.ownership.epochs and a.id not in self.ownership.draining
        ]

    # -- quiescence --------------------------------------------------------------------

    async def _drain_rounds(self) -> None:
        for _ in range(DRAIN_ROUNDS):
            await super()._drain_rounds()
            if not self.give_backs:
                return
            self.loop.advance(DRAIN_STEP)
            await settle(self.loop)

    def _check_quiescence(self) -> None:
        assert self.engine is not None
        for give in self.give_backs:
            raise GiveBackHung(
                self._message(
                    f"give_back #{give.number} of {self._agg(give.key)} (step {give.step})"
                    " never returned"
                )
            )
        tasks = {t.aggregate.id for t in self.engine.tasks()}
        held = set(self.ownership.epochs)
        if tasks != held:
            raise OwnershipDiverged(
                self._message(
                    f"held {sorted(self._agg(k) for k in held)}, tasks"
                    f" {sorted(self._agg(k) for k in tasks)}"
                )
            )
        kept = self.obligations
        # Someone else's now; the obligation holds again once granted back.
        self.obligations = [o for o in kept if o.key in held]
        try:
            super()._check_quiescence()
        finally:
            self.obligations = kept


def _ownership_settings() -> settings:
    base = _settings()
    if os.environ.get("TAILRUNNER_STATEFUL_EXAMPLES"):
        return base
    return settings(base, max_examples=300, stateful_step_count=40)


class LazyOwnershipMachine(OwnershipMachine):
    KIND = "lazy"


class CronOwnershipMachine(OwnershipMachine):
    KIND = "cron"


class EagerOwnershipMachine(OwnershipMachine):
    KIND = "eager"


def test_lazy_engine_under_moving_ownership() -> None:
    run_state_machine_as_test(LazyOwnershipMachine, settings=_ownership_settings())


def test_cron_engine_under_moving_ownership() -> None:
    run_state_machine_as_test(CronOwnershipMachine, settings=_ownership_settings())


def test_eager_engine_under_moving_ownership() -> None:
    run_state_machine_as_test(EagerOwnershipMachine, settings=_ownership_settings())


# -- engine defects this machine found (fixed), replayed as hypothesis shrank them --

Steps = list[tuple[str, dict[str, Any]]]


def _replay(machine_class: type[OwnershipMachine], steps: Steps) -> None:
    """Run the rules in order, checking the invariants after each, as hypothesis does."""

    machine = machine_class()
    try:
        for name, kwargs in steps:
            getattr(machine, name)(**kwargs)
            machine.nothing_went_wrong()
            machine.no_lazy_task_sleeps_behind_its_head()
    finally:
        machine.teardown()


def test_d1_eager_stop_while_the_run_is_marked_running_lands() -> None:
    """Was defect D1 (fixed): a stop called while the run stores its RUNNING mark never cancels
    the run (task.scope is None until run_once opens it); an eager run never ends, so the stop
    hangs
    """
    _replay(
        EagerOwnershipMachine,
        [
            ("start", {"capacity": 1, "aggregates": 1, "initial": [0, 0, 0], "store": "gate"}),
            ("control", {"at": None, "op": "stop", "which": 0}),
            ("saves", {"op": "release", "which": 0}),
            ("quiesce", {}),
        ],
    )


def test_d2_a_stop_during_evict_holds_after_the_hand_over() -> None:
    """Was defect D2 (fixed): evict cuts the run and saves PENDING (slow store); a stop of the
    cut task (idle, not busy) stores STOPPED and returns; evict's older PENDING save then
    commits over it, and the next owner runs the stopped task
    """
    _replay(
        CronOwnershipMachine,
        [
            ("start", {"capacity": 1, "aggregates": 1, "initial": [0, 0, 0], "store": "sleep"}),
            ("advance_time", {"by": None}),
            ("give_back", {"wait": 0.0, "which": 0}),
            ("saves", {"op": "gate", "which": 0}),
            ("control", {"at": None, "op": "stop", "which": 0}),
            ("quiesce", {}),
            ("restart_runner", {}),
            ("grant", {"which": 0}),
        ],
    )


def test_d3_shutdown_during_an_evict_ends_when_the_runs_do() -> None:
    """Was defect D3 (fixed): evict (_until_no_runs) and shutdown (_stop_runs) each replace the
    one _runs_changed event: shutdown during an evict waits on an event nobody sets, so it
    ends only when its shutdown_grace runs out though no run is left
    """
    _replay(
        CronOwnershipMachine,
        [
            ("start", {"capacity": 1, "aggregates": 2, "initial": [0, 0, 0], "store": "sleep"}),
            ("advance_time", {"by": None}),
            ("give_back", {"wait": 0.0, "which": 0}),
            ("give_back", {"wait": 1.0, "which": 0}),
            ("restart_runner", {}),
        ],
    )


def test_d4_a_granted_task_waits_for_the_retired_tasks_run() -> None:
    """Was defect D4 (fixed): eager, caught up; an append makes the run store RUNNING again
    (shielded, slow store) inside the activity; lose retires it, but the run stays in the
    activity until the save returns; a grant meanwhile starts the new task's run beside it
    (the stop of the other task only frees a capacity slot)
    """
    _replay(
        EagerOwnershipMachine,
        [
            ("start", {"capacity": 1, "aggregates": 2, "initial": [0, 0, 0], "store": "instant"}),
            ("advance_time", {"by": None}),
            ("advance_time", {"by": None}),
            ("quiesce", {}),
            ("saves", {"op": "gate", "which": 0}),
            ("append", {"count": 1, "which": 0}),
            ("saves", {"op": "instant", "which": 0}),
            ("lose", {"which": 0}),
            # Frees a capacity slot (the retired run still holds its own).
            ("control", {"at": None, "op": "stop", "which": 1}),
            ("grant", {"which": 0}),
        ],
    )
