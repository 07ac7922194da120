"""Journal appends and read-back, against raw sqlite3 on the same rows.

tailrunner: a journal server (SQLite store) in its own process; a client in
this one appends to one aggregate, one call at a time, batches of 1 and of
100 events, at ``synchronous=FULL`` (the default: each commit is fsynced)
and ``NORMAL`` (no fsync per commit, so the CPU cost shows).

Baseline: raw ``sqlite3`` in this process inserting the same rows (same
columns, same ``WITHOUT ROWID`` primary key, the same ids and payloads),
one transaction per batch, at the same ``synchronous`` level.

Read-back: one aggregate's events (100,000) through ``Events(watch=false)``
against ``SELECT`` of the same rows with raw sqlite3, in pages of 1,000.

16 writers: the one-event appends (``FULL``) from 16 callers at once, each
on its own aggregate, against the same raw inserts (one transaction per
event): what group commit makes of concurrent writers.

Goals: batched (100) appends ≥ 0.5 of the raw inserts' events/s; the 16
writers ≥ 1.0 of raw. The notes of the batched and the 16-writer figures
also give gRPC's own ceiling: the same calls to the minimal server of
:mod:`bench.baseline_server`, which stores nothing.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path

import anyio
from ulid import ULID

from bench.common import Figure, Goal, median, run_module, serving, temp_dir
from bench.stream_throughput import fill, payload
from tailrunner.ids import next_ulids
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent

#: Concurrent callers in the group-commit figure.
WRITERS = 16

_RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    aggregate_id BLOB NOT NULL,
    id BLOB NOT NULL,
    parent BLOB,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata TEXT,
    PRIMARY KEY (aggregate_id, id)
) WITHOUT ROWID"""
_RAW_INSERT = (
    "INSERT INTO events (aggregate_id, id, parent, type, data, metadata) VALUES (?, ?, ?, ?, ?, ?)"
)
# The journal's own file, read as the store keeps it (each event's wire form).
_RAW_READ = "SELECT id, wire FROM events WHERE aggregate_id = ? AND id > ? ORDER BY id LIMIT ?"


