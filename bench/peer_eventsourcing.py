"""Against a peer: the ``eventsourcing`` library's leader/follower system, end to end.

Both sides run in this one process, on SQLite files with their default
durability (``synchronous=FULL``, WAL), and process the same events: E
events (``{"n": …, "detail": …}``, about 60 bytes) spread round robin over
A aggregates, each created first (untimed), then appended one command at a
time, while a follower counts them. The figure is E / (time from the first
append until the follower has counted the last event).

eventsourcing (its documented system, ``eventsourcing.system``): a
``System([[Source, Counter]])`` run by ``SingleThreadedRunner``. ``Source``
is an ``Application`` whose aggregate ``Thing`` records ``Happened``
events; each command is ``thing.happen(...)`` and ``source.save(thing)``
(the aggregate objects are kept, so nothing is replayed per command).
``Counter`` is a ``ProcessApplication`` following ``Source``: on every save
the runner prompts it; it pulls the new notifications, its policy counts
each ``Happened``, and it records its tracking position, one transaction per
event. Each app has its own SQLite file.

tailrunner: a journal server (SQLite store) and a lazy runner (SQLite tail
store) in this process, as ``tailrunner demo`` runs them; each command is
one ``Append`` over gRPC on loopback; the lazy engine, woken by signals,
runs a counting activity that reads each aggregate's new events and
returns ``EOF``; the tail is stored once per run. Both are at-least-once
readers that keep their position durably; eventsourcing's follower records
it per event (exactly-once with its own writes), tailrunner's per run.

The concurrent row: the same events from 16 writers at once, writer ``w``
sending the events ``n`` with ``n % 16 == w`` (so each on its own
aggregates, as the aggregates are a multiple of 16). eventsourcing: its
``MultiThreadedRunner`` (the follower in a thread of its own, prompted by
each save) and 16 writer threads on the one ``Source`` application;
tailrunner: the same embedded journal and lazy runner, with 16 writer tasks
appending through one client. The figure ends when the follower has counted
the last event (eventsourcing's is polled every millisecond).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter as Tally
from typing import Any
from uuid import UUID

import anyio
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.system import (
    MultiThreadedRunner,
    ProcessApplication,
    SingleThreadedRunner,
    System,
)
from ulid import ULID

from bench.common import Figure, Goal, run_module, temp_dir
from tailrunner.activities import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.engines.factory import EngineOptions
from tailrunner.journal.client import JournalClient
from tailrunner.journal.open import open_store
from tailrunner.journal.server import JournalServer
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.runner import Runner
from tailrunner.tails.sqlite import SQLiteTailStore

DETAIL = "x" * 32
#: Seconds the follower may take after the last append. Generous: a lost
#: signal leaves an aggregate to the lazy engine's backstop (5 minutes).
DRAIN_LIMIT = 900.0
#: Writers at once in the concurrent row (threads for eventsourcing, tasks for tailrunner).
WRITERS = 16


def payload(n: int) -> bytes:
    return b'{"n": %d, "detail": "%s"}' % (n, DETAIL.encode())


# -- eventsourcing ------------------------------------------------------------


class Thing(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.count = 0

    @event("Happened")
    def happen(self, n: int, detail: str) -> None:
        self.count += 1


class Source(Application[UUID]):
    pass


class Counter(ProcessApplication[UUID]):
    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.seen: Tally[UUID] = Tally()

    @singledispatchmethod
    def policy(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        """Created events: nothing to do."""

    @policy.register(Thing.Happened)
    def _(
        self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]
    ) -> None:
        self.seen[domain_event.originator_id] += 1


def run_eventsourcing(folder: str, aggregates: int, events: int, writers: int = 1) -> float:
    """Events/s of the eventsourcing system, end to end.

    One writer: ``SingleThreadedRunner``, which processes each save before it
    returns. More: ``MultiThreadedRunner`` and ``writers`` threads, each on
    its own aggregates (``aggregates`` a multiple of ``writers``).
    """
    assert aggregates % writers == 0, "each writer on its own aggregates"
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SOURCE_SQLITE_DBNAME": f"{folder}/source.db",
        "COUNTER_SQLITE_DBNAME": f"{folder}/counter.db",
    }
    system = System([[Source, Counter]])
    runner: SingleThreadedRunner[UUID] | MultiThreadedRunner[UUID] = (
        SingleThreadedRunner(system, env=env)
        if writers == 1
        else MultiThreadedRunner(system, env=env)
    )
    runner.start()
    try:
        source = runner.get(Source)
        counter = runner.get(Counter)
        things = [Thing() for _ in range(aggregates)]
        source.save(*things)
        _wait_until_followed(runner, source, counter)

        def write(first: int) -> None:
            for n in range(first, events, writers):
                thing = things[n % aggregates]
                thing.happen(n=n, detail=DETAIL)
                source.save(thing)

        start = time.perf_counter()
        if writers == 1:
            # The single-threaded runner processes each save before it returns.
            write(0)
        else:
            threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            _wait_until_followed(runner, source, counter)
        elapsed = time.perf_counter() - start
        total = sum(counter.seen.values())
        assert total == events, f"the follower counted {total} events, not {events}"
    finally:
        runner.stop()
    return events / elapsed


def _wait_until_followed(
    runner: SingleThreadedRunner[UUID] | MultiThreadedRunner[UUID], source: Source, counter: Counter
) -> None:
    """Until the follower has processed every notification of ``source``."""
    deadline = time.monotonic() + DRAIN_LIMIT
    head = source.recorder.max_notification_id()
    while (counter.recorder.max_tracking_id(source.name) or 0) < (head or 0):
        if isinstance(runner, MultiThreadedRunner) and runner.has_errored.is_set():
            raise RuntimeError("the eventsourcing follower failed")
        if time.monotonic() > deadline:
            raise TimeoutError("the eventsourcing follower did not catch up")
        time.sleep(0.001)


# -- tailrunner -----------------------------------------------------------------


async def run_tailrunner(folder: str, aggregates: int, events: int, writers: int = 1) -> float:
    """Events/s of a journal and a lazy runner in this process, end to end.

    ``writers`` tasks append at once through the one client, each on its own
    aggregates (``aggregates`` a multiple of ``writers``).
    """
    assert aggregates % writers == 0, "each writer on its own aggregates"
    seen = 0
    target = aggregates  # the "created" events first
    reached = anyio.Event()

    @activity(name="counter", aggregate_types=["thing"])
    async def count(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        nonlocal seen
        async for item in stream:
            seen += 1
            tail = item.id
        if seen >= target:
            reached.set()
        return EOF(tail)

    store = await open_store(f"sqlite:///{folder}/journal.db")
    tails = await SQLiteTailStore.open(f"{folder}/tails.db")
    things = [AggregateRef(type="thing", id=uuid.uuid4()) for _ in range(aggregates)]
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address) as client,
    ):
        for thing in things:
            await client.append(thing, [NewEvent(type="created", data=b"{}")])
        runner = Runner(
            journal=client,
            tails=tails,
            activities=[count],
            options=EngineOptions(kind="lazy", discovery_interval=3600),
        )

        async def write(first: int) -> None:
            for n in range(first, events, writers):
                await client.append(
                    things[n % aggregates], [NewEvent(type="happened", data=payload(n))]
                )

        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            with anyio.fail_after(60):
                await reached.wait()
            seen, target, reached = 0, events, anyio.Event()
            start = time.perf_counter()
            async with anyio.create_task_group() as writing:
                for w in range(writers):
                    writing.start_soon(write, w)
            with anyio.fail_after(DRAIN_LIMIT):
                await reached.wait()
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
    await tails.aclose()
    assert seen == events, f"the activity counted {seen} events, not {events}"
    return events / elapsed


async def measure(quick: bool) -> list[Figure]:
    events = 1_000 if quick else 20_000
    aggregates = 10 if quick else 100
    async with temp_dir("peer-es") as es_dir, temp_dir("peer-tr") as tr_dir:
        theirs = await anyio.to_thread.run_sync(run_eventsourcing, str(es_dir), aggregates, events)
        ours = await run_tailrunner(str(tr_dir), aggregates, events)
    figures = [
        Figure(
            name="peer: events processed end to end",
            unit="events/s",
            tailrunner=ours,
            baseline=theirs,
            baseline_name="eventsourcing System (Source -> Counter), SingleThreadedRunner",
            higher_is_better=True,
            goal=Goal(on="ratio", op=">=", limit=2),  # issue 16
            note=f"{events:,} events over {aggregates} aggregates, one per command,"
            " SQLite FULL on both sides, one process each",
        )
    ]
    # Concurrent writers: the aggregates a multiple of the writers, each writer its own.
    events = 800 if quick else 20_000
    aggregates = WRITERS * (1 if quick else 7)
    async with temp_dir("peer-es") as es_dir, temp_dir("peer-tr") as tr_dir:
        theirs = await anyio.to_thread.run_sync(
            run_eventsourcing, str(es_dir), aggregates, events, WRITERS
        )
        ours = await run_tailrunner(str(tr_dir), aggregates, events, WRITERS)
    figures.append(
        Figure(
            name=f"peer: events processed end to end, {WRITERS} writers",
            unit="events/s",
            tailrunner=ours,
            baseline=theirs,
            baseline_name=f"eventsourcing System (Source -> Counter), MultiThreadedRunner,"
            f" {WRITERS} writer threads",
            higher_is_better=True,
            goal=Goal(on="ratio", op=">=", limit=10),
            note=f"{events:,} events over {aggregates} aggregates, one per command, {WRITERS}"
            f" writers at once each on its own aggregates (tailrunner: {WRITERS} tasks on one"
            " client), SQLite FULL on both sides, one process each",
        )
    )
    return figures


if __name__ == "__main__":
    run_module(measure)
