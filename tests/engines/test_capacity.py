"""Tasks beyond the capacity: said once, and shown as waiting for a slot.

Issue 10, defect 12: with the eager engine each task holds a slot (an open
watch stream) for as long as it runs, so tasks beyond the capacity never
ran, and nothing said so. The engine logs it once (not once per task), and
status shows those tasks as waiting for capacity.
"""

from __future__ import annotations

import anyio
from structlog.testing import capture_logs
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.states import TaskState, WaitReason
from tailrunner.testing import LoopbackJournal

from .conftest import CHANGES, Call, Script, make_engine, new_aggregate, read, running, wait_until


def _holding(released: anyio.Event) -> Script:
    """Each run reads what there is, then holds its slot until ``released``."""

    async def hold(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        tail = await read(stream, call, tail)
        CHANGES.notify()
        await released.wait()
        return EOF(tail)

    return Script(steps=[hold])


async def test_eager_logs_once_that_tasks_exceed_capacity(journal: LoopbackJournal) -> None:
    script = Script()
    engine = make_engine("eager", journal, [script.activity()], capacity=2)
    with capture_logs() as logs:
        for _ in range(7):
            engine.start_activity(new_aggregate(), engine.activities["script"], None)
    warned = [e for e in logs if e["event"] == "tasks exceed capacity"]
    assert len(warned) == 1, f"logged {len(warned)} times for 5 tasks beyond the capacity"
    assert warned[0]["log_level"] == "warning"
    assert warned[0]["capacity"] == 2, warned[0]


async def test_eager_within_capacity_logs_nothing(journal: LoopbackJournal) -> None:
    script = Script()
    engine = make_engine("eager", journal, [script.activity()], capacity=3)
    with capture_logs() as logs:
        for _ in range(3):
            engine.start_activity(new_aggregate(), engine.activities["script"], None)
    assert not [e for e in logs if e["event"] == "tasks exceed capacity"]


async def test_lazy_and_cron_do_not_warn_about_more_tasks_than_capacity(
    journal: LoopbackJournal,
) -> None:
    # Their runs end when they catch up: more tasks than slots is their normal case.
    for kind in ("lazy", "cron"):
        script = Script()
        engine = make_engine(kind, journal, [script.activity()], capacity=2)
        with capture_logs() as logs:
            for _ in range(5):
                engine.start_activity(new_aggregate(), engine.activities["script"], None)
        assert not [e for e in logs if e["event"] == "tasks exceed capacity"], kind


async def test_eager_tasks_beyond_capacity_wait_for_capacity_and_run_when_a_slot_frees(
    journal: LoopbackJournal,
) -> None:
    # The README's counter never ends under eager: two slots, five tasks.
    watching: list[ULID | None] = []

    @activity(name="counter", aggregate_types=["thing"])
    async def counter(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        watching.append(tail)
        CHANGES.notify()
        async for event in stream:
            tail = event.id
        return EOF(tail)

    engine = make_engine("eager", journal, [counter], capacity=2)
    tasks = [engine.start_activity(new_aggregate(), counter, None) for _ in range(5)]
    async with running(engine):
        await wait_until(lambda: len(watching) == 2)
        holding = [t for t in tasks if t.state is TaskState.RUNNING]
        waiting = [t for t in tasks if t.state is TaskState.PENDING]
        assert len(holding) == 2 and len(waiting) == 3
        assert [engine.waiting(t).reason for t in waiting] == [WaitReason.CAPACITY] * 3
        assert [engine.waiting(t).reason for t in holding] == [None, None]
        # A slot frees (an operator stops one): a waiting task gets it.
        await engine.stop(holding[0])
        await wait_until(lambda: len(watching) == 3)
        assert sum(1 for t in tasks if t.state is TaskState.RUNNING) == 2
        still = [t for t in tasks if t.state is TaskState.PENDING]
        assert [engine.waiting(t).reason for t in still] == [WaitReason.CAPACITY] * 2


async def test_tasks_waiting_for_a_slot_show_capacity_on_every_engine(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    released = anyio.Event()
    script = _holding(released)
    engine = make_engine(engine_kind, journal, [script.activity()], capacity=2)
    tasks = [
        engine.start_activity(new_aggregate(), engine.activities["script"], None) for _ in range(4)
    ]
    async with running(engine):
        await wait_until(lambda: len(script.calls) == 2)
        pending = [t for t in tasks if t.state is TaskState.PENDING]
        assert len(pending) == 2
        assert {engine.waiting(t).reason for t in pending} == {WaitReason.CAPACITY}
        released.set()
        # The slots free: the tasks that waited for one run.
        await wait_until(lambda: all(t.runs >= 1 for t in tasks))
