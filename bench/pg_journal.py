"""The journal on PostgreSQL: appends, read-back and cross-server wake-ups, against raw psycopg.

tailrunner: journal servers in their own processes (``bench.serve journal
--store postgresql://…?schema=<unique>``), the PostgreSQL store, a client in
this one over gRPC on loopback. PostgreSQL at ``$TAILRUNNER_TEST_POSTGRES``
or ``postgresql://postgres@127.0.0.1:5432/test``, its default durability
(``synchronous_commit=on``: each commit waits for the WAL flush), on both sides.

- **Appends**: one aggregate, one call at a time, batches of 1 and of 100.
  Baseline: raw psycopg 3 (sync, one connection) in this process, into a
  schema of its own with the same tables: per batch one transaction that
  locks the aggregate's row (``SELECT … FOR UPDATE``; the first inserts it),
  then moves the head and inserts the events (``unnest`` of two arrays) in
  one pipeline, as the store does (without its ``NOTIFY``); the ids and
  stored bytes are made outside the timed loop.
- **Read-back**: one aggregate's events through ``Events(watch=false)``
  against raw ``SELECT id, wire`` of the same rows, in pages of 1,000.
- **Cross-server wake-up**: two journal servers on one schema; a client holds
  a stream on server A (``Events(watch=true)``, or ``AggregateSignals``), and
  appends one event at a time through server B; a sample is the time from
  just before ``Append`` to A's stream delivering it (B's commit, its NOTIFY,
  A's LISTEN connection, A's push). Baseline: raw psycopg ``NOTIFY`` on one
  connection to its arrival at another that ``LISTEN``\\s (asyncio, this
  process): PostgreSQL's own round trip, without an append's commit.

Without a reachable PostgreSQL the module reports no figures (a line on
stderr says why), so ``python -m bench`` still runs where there is none.
Its schemas are dropped at the end.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager

import anyio
import psycopg
from psycopg import sql
from ulid import ULID

from bench.common import Figure, Goal, median, percentile, run_module, serving
from bench.journal_appends import client_appends, client_read, make_batches
from bench.stream_throughput import fill
from bench.wakeup_latency import DATA, Seen
from tailrunner.ids import next_ulids
from tailrunner.journal.client import JournalClient
from tailrunner.journal.postgres import migrate_schema
from tailrunner.journal.wire_format import encode_event
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.stores import redact

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

_LOCK = "SELECT head FROM {}.aggregates WHERE id = %s FOR UPDATE"
_INSERT_AGGREGATE = (
    "INSERT INTO {}.aggregates (id, type, head, event_count) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING"
)
_UPDATE_AGGREGATE = (
    "UPDATE {}.aggregates SET head = %s, event_count = event_count + %s WHERE id = %s"
)
_INSERT_EVENTS = (
    "INSERT INTO {}.events (aggregate_id, id, wire)"
    " SELECT %s, id, wire FROM unnest(%s::bytea[], %s::bytea[]) AS e (id, wire)"
)
_READ = "SELECT id, wire FROM {}.events WHERE aggregate_id = %s AND id > %s ORDER BY id LIMIT %s"


def postgres_url() -> str:
    return os.environ.get("TAILRUNNER_TEST_POSTGRES") or DEFAULT_POSTGRES


def store_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def _q(template: str, schema: str) -> sql.Composed:
    return sql.SQL(template).format(sql.Identifier(schema))


def raw_appends(url: str, schema: str, batches: Sequence[Sequence[NewEvent]]) -> float:
    """The batches' rows through plain psycopg, one transaction per batch; events/s."""
    key = uuid.uuid4()
    head: ULID | None = None
    # Ids and stored bytes are made outside the timed loop: the ceiling pays nothing for them.
    rows: list[tuple[list[bytes], list[bytes]]] = []
    for batch in batches:
        ids = [i.bytes for i in next_ulids(head, len(batch))]
        parents = [None if head is None else head.bytes, *ids[:-1]]
        wires = [
            encode_event(i, parent, new.type, new.data, None)
            for i, parent, new in zip(ids, parents, batch, strict=True)
        ]
        rows.append((ids, wires))
        head = ULID.from_bytes(ids[-1])
    lock, insert_aggregate = _q(_LOCK, schema), _q(_INSERT_AGGREGATE, schema)
    update, insert_events = _q(_UPDATE_AGGREGATE, schema), _q(_INSERT_EVENTS, schema)
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for ids, wires in rows:
            with conn.transaction():
                locked = conn.execute(lock, (key,)).fetchone()
                with conn.pipeline():
                    if locked is None:
                        conn.execute(insert_aggregate, (key, "appends", ids[-1], len(ids)))
                    else:
                        conn.execute(update, (ids[-1], len(ids), key))
                    conn.execute(insert_events, (key, ids, wires))
        seconds = time.perf_counter() - start
    return sum(len(b) for b in batches) / seconds


