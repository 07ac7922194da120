"""The engines' read-ahead (tailrunner/engines/read_ahead.py): how many calls, and what runs see.

The stateful tests check that read-ahead never loses a signal (they run the
lazy and cron engines over a journal that reads ahead); these check what it
is for, counting the journal's calls: many runs of one call, a cut batch
read on, a failed call or a wake-up falling back to a stream of the run's
own, and no read-ahead at all when it is off, for the eager engine, or for a
journal without ``read_aggregates``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import anyio
import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.base import Engine
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.read_ahead import ReadAhead
from tailrunner.errors import JournalUnavailable
from tailrunner.model import AggregateRef, EventBatch, NewEvent
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore
from tests.engines.stateful_support import FakeJournal


class CountingJournal(FakeJournal):
    """Counts ``events`` and ``read_aggregates`` calls; can make the latter fail."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.streams = 0
        self.read_calls: list[int] = []
        self.fail_reads = False

    async def events(
        self,
        aggregate_id: uuid.UUID,
        *,
        after: ULID | None = None,
        watch: bool = False,
        max_batch: int = 0,
    ) -> AsyncGenerator[EventBatch, None]:
        self.streams += 1
        async for batch in super().events(
            aggregate_id, after=after, watch=watch, max_batch=max_batch
        ):
            yield batch

    async def read_aggregates(
        self, reads: Sequence[tuple[uuid.UUID, ULID | None]], *, max_events: int = 0
    ) -> list[EventBatch]:
        self.read_calls.append(len(reads))
        if self.fail_reads:
            raise JournalUnavailable("journal down (test)")
        return await super().read_aggregates(reads, max_events=max_events)


class _StreamsOnly:
    """A journal without ``read_aggregates``: only the plain JournalApi."""

    def __init__(self, journal: FakeJournal) -> None:
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        if name == "read_aggregates":
            raise AttributeError(name)
        return getattr(self._journal, name)


class Seen:
    """What every run of the recording activity was handed."""

    def __init__(self) -> None:
        self.events: dict[uuid.UUID, list[ULID]] = {}
        self.runs = 0
        self.changed = anyio.Event()

    def activity(self) -> Any:
        @activity(name="record", aggregate_types=["thing"])
        async def record(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
            self.runs += 1
            async for event in stream:  # eager's never ends
                self.events.setdefault(event.aggregate_id, []).append(event.id)
                tail = event.id
                self._changed()
            self._changed()
            return EOF(tail)

        return record

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, predicate: Any) -> None:
        with anyio.fail_after(10):
            while not predicate():
                await self.changed.wait()


def _engine(kind: str, journal: Any, seen: Seen, **options: Any) -> Engine:
    opts: dict[str, Any] = {"capacity": 100, "interval": 3600.0, "backstop": 3600.0}
    opts.update(options)
    return build_engine(
        EngineOptions(kind=kind, **opts),  # type: ignore[arg-type]
        journal=journal,
        tails=MemoryTailStore(),
        activities=[seen.activity()],
    )


async def _aggregates(journal: FakeJournal, count: int, events: int) -> list[AggregateRef]:
    refs = [AggregateRef(type="thing", id=uuid.uuid4()) for _ in range(count)]
    for ref in refs:
        await journal.append(ref, [NewEvent(type="e", data=b"{}")] * events)
    return refs


