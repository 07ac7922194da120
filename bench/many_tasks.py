"""Many tasks: 100,000 lazy tasks in one runner, and 1,000 eager streams.

This process serves the journal (SQLite, ``synchronous=OFF``: the figures
are about the runner, not the disk); each measurement runs in a fresh
runner subprocess (``python -m bench.many_tasks child KIND …``), so that its
RSS growth is its own.

Lazy (N aggregates of type ``many``, one event each):

1. memory per task: the runner discovers the N aggregates, runs each task
   once and lets it sleep; RSS growth / N, read after a full collection.
2. wake and run: this process appends one event to every aggregate without
   signalling, then hands the journal's hub one signal per aggregate at
   once; the time until every task has run and seen its new event.
3. signal rate: the same signals once more (heads the tasks have already
   handled, so nothing runs): signals / time until the engine consumed all.

Eager (M aggregates of type ``eager``): the time until all M activities sit
on an open watch stream, caught up, and the RSS growth per stream.

Baseline: a bare loop on the same journal client in the same kind of
subprocess: a dict of tails, 100 workers (the engine's default capacity)
reading ``Events(watch=false)``, the signal stream feeding a queue; for
eager, M ``Events(watch=true)`` streams read by M plain tasks. It keeps no
task records, no run records and no tail store.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
from ulid import ULID

from bench.common import (
    Figure,
    Goal,
    Reporter,
    child,
    now,
    quiet_logs,
    rss_bytes,
    run_module,
    temp_dir,
)
from tailrunner.activities import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.engines.execute import RunResult
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.task import Task
from tailrunner.journal.client import JournalClient
from tailrunner.journal.open import open_store
from tailrunner.journal.server import JournalServer
from tailrunner.journal.store import AppendListener, JournalStore
from tailrunner.model import AggregateRef, NewEvent, SignalBatch
from tailrunner.runner import Runner
from tailrunner.states import TaskState
from tailrunner.tails.sqlite import SQLiteTailStore

LAZY_TYPE = "many"
EAGER_TYPE = "eager"
CAPACITY = 100
KiB = 1024
DATA = b'{"n": 1, "what": "happened"}'


# -- this process: the journal and the orchestration -------------------------


class Gate:
    """A store that can hold back its append notifications (appends without signals).

    Everything else passes through to the wrapped store, ``read_wire`` included.
    """

    def __init__(self, inner: JournalStore) -> None:
        self._inner = inner
        self._listeners: list[AppendListener] = []
        self.muted = False
        inner.add_listener(self._forward)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_listener(self, listener: AppendListener, on_resync: Any = None) -> None:
        self._listeners.append(listener)

    def _forward(self, aggregate: AggregateRef, head: ULID) -> None:
        if not self.muted:
            for listener in self._listeners:
                listener(aggregate, head)

    @contextmanager
    def silent(self) -> Iterator[None]:
        self.muted = True
        try:
            yield
        finally:
            self.muted = False


async def append_one_each(store: JournalStore, refs: Sequence[AggregateRef]) -> list[ULID]:
    heads = []
    for ref in refs:
        result = await store.append(ref, [NewEvent(type="e", data=DATA)], expected_tail=None)
        heads.append(result.tail)
    return heads


async def lazy_round(
    kind: str,
    server: JournalServer,
    gate: Gate,
    refs: Sequence[AggregateRef],
) -> dict[str, float]:
    n = len(refs)
    async with child("bench.many_tasks", "child", kind, server.address, str(n)) as proc:
        with anyio.fail_after(1800):
            ready = await proc.read()
            with gate.silent():
                heads = await append_one_each(gate, refs)
            burst = now()
            for ref, head in zip(refs, heads, strict=True):
                server.hub.notify(ref, head)
            woken = await proc.read()
            await proc.send({"go": True})
            await proc.read()  # listening for the intake round
            again = now()
            for ref, head in zip(refs, heads, strict=True):
                server.hub.notify(ref, head)
            intake = await proc.read()
    return {
        "rss_per_task": (ready["rss1"] - ready["rss0"]) / n,
        "first_run_s": ready["t_ready"] - ready["t_start"],
        "wake_s": woken["t_done"] - burst,
        "signal_rate": n / (intake["t_last"] - again),
    }


async def eager_round(kind: str, address: str, m: int) -> dict[str, float]:
    async with child("bench.many_tasks", "child", kind, address, str(m)) as proc:
        with anyio.fail_after(600):
            ready: dict[str, float] = await proc.read()
    return {"rss_per_stream": (ready["rss1"] - ready["rss0"]) / m, "open_s": ready["t_open"]}


async def measure(quick: bool) -> list[Figure]:
    n = 2_000 if quick else 100_000
    m = 100 if quick else 1_000
    async with temp_dir("many") as tmp:
        gate = Gate(await open_store(f"sqlite:///{tmp / 'journal.db'}?synchronous=OFF"))
        async with JournalServer(
            gate,  # type: ignore[arg-type]  # a pass-through proxy
            listen="127.0.0.1:0",
            max_pending_signals=n + 1000,
            close_store=True,
        ) as server:
            lazy_refs = [AggregateRef(type=LAZY_TYPE, id=uuid.uuid4()) for _ in range(n)]
            await append_one_each(gate, lazy_refs)  # type: ignore[arg-type]
            bare = await lazy_round("bare-lazy", server, gate, lazy_refs)
            ours = await lazy_round("lazy", server, gate, lazy_refs)
            eager_refs = [AggregateRef(type=EAGER_TYPE, id=uuid.uuid4()) for _ in range(m)]
            await append_one_each(gate, eager_refs)  # type: ignore[arg-type]
            bare_eager = await eager_round("bare-eager", server.address, m)
            eager = await eager_round("eager", server.address, m)
    lazy_note = f"{n:,} lazy tasks, capacity {CAPACITY}, SQLite tail store (NORMAL)"
    baseline_name = "bare loop on the same client: tails in a dict"
    return [
        Figure(
            name="many tasks: memory per lazy task",
            unit="KiB",
            tailrunner=ours["rss_per_task"] / KiB,
            baseline=bare["rss_per_task"] / KiB,
            baseline_name=baseline_name,
            higher_is_better=False,
            goal=Goal(on="value", op="<=", limit=0.5),
            note=f"{lazy_note}; RSS growth after every task ran once and sleeps",
        ),
        Figure(
            name="many tasks: first run of all (discover, run, sleep)",
            unit="s",
            tailrunner=ours["first_run_s"],
            baseline=bare["first_run_s"],
            baseline_name=baseline_name,
            higher_is_better=False,
            # Issue 16: at least 5x faster than one Events call per aggregate.
            goal=Goal(on="ratio", op="<=", limit=0.2),
            note=lazy_note,
        ),
        Figure(
            name="many tasks: wake and run all, one signal each",
            unit="s",
            tailrunner=ours["wake_s"],
            baseline=bare["wake_s"],
            baseline_name=baseline_name,
            higher_is_better=False,
            note=lazy_note,
        ),
        Figure(
            name="many tasks: signal rate (nothing to run)",
            unit="signals/s",
            tailrunner=ours["signal_rate"],
            baseline=bare["signal_rate"],
            baseline_name=baseline_name,
            higher_is_better=True,
            note=f"{n:,} signals in one burst from the journal's hub",
        ),
        Figure(
            name="many tasks: memory per eager stream",
            unit="KiB",
            tailrunner=eager["rss_per_stream"] / KiB,
            baseline=bare_eager["rss_per_stream"] / KiB,
            baseline_name=f"{m:,} bare watch streams",
            higher_is_better=False,
            note=f"{m:,} eager tasks, each caught up on an open watch stream",
        ),
        Figure(
            name="many tasks: open eager streams",
            unit="s",
            tailrunner=eager["open_s"],
            baseline=bare_eager["open_s"],
            baseline_name=f"{m:,} bare watch streams",
            higher_is_better=False,
            note=f"{m:,} eager tasks: start until all caught up",
        ),
    ]


# -- the subprocesses ----------------------------------------------------------


class TimedSignals:
    """A journal whose signal stream counts what its reader has consumed, and when."""

    def __init__(self, inner: JournalClient) -> None:
        self._inner = inner
        self.consumed = 0
        self.target = -1
        self.reached = anyio.Event()
        self.t_last = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def expect(self, count: int) -> None:
        self.consumed = 0
        self.target = count
        self.reached = anyio.Event()

    async def signals(self, aggregate_types: Sequence[str] = ()) -> AsyncGenerator[SignalBatch]:
        async with aclosing(self._inner.signals(aggregate_types)) as batches:
            async for batch in batches:
                yield batch
                # The reader asks for the next batch: it has handled this one.
                self.consumed += len(batch.signals)
                if self.target >= 0 and self.consumed >= self.target:
                    self.t_last = now()
                    self.reached.set()


class Progress:
    """Counts tasks that have seen a new event since :meth:`reset`.

    Lazy: a count, not a set of ids (a set of 100,000 ids weighs about 100
    bytes per task, which both RSS figures would carry); each phase gives
    every aggregate one new event, so each task sees new events in one run
    only. ``distinct``: a set, for eager streams that may block more than once.
    """

    def __init__(self, *, distinct: bool = False) -> None:
        self._ids: set[UUID] | None = set() if distinct else None
        self._count = 0
        self.changed = anyio.Event()

    @property
    def seen(self) -> int:
        return self._count if self._ids is None else len(self._ids)

    def reset(self) -> None:
        self._count = 0
        if self._ids is not None:
            self._ids = set()

    def add(self, aggregate_id: UUID) -> None:
        if self._ids is None:
            self._count += 1
        else:
            self._ids.add(aggregate_id)
        self.changed.set()

    async def wait(self, count: int) -> None:
        while self.seen < count:
            self.changed = anyio.Event()
            await self.changed.wait()


def trace_start() -> tracemalloc.Snapshot | None:
    """With ``BENCH_TRACEMALLOC=PATH``: what was allocated before the tasks (to subtract)."""
    if not os.environ.get("BENCH_TRACEMALLOC") or not tracemalloc.is_tracing():
        return None
    gc.collect()
    return _snapshot()


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )


def trace_report(before: tracemalloc.Snapshot | None, n: int) -> dict[str, float]:
    """Where the sleeping tasks' memory went: the allocation sites still alive.

    Writes the biggest growths since ``before`` (by line, then by traceback)
    to ``$BENCH_TRACEMALLOC`` and returns the traced bytes per task; without
    the variable, nothing (tracemalloc slows the run several times).
    """
    path = os.environ.get("BENCH_TRACEMALLOC")
    if before is None or not path:
        return {}
    gc.collect()
    after = _snapshot()
    by_line = after.compare_to(before, "lineno")
    traced = sum(stat.size_diff for stat in by_line)
    lines = [f"{traced / n:.0f} bytes traced per task ({n:,} tasks, {traced:,} bytes)", ""]
    for stat in by_line[:40]:
        per_task = f"{stat.size_diff / n:8.1f} B/task {stat.count_diff / n:6.2f} blocks/task"
        lines.append(f"{per_task}  {stat.traceback}")
    lines.append("")
    for stat in after.compare_to(before, "traceback")[:20]:
        lines.append(f"{stat.size_diff / n:8.1f} B/task {stat.count_diff / n:6.2f} blocks/task")
        lines.extend("    " + line for line in stat.traceback.format()[-16:])
    Path(path).write_text("\n".join(lines) + "\n")
    return {"traced_per_task": traced / n}


async def child_lazy(reporter: Reporter, address: str, n: int) -> None:
    progress = Progress()

    @activity(name="many-reader", aggregate_types=[LAZY_TYPE])
    async def reader(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for event in stream:
            tail = event.id
        return EOF(tail)

    def observe(task: Task, result: RunResult) -> None:
        if result.events_seen and task.state is TaskState.SLEEPING:
            progress.add(task.aggregate.id)

    async with JournalClient.connect(address) as client, temp_dir("tails") as tmp:
        tails = await SQLiteTailStore.open(tmp / "tails.db", synchronous="NORMAL")
        await client.list_aggregates(LAZY_TYPE, page_size=1)  # connected
        journal = TimedSignals(client)
        runner = Runner(
            journal=journal,  # type: ignore[arg-type]  # a pass-through proxy
            tails=tails,
            activities=[reader],
            options=EngineOptions(kind="lazy", capacity=CAPACITY, discovery_interval=3600),
        )
        runner.engine.add_observer(observe)
        rss0 = rss_bytes()
        before = trace_start()
        async with anyio.create_task_group() as tg:
            t_start = now()
            await tg.start(runner.run)
            await progress.wait(n)
            t_ready = now()
            rss1 = rss_bytes()
            traced = trace_report(before, n)
            progress.reset()
            reporter.send(rss0=rss0, rss1=rss1, t_start=t_start, t_ready=t_ready, **traced)
            await progress.wait(n)
            reporter.send(t_done=now())
            await reporter.receive()
            journal.expect(n)
            reporter.send(listening=True)
            await journal.reached.wait()
            reporter.send(t_last=journal.t_last)
            tg.cancel_scope.cancel()
        await tails.aclose()


async def child_bare_lazy(reporter: Reporter, address: str, n: int) -> None:
    async with JournalClient.connect(address) as client:
        await client.list_aggregates(LAZY_TYPE, page_size=1)
        rss0 = rss_bytes()
        t_start = now()
        tails: dict[UUID, ULID | None] = {}
        send, receive = anyio.create_memory_object_stream[UUID](max_buffer_size=n + 1)
        progress = Progress()

        async def read(aggregate_id: UUID) -> None:
            tail = tails[aggregate_id]
            seen = 0
            async with aclosing(client.events(aggregate_id, after=tail)) as batches:
                async for batch in batches:
                    for event in batch.events:
                        tail = event.id
                        seen += 1
            tails[aggregate_id] = tail
            if seen:
                progress.add(aggregate_id)

        async def worker() -> None:
            async for aggregate_id in receive:
                await read(aggregate_id)

        consumed = 0
        target = -1
        reached = anyio.Event()
        t_last = 0.0
        subscribed = anyio.Event()

        async def listen() -> None:
            nonlocal consumed, t_last
            async with aclosing(client.signals([LAZY_TYPE])) as batches:
                async for batch in batches:
                    subscribed.set()
                    for signal in batch.signals:
                        if tails.get(signal.aggregate_id, signal.head) != signal.head:
                            send.send_nowait(signal.aggregate_id)
                    consumed += len(batch.signals)
                    if 0 <= target <= consumed:
                        t_last = now()
                        reached.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            await subscribed.wait()
            async for info in client.aggregates(LAZY_TYPE, page_size=1000):
                tails[info.id] = None
                send.send_nowait(info.id)
            for _ in range(CAPACITY):
                tg.start_soon(worker)
            await progress.wait(n)
            t_ready = now()
            rss1 = rss_bytes()
            progress.reset()
            reporter.send(rss0=rss0, rss1=rss1, t_start=t_start, t_ready=t_ready)
            await progress.wait(n)
            reporter.send(t_done=now())
            await reporter.receive()
            consumed, target = 0, n
            reporter.send(listening=True)
            await reached.wait()
            reporter.send(t_last=t_last)
            tg.cancel_scope.cancel()


async def child_eager(reporter: Reporter, address: str, m: int) -> None:
    progress = Progress(distinct=True)

    @activity(name="eager-reader", aggregate_types=[EAGER_TYPE])
    async def reader(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                tail = event.id
            if batch.will_block:
                progress.add(ctx.aggregate.id)
        return EOF(tail)

    async with JournalClient.connect(address) as client, temp_dir("tails") as tmp:
        tails = await SQLiteTailStore.open(tmp / "tails.db", synchronous="NORMAL")
        await client.list_aggregates(EAGER_TYPE, page_size=1)
        runner = Runner(
            journal=client,
            tails=tails,
            activities=[reader],
            options=EngineOptions(kind="eager", capacity=m + 10, discovery_interval=3600),
        )
        rss0 = rss_bytes()
        async with anyio.create_task_group() as tg:
            t_start = now()
            await tg.start(runner.run)
            await progress.wait(m)
            t_open = now() - t_start
            reporter.send(rss0=rss0, rss1=rss_bytes(), t_open=t_open)
            tg.cancel_scope.cancel()
        await tails.aclose()


async def child_bare_eager(reporter: Reporter, address: str, m: int) -> None:
    progress = Progress(distinct=True)
    async with JournalClient.connect(address) as client:
        await client.list_aggregates(EAGER_TYPE, page_size=1)
        rss0 = rss_bytes()

        async def watch(aggregate_id: UUID) -> None:
            async with aclosing(client.events(aggregate_id, watch=True)) as batches:
                async for batch in batches:
                    if batch.will_block:
                        progress.add(aggregate_id)

        async with anyio.create_task_group() as tg:
            t_start = now()
            async for info in client.aggregates(EAGER_TYPE, page_size=1000):
                tg.start_soon(watch, info.id)
            await progress.wait(m)
            t_open = now() - t_start
            reporter.send(rss0=rss0, rss1=rss_bytes(), t_open=t_open)
            tg.cancel_scope.cancel()


CHILDREN: dict[str, Callable[[Reporter, str, int], Any]] = {
    "lazy": child_lazy,
    "bare-lazy": child_bare_lazy,
    "eager": child_eager,
    "bare-eager": child_bare_eager,
}


def child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.many_tasks child")
    parser.add_argument("kind", choices=sorted(CHILDREN))
    parser.add_argument("address")
    parser.add_argument("count", type=int)
    args = parser.parse_args(argv)
    quiet_logs()
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(12)
    profile = os.environ.get("BENCH_PROFILE")  # set by bench.profile
    if not profile:
        anyio.run(CHILDREN[args.kind], Reporter(), args.address, args.count, backend="asyncio")
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")
    with profiler:
        anyio.run(CHILDREN[args.kind], Reporter(), args.address, args.count, backend="asyncio")
    Path(profile).write_text(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child_main(sys.argv[2:])
    else:
        run_module(measure)
