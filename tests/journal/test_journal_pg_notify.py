"""Appends across journal servers on one PostgreSQL schema wake the other's readers (LISTEN/NOTIFY).

Two journal servers, each with its own :class:`PostgresJournalStore` on one
fresh schema: what is appended through A reaches B's watchers, signal readers
and ``WaitOperation`` calls, and B's lost LISTEN connection comes back with a
resync. Every wait is bounded by ``fail_after``; nothing asserts time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import anyio
import grpc
import psycopg
import pytest
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import wrappers_pb2
from ulid import ULID

from tailrunner.errors import TailMismatch
from tailrunner.journal.client import JournalClient
from tailrunner.journal.hub import Hub
from tailrunner.journal.listeners import Listeners
from tailrunner.journal.pg_notify import MAX_PAYLOAD, channel_name, parse, payload
from tailrunner.journal.postgres import PostgresJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.model import AggregateRef, Event, NewEvent, SignalBatch
from tests.operations.test_service import Served, served_operations

WAIT = 10.0


@dataclass
class Side:
    server: JournalServer
    store: PostgresJournalStore
    client: JournalClient


@pytest.fixture
async def sides(postgres_url: str, pg_schema: str) -> AsyncIterator[tuple[Side, Side]]:
    a = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    b = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    async with (
        JournalServer(a, listen="127.0.0.1:0", close_store=True) as server_a,
        JournalServer(b, listen="127.0.0.1:0", close_store=True) as server_b,
        JournalClient.connect(server_a.address, timeout=10) as client_a,
        JournalClient.connect(server_b.address, timeout=10) as client_b,
    ):
        yield Side(server_a, a, client_a), Side(server_b, b, client_b)


def order() -> AggregateRef:
    return AggregateRef(type="order", id=uuid4())


def test_payloads_round_trip_and_stay_bounded() -> None:
    ref, head = order(), ULID()
    assert parse(payload("abc", ref, head)) == ("abc", ref, head)
    spaced = AggregateRef(type="a type with spaces", id=uuid4())
    assert parse(payload("abc", spaced, head)) == ("abc", spaced, head)
    huge = AggregateRef(type="x" * MAX_PAYLOAD, id=uuid4())
    assert parse(payload("abc", huge, head)) == ("abc", None, None)
    assert len(channel_name("s" * 63).encode()) <= 63
    assert channel_name("s" * 63) != channel_name("s" * 62 + "t")
    assert channel_name("short") == "tailrunner_journal_short"


async def test_a_watch_on_b_receives_an_append_through_a(sides: tuple[Side, Side]) -> None:
    a, b = sides
    ref = order()
    with anyio.fail_after(WAIT):
        stream = b.client.events(ref.id, watch=True)
        first = await anext(stream)
        assert first.events == () and first.will_block
        result = await a.client.append(ref, [NewEvent(type="placed", data=b"1")])
        batch = await anext(stream)
        await stream.aclose()
    assert [e.id for e in batch.events] == [result.tail]


async def test_a_signal_reader_on_b_is_signalled_by_an_append_through_a(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    ref = order()
    with anyio.fail_after(WAIT):
        stream = b.client.signals(["order"])
        assert (await anext(stream)).resync
        result = await a.client.append(ref, [NewEvent(type="placed")])
        batch = await anext(stream)
        await stream.aclose()
    assert [(s.aggregate_id, s.head) for s in batch.signals] == [(ref.id, result.tail)]


async def test_a_burst_of_appends_through_a_reaches_b_complete_and_in_order(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    ref = order()
    received: list[Event] = []
    tails: list[ULID] = []
    with anyio.fail_after(WAIT * 2):
        stream = b.client.events(ref.id, watch=True)
        await anext(stream)
        for i in range(200):
            tail = tails[-1] if tails else None
            result = await a.store.append(ref, [NewEvent(type=f"e{i}")], expected_tail=tail)
            tails.append(result.tail)
        while len(received) < 200:
            received.extend((await anext(stream)).events)
        await stream.aclose()
    assert [e.id for e in received] == tails
    assert [e.type for e in received] == [f"e{i}" for i in range(200)]


async def test_an_append_that_rolls_back_notifies_nothing(sides: tuple[Side, Side]) -> None:
    a, b = sides
    first, second = order(), order()
    await a.client.append(first, [NewEvent(type="placed")])
    with anyio.fail_after(WAIT):
        stream = b.client.signals(["order"])
        assert (await anext(stream)).resync
        with pytest.raises(TailMismatch):
            await a.store.append(first, [NewEvent(type="again")], expected_tail=ULID())
        result = await a.client.append(second, [NewEvent(type="placed")])
        # Notifications arrive in commit order: one from the failed append would come first.
        batch = await anext(stream)
        await stream.aclose()
    assert [(s.aggregate_id, s.head) for s in batch.signals] == [(second.id, result.tail)]


async def test_a_killed_listen_connection_reconnects_and_readers_resync(
    sides: tuple[Side, Side], postgres_url: str
) -> None:
    a, b = sides
    ref = order()
    listener = b.store.notify_listener
    assert listener is not None and listener.backend_pid is not None
    with anyio.fail_after(WAIT):
        signals = b.client.signals(["order"])
        assert (await anext(signals)).resync
        events = b.client.events(ref.id, watch=True)
        await anext(events)
        killed = listener.backend_pid
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            cursor = await conn.execute("SELECT pg_terminate_backend(%s)", (killed,))
            assert (await cursor.fetchone()) == (True,)
        batch: SignalBatch = await anext(signals)
        assert batch.resync
        assert listener.connections == 2 and listener.backend_pid != killed
        result = await a.client.append(ref, [NewEvent(type="after")])
        received: list[Event] = []
        while not received:
            received.extend((await anext(events)).events)
        await events.aclose()
        await signals.aclose()
    assert [e.id for e in received] == [result.tail]


async def test_wait_operation_on_b_is_woken_by_a_completion_through_a(
    postgres_url: str, pg_schema: str
) -> None:
    store_a = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    store_b = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    async with served_operations(store_a) as served_a, served_operations(store_b) as served_b:
        op = await served_a.ops.create()
        with anyio.fail_after(WAIT):
            await _until_known(served_b, op.name)
            shown: list[Any] = []

            async def waiter() -> None:
                request = lro.WaitOperationRequest(name=op.name)
                request.timeout.FromSeconds(int(WAIT))
                shown.append(await served_b.stub.WaitOperation(request))

            async with anyio.create_task_group() as group:
                group.start_soon(waiter)
                await served_a.ops.set_successful(op.name, wrappers_pb2.StringValue(value="ok"))
    (done,) = shown
    assert done.done and done.HasField("response")


async def _until_known(served: Served, name: str) -> None:
    """B learns of A's new operation through the notification; poll until it does."""
    while True:
        try:
            await served.stub.GetOperation(lro.GetOperationRequest(name=name))
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            await anyio.sleep(0.02)


async def test_hub_resync_wakes_watchers_and_owes_subscribers_a_resync() -> None:
    hub = Hub()
    ref = order()
    with hub.watch(ref.id) as watcher, hub.subscribe() as subscriber:
        first = await subscriber.take()
        assert first is not None and first.resync
        head = ULID()
        hub.notify(ref, head)
        assert subscriber.pending == 1 and await watcher.wait()
        assert not watcher.notified
        hub.resync()
        # Woken to re-read from its cursor; the head it knows stays as it was.
        assert watcher.notified and watcher.head == head
        batch = await subscriber.take()
        assert batch is not None and batch.resync and batch.signals == ()
        assert await watcher.wait()


async def test_listeners_resync_calls_each_on_resync_and_no_append_listener() -> None:
    hub = Hub()
    listeners = Listeners()
    heard: list[AggregateRef] = []
    listeners.add(lambda aggregate, head: heard.append(aggregate))
    listeners.add(hub.notify, hub.resync)
    with hub.subscribe() as subscriber:
        await subscriber.take()
        listeners.resync()
        batch = await subscriber.take()
    assert batch is not None and batch.resync and heard == []