async def _run_all(engine: Engine, refs: list[AggregateRef], seen: Seen, events: int) -> None:
    record = engine.activities["record"]
    for ref in refs:
        engine.start_activity(ref, record, None)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        await seen.wait_for(
            lambda: (
                sum(len(ids) for ids in seen.events.values()) >= len(refs) * events
                and all(t.state is TaskState.SLEEPING for t in engine.tasks())
            )
        )
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["lazy", "cron"])
async def test_a_first_run_of_many_aggregates_reads_them_in_few_calls(kind: str) -> None:
    journal = CountingJournal(read_budget=1000)
    refs = await _aggregates(journal, 1000, 1)
    seen = Seen()
    engine = _engine(kind, journal, seen)
    await _run_all(engine, refs, seen, 1)
    assert {agg: len(ids) for agg, ids in seen.events.items()} == {r.id: 1 for r in refs}
    # 1,000 runs, 256 reads a call: 4 calls, not 1,000 streams. A cron tick
    # or the lazy resync may make a few of them ready again; none opens a stream.
    assert journal.streams == 0
    assert sum(journal.read_calls) >= 1000
    assert len(journal.read_calls) <= 8, journal.read_calls


async def test_a_batch_the_budget_cut_is_read_on_with_a_stream() -> None:
    journal = CountingJournal(read_budget=7)  # a call holds 7 events in all
    refs = await _aggregates(journal, 5, 3)
    seen = Seen()
    engine = _engine("lazy", journal, seen)
    await _run_all(engine, refs, seen, 3)
    for ref in refs:
        assert seen.events[ref.id] == journal.event_ids(ref.id)  # each once, in order
    assert journal.read_calls
    assert journal.streams >= 1  # the cut ones read on


async def test_a_failed_read_leaves_each_run_to_read_for_itself() -> None:
    journal = CountingJournal(read_budget=1000)
    journal.fail_reads = True
    refs = await _aggregates(journal, 20, 2)
    seen = Seen()
    engine = _engine("lazy", journal, seen)
    await _run_all(engine, refs, seen, 2)
    assert {agg: len(ids) for agg, ids in seen.events.items()} == {r.id: 2 for r in refs}
    assert journal.read_calls
    assert journal.streams >= 20


@pytest.mark.parametrize(
    ("kind", "journal_kind", "read_ahead"),
    [
        ("lazy", "reader", 0),
        ("cron", "reader", 0),
        ("eager", "reader", 256),
        ("lazy", "plain", 256),
    ],
)
async def test_no_read_ahead_when_off_for_eager_or_without_the_call(
    kind: str, journal_kind: str, read_ahead: int
) -> None:
    journal = CountingJournal(read_budget=1000)
    refs = await _aggregates(journal, 10, 1)
    seen = Seen()
    used: Any = journal if journal_kind == "reader" else _StreamsOnly(journal)
    engine = _engine(kind, used, seen, read_ahead=read_ahead)
    record = engine.activities["record"]
    for ref in refs:
        engine.start_activity(ref, record, None)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        await seen.wait_for(lambda: sum(len(ids) for ids in seen.events.values()) >= 10)
        tg.cancel_scope.cancel()
    assert journal.read_calls == []
    assert journal.streams >= 10


async def test_a_wake_up_drops_the_read_ahead_of_a_task_that_has_not_run() -> None:
    journal = FakeJournal(read_budget=1000)
    (ref,) = await _aggregates(journal, 1, 1)
    seen = Seen()
    engine = _engine("lazy", journal, seen, capacity=1)
    task = engine.start_activity(ref, engine.activities["record"], None)
    read_ahead = ReadAhead(journal)
    read_ahead.plan([task], iter(()))
    assert read_ahead.planned == 1
    read_ahead.forget(task)  # what a signal does (Engine._make_ready)
    assert read_ahead.planned == 0
    assert await read_ahead.take(task) is None
    read_ahead.plan([task], iter(()))
    # The call has not begun (no loop step yet): its snapshot holds this append too.
    await journal.append(ref, [NewEvent(type="e", data=b"{}")])
    batch = await read_ahead.take(task)
    assert batch is not None and batch.will_block
    assert [batch.event_id(i) for i in range(batch.event_count())] == journal.event_ids(ref.id)
    task.tail = journal.event_ids(ref.id)[0]  # a restart moved the tail
    read_ahead.plan([task], iter(()))
    task.tail = None
    assert await read_ahead.take(task) is None  # read after another tail: not used
    await read_ahead.aclose()


