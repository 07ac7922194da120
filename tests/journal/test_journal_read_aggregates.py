"""``ReadAggregates`` over real gRPC on 127.0.0.1, on every store: many aggregates'
events after their own cursors in one call, held to what ``Events`` reads."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import cast
from uuid import UUID, uuid4

import anyio
import grpc
import pytest
from ulid import ULID

from tailrunner.errors import InvalidArgument
from tailrunner.ids import next_ulids
from tailrunner.journal.api import AggregatesReader, Cursor
from tailrunner.journal.client import JournalClient
from tailrunner.journal.hub import Hub
from tailrunner.journal.local import LocalJournal
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.service import MAX_READS, read_many
from tailrunner.journal.sqlite import SQLiteJournalStore, _read_wire_many
from tailrunner.journal.store import JournalStore, RawCursor, WireBatch, WireManyReader
from tailrunner.journal.wire_format import encode_event
from tailrunner.model import AggregateRef, Event, EventBatch, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc

KiB = 1024


@pytest.fixture
async def stub(server: JournalServer) -> AsyncIterator[journal_pb2_grpc.JournalAsyncStub]:
    """The raw gRPC stub, to send what JournalClient would never send."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield journal_pb2_grpc.JournalStub(channel)


async def _events(journal: JournalClient, aggregate_id: UUID, after: ULID | None) -> list[Event]:
    """Every event of the aggregate after ``after``, as ``Events`` reads them."""
    with anyio.fail_after(30):
        return [
            event
            async for batch in journal.events(aggregate_id, after=after)
            for event in batch.events
        ]


async def _append(journal: JournalClient, count: int, *, size: int = 8) -> AggregateRef:
    """A new aggregate with ``count`` events of ``size`` bytes of data each."""
    ref = AggregateRef(type=f"t{count % 3}", id=uuid4())
    if count:
        await journal.append(
            ref,
            [
                NewEvent(type=f"e{i}", data=bytes([i % 256]) * size, metadata={"i": str(i)})
                for i in range(count)
            ],
        )
    return ref


async def _check_against_events(
    journal: JournalClient, reads: Sequence[Cursor], batches: list[EventBatch]
) -> None:
    """Each batch is what ``Events`` reads after its cursor, or a prefix of it when not
    ``will_block``: then ``Events`` after the batch gives exactly the rest."""
    assert len(batches) == len(reads)
    for (aggregate_id, after), batch in zip(reads, batches, strict=True):
        expected = await _events(journal, aggregate_id, after)
        got = list(batch.events)
        assert all(event.aggregate_id == aggregate_id for event in got)
        if batch.will_block:
            assert got == expected
        else:
            assert got == expected[: len(got)]
            rest = await _events(journal, aggregate_id, got[-1].id if got else after)
            assert got + rest == expected


@pytest.mark.parametrize("seed", range(3))
async def test_many_aggregates_read_as_events_reads_them(client: JournalClient, seed: int) -> None:
    rng = random.Random(seed)
    refs = [await _append(client, rng.choice([0, 1, 1, 2, 5, 13])) for _ in range(30)]
    heads = {ref.id: await _events(client, ref.id, None) for ref in refs}
    reads: list[Cursor] = []
    for ref in refs:
        events = heads[ref.id]
        # From epoch, after an event in the middle or the last, or an aggregate nobody wrote.
        after = rng.choice([None, *(event.id for event in events)])
        reads.append((ref.id, after))
    reads += [(uuid4(), None), (uuid4(), ULID())]
    reads += rng.sample(reads, 5)  # the same aggregate read twice, maybe with other cursors
    reads += [(ref.id, None) for ref in rng.sample(refs, 3)]
    rng.shuffle(reads)

    batches = await client.read_aggregates(reads, max_events=10_000)

    assert all(batch.will_block for batch in batches)
    await _check_against_events(client, reads, batches)
    # And under a tight budget: cut where it runs out, the rest still there.
    cut = await client.read_aggregates(reads, max_events=rng.randint(1, 20))
    await _check_against_events(client, reads, cut)
    assert sum(batch.event_count() for batch in cut) >= 1


async def test_unknown_aggregates_are_empty_and_complete(client: JournalClient) -> None:
    ref = await _append(client, 2)
    reads: list[Cursor] = [(uuid4(), None), (ref.id, None), (uuid4(), ULID())]

    batches = await client.read_aggregates(reads)

    assert batches[0] == EventBatch(events=(), will_block=True)
    assert batches[1].event_count() == 2 and batches[1].will_block
    assert batches[2] == EventBatch(events=(), will_block=True)


async def test_after_the_last_event_is_empty_and_complete(client: JournalClient) -> None:
    ref = await _append(client, 3)
    events = await _events(client, ref.id, None)

    middle, last = await client.read_aggregates([(ref.id, events[0].id), (ref.id, events[-1].id)])

    assert middle.events == tuple(events[1:]) and middle.will_block
    assert last == EventBatch(events=(), will_block=True)


