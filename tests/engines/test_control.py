"""Operator control of tasks: stop, suspend, resume, restart, for every engine."""

from __future__ import annotations

import anyio
from ulid import ULID

from tailrunner import ActivityContext, EventStream
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.task import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import Call, Script, append, make_engine, new_aggregate, read, running, wait_until


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
