"""Operator control of tasks: stop, suspend, resume, restart, for every engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.base import Engine
from tailrunner.engines.execute import RunResult
from tailrunner.engines.task import Task
from tailrunner.errors import StoreError, TaskNotControllable
from tailrunner.reconnect import ReconnectPolicy
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import (
    Call,
    GatedTails,
    Script,
    append,
    make_engine,
    new_aggregate,
    read,
    read_to_eof,
    running,
    wait_until,
)


async def test_stopping_a_running_task_keeps_its_checkpoint_and_stores_stopped(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")
    parked = anyio.Event()

    async def park(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await ctx.checkpoint(await read(stream, call, tail))
        parked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    script = Script(steps=[park])
    tails = MemoryTailStore()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await parked.wait()
        await engine.stop(task)
        await wait_until(lambda: task.state is TaskState.STOPPED)
        assert engine.running == 0
    record = await tails.get("script", agg.id)
    assert record is not None and (record.state, record.tail) == ("STOPPED", ids[-1])
    runs = await tails.list_runs("script", agg.id)
    assert runs[0].outcome == "stopped"


async def test_suspend_resume_and_restart_from_a_tail(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "c")
    script = Script()
    tails = MemoryTailStore()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: ids[-1] in script.seen())
        await wait_until(lambda: task.state is not TaskState.RUNNING)
        await engine.suspend(task)
        assert task.state is TaskState.SUSPENDED
        stored = await tails.get("script", agg.id)
        assert stored is not None and stored.state == "SUSPENDED"
        runs_before = len(script.calls)
        await engine.restart(task, ids[0])
        await script.wait_for(lambda: len(script.calls) > runs_before)
        assert script.calls[runs_before].tail == ids[0]
        assert script.calls[runs_before].events == ids[1:], "replayed after the given tail"
        await wait_until(lambda: task.state is not TaskState.RUNNING)
        await engine.suspend(task)
        await engine.resume(task)
        await script.wait_for(lambda: len(script.calls) > runs_before + 1)


async def _until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate()`` holds (a control queued, say)."""
    with anyio.fail_after(5):
        while not predicate():
            await anyio.lowlevel.checkpoint()


class _Overlap:
    """Counts runs in flight, from the activity's start until the engine settles the run."""

    def __init__(self, engine: Engine) -> None:
        self.in_flight = 0
        self.most = 0
        self.started = 0
        engine.add_observer(self._settled)

    def start(self) -> None:
        self.in_flight += 1
        self.started += 1
        self.most = max(self.most, self.in_flight)

    def _settled(self, task: Task, result: RunResult) -> None:
        self.in_flight -= 1