async def test_max_events_cuts_one_batch_and_leaves_the_next_ones_out(
    client: JournalClient,
) -> None:
    refs = [await _append(client, 3) for _ in range(4)]
    reads: list[Cursor] = [(ref.id, None) for ref in refs]

    batches = await client.read_aggregates(reads, max_events=5)

    assert [(b.event_count(), b.will_block) for b in batches] == [
        (3, True),
        (2, False),
        (0, False),
        (0, False),
    ]
    rest = await _events(client, refs[1].id, batches[1].event_id(-1))
    assert len(rest) == 1
    assert list(batches[1].events) + rest == await _events(client, refs[1].id, None)
    await _check_against_events(client, reads, batches)


async def test_a_budget_spent_exactly_by_a_complete_batch(client: JournalClient) -> None:
    refs = [await _append(client, 2), await _append(client, 0)]

    batches = await client.read_aggregates([(ref.id, None) for ref in refs], max_events=2)

    # The first is whole; of the second nothing is known: not read, so not complete.
    assert [(b.event_count(), b.will_block) for b in batches] == [(2, True), (0, False)]


async def test_the_byte_budget_cuts_big_events(client: JournalClient) -> None:
    big = await _append(client, 4, size=100 * KiB)
    small = await _append(client, 1)

    batches = await client.read_aggregates([(big.id, None), (small.id, None)])

    # Events are kept while less than 256 KiB came before them: 0, 100, 200 KiB.
    assert [(b.event_count(), b.will_block) for b in batches] == [(3, False), (0, False)]
    await _check_against_events(client, [(big.id, None), (small.id, None)], batches)


async def test_one_event_over_the_byte_budget_still_comes(client: JournalClient) -> None:
    empty = uuid4()
    huge = await _append(client, 1, size=900 * KiB)
    small = await _append(client, 1)
    reads: list[Cursor] = [(empty, None), (huge.id, None), (small.id, None)]

    batches = await client.read_aggregates(reads)

    assert [(b.event_count(), b.will_block) for b in batches] == [(0, True), (1, True), (0, False)]
    assert len(batches[1].events[0].data) == 900 * KiB
    # Alone first, it comes all the same: at least one event in every response.
    (alone,) = await client.read_aggregates([(huge.id, None)], max_events=1)
    assert alone.event_count() == 1 and alone.will_block


async def test_max_events_zero_is_a_thousand(client: JournalClient) -> None:
    ref = await _append(client, 1001, size=1)

    (batch,) = await client.read_aggregates([(ref.id, None)])

    assert batch.event_count() == 1000 and not batch.will_block


async def test_no_reads_no_batches(client: JournalClient) -> None:
    assert await client.read_aggregates([]) == []


async def test_more_than_a_thousand_reads_are_refused(client: JournalClient) -> None:
    reads: list[Cursor] = [(uuid4(), None)] * (MAX_READS + 1)

    with pytest.raises(InvalidArgument) as refused:
        await client.read_aggregates(reads)

    assert refused.value.field == "reads"
    assert len(await client.read_aggregates(reads[:MAX_READS])) == MAX_READS


@pytest.mark.parametrize(
    ("index", "cursor", "field"),
    [
        (3, journal_pb2.AggregateCursor(aggregate_id=b"x" * 15), "reads[3].aggregate_id"),
        (0, journal_pb2.AggregateCursor(), "reads[0].aggregate_id"),
        (2, journal_pb2.AggregateCursor(aggregate_id=uuid4().bytes, after=b"y"), "reads[2].after"),
    ],
)
async def test_a_bad_id_is_refused_naming_its_field(
    stub: journal_pb2_grpc.JournalAsyncStub,
    index: int,
    cursor: journal_pb2.AggregateCursor,
    field: str,
) -> None:
    reads = [journal_pb2.AggregateCursor(aggregate_id=uuid4().bytes) for _ in range(5)]
    reads[index] = cursor

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ReadAggregates(journal_pb2.ReadAggregatesRequest(reads=reads), timeout=10)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


async def test_the_local_journal_reads_as_the_service_does(
    client: JournalClient, server: JournalServer
) -> None:
    refs = [await _append(client, n) for n in (0, 3, 1, 4)]
    reads: list[Cursor] = [*((ref.id, None) for ref in refs), (uuid4(), None)]
    local = server.local_journal
    assert isinstance(local, AggregatesReader) and isinstance(client, AggregatesReader)

    for max_events in (0, 2, 5):
        assert await local.read_aggregates(
            reads, max_events=max_events
        ) == await client.read_aggregates(reads, max_events=max_events)
    with pytest.raises(InvalidArgument) as refused:
        await local.read_aggregates([(uuid4(), None)] * (MAX_READS + 1))
    assert refused.value.field == "reads"


