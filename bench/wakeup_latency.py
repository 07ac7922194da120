"""Wake-up latency: from an append to the activity seeing the event, lazy and eager.

tailrunner: a journal server (SQLite, ``synchronous=NORMAL``) in its own
process; in this one, a lazy engine and an eager engine, each with one task
on its own aggregate, and a client that appends one event at a time. A
sample is the time from just before ``Append`` is called to the moment the
activity is handed the event. The next append waits until the event was
seen and the task is idle again (lazy: sleeping; eager: back on its watch).

Baseline: :mod:`bench.baseline_server` in its own process, a bare client
holding one ``Events(watch=true)`` stream open; a sample is the time from
just before ``Append`` to the stream delivering the pushed message.

The three take turns in blocks, so that drift hits them alike. Goals: eager
p99 ≤ 2x the baseline's p99; lazy p99 ≤ 4x (a signal, then a stream to open).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import grpc
from ulid import ULID

from bench.common import Figure, Goal, percentile, run_module, serving, temp_dir
from tailrunner.activities import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.engines.execute import RunResult
from tailrunner.engines.factory import EngineOptions, build_engine
from tailrunner.engines.retry import RetryPolicy
from tailrunner.engines.task import Task
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tailrunner.states import TaskState
from tailrunner.tails.memory import MemoryTailStore

DATA = b'{"n": 1, "what": "happened"}'


class Seen:
    """When each event id reached an activity (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.at: dict[bytes, float] = {}
        self._changed = anyio.Event()

    def mark(self, event_id: bytes) -> None:
        self.at.setdefault(event_id, time.perf_counter())
        self._changed.set()

    async def wait_for(self, event_id: bytes) -> float:
        with anyio.fail_after(10):
            while event_id not in self.at:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.at[event_id]


class Idle:
    """Set when the engine's task has finished a run and is sleeping."""

    def __init__(self) -> None:
        self.event = anyio.Event()

    def observe(self, task: Task, result: RunResult) -> None:
        if task.state is TaskState.SLEEPING:
            self.event.set()

    async def wait(self) -> None:
        with anyio.fail_after(10):
            await self.event.wait()
        self.event = anyio.Event()


def lazy_reader(seen: Seen) -> object:
    @activity(name="lazy-reader", aggregate_types=["latency-lazy"])
    async def reader(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for event in stream:
            seen.mark(event.id.bytes)
            tail = event.id
        return EOF(tail)

    return reader


def eager_reader(seen: Seen, ready: anyio.Event) -> object:
    @activity(name="eager-reader", aggregate_types=["latency-eager"])
    async def reader(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                seen.mark(event.id.bytes)
                tail = event.id
            if batch.will_block:
                ready.set()
        return EOF(tail)

    return reader


Sampler = Callable[[], Awaitable[float]]


@asynccontextmanager
async def samplers(
    journal_address: str, baseline_address: str
) -> AsyncIterator[dict[str, Sampler]]:
    """One sampler each for the baseline, eager and lazy, ready to be called in turn."""
    retry = RetryPolicy(initial=0.01, max_delay=0.1, jitter=0.0)
    async with (
        JournalClient.connect(journal_address) as client,
        grpc.aio.insecure_channel(baseline_address) as channel,
        anyio.create_task_group() as tg,
    ):
        # -- lazy
        lazy_seen, lazy_idle = Seen(), Idle()
        lazy_aggregate = AggregateRef(type="latency-lazy", id=uuid.uuid4())
        await client.append(lazy_aggregate, [NewEvent(type="first", data=DATA)])
        lazy_activity = lazy_reader(lazy_seen)
        lazy = build_engine(
            EngineOptions(kind="lazy", capacity=4, retry=retry),
            journal=client,
            tails=MemoryTailStore(),
            activities=[lazy_activity],  # type: ignore[list-item]
        )
        lazy.add_observer(lazy_idle.observe)
        lazy.start_activity(lazy_aggregate, lazy_activity, None)  # type: ignore[arg-type]
        await tg.start(lazy.run)
        await lazy_idle.wait()

        async def lazy_sample() -> float:
            start = time.perf_counter()
            result = await client.append(lazy_aggregate, [NewEvent(type="e", data=DATA)])
            seen_at = await lazy_seen.wait_for(result.tail.bytes)
            await lazy_idle.wait()
            return seen_at - start

        # -- eager
        eager_seen, eager_ready = Seen(), anyio.Event()
        eager_aggregate = AggregateRef(type="latency-eager", id=uuid.uuid4())
        eager_activity = eager_reader(eager_seen, eager_ready)
        eager = build_engine(
            EngineOptions(kind="eager", capacity=4, retry=retry),
            journal=client,
            tails=MemoryTailStore(),
            activities=[eager_activity],  # type: ignore[list-item]
        )
        eager.start_activity(eager_aggregate, eager_activity, None)  # type: ignore[arg-type]
        await tg.start(eager.run)
        with anyio.fail_after(10):
            await eager_ready.wait()

        async def eager_sample() -> float:
            start = time.perf_counter()
            result = await client.append(eager_aggregate, [NewEvent(type="e", data=DATA)])
            return await eager_seen.wait_for(result.tail.bytes) - start

        # -- baseline
        stub = journal_pb2_grpc.JournalStub(channel)
        base_seen = Seen()
        base_id = uuid.uuid4().bytes
        base_ready = anyio.Event()

        async def base_reader() -> None:
            call = stub.Events(journal_pb2.EventsRequest(aggregate_id=base_id, watch=True))
            async for response in call:
                for event in response.events:
                    base_seen.mark(event.id)
                base_ready.set()

        tg.start_soon(base_reader)
        with anyio.fail_after(10):
            await base_ready.wait()

        async def base_sample() -> float:
            start = time.perf_counter()
            response = await stub.Append(
                journal_pb2.AppendRequest(
                    aggregate_type="latency-base",
                    aggregate_id=base_id,
                    events=[journal_pb2.NewEvent(type="e", data=DATA)],
                )
            )
            return await base_seen.wait_for(response.tail) - start

        yield {"baseline": base_sample, "eager": eager_sample, "lazy": lazy_sample}
        tg.cancel_scope.cancel()


async def measure(quick: bool) -> list[Figure]:
    samples = 200 if quick else 2000
    blocks = 2 if quick else 4
    async with temp_dir("latency") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}?synchronous=NORMAL"
        async with (
            serving("journal", "--store", url) as journal_address,
            serving("baseline") as baseline_address,
            samplers(journal_address, baseline_address) as by_name,
        ):
            results: dict[str, list[float]] = {name: [] for name in by_name}
            # Warm-up, then blocks in turn.
            for sampler in by_name.values():
                for _ in range(20):
                    await sampler()
            per_block = samples // blocks
            for _ in range(blocks):
                for name, sampler in by_name.items():
                    for _ in range(per_block):
                        results[name].append(await sampler())
                        # A pause, so that samples are independent arrivals
                        # rather than a back-to-back pipeline.
                        await anyio.sleep(0.0005)

    def ms(name: str, p: float) -> float:
        return percentile(results[name], p) * 1000

    note = f"{samples:,} appends each, {blocks} blocks in turn; journal synchronous=NORMAL"
    figures = []
    # Issue 16's goals: eager within 1.5x the raw push at p99, lazy within 2x
    # (a signal carrying the events, then the run: no stream to open).
    for engine, limit in (("eager", 1.5), ("lazy", 2.0)):
        for p in (50, 99):
            figures.append(
                Figure(
                    name=f"wake-up latency {engine} p{p}",
                    unit="ms",
                    tailrunner=ms(engine, p),
                    baseline=ms("baseline", p),
                    baseline_name="raw grpc.aio push to an open stream",
                    higher_is_better=False,
                    goal=Goal(on="ratio", op="<=", limit=limit) if p == 99 else None,
                    note=note,
                )
            )
    return figures


if __name__ == "__main__":
    run_module(measure)