def raw_read(url: str, schema: str, aggregate_id: uuid.UUID, page: int = 1000) -> tuple[int, float]:
    read = _q(_READ, schema)
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        count = 0
        after = b""
        while True:
            rows = conn.execute(read, (aggregate_id, after, page)).fetchall()
            if not rows:
                break
            count += len(rows)
            after = rows[-1][0]
        return count, time.perf_counter() - start


Sampler = Callable[[], Awaitable[float]]


@asynccontextmanager
async def wake_samplers(
    url: str, address_a: str, address_b: str, appended: list[float]
) -> AsyncIterator[dict[str, Sampler]]:
    """Samplers for the baseline, a watch on A and a signal stream on A, appends through B.

    ``appended`` gets the duration of each ``Append`` call to B (for the notes).
    """
    channel = f"tailrunner_bench_{uuid.uuid4().hex[:12]}"
    async with (
        JournalClient.connect(address_a) as reader,
        JournalClient.connect(address_b) as writer,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as listening,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as notifying,
        anyio.create_task_group() as tg,
    ):
        # -- Events(watch=true) on A
        watch_seen = Seen()
        watch_aggregate = AggregateRef(type="pg-watch", id=uuid.uuid4())
        first = await writer.append(watch_aggregate, [NewEvent(type="first", data=DATA)])

        async def watch() -> None:
            stream = reader.events(watch_aggregate.id, after=first.tail, watch=True)
            async with aclosing(stream) as batches:
                async for batch in batches:
                    for event in batch.events:
                        watch_seen.mark(event.id.bytes)

        tg.start_soon(watch)

        async def append_through_b(aggregate: AggregateRef, seen: Seen) -> float:
            start = time.perf_counter()
            result = await writer.append(aggregate, [NewEvent(type="e", data=DATA)])
            appended.append(time.perf_counter() - start)
            return await seen.wait_for(result.tail.bytes) - start

        async def watch_sample() -> float:
            return await append_through_b(watch_aggregate, watch_seen)

        # -- AggregateSignals on A
        signal_seen = Seen()
        signal_aggregate = AggregateRef(type="pg-signal", id=uuid.uuid4())
        signals_open = anyio.Event()

        async def signals() -> None:
            async with aclosing(reader.signals([signal_aggregate.type])) as batches:
                async for batch in batches:
                    signals_open.set()  # the first batch (a resync) says the stream is on
                    for signal in batch.signals:
                        if signal.head is not None:
                            signal_seen.mark(signal.head.bytes)

        tg.start_soon(signals)
        with anyio.fail_after(10):
            await signals_open.wait()

        async def signal_sample() -> float:
            return await append_through_b(signal_aggregate, signal_seen)

        # -- raw LISTEN/NOTIFY between two connections
        await listening.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        notify_seen = Seen()
        counter = iter(range(10**9))

        async def listen() -> None:
            async for notify in listening.notifies():
                notify_seen.mark(notify.payload.encode())

        tg.start_soon(listen)

        async def notify_sample() -> float:
            text = str(next(counter))
            start = time.perf_counter()
            await notifying.execute("SELECT pg_notify(%s, %s)", (channel, text))
            return await notify_seen.wait_for(text.encode()) - start

        yield {"baseline": notify_sample, "watch": watch_sample, "signals": signal_sample}
        tg.cancel_scope.cancel()


async def append_figures(url: str, raw_schema: str, address: str, quick: bool) -> list[Figure]:
    repeats = 1 if quick else 3
    plans = {1: 200 if quick else 2_000, 100: 2_000 if quick else 20_000}
    figures = []
    async with JournalClient.connect(address) as client:
        await client_appends(client, make_batches(50, 1))  # warm-up
        raw_appends(url, raw_schema, make_batches(50, 1))
        for size, events in plans.items():
            ours, theirs = [], []
            for _ in range(repeats):
                batches = make_batches(events, size)
                ours.append(await client_appends(client, batches))
                theirs.append(raw_appends(url, raw_schema, batches))
            figures.append(
                Figure(
                    name=f"journal append, batch {size}, PostgreSQL",
                    unit="events/s",
                    tailrunner=median(ours),
                    baseline=median(theirs),
                    baseline_name="raw psycopg: row lock + events insert, a transaction a batch",
                    higher_is_better=True,
                    goal=Goal(on="ratio", op=">=", limit=0.5) if size > 1 else None,
                    note=f"{events:,} events, one call at a time, median of {repeats};"
                    " synchronous_commit=on",
                )
            )
    return figures


