"""Fresh events: a journal server hands the appended events to watchers and signal readers.

A signal carries the events up to its head when the server has them at hand
and they are small (``Signal.events``, journal.proto); a woken watch sends
them without reading the store. Real gRPC servers on loopback over each
store (memory, a SQLite file, PostgreSQL); nothing asserts time.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest
from ulid import ULID

from tailrunner.journal.client import JournalClient
from tailrunner.journal.hub import MAX_FRESH_BYTES, MAX_FRESH_EVENTS, Hub
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.postgres import PostgresJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.store import FreshEvents, JournalStore
from tailrunner.journal.wire_format import encode_event
from tailrunner.model import AggregateRef, Event, NewEvent, Signal, SignalBatch

WAIT = 20.0


def _new(count: int, size: int = 8, *, tag: str = "e") -> list[NewEvent]:
    return [
        NewEvent(type=f"{tag}{n}", data=bytes([n % 256]) * size, metadata={"n": str(n)})
        for n in range(count)
    ]


async def _journal_events(client: JournalClient, aggregate_id: UUID) -> list[Event]:
    found: list[Event] = []
    async for batch in client.events(aggregate_id):
        found.extend(batch.events)
    return found


async def _next_signals(signals: AsyncIterator[SignalBatch]) -> tuple[Signal, ...]:
    """The signals of the next batch that has some (not a resync)."""
    while True:
        batch = await anext(signals)
        if batch.signals:
            return batch.signals


def _check_signal_events(signal: Signal, journal: Sequence[Event]) -> bool:
    """The contract of ``Signal.events``: when present, contiguous, ending at head, the journal's.

    :returns: whether events were present.
    """
    if signal.events is None:
        return False
    events = list(signal.events.events)
    assert events, "an events batch is never empty"
    assert signal.events.will_block
    assert events[-1].id == signal.head
    for before, after in itertools.pairwise(events):
        assert after.parent == before.id
    ids = [e.id for e in journal]
    start = 0 if events[0].parent is None else ids.index(events[0].parent) + 1
    assert journal[start : start + len(events)] == events
    for event in events:
        assert (event.aggregate_type, event.aggregate_id) == (journal[0].aggregate_type,
                                                              journal[0].aggregate_id)  # fmt: skip
    return True


async def test_a_signal_carries_exactly_the_appended_events(
    client: JournalClient, ref: AggregateRef
) -> None:
    with anyio.fail_after(WAIT):
        signals = client.signals([ref.type])
        try:
            assert (await anext(signals)).resync
            first = await client.append(ref, _new(3))
            (signal,) = await _next_signals(signals)
            second = await client.append(ref, _new(2, tag="f"), expected_tail=first.tail)
            (later,) = await _next_signals(signals)
        finally:
            await signals.aclose()
        journal = await _journal_events(client, ref.id)

    assert signal.events is not None and later.events is not None
    assert list(signal.events.events) == journal[:3]
    assert [e.id for e in signal.events.events] == list(first.event_ids)
    assert signal.events.events[0].parent is None
    assert list(later.events.events) == journal[3:]
    assert later.events.events[0].parent == first.tail
    assert later.head == second.tail
    # Every field, as Events gives it: data, metadata, the aggregate's fields.
    got = later.events.events[1]
    assert (got.type, got.data, dict(got.metadata)) == ("f1", b"\x01" * 8, {"n": "1"})
    assert (got.aggregate_type, got.aggregate_id) == (ref.type, ref.id)
    assert _check_signal_events(later, journal)


@pytest.mark.parametrize(
    ("count", "size", "carried"),
    [
        (MAX_FRESH_EVENTS, 8, True),
        (MAX_FRESH_EVENTS + 1, 8, False),
        (1, MAX_FRESH_BYTES - 64, True),
        (1, MAX_FRESH_BYTES + 1, False),
    ],
)
async def test_a_big_append_is_signalled_without_its_events(
    client: JournalClient, ref: AggregateRef, count: int, size: int, carried: bool
) -> None:
    with anyio.fail_after(WAIT):
        signals = client.signals([ref.type])
        try:
            assert (await anext(signals)).resync
            result = await client.append(ref, _new(count, size))
            (signal,) = await _next_signals(signals)
        finally:
            await signals.aclose()
        journal = await _journal_events(client, ref.id)
    assert signal.head == result.tail
    assert (signal.events is not None) is carried
    if carried:
        assert _check_signal_events(signal, journal)
        assert len(journal) == count


async def test_a_signal_from_another_journal_server_carries_no_events(
    postgres_url: str, pg_schema: str
) -> None:
    ref = AggregateRef(type="order", id=uuid4())
    a = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    b = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    async with (
        JournalServer(a, listen="127.0.0.1:0", close_store=True) as server_a,
        JournalServer(b, listen="127.0.0.1:0", close_store=True) as server_b,
        JournalClient.connect(server_a.address, timeout=10) as client_a,
        JournalClient.connect(server_b.address, timeout=10) as client_b,
    ):
        with anyio.fail_after(WAIT):
            on_a, on_b = client_a.signals(["order"]), client_b.signals(["order"])
            try:
                assert (await anext(on_a)).resync
                assert (await anext(on_b)).resync
                result = await client_a.append(ref, _new(2))
                (own,) = await _next_signals(on_a)
                (other,) = await _next_signals(on_b)
            finally:
                await on_a.aclose()
                await on_b.aclose()
            journal = await _journal_events(client_b, ref.id)
    assert own.head == other.head == result.tail
    assert _check_signal_events(own, journal)
    assert other.events is None


# -- coalescing for a reader that fell behind ----------------------------------


@pytest.fixture
def memory_store() -> MemoryJournalStore:
    return MemoryJournalStore()


@pytest.fixture
async def memory_server(memory_store: MemoryJournalStore) -> AsyncIterator[JournalServer]:
    async with JournalServer(memory_store, listen="127.0.0.1:0") as server:
        yield server


async def test_appends_coalesced_before_a_reader_took_them_are_joined_when_within_the_bound(
    memory_server: JournalServer, memory_store: MemoryJournalStore
) -> None:
    joined, too_many = AggregateRef(type="t", id=uuid4()), AggregateRef(type="t", id=uuid4())
    async with JournalClient.connect(memory_server.address, timeout=10) as client:
        with anyio.fail_after(WAIT):
            signals = client.signals(["t"])
            try:
                assert (await anext(signals)).resync
                # Memory appends never await: all of these land before the
                # server's signal stream runs, so each aggregate's are coalesced.
                tail = None
                for n in range(4):
                    tail = (await memory_store.append(joined, _new(n + 1), expected_tail=tail)).tail
                tail = None
                for _ in range(2):
                    tail = (await memory_store.append(too_many, _new(40), expected_tail=tail)).tail
                found = await _next_signals(signals)
            finally:
                await signals.aclose()
            journals = {r.id: await _journal_events(client, r.id) for r in (joined, too_many)}
    by_id = {signal.aggregate_id: signal for signal in found}
    assert set(by_id) == {joined.id, too_many.id}
    assert by_id[joined.id].events is not None
    assert list(by_id[joined.id].events.events) == journals[joined.id]
    assert by_id[too_many.id].events is None  # 80 events: over the bound


def _fresh(parent: bytes, ids: Sequence[ULID]) -> FreshEvents:
    parents = [parent, *(i.bytes for i in ids[:-1])]
    return FreshEvents(
        parent,
        [encode_event(i.bytes, p, "x", b"", None) for i, p in zip(ids, parents, strict=True)],
    )


async def test_an_entry_a_reader_took_is_not_joined_into_the_next_so_a_lagging_reader_reads() -> (
    None
):
    hub = Hub(publish_interval_per_subscriber=0)
    ref = AggregateRef(type="t", id=uuid4())
    ids = sorted(ULID() for _ in range(3))
    with hub.subscribe() as fast, hub.subscribe() as slow:
        assert (await fast.take_with_events()) is not None  # the resyncs
        assert (await slow.take_with_events()) is not None
        hub.notify(ref, ids[0], _fresh(b"", ids[:1]))
        taken = await fast.take_with_events()
        assert taken is not None and taken.fresh[0] is not None
        hub.notify(ref, ids[2], _fresh(ids[0].bytes, ids[1:]))
        for subscriber in (fast, slow):
            taken = await subscriber.take_with_events()
            assert taken is not None
            (fresh,) = taken.fresh
            # The fast reader's tail is ids[0]: it has all; the slow one's is
            # not that parent, so it reads (no gap either way).
            assert fresh is not None and fresh.parent == ids[0].bytes
            assert len(fresh.rows) == 2 and fresh.head == ids[2].bytes


async def test_a_gap_between_coalesced_appends_drops_the_events() -> None:
    hub = Hub(publish_interval_per_subscriber=0)
    ref = AggregateRef(type="t", id=uuid4())
    ids = sorted(ULID() for _ in range(3))
    with hub.subscribe() as subscriber:
        await subscriber.take_with_events()
        hub.notify(ref, ids[0], _fresh(b"", ids[:1]))
        hub.notify(ref, ids[1])  # events not at hand (another server's append)
        hub.notify(ref, ids[2], _fresh(ids[1].bytes, ids[2:]))
        taken = await subscriber.take_with_events()
    assert taken is not None
    assert [s.head for s in taken.batch.signals] == [ids[2]]
    assert taken.fresh == (None,)


@dataclass
class _Burst:
    """Concurrent writers appending bursts of mixed sizes to a few aggregates."""

    client: JournalClient
    refs: list[AggregateRef]
    seed: int

    async def write(self, writer: int, appends: int) -> None:
        rng = random.Random(self.seed * 1000 + writer)
        for _ in range(appends):
            ref = rng.choice(self.refs)
            kind = rng.random()
            if kind < 0.1:
                events = _new(1, MAX_FRESH_BYTES + 100)  # too big to carry
            elif kind < 0.2:
                events = _new(rng.randint(20, 70))
            else:
                events = _new(rng.randint(1, 3), rng.randint(0, 200))
            await self.client.append(ref, events)


async def _burst_store(kind: str, tmp_path: Any) -> JournalStore:
    if kind == "memory":
        return MemoryJournalStore()
    from tailrunner.journal.sqlite import SQLiteJournalStore

    return await SQLiteJournalStore.open(tmp_path / "journal.db")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_signals_of_a_slow_reader_under_bursts_never_carry_a_gap(
    kind: str, seed: int, tmp_path: Any
) -> None:
    store = await _burst_store(kind, tmp_path)
    refs = [AggregateRef(type="t", id=uuid4()) for _ in range(3)]
    received: list[Signal] = []
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address, timeout=10) as client,
        JournalClient.connect(server.address, timeout=10) as reader,
    ):
        burst = _Burst(client, refs, seed)
        signals = reader.signals(["t"])
        changed = anyio.Event()

        async def read_slowly() -> None:
            nonlocal changed
            async for batch in signals:
                assert not batch.resync
                received.extend(batch.signals)
                changed.set()
                changed = anyio.Event()
                await anyio.sleep(0.005)  # falls behind: the hub coalesces

        try:
            with anyio.fail_after(WAIT * 3):
                assert (await anext(signals)).resync
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_slowly)
                    async with anyio.create_task_group() as writers:
                        for writer in range(4):
                            writers.start_soon(burst.write, writer, 30)
                    infos, _ = await client.list_aggregates("t")
                    final = {info.id: info.head for info in infos}
                    # The last signal of each aggregate names its final head.
                    while {s.aggregate_id: s.head for s in received} != final:
                        await changed.wait()
                    tg.cancel_scope.cancel()
        finally:
            await signals.aclose()
        journals = {r.id: await _journal_events(client, r.id) for r in refs}
    carried = [_check_signal_events(s, journals[s.aggregate_id]) for s in received]
    assert any(carried)  # small appends came with their events


async def test_signals_join_across_appends_of_a_sqlite_file_too(tmp_path: Any) -> None:
    """The property, under one writer appending in a tight loop: joins happen, never a gap."""
    from tailrunner.journal.sqlite import SQLiteJournalStore

    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    ref = AggregateRef(type="t", id=uuid4())
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        with anyio.fail_after(WAIT):
            signals = client.signals(["t"])
            try:
                assert (await anext(signals)).resync
                results = [await client.append(ref, _new(1)) for _ in range(10)]
                seen: list[Signal] = []
                while not seen or seen[-1].head != results[-1].tail:
                    seen.extend(await _next_signals(signals))
            finally:
                await signals.aclose()
            journal = await _journal_events(client, ref.id)
    assert all(_check_signal_events(s, journal) for s in seen)


# -- watch streams --------------------------------------------------------------


def _count_reads(store: JournalStore) -> Callable[[], int]:
    """Count the store reads the journal service makes from now on."""
    name = "read_wire" if hasattr(store, "read_wire") else "read"
    original = getattr(store, name)
    calls = [0]

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    setattr(store, name, counted)
    return lambda: calls[0]


async def test_a_woken_watch_sends_the_fresh_events_without_reading_the_store(
    store: JournalStore, client: JournalClient, ref: AggregateRef
) -> None:
    reads = _count_reads(store)
    sent: list[ULID] = []
    got: list[Event] = []
    with anyio.fail_after(WAIT):
        stream = client.events(ref.id, watch=True)
        try:
            assert (await anext(stream)).will_block  # empty: caught up
            before = reads()
            for n in range(5):
                result = await client.append(ref, _new(n + 1))
                sent.extend(result.event_ids)
                while len(got) < len(sent):
                    batch = await anext(stream)
                    assert batch.will_block
                    got.extend(batch.events)
            during = reads() - before
        finally:
            await stream.aclose()
        journal = await _journal_events(client, ref.id)
    assert [e.id for e in got] == sent
    assert got == journal
    assert during == 0


async def test_fresh_events_keep_to_the_watchs_batch_size(
    memory_server: JournalServer, memory_store: MemoryJournalStore
) -> None:
    ref = AggregateRef(type="t", id=uuid4())
    async with JournalClient.connect(memory_server.address, timeout=10) as client:
        with anyio.fail_after(WAIT):
            stream = client.events(ref.id, watch=True, max_batch=2)
            try:
                assert (await anext(stream)).will_block
                result = await client.append(ref, _new(5))
                batches = []
                while sum(len(b.events) for b in batches) < 5:
                    batches.append(await anext(stream))
            finally:
                await stream.aclose()
    assert [len(b.events) for b in batches] == [2, 2, 1]
    assert [b.will_block for b in batches] == [False, False, True]
    assert [e.id for b in batches for e in b.events] == list(result.event_ids)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_watch_delivers_every_event_once_in_order_under_bursts(
    kind: str, tmp_path: Any
) -> None:
    store = await _burst_store(kind, tmp_path)
    ref = AggregateRef(type="t", id=uuid4())
    got: list[Event] = []
    async with (
        JournalServer(store, listen="127.0.0.1:0", close_store=True) as server,
        JournalClient.connect(server.address, timeout=10) as client,
        JournalClient.connect(server.address, timeout=10) as reader,
    ):
        burst = _Burst(client, [ref], seed=7)
        with anyio.fail_after(WAIT * 3):
            stream = reader.events(ref.id, watch=True)
            try:
                assert (await anext(stream)).will_block
                async with anyio.create_task_group() as tg:
                    for writer in range(4):
                        tg.start_soon(burst.write, writer, 25)
                # A slow reader: events pile up between its reads.
                journal = await _journal_events(client, ref.id)
                while len(got) < len(journal):
                    got.extend((await anext(stream)).events)
                    await anyio.sleep(0.001)
            finally:
                await stream.aclose()
        assert len(journal) > 100
    assert [e.id for e in got] == [e.id for e in journal]
    assert got == journal


async def test_a_watch_started_mid_stream_reads_what_it_missed(
    memory_server: JournalServer, memory_store: MemoryJournalStore
) -> None:
    """Fresh events whose parent is not the cursor are not sent: the watch reads instead."""
    ref = AggregateRef(type="t", id=uuid4())
    async with JournalClient.connect(memory_server.address, timeout=10) as client:
        first = await client.append(ref, _new(2))
        with anyio.fail_after(WAIT):
            stream = client.events(ref.id, after=first.event_ids[0], watch=True)
            try:
                batch = await anext(stream)
                assert [e.id for e in batch.events] == [first.tail]
                second = await client.append(ref, _new(3), expected_tail=first.tail)
                got: list[Event] = []
                while len(got) < 3:
                    got.extend((await anext(stream)).events)
            finally:
                await stream.aclose()
        assert [e.id for e in got] == list(second.event_ids)


class _GatedStore(MemoryJournalStore):
    """A memory store whose next read waits at a gate, so appends can land during it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()

    async def read(self, aggregate_id: UUID, *, after: ULID | None, limit: int) -> list[Event]:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.entered.set()
            await gate.wait()
        return await super().read(aggregate_id, after=after, limit=limit)


