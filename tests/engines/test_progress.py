"""One activity, unchanged, on every engine: the engine records how far it read.

Issue 10: the README's counter (no ``ctx.checkpoint``) was wrong under
eager: its ``async for`` never ends, so the tail was never stored, status
showed lag forever, ``events_processed_total`` stayed 0 and every restart
replayed the same events. A sequential reader is done with an event when it
asks for the next one; the engine records that progress when the stream
catches up and when the run ends (an error, an operator's stop). An
activity that hands events to background work opts out
(``auto_checkpoint=False``) and only its own checkpoints count.
"""

from __future__ import annotations

from uuid import UUID

import anyio
from ulid import ULID

from tailrunner import EOF, Activity, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.admin.metrics import Metrics
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.store import RunRecord, TailRecord
from tailrunner.testing import LoopbackJournal

from .conftest import (
    CHANGES,
    Call,
    Script,
    append,
    make_engine,
    new_aggregate,
    observed,
    running,
    wait_until,
)


class NotifyingTails(MemoryTailStore):
    """A memory tail store that keeps the last record saved per task and says when it saves."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[str, UUID], TailRecord] = {}

    def tail(self, activity: str, aggregate_id: UUID) -> ULID | None:
        record = self.last.get((activity, aggregate_id))
        return None if record is None else record.tail

    async def save(self, record: TailRecord) -> None:
        await super().save(record)
        self._saved(record)

    async def save_with_run(self, record: TailRecord, run: RunRecord) -> None:
        await super().save_with_run(record, run)
        self._saved(record)

    def _saved(self, record: TailRecord) -> None:
        self.last[(record.activity, record.aggregate.id)] = record
        CHANGES.notify()


def _readme_counter(seen: list[ULID]) -> Activity:
    """The README's counter, as written there (plus noting what it saw, for the test)."""

    @activity(name="counter", aggregate_types=["thing"])
    async def counter(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for event in stream:
            seen.append(event.id)
            CHANGES.notify()
            tail = event.id
        return EOF(tail)

    return counter


async def test_the_readme_counter_under_eager_stores_its_tail_and_a_restart_sees_no_event_twice(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    first = await append(journal, agg, "a", "b", "c")
    seen: list[ULID] = []
    counter = _readme_counter(seen)
    tails = NotifyingTails()
    engine = make_engine("eager", journal, [counter], tails=tails)
    task = engine.start_activity(agg, engine.activities["counter"], None)
    async with running(engine):
        # The reader caught up (its stream blocks, the run does not end).
        await wait_until(lambda: tails.tail("counter", agg.id) == first[-1])
        assert task.tail == first[-1] and task.state is TaskState.RUNNING
        more = await append(journal, agg, "d", "e")
        await wait_until(lambda: tails.tail("counter", agg.id) == more[-1])
        assert task.tail == more[-1]
    record = await tails.get("counter", agg.id)
    assert record is not None and record.tail == more[-1]

    # A new runner on the same tail store resumes after the stored tail.
    again = make_engine("eager", journal, [counter], tails=tails)
    restored = again.restore(agg, again.activities["counter"], record)
    assert restored.tail == more[-1]
    async with running(again):
        newest = await append(journal, agg, "f")
        await wait_until(lambda: tails.tail("counter", agg.id) == newest[-1])
    assert seen == first + more + newest, "every event seen once, in order"


async def test_the_readme_counter_counts_each_event_once_as_it_reads_on_every_engine(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    # Under eager the run never ends: the events count when the reader catches up.
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "c")
    seen: list[ULID] = []
    counter = _readme_counter(seen)
    engine = make_engine(engine_kind, journal, [counter])
    metrics = Metrics(engine=engine, journal=journal.client)
    reported: list[int] = []

    def progress(task: object, events: int) -> None:
        reported.append(events)
        CHANGES.notify()

    engine.add_progress_observer(progress)

    def processed() -> float | None:
        return metrics.registry.get_sample_value(
            "tailrunner_events_processed_total", {"activity": "counter"}
        )

    task = engine.start_activity(agg, engine.activities["counter"], None)
    async with running(engine):
        await wait_until(lambda: sum(reported) == 3)
        assert processed() == 3 and task.tail == ids[-1]
        more = await append(journal, agg, "d", "e")
        await wait_until(lambda: sum(reported) == 5)
        assert processed() == 5 and task.tail == more[-1]
    assert seen == ids + more


async def test_an_activity_that_raises_mid_stream_resumes_after_the_last_event_it_finished(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "poison", "d")

    async def choke_on_the_third(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        async for event in stream:
            call.events.append(event.id)
            CHANGES.notify()
            if event.type == "poison" and ctx.attempt == 1:
                raise ValueError("cannot digest it")
            tail = event.id
        return EOF(tail)

    script = Script(steps=[choke_on_the_third])
    engine = make_engine(engine_kind, journal, [script.activity()])
    seen = observed(engine)
    engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        await script.wait_for(lambda: len(script.calls) >= 2 and ids[-1] in script.seen())
    assert seen[0][1].kind is OutcomeKind.ERROR
    # It asked for the event after the second one: done with the first two,
    # not with the one it choked on.
    assert seen[0][1].tail == ids[1]
    assert script.calls[1].tail == ids[1], "resumed after the last finished event, not the start"
    assert script.calls[1].events == ids[2:]


async def test_a_run_stopped_by_an_operator_keeps_the_progress_it_made(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "slow", "d")
    parked = anyio.Event()

    async def park_on_the_third(
        ctx: ActivityContext, tail: ULID | None, stream: EventStream, call: Call
    ) -> Outcome:
        async for event in stream:
            call.events.append(event.id)
            CHANGES.notify()
            if event.type == "slow" and not parked.is_set():
                parked.set()
                await anyio.sleep_forever()
            tail = event.id
        return EOF(tail)

    script = Script(steps=[park_on_the_third])
    tails = MemoryTailStore()
    engine = make_engine(engine_kind, journal, [script.activity()], tails=tails)
    task = engine.start_activity(agg, engine.activities["script"], None)
    async with running(engine):
        with anyio.fail_after(5):
            await parked.wait()
        await engine.stop(task)
        assert task.state is TaskState.STOPPED and task.tail == ids[1]
        record = await tails.get("script", agg.id)
        assert record is not None and record.state == "STOPPED" and record.tail == ids[1]
        await engine.resume(task)
        await script.wait_for(lambda: ids[-1] in script.calls[-1].events)
    assert script.calls[1].tail == ids[1], "resumed after the last finished event"
    assert script.calls[1].events == ids[2:]


async def test_an_eager_counter_stopped_while_it_waits_for_events_keeps_its_tail(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b")
    seen: list[ULID] = []
    counter = _readme_counter(seen)
    tails = NotifyingTails()
    engine = make_engine("eager", journal, [counter], tails=tails)
    task = engine.start_activity(agg, engine.activities["counter"], None)
    async with running(engine):
        # Caught up: its stream waits for the next event.
        await wait_until(lambda: tails.tail("counter", agg.id) == ids[-1])
        await engine.stop(task)
    record = await tails.get("counter", agg.id)
    assert record is not None and record.state == "STOPPED" and record.tail == ids[-1]


def _background(calls: list[ULID | None]) -> Activity:
    """An activity that opts out: it checkpoints only the first event, then fails or waits."""

    @activity(name="background", aggregate_types=["thing"], auto_checkpoint=False)
    async def background(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        calls.append(tail)
        CHANGES.notify()
        checkpointed = False
        async for event in stream:
            if not checkpointed:
                # Handed to background work that has finished only this one.
                await ctx.checkpoint(event.id)
                checkpointed = True
            if event.type == "poison" and len(calls) == 1:
                raise ValueError("cannot digest it")
        return EOF(ctx.tail)

    return background


async def test_an_activity_that_opts_out_resumes_from_its_own_checkpoint_after_an_error(
    engine_kind: str, journal: LoopbackJournal
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "poison", "d")
    calls: list[ULID | None] = []
    act = _background(calls)
    engine = make_engine(engine_kind, journal, [act])
    seen = observed(engine)
    engine.start_activity(agg, act, None)
    async with running(engine):
        await wait_until(lambda: len(calls) >= 2)
    assert seen[0][1].kind is OutcomeKind.ERROR and seen[0][1].tail == ids[0]
    assert calls[1] == ids[0], "only its own checkpoint counts, not how far it read"


async def test_an_eager_activity_that_opts_out_stores_only_its_own_checkpoints(
    journal: LoopbackJournal,
) -> None:
    agg = new_aggregate()
    ids = await append(journal, agg, "a", "b", "c")
    calls: list[ULID | None] = []
    act = _background(calls)
    tails = NotifyingTails()
    engine = make_engine("eager", journal, [act], tails=tails)
    reported: list[int] = []

    def progress(task: object, events: int) -> None:
        reported.append(events)
        CHANGES.notify()

    engine.add_progress_observer(progress)
    task = engine.start_activity(agg, act, None)
    async with running(engine):
        # Caught up: the engine had its chance to store how far it read.
        await wait_until(lambda: sum(reported) == 3)
        assert tails.tail("background", agg.id) == ids[0]
        assert task.tail == ids[0]
        await engine.stop(task)
    record = await tails.get("background", agg.id)
    assert record is not None and record.tail == ids[0], "a stop keeps its checkpoint only"
