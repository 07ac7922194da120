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
"""

from __future__ import annotations

import time
import uuid
from collections import Counter as Tally
from typing import Any
from uuid import UUID

import anyio
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, DomainEventProtocol, event
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System
from ulid import ULID

from bench.common import Figure, run_module, temp_dir
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


def run_eventsourcing(folder: str, aggregates: int, events: int) -> float:
    """Events/s of the eventsourcing system, end to end."""
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SOURCE_SQLITE_DBNAME": f"{folder}/source.db",
        "COUNTER_SQLITE_DBNAME": f"{folder}/counter.db",
    }
    runner: SingleThreadedRunner[UUID] = SingleThreadedRunner(System([[Source, Counter]]), env=env)
    runner.start()
    try:
        source = runner.get(Source)
        counter = runner.get(Counter)
        things = [Thing() for _ in range(aggregates)]
        source.save(*things)
        start = time.perf_counter()
        for n in range(events):
            thing = things[n % aggregates]
            thing.happen(n=n, detail=DETAIL)
            source.save(thing)
        # The single-threaded runner processes each save before it returns.
        elapsed = time.perf_counter() - start
        total = sum(counter.seen.values())
        assert total == events, f"the follower counted {total} events, not {events}"
    finally:
        runner.stop()
    return events / elapsed


# -- tailrunner -----------------------------------------------------------------


async def run_tailrunner(folder: str, aggregates: int, events: int) -> float:
    """Events/s of a journal and a lazy runner in this process, end to end."""
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
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            with anyio.fail_after(60):
                await reached.wait()
            seen, target, reached = 0, events, anyio.Event()
            start = time.perf_counter()
            for n in range(events):
                await client.append(
                    things[n % aggregates], [NewEvent(type="happened", data=payload(n))]
                )
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
    return [
        Figure(
            name="peer: events processed end to end",
            unit="events/s",
            tailrunner=ours,
            baseline=theirs,
            baseline_name="eventsourcing System (Source -> Counter), SingleThreadedRunner",
            higher_is_better=True,
            note=f"{events:,} events over {aggregates} aggregates, one per command,"
            " SQLite FULL on both sides, one process each",
        )
    ]


if __name__ == "__main__":
    run_module(measure)