async def read_figure(url: str, schema: str, address: str, quick: bool) -> Figure:
    repeats = 1 if quick else 3
    count = 10_000 if quick else 100_000
    aggregate = AggregateRef(type="reads", id=uuid.uuid4())
    await fill(store_url(url, schema), aggregate, count)
    ours, theirs = [], []
    async with JournalClient.connect(address) as client:
        await client_read(client, aggregate.id)  # warm-up
        raw_read(url, schema, aggregate.id)
        for _ in range(repeats):
            n, seconds = await client_read(client, aggregate.id)
            assert n == count, n
            ours.append(n / seconds)
            n, seconds = raw_read(url, schema, aggregate.id)
            assert n == count, n
            theirs.append(n / seconds)
    return Figure(
        name="journal read-back of one aggregate, PostgreSQL",
        unit="events/s",
        tailrunner=median(ours),
        baseline=median(theirs),
        baseline_name="raw psycopg SELECT id, wire, pages of 1,000",
        higher_is_better=True,
        note=f"{count:,} events via Events(watch=false), median of {repeats}",
    )


async def wake_figures(url: str, schema: str, address_a: str, quick: bool) -> list[Figure]:
    samples = 200 if quick else 2000
    blocks = 2 if quick else 4
    appended: list[float] = []
    async with (
        serving("journal", "--store", store_url(url, schema)) as address_b,
        wake_samplers(url, address_a, address_b, appended) as by_name,
    ):
        results: dict[str, list[float]] = {name: [] for name in by_name}
        for sampler in by_name.values():  # warm-up
            for _ in range(20):
                await sampler()
        appended.clear()
        per_block = samples // blocks
        for _ in range(blocks):
            for name, sampler in by_name.items():
                for _ in range(per_block):
                    results[name].append(await sampler())
                    await anyio.sleep(0.0005)  # independent arrivals, not a pipeline

    def ms(name: str, p: float) -> float:
        return percentile(results[name], p) * 1000

    note = (
        f"{samples:,} appends each through server B, seen on server A; {blocks} blocks in"
        f" turn; an Append call itself took {percentile(appended, 50) * 1000:.2f} ms (p50),"
        f" {percentile(appended, 99) * 1000:.2f} ms (p99)"
    )
    figures = []
    for name, what in (("watch", "Events(watch=true)"), ("signals", "AggregateSignals")):
        for p in (50, 99):
            figures.append(
                Figure(
                    name=f"cross-server wake-up, {what} p{p}",
                    unit="ms",
                    tailrunner=ms(name, p),
                    baseline=ms("baseline", p),
                    baseline_name="raw psycopg NOTIFY to a LISTENing connection",
                    higher_is_better=False,
                    note=note,
                )
            )
    return figures


def drop_schemas(url: str, schemas: Sequence[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def measure(quick: bool) -> list[Figure]:
    url = postgres_url()
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        message = f"bench.pg_journal: no PostgreSQL at {redact(url)}: {exc}"
        if os.environ.get("CI") == "true":
            # CI has PostgreSQL: a benchmark that cannot reach it has rotted.
            raise SystemExit(f"{message} (CI=true: PostgreSQL must be reachable)") from exc
        print(f"{message}; no figures", file=sys.stderr)
        return []
    tag = uuid.uuid4().hex[:12]
    schema, raw_schema = f"tailrunner_bench_{tag}", f"tailrunner_bench_raw_{tag}"
    try:
        # The raw side's tables, as the journal's migration makes them.
        await migrate_schema(url, schema=raw_schema)
        async with serving("journal", "--store", store_url(url, schema)) as address:
            figures = await append_figures(url, raw_schema, address, quick)
            figures.append(await read_figure(url, schema, address, quick))
            figures += await wake_figures(url, schema, address, quick)
    finally:
        drop_schemas(url, [schema, raw_schema])
    return figures


if __name__ == "__main__":
    run_module(measure)
