"""The engines in a cluster (``ownership``): run only what is held, hand over cleanly.

A fake :class:`~tailrunner.engines.ownership.TaskOwnership` says which
aggregates this runner holds; the real leases and fencing have their own
tests (tests/scaleout). Every engine must:

- start a run only while the task is allowed, and mark it ``RUNNING``
  (stored) before the activity runs;
- on :meth:`Engine.retire`, cancel the run, forget the task and write
  nothing more for it;
- on :meth:`Engine.evict`, let the run end (or cut it), store the task
  ``PENDING`` with the cut run in its log, then forget it;
- count a stored ``RUNNING`` record found on restore as a crashed attempt;
- (eager) store a caught-up watch ``SLEEPING`` and ``RUNNING`` again when
  new events come, so that only handling counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.store import TailRecord
from tailrunner.testing import LoopbackJournal

from .conftest import (
    CHANGES,
    CRON_INTERVAL,
    FAST_RETRY,
    GatedTails,
    append,
    new_aggregate,
    running,
    wait_until,
)


@dataclass(frozen=True)
class FakeLease:
    owner: str
    epoch: int


class FakeOwnership:
    """Holds the aggregates in :attr:`held`, each under :attr:`epoch`."""

    def __init__(self) -> None:
        self.held: set[uuid.UUID] = set()
        self.epoch = 7

    def allows(self, activity: str, aggregate_id: uuid.UUID) -> bool:
        return aggregate_id in self.held

    def lease(self, activity: str, aggregate_id: uuid.UUID) -> FakeLease | None:
        return FakeLease("me", self.epoch) if aggregate_id in self.held else None


class Watcher:
    """An activity that reads to the end (lazy, cron) or watches (eager) and can be held."""

    def __init__(self) -> None:
        self.events: list[ULID] = []
        self.gate: anyio.Event | None = None
        self.inside = anyio.Event()

    def activity(self) -> Any:
        @activity(name="watch", aggregate_types=("thing",))
        async def watch(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
            try:
                self.inside.set()
                if self.gate is not None:
                    await self.gate.wait()
                async for batch in stream.batches():
                    for event in batch.events:
                        self.events.append(event.id)
                        tail = event.id
                    CHANGES.notify()
                    if batch.will_block and ctx.engine != "eager":
                        break
                return EOF(tail)
            finally:
                CHANGES.notify()

        return watch


def engine_with(
    kind: str,
    journal: LoopbackJournal,
    act: Any,
    ownership: FakeOwnership,
    tails: GatedTails,
    **options: Any,
) -> Engine:
    opts: dict[str, Any] = {"retry": FAST_RETRY, "interval": CRON_INTERVAL, "capacity": 100}
    opts.update(options)
    engine = build_engine(
        EngineOptions(kind=kind, **opts),
        journal=journal.client,
        tails=tails,
        activities=[act],
        ownership=ownership,
    )
    engine.add_observer(lambda task, result: CHANGES.notify())
    return engine


async def test_a_task_runs_only_while_held_and_is_marked_running_first(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    engine = engine_with(engine_kind, journal, watcher.activity(), ownership, tails)
    ref = new_aggregate()
    (first,) = await append(journal, ref, "e")
    async with running(engine):
        task = engine.start_activity(ref, engine.activities["watch"], None)
        for _ in range(20):  # dispatcher passes, cron ticks: it must not start
            await anyio.sleep(CRON_INTERVAL / 2)
        assert watcher.events == [] and tails.saves == []
        ownership.held.add(ref.id)
        engine.start_activity(ref, engine.activities["watch"], None)  # same task
        task.state = TaskState.SLEEPING
        engine._set_state(task, TaskState.PENDING)  # a wake-up (signal, tick)
        await wait_until(lambda: watcher.events == [first])
    assert tails.saves[0].state is TaskState.RUNNING, "marked before the activity ran"
    assert tails.saves[0].tail is None


async def test_retire_cancels_the_run_and_nothing_more_is_written(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    watcher.gate = anyio.Event()  # the run sits in the activity
    engine = engine_with(engine_kind, journal, watcher.activity(), ownership, tails)
    ref = new_aggregate()
    await append(journal, ref, "e")
    ownership.held.add(ref.id)
    async with running(engine):
        task = engine.start_activity(ref, engine.activities["watch"], None)
        with anyio.fail_after(5):
            await watcher.inside.wait()
        saves = len(tails.saves)
        ownership.held.clear()
        assert engine.retire([task]) == [task]
        await wait_until(lambda: engine.running == 0)
        assert list(engine.tasks()) == []
        assert engine.find("watch", ref.id) is None
        # Nothing re-queues it: timers, wake-ups and ticks pass.
        for _ in range(10):
            await anyio.sleep(CRON_INTERVAL)
        assert engine.running == 0
    assert len(tails.saves) == saves, "a retired task writes nothing"
    assert await tails.list_runs("watch", ref.id) == []


async def test_evict_stores_the_cut_run_and_pending_then_forgets(
    journal: LoopbackJournal,
) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    engine = engine_with("eager", journal, watcher.activity(), ownership, tails)
    ref = new_aggregate()
    (first,) = await append(journal, ref, "e")
    ownership.held.add(ref.id)
    async with running(engine):
        task = engine.start_activity(ref, engine.activities["watch"], None)
        await wait_until(lambda: watcher.events == [first])
        await engine.evict([task], wait=0.05)  # a watch never ends by itself: cut
        assert list(engine.tasks()) == [] and engine.running == 0
    record = await tails.get("watch", ref.id)
    assert record is not None
    assert (record.state, record.tail) == (TaskState.PENDING, first)
    (run,) = await tails.list_runs("watch", ref.id)
    assert (run.outcome, run.owner, run.epoch) == (OutcomeKind.STOPPED, "me", 7)
    assert run.tail_before is None and run.tail_after == first


async def test_evict_lets_a_short_run_end_by_itself(journal: LoopbackJournal) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    watcher.gate = anyio.Event()
    engine = engine_with("lazy", journal, watcher.activity(), ownership, tails)
    ref = new_aggregate()
    (first,) = await append(journal, ref, "e")
    ownership.held.add(ref.id)
    async with running(engine), anyio.create_task_group() as tg:
        task = engine.start_activity(ref, engine.activities["watch"], None)
        with anyio.fail_after(5):
            await watcher.inside.wait()
        evicted = anyio.Event()

        async def evict() -> None:
            await engine.evict([task], wait=5.0)
            evicted.set()

        tg.start_soon(evict)
        await anyio.sleep(0.05)
        watcher.gate.set()  # the run ends within the wait
        with anyio.fail_after(5):
            await evicted.wait()
        assert task.retired
    record = await tails.get("watch", ref.id)
    assert record is not None and (record.state, record.tail) == (TaskState.SLEEPING, first)
    runs = await tails.list_runs("watch", ref.id)
    # Not cut: every run ended by itself (a wake-up may have made a second one).
    assert runs and {(r.outcome, r.owner, r.epoch) for r in runs} == {(OutcomeKind.EOF, "me", 7)}


async def poll(predicate: Any, timeout: float = 5.0) -> None:
    """For what no run or state change announces (a background save)."""
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


def stored(ref: Any, state: TaskState, attempts: int = 0) -> TailRecord:
    return TailRecord(
        activity="watch",
        aggregate=ref,
        tail=None,
        state=state,
        attempts=attempts,
        updated_at=datetime.now(UTC),
    )


@pytest.mark.parametrize(("attempts", "suspended"), [(0, False), (2, True)])
async def test_a_stored_running_record_counts_as_a_crashed_attempt(
    engine_kind: str, journal: LoopbackJournal, attempts: int, suspended: bool
) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    retry = RetryPolicy(initial=0.02, max_delay=0.05, jitter=0.0, max_attempts=3)
    engine = engine_with(engine_kind, journal, watcher.activity(), ownership, tails, retry=retry)
    ref = new_aggregate()
    ownership.held.add(ref.id)
    async with running(engine):
        task = engine.restore(
            ref, engine.activities["watch"], stored(ref, TaskState.RUNNING, attempts)
        )
        assert task.errors == attempts + 1
        assert task.last_error is not None and "cut short" in task.last_error
        if suspended:
            assert task.state is TaskState.SUSPENDED
            await poll(lambda: any(s.state is TaskState.SUSPENDED for s in tails.saves))
            assert all(s.state is not TaskState.RUNNING for s in tails.saves), "never ran"
        else:
            assert task.state is TaskState.RETRY
            # It runs again after the backoff: its mark is stored.
            await poll(lambda: any(s.state is TaskState.RUNNING for s in tails.saves))


async def test_without_ownership_a_running_record_just_runs_again(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    tails, watcher = GatedTails(), Watcher()
    engine = build_engine(
        EngineOptions(kind=engine_kind, retry=FAST_RETRY, interval=CRON_INTERVAL),
        journal=journal.client,
        tails=tails,
        activities=[watcher.activity()],
    )
    ref = new_aggregate()
    task = engine.restore(ref, engine.activities["watch"], stored(ref, TaskState.RUNNING))
    assert (task.state, task.errors) == (TaskState.PENDING, 0)


async def test_eager_stores_a_caught_up_watch_sleeping_and_running_again_on_new_events(
    journal: LoopbackJournal,
) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    engine = engine_with("eager", journal, watcher.activity(), ownership, tails)
    ref = new_aggregate()
    (first,) = await append(journal, ref, "e")
    ownership.held.add(ref.id)
    async with running(engine):
        engine.start_activity(ref, engine.activities["watch"], None)
        await wait_until(
            lambda: (
                bool(tails.saves)
                and tails.saves[-1].state is TaskState.SLEEPING
                and tails.saves[-1].tail == first
            )
        )
        caught_up = len(tails.saves)
        (second,) = await append(journal, ref, "e")
        await wait_until(lambda: second in watcher.events)
        await wait_until(lambda: tails.saves[-1].tail == second)
    states = [(s.state, s.tail) for s in tails.saves[caught_up:]]
    # Marked RUNNING before the new event was handed out, SLEEPING once caught up again.
    assert states[0] == (TaskState.RUNNING, first)
    assert (TaskState.SLEEPING, second) in states


async def test_eager_hands_out_no_new_events_it_could_not_mark(journal: LoopbackJournal) -> None:
    ownership, tails, watcher = FakeOwnership(), GatedTails(), Watcher()
    engine = engine_with("eager", journal, watcher.activity(), ownership, tails)
    ref = new_aggregate()
    (first,) = await append(journal, ref, "e")
    ownership.held.add(ref.id)
    refused: list[TailRecord] = []

    def down_for_marks(record: TailRecord) -> bool:
        if record.state is TaskState.RUNNING:
            refused.append(record)
            return True
        return False

    async with running(engine):
        engine.start_activity(ref, engine.activities["watch"], None)
        await wait_until(lambda: bool(tails.saves) and tails.saves[-1].state is TaskState.SLEEPING)
        tails.fail = down_for_marks  # the store is down for the RUNNING marks
        (second,) = await append(journal, ref, "e")
        await poll(lambda: len(refused) >= 3)  # the resumed mark, then each retry's mark
        assert second not in watcher.events, "handed out without its RUNNING mark"
        tails.fail = lambda record: False
        await wait_until(lambda: second in watcher.events)
    assert watcher.events.count(first) >= 1