class _ReadsOnly:
    """Only :meth:`JournalStore.read`, counted: a store without many-reads (the fallback)."""

    def __init__(self, store: MemoryJournalStore) -> None:
        self._store = store
        self.reads = 0

    async def read(self, aggregate_id: UUID, *, after: ULID | None, limit: int) -> list[Event]:
        self.reads += 1
        return await self._store.read(aggregate_id, after=after, limit=limit)


async def test_a_store_without_many_reads_is_read_cursor_by_cursor() -> None:
    memory = MemoryJournalStore()
    refs = [AggregateRef(type="t", id=uuid4()) for _ in range(3)]
    for count, ref in zip((2, 0, 3), refs, strict=True):
        if count:
            await memory.append(ref, [NewEvent(type="e")] * count, expected_tail=None)
    cursors = [(ref.id.bytes, b"") for ref in refs]
    reads_only = _ReadsOnly(memory)
    plain = cast(JournalStore, reads_only)
    assert isinstance(memory, WireManyReader) and not isinstance(plain, WireManyReader)

    for max_events in (0, 1, 2, 3, 4, 5):
        assert await read_many(plain, cursors, max_events=max_events) == await read_many(
            memory, cursors, max_events=max_events
        )
    reads_only.reads = 0
    batches = await LocalJournal(plain, Hub()).read_aggregates(
        [(ref.id, None) for ref in refs], max_events=3
    )
    assert [(b.event_count(), b.will_block) for b in batches] == [(2, True), (0, True), (1, False)]
    assert reads_only.reads == 3
    # Spent, the budget reads nothing more.
    reads_only.reads = 0
    await read_many(plain, cursors, max_events=2)
    assert reads_only.reads == 1


class _Recorded:
    """A many-reader that records what it was asked for."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    async def read_wire_many(
        self, reads: Sequence[RawCursor], *, max_events: int, max_bytes: int
    ) -> list[WireBatch]:
        self.asked.append((max_events, max_bytes))
        return [WireBatch("", [], True) for _ in reads]


async def test_max_events_zero_is_the_default_and_big_ones_are_capped() -> None:
    recorded = _Recorded()
    store = cast(JournalStore, recorded)
    cursors = [(uuid4().bytes, b"")]

    for max_events in (0, 1, 10_000, 10_001, 2**32 - 1):
        await read_many(store, cursors, max_events=max_events)

    assert [events for events, _ in recorded.asked] == [1000, 1, 10_000, 10_000, 10_000]
    assert {size for _, size in recorded.asked} == {256 * KiB}
    # No reads, no store call.
    assert await read_many(store, [], max_events=0) == []
    assert len(recorded.asked) == 5


class _CommitsBetweenReads:
    """A SQLite connection on which another connection commits after the first read."""

    def __init__(self, conn: sqlite3.Connection, commit: Callable[[], None]) -> None:
        self._conn = conn
        self._commit = commit
        self.reads = 0

    def execute(self, statement: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        cursor = self._conn.execute(statement, params)
        if statement.startswith("SELECT"):
            self.reads += 1
            if self.reads == 1:
                self._commit()
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction


async def test_sqlite_reads_all_cursors_in_one_snapshot(tmp_path: Path) -> None:
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    try:
        first, second = AggregateRef(type="t", id=uuid4()), AggregateRef(type="t", id=uuid4())
        for ref in (first, second):
            await store.append(ref, [NewEvent(type="e")], expected_tail=None)
        head = await store.head(second.id)
        assert head is not None
        later = next_ulids(head, 1)[0].bytes
        writer = sqlite3.connect(store.path, isolation_level=None)
        reader = sqlite3.connect(store.path, isolation_level=None)
        try:

            def commit() -> None:
                # An append to the second aggregate lands after the first read began.
                writer.execute(
                    "INSERT INTO events (aggregate_id, id, wire) VALUES (?, ?, ?)",
                    (second.id.bytes, later, encode_event(later, head.bytes, "late", b"", None)),
                )

            conn = _CommitsBetweenReads(reader, commit)
            reads = [(first.id.bytes, b""), (second.id.bytes, b"")]
            batches = _read_wire_many(
                cast(sqlite3.Connection, conn), reads, ["t", "t"], 100, 256 * KiB
            )
            assert conn.reads == 2
            assert [len(batch.rows) for batch in batches] == [1, 1]  # not the late one
            again = _read_wire_many(reader, reads, ["t", "t"], 100, 256 * KiB)
            assert [len(batch.rows) for batch in again] == [1, 2]
        finally:
            writer.close()
            reader.close()
    finally:
        await store.aclose()