def _counted(overlap: list[_Overlap]) -> Callable[..., Awaitable[Outcome]]:
    async def step(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        overlap[0].start()
        return await read_to_eof(ctx, tail, stream, call)

    return step


async def test_a_stop_while_the_outcome_is_stored_holds(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Defect 2 of issue 10: a stop in the window between the run's return and
    # its outcome's save was overwritten by the run's next state.
    agg = new_aggregate()
    await append(journal, agg, "a")
    script, witness = Script(), Script()
    tails = GatedTails()
    engine = make_engine(
        engine_kind, journal, [script.activity(), witness.activity("witness")], tails=tails
    )
    tails.hold()
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await tails.entered.wait()  # the first run's outcome is being stored
        assert task.state is TaskState.RUNNING and script.calls
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.stop, task)
            try:
                await _until(lambda: bool(task.controls))
            finally:
                tails.release()  # a failing test must not hang on the gate
        assert task.state is TaskState.STOPPED
        engine.start_activity(agg, engine.activities["witness"], None)
        new = await append(journal, agg, "b")
        await witness.wait_for(lambda: new[-1] in witness.seen())
    assert len(script.calls) == 1, "a stopped task does not run again"
    record = await tails.get("script", agg.id)
    assert record is not None and record.state == "STOPPED"


async def test_stop_and_resume_while_the_outcome_is_stored_never_overlap_runs(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Before: stop + resume in that window dispatched the task again while its
    # first run still settled, and a third run followed.
    agg = new_aggregate()
    await append(journal, agg, "a")
    overlap: list[_Overlap] = []
    script = Script(steps=[_counted(overlap)])
    tails = GatedTails()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    overlap.append(_Overlap(engine))
    tails.hold()
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await tails.entered.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.stop, task)
            try:
                await _until(lambda: len(task.controls or ()) == 1)
                tg.start_soon(engine.resume, task)
                await _until(lambda: len(task.controls or ()) == 2)
            finally:
                tails.release()
        new = await append(journal, agg, "b")
        await script.wait_for(lambda: new[-1] in script.seen())
        await wait_until(lambda: task.state is not TaskState.RUNNING or engine_kind == "eager")
    assert overlap[0].most == 1, "two runs of one task at once"
    assert overlap[0].started >= 2, "resumed: it ran again"


async def test_restart_while_the_outcome_is_stored_runs_once_from_its_tail(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")
    overlap: list[_Overlap] = []
    script = Script(steps=[_counted(overlap)])
    tails = GatedTails()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    overlap.append(_Overlap(engine))
    tails.hold()
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await tails.entered.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.restart, task, ids[0])
            try:
                await _until(lambda: bool(task.controls))
            finally:
                tails.release()
        await script.wait_for(lambda: len(script.calls) >= 2)
    assert script.calls[1].tail == ids[0], "the restart's tail, not the run's"
    assert overlap[0].most == 1


async def test_two_controls_on_a_running_task_both_return_and_the_last_wins(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Before: the second control overwrote the first, whose caller waited forever.
    agg = new_aggregate()
    await append(journal, agg, "a")
    parked = anyio.Event()

    async def park(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        await read(stream, call, tail)
        parked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    script = Script(steps=[park])
    engine = make_engine(engine_kind, journal, [script.activity()])
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await parked.wait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine.stop, task)
                tg.start_soon(engine.suspend, task)
    assert task.state is TaskState.SUSPENDED
    assert task.controls is None
    assert len(script.calls) == 1


async def test_stop_returns_when_the_activity_swallows_cancellation(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Before: stop() never returned and a stale control was left behind.
    agg = new_aggregate()
    ids = await append(journal, agg, "a")
    parked = anyio.Event()

    async def swallow(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        tail = await read(stream, call, tail)
        parked.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            pass  # an activity that should not do this
        return EOF(tail)

    script = Script(steps=[swallow])
    tails = MemoryTailStore()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await parked.wait()
            await engine.stop(task)
    assert task.state is TaskState.STOPPED and task.controls is None
    record = await tails.get("script", agg.id)
    assert record is not None and (record.state, record.tail) == ("STOPPED", ids[-1])


async def test_a_control_whose_save_fails_is_reported_and_stored_later(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    await append(journal, agg, "a")
    script = Script()
    tails = GatedTails()
    engine = make_engine(
        engine_kind,
        journal,
        [script.activity()],
        tails=tails,
        reconnect=ReconnectPolicy(initial=0.01, max_delay=0.05),
    )
    task = engine.start_activity(agg, engine.activities["script"], None)
    down = True
    tails.fail = lambda record: down and record.state == "SUSPENDED"
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 1)
        await wait_until(lambda: task.state is not TaskState.RUNNING or engine_kind == "eager")
        with pytest.raises(StoreError):
            await engine.suspend(task)
        assert task.state is TaskState.SUSPENDED, "applied, though not yet stored"
        down = False
        with anyio.fail_after(5):
            while (record := await tails.get("script", agg.id)) is None or (
                record.state != "SUSPENDED"
            ):
                await tails.saved.wait()
    assert len(script.calls) == 1


async def test_resume_of_a_task_that_is_not_suspended_or_stopped_says_so(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    script = Script()
    engine = make_engine("lazy", journal, [script.activity()])
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: task.state is TaskState.SLEEPING)
        # (The signal stream's first resync may wake it again meanwhile: the
        # refusal names whatever state it is in.)
        with pytest.raises(TaskNotControllable, match="only a SUSPENDED or STOPPED task"):
            await engine.resume(task)
    assert task.state is not TaskState.SUSPENDED and task.state is not TaskState.STOPPED