def raw_appends(path: Path, synchronous: str, batches: Sequence[Sequence[NewEvent]]) -> float:
    """Insert the batches' rows with plain sqlite3; events/s."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(_RAW_SCHEMA)
        key = uuid.uuid4().bytes
        head: ULID | None = None
        # The ids are made outside the timed loop: the ceiling pays nothing for them.
        rows = []
        for batch in batches:
            ids = next_ulids(head, len(batch))
            parents = [None if head is None else head.bytes, *(i.bytes for i in ids[:-1])]
            rows.append(
                [
                    (key, i.bytes, parent, new.type, new.data, None)
                    for i, parent, new in zip(ids, parents, batch, strict=True)
                ]
            )
            head = ids[-1]
        start = time.perf_counter()
        for batch_rows in rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_RAW_INSERT, batch_rows)
            conn.execute("COMMIT")
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return sum(len(b) for b in batches) / seconds


def raw_read(path: Path, aggregate_id: uuid.UUID, page: int = 1000) -> tuple[int, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        start = time.perf_counter()
        count = 0
        after = b""
        while True:
            rows = conn.execute(_RAW_READ, (aggregate_id.bytes, after, page)).fetchall()
            if not rows:
                break
            count += len(rows)
            after = rows[-1][0]
        return count, time.perf_counter() - start
    finally:
        conn.close()


async def client_appends(client: JournalClient, batches: Sequence[Sequence[NewEvent]]) -> float:
    aggregate = AggregateRef(type="appends", id=uuid.uuid4())
    start = time.perf_counter()
    for batch in batches:
        await client.append(aggregate, batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


async def concurrent_appends(
    client: JournalClient, batches: Sequence[Sequence[NewEvent]], writers: int
) -> float:
    """``writers`` callers at once, each on its own aggregate, sharing ``batches``; events/s."""

    async def write(mine: Sequence[Sequence[NewEvent]]) -> None:
        aggregate = AggregateRef(type="appends", id=uuid.uuid4())
        for batch in mine:
            await client.append(aggregate, batch)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(write, batches[n::writers])
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


async def client_read(client: JournalClient, aggregate_id: uuid.UUID) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    async with aclosing(client.events(aggregate_id)) as batches:
        async for batch in batches:
            count += len(batch.events)
    return count, time.perf_counter() - start


def make_batches(events: int, size: int) -> list[list[NewEvent]]:
    return [
        [NewEvent(type="happened", data=payload(start + i)) for i in range(size)]
        for start in range(0, events, size)
    ]


async def measure(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    repeats = 1 if quick else 3
    read_count = 10_000 if quick else 100_000
    plans = {  # batch size -> events per measurement
        1: 200 if quick else 2_000,
        100: 2_000 if quick else 20_000,
    }
    async with temp_dir("appends") as tmp:
        # gRPC's own ceiling: the same calls to a server that stores nothing.
        async with (
            serving("baseline") as address,
            JournalClient.connect(address) as client,
        ):
            await client_appends(client, make_batches(50, 1))  # warm-up
            ceiling = median(
                [
                    await client_appends(client, make_batches(plans[100], 100))
                    for _ in range(repeats)
                ]
            )
            ceiling_concurrent = median(
                [
                    await concurrent_appends(client, make_batches(plans[1], 1), WRITERS)
                    for _ in range(repeats)
                ]
            )
        for synchronous in ("FULL", "NORMAL"):
            url = f"sqlite:///{tmp / f'journal-{synchronous}.db'}?synchronous={synchronous}"
            async with (
                serving("journal", "--store", url) as address,
                JournalClient.connect(address) as client,
            ):
                await client_appends(client, make_batches(50, 1))  # warm-up
                for size, events in plans.items():
                    ours, theirs = [], []
                    for rep in range(repeats):
                        batches = make_batches(events, size)
                        ours.append(await client_appends(client, batches))
                        raw_path = tmp / f"raw-{synchronous}-{size}-{rep}.db"
                        theirs.append(raw_appends(raw_path, synchronous, batches))
                    note = f"{events:,} events, one call at a time, median of {repeats}"
                    if size == 100:
                        note += (
                            f"; the same calls to a gRPC server that stores nothing:"
                            f" {ceiling:,.0f} events/s ({ceiling / median(theirs):.2f} of raw)"
                        )
                    figures.append(
                        Figure(
                            name=f"journal append, batch {size}, {synchronous}",
                            unit="events/s",
                            tailrunner=median(ours),
                            baseline=median(theirs),
                            baseline_name="raw sqlite3 inserts of the same rows",
                            higher_is_better=True,
                            goal=Goal(on="ratio", op=">=", limit=0.5) if size > 1 else None,
                            note=note,
                        )
                    )
                if synchronous == "FULL":
                    # Concurrent writers share commits (the store's group commit).
                    ours, theirs = [], []
                    for rep in range(repeats):
                        batches = make_batches(plans[1], 1)
                        ours.append(await concurrent_appends(client, batches, WRITERS))
                        raw_path = tmp / f"raw-{synchronous}-concurrent-{rep}.db"
                        theirs.append(raw_appends(raw_path, synchronous, batches))
                    figures.append(
                        Figure(
                            name=f"journal append, batch 1, {WRITERS} writers, FULL",
                            unit="events/s",
                            tailrunner=median(ours),
                            baseline=median(theirs),
                            baseline_name="raw sqlite3 inserts of the same rows",
                            higher_is_better=True,
                            goal=Goal(on="ratio", op=">=", limit=1.0),
                            note=f"{plans[1]:,} events, {WRITERS} callers at once on their own"
                            f" aggregates, one client; raw: one transaction per event; median of"
                            f" {repeats}; the same calls to a gRPC server that stores nothing:"
                            f" {ceiling_concurrent:,.0f} events/s"
                            f" ({ceiling_concurrent / median(theirs):.2f} of raw)",
                        )
                    )
        # Read-back of one aggregate.
        path = tmp / "journal-read.db"
        aggregate = AggregateRef(type="appends", id=uuid.uuid4())
        await fill(f"sqlite:///{path}", aggregate, read_count)
        async with (
            serving("journal", "--store", f"sqlite:///{path}") as address,
            JournalClient.connect(address) as client,
        ):
            await client_read(client, aggregate.id)  # warm-up
            raw_read(path, aggregate.id)
            ours, theirs = [], []
            for _ in range(repeats):
                n, seconds = await client_read(client, aggregate.id)
                assert n == read_count
                ours.append(n / seconds)
                n, seconds = raw_read(path, aggregate.id)
                assert n == read_count
                theirs.append(n / seconds)
        figures.append(
            Figure(
                name="journal read-back of one aggregate",
                unit="events/s",
                tailrunner=median(ours),
                baseline=median(theirs),
                baseline_name="raw sqlite3 SELECT, pages of 1,000",
                higher_is_better=True,
                note=f"{read_count:,} events via Events(watch=false), median of {repeats}",
            )
        )
    return figures


if __name__ == "__main__":
    run_module(measure)
