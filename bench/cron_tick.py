"""Cron: one tick over 1,000 activities with nothing new (the cost of having nothing to do).

tailrunner: a journal server (SQLite store) in its own process; in this one,
a cron engine with 1,000 tasks (one activity, 1,000 aggregates of one event
each, all caught up) and the default capacity of 100. A tick makes every
task ready; each run opens ``Events(watch=false)`` after its tail, gets
nothing, returns ``EOF`` and has its tail and run record stored. The figure
is the time from the tick to the end of the last run, median of 3 ticks,
with the memory tail store and with the SQLite tail store (its default
``synchronous=FULL``).

Baseline: a bare loop on the same journal client: 100 workers open the same
1,000 streams after the same tails and read nothing.
"""

from __future__ import annotations

import uuid
from contextlib import aclosing
from uuid import UUID

import anyio
from ulid import ULID

from bench.common import Figure, median, run_module, serving, temp_dir
from tailrunner.activities import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.engines.execute import RunResult
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.task import Task
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import TailStore

CAPACITY = 100
TYPE = "ticked"


@activity(name="idle-reader", aggregate_types=[TYPE])
async def reader(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    async for event in stream:
        tail = event.id
    return EOF(tail)


async def engine_ticks(
    client: JournalClient,
    tails: TailStore,
    heads: dict[UUID, ULID],
    *,
    ticks: int,
    interval: float,
) -> list[float]:
    """Seconds from each tick to the end of its last run."""
    engine = build_engine(
        EngineOptions(kind="cron", capacity=CAPACITY, interval=interval),
        journal=client,
        tails=tails,
        activities=[reader],
    )
    for aggregate_id, head in heads.items():
        engine.start_activity(AggregateRef(type=TYPE, id=aggregate_id), reader, head)
    finished: list[float] = []
    changed = anyio.Event()

    def observe(task: Task, result: RunResult) -> None:
        nonlocal changed
        assert result.events_seen == 0, "nothing new was expected"
        finished.append(anyio.current_time())
        changed.set()
        changed = anyio.Event()

    async def runs(count: int) -> None:
        while len(finished) < count:
            await changed.wait()

    engine.add_observer(observe)
    durations = []
    n = len(heads)
    async with anyio.create_task_group() as tg:
        await tg.start(engine.run)
        with anyio.fail_after(max(60.0, interval * (ticks + 2) * 2)):
            await runs(n)  # the first round: every task starts ready
            for _ in range(ticks):
                tick = engine.next_tick
                assert tick is not None
                already = len(finished)
                await runs(already + n)
                durations.append(finished[-1] - tick)
        tg.cancel_scope.cancel()
    return durations


async def bare_round(client: JournalClient, heads: dict[UUID, ULID]) -> float:
    items = list(heads.items())
    start = anyio.current_time()

    async def worker() -> None:
        while items:
            aggregate_id, tail = items.pop()
            async with aclosing(client.events(aggregate_id, after=tail)) as batches:
                async for batch in batches:
                    assert not batch.events

    async with anyio.create_task_group() as tg:
        for _ in range(CAPACITY):
            tg.start_soon(worker)
    return anyio.current_time() - start


async def measure(quick: bool) -> list[Figure]:
    n = 100 if quick else 1_000
    ticks = 2 if quick else 3
    async with temp_dir("cron") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}"
        async with (
            serving("journal", "--store", url) as address,
            JournalClient.connect(address) as client,
        ):
            heads: dict[UUID, ULID] = {}
            for _ in range(n):
                ref = AggregateRef(type=TYPE, id=uuid.uuid4())
                heads[ref.id] = (await client.append(ref, [NewEvent(type="e")])).tail
            await bare_round(client, heads)  # warm-up
            bare = [await bare_round(client, heads) for _ in range(ticks)]
            memory = await engine_ticks(
                client, MemoryTailStore(), heads, ticks=ticks, interval=n / 500 + 0.5
            )
            sqlite_tails = await SQLiteTailStore.open(tmp / "tails.db")
            try:
                sqlite = await engine_ticks(
                    client, sqlite_tails, heads, ticks=ticks, interval=n / 200 + 1.0
                )
            finally:
                await sqlite_tails.aclose()
    baseline = median(bare) * 1000
    note = f"{n:,} caught-up tasks, capacity {CAPACITY}, median of {ticks} ticks"
    return [
        Figure(
            name="cron tick, nothing new, memory tail store",
            unit="ms",
            tailrunner=median(memory) * 1000,
            baseline=baseline,
            baseline_name="bare loop opening the same streams",
            higher_is_better=False,
            note=note,
        ),
        Figure(
            name="cron tick, nothing new, SQLite tail store",
            unit="ms",
            tailrunner=median(sqlite) * 1000,
            baseline=baseline,
            baseline_name="bare loop opening the same streams",
            higher_is_better=False,
            note=f"{note}; tail store synchronous=FULL (its default)",
        ),
    ]


if __name__ == "__main__":
    run_module(measure)