async def test_a_signal_that_brings_the_events_along_wakes_a_run_that_reads_nothing() -> None:
    journal = CountingJournal(read_budget=1000)
    (ref,) = await _aggregates(journal, 1, 1)
    seen = Seen()
    engine = _engine("lazy", journal, seen)
    task = engine.start_activity(ref, engine.activities["record"], None)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        await seen.wait_for(lambda: len(seen.events.get(ref.id, [])) == 1)
        await seen.wait_for(lambda: task.state is TaskState.SLEEPING)
        calls, streams = len(journal.read_calls), journal.streams
        # Two appends of at most two events: FakeJournal's signals bring them along.
        for _ in range(2):
            await journal.append(ref, [NewEvent(type="e", data=b"{}")] * 2)
            await seen.wait_for(
                lambda: (
                    seen.events[ref.id] == journal.event_ids(ref.id)
                    and task.state is TaskState.SLEEPING
                )
            )
        assert (len(journal.read_calls), journal.streams) == (calls, streams)
        # Three events are more than a signal brings: the run reads them.
        await journal.append(ref, [NewEvent(type="e", data=b"{}")] * 3)
        await seen.wait_for(lambda: seen.events[ref.id] == journal.event_ids(ref.id))
        assert len(journal.read_calls) + journal.streams > calls + streams
        tg.cancel_scope.cancel()


async def test_signalled_events_are_planned_only_when_they_follow_on_from_the_tail() -> None:
    journal = FakeJournal()
    (ref,) = await _aggregates(journal, 1, 3)
    first, second, third = (e for e in journal._aggregates[ref.id].events)
    seen = Seen()
    engine = _engine("lazy", journal, seen)
    task = engine.start_activity(ref, engine.activities["record"], first.id)
    read_ahead = ReadAhead(None)
    assert not read_ahead.give(task, EventBatch(events=(third,), will_block=True))  # a gap
    assert not read_ahead.give(task, EventBatch(events=(), will_block=True))
    assert read_ahead.give(task, EventBatch(events=(second, third), will_block=True))
    batch = await read_ahead.take(task)
    assert batch is not None and [e.id for e in batch.events] == [second.id, third.id]
    read_ahead.plan([task], iter(()))  # no reader: nothing is read ahead
    assert read_ahead.planned == 0


async def test_what_signals_bring_is_bounded_and_a_failed_call_pauses_the_read_ahead() -> None:
    journal = CountingJournal(read_budget=1000)
    refs = await _aggregates(journal, 3, 1)
    seen = Seen()
    engine = _engine("lazy", journal, seen)
    tasks = [engine.start_activity(ref, engine.activities["record"], None) for ref in refs]
    read_ahead = ReadAhead(journal, batch=1)  # holds at most 4 planned tasks
    events = [journal._aggregates[ref.id].events[0] for ref in refs]
    for task, event in zip(tasks, events, strict=True):
        assert read_ahead.give(task, EventBatch(events=(event,), will_block=True))
    more = await _aggregates(journal, 3, 1)
    extra = [engine.start_activity(ref, engine.activities["record"], None) for ref in more]
    given = [
        read_ahead.give(
            task, EventBatch(events=(journal._aggregates[r.id].events[0],), will_block=True)
        )
        for task, r in zip(extra, more, strict=True)
    ]
    assert given == [True, False, False] and read_ahead.planned == 4
    # A taken batch leaves its call: nothing of it outlives the run.
    batch = await read_ahead.take(tasks[0])
    assert batch is not None and read_ahead.planned == 3
    # A call that fails pauses planning: the runs read for themselves meanwhile.
    journal.fail_reads = True
    read_ahead.plan([extra[1]], iter(()))
    assert await read_ahead.take(extra[1]) is None
    calls = len(journal.read_calls)
    read_ahead.plan([extra[2]], iter(()))
    assert read_ahead.planned == 3 and len(journal.read_calls) == calls
    await read_ahead.aclose()