async def test_fresh_events_of_an_append_the_watchs_read_already_saw_are_not_sent_again() -> None:
    store = _GatedStore()
    ref = AggregateRef(type="t", id=uuid4())
    got: list[Event] = []
    async with (
        JournalServer(store, listen="127.0.0.1:0") as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        with anyio.fail_after(WAIT):
            first = await store.append(ref, _new(1), expected_tail=None)
            stream = client.events(ref.id, watch=True)
            try:
                got.extend((await anext(stream)).events)
                # A big append wakes the watch without events: it reads, and
                # another append lands while that read runs.
                gate = store.gate = anyio.Event()
                big = await store.append(
                    ref, _new(1, MAX_FRESH_BYTES + 1), expected_tail=first.tail
                )
                await store.entered.wait()
                small = await store.append(ref, _new(1), expected_tail=big.tail)
                gate.set()
                while got[-1].id != small.tail:
                    got.extend((await anext(stream)).events)
                # The read saw both; the wake-up for the small one (its events'
                # parent is the big one, not the cursor) must not send it again.
                last = await store.append(ref, _new(1), expected_tail=small.tail)
                while got[-1].id != last.tail:
                    got.extend((await anext(stream)).events)
            finally:
                await stream.aclose()
    assert [e.id for e in got] == [first.tail, big.tail, small.tail, last.tail]
