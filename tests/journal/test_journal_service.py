"""The journal over real gRPC on 127.0.0.1: JournalServer, JournalService and JournalClient."""

from __future__ import annotations

import itertools
import types
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import anyio
import grpc
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    JournalUnavailable,
    TailMismatch,
)
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, EventBatch, NewEvent, SignalBatch
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc

MiB = 1024 * 1024


@pytest.fixture
async def stub(server: JournalServer) -> AsyncIterator[journal_pb2_grpc.JournalAsyncStub]:
    """The raw gRPC stub, to send what JournalClient would never send."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield journal_pb2_grpc.JournalStub(channel)


async def _all_batches(
    client: JournalClient, aggregate_id: UUID, **options: object
) -> list[EventBatch]:
    with anyio.fail_after(10):
        return [batch async for batch in client.events(aggregate_id, **options)]  # type: ignore[arg-type]


async def test_append_then_read_round_trip(client: JournalClient, ref: AggregateRef) -> None:
    first = await client.append(
        ref,
        [
            NewEvent(type="placed", data=b'{"sku":"a-1"}', metadata={"by": "alice"}),
            NewEvent(type="paid"),
        ],
    )
    second = await client.append(ref, [NewEvent(type="shipped")], expected_tail=first.tail)

    batches = await _all_batches(client, ref.id)

    events = [event for batch in batches for event in batch.events]
    assert [e.type for e in events] == ["placed", "paid", "shipped"]
    assert [e.id for e in events] == [*first.event_ids, *second.event_ids]
    assert [e.parent for e in events] == [None, events[0].id, events[1].id]
    assert events[0].data == b'{"sku":"a-1"}'
    assert dict(events[0].metadata) == {"by": "alice"}
    assert all(e.aggregate == ref for e in events)
    assert batches[-1].will_block
    assert second.tail == events[-1].id


async def test_events_after_a_tail_and_in_small_batches(
    client: JournalClient, ref: AggregateRef
) -> None:
    result = await client.append(ref, [NewEvent(type=f"e{i}") for i in range(7)])
    ids = list(result.event_ids)

    batches = await _all_batches(client, ref.id, after=ids[1], max_batch=2)

    assert [[e.id for e in b.events] for b in batches] == [ids[2:4], ids[4:6], ids[6:]]
    # Only the batch that catches the reader up says so.
    assert [b.will_block for b in batches] == [False, False, True]


async def test_events_of_an_unknown_aggregate_is_an_empty_stream(client: JournalClient) -> None:
    assert await _all_batches(client, uuid4()) == []


async def test_watching_an_unknown_aggregate_gives_one_empty_will_block_batch_then_blocks(
    client: JournalClient, ref: AggregateRef
) -> None:
    stream = client.events(ref.id, watch=True)
    try:
        with anyio.fail_after(10):
            first = await anext(stream)
            assert first == EventBatch(events=(), will_block=True)
            result = await client.append(ref, [NewEvent(type="created")])
            second = await anext(stream)
        assert [e.id for e in second.events] == [result.tail]
        assert second.will_block
    finally:
        await stream.aclose()


async def test_watch_catches_up_then_sends_new_events_as_they_are_appended(
    client: JournalClient, ref: AggregateRef
) -> None:
    old = await client.append(ref, [NewEvent(type="a"), NewEvent(type="b")])
    stream = client.events(ref.id, watch=True)
    try:
        with anyio.fail_after(10):
            caught_up = await anext(stream)
            assert [e.id for e in caught_up.events] == list(old.event_ids)
            assert caught_up.will_block
            for name in ("c", "d"):
                new = await client.append(ref, [NewEvent(type=name)])
                batch = await anext(stream)
                assert [e.id for e in batch.events] == [new.tail]
                assert batch.events[0].parent is not None
                assert batch.will_block
    finally:
        await stream.aclose()


async def test_two_writers_racing_on_one_expected_tail_exactly_one_wins(
    server: JournalServer, client: JournalClient, ref: AggregateRef
) -> None:
    start = await client.append(ref, [NewEvent(type="created")])
    won: list[ULID] = []
    lost: list[TailMismatch] = []

    async with JournalClient.connect(server.address, timeout=10) as other:

        async def write(writer: JournalClient, name: str) -> None:
            try:
                result = await writer.append(ref, [NewEvent(type=name)], expected_tail=start.tail)
            except TailMismatch as exc:
                lost.append(exc)
            else:
                won.append(result.tail)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, client, "a")
                tg.start_soon(write, other, "b")

    assert len(won) == 1
    assert len(lost) == 1
    # The loser learns the actual tail from the status details.
    assert lost[0].expected == start.tail
    assert lost[0].actual == won[0]


async def test_tail_mismatch_travels_as_a_rich_status_detail(
    client: JournalClient, stub: journal_pb2_grpc.JournalAsyncStub, ref: AggregateRef
) -> None:
    head = await client.append(ref, [NewEvent(type="a")])
    stale = ULID.from_int(1)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(
            journal_pb2.AppendRequest(
                aggregate_type=ref.type,
                aggregate_id=ref.id.bytes,
                expected_tail=stale.bytes,
                events=[journal_pb2.NewEvent(type="b")],
            )
        )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    from grpc_status import rpc_status

    status = rpc_status.from_call(caught.value)
    [detail] = status.details
    mismatch = journal_pb2.TailMismatch()
    assert detail.Unpack(mismatch)
    assert (mismatch.expected_tail, mismatch.actual_tail) == (stale.bytes, head.tail.bytes)


async def test_another_aggregate_type_is_a_failed_precondition(
    client: JournalClient, ref: AggregateRef
) -> None:
    await client.append(ref, [NewEvent(type="a")])
    with pytest.raises(AggregateTypeMismatch, match="order"):
        await client.append(AggregateRef(type="user", id=ref.id), [NewEvent(type="b")])


async def test_a_burst_of_appends_in_one_millisecond_stays_strictly_increasing(
    client: JournalClient, ref: AggregateRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every id the journal makes now falls in one and the same millisecond.
    frozen_s = 1_750_000_000.123
    monkeypatch.setattr("tailrunner.ids.time", types.SimpleNamespace(time=lambda: frozen_s))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(
                    client.append, ref, [NewEvent(type=f"burst-{i}"), NewEvent(type="and")]
                )

    events = [e for b in await _all_batches(client, ref.id) for e in b.events]
    ids = [e.id for e in events]
    assert len(ids) == 100
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert {i.milliseconds for i in ids} == {int(frozen_s * 1000)}
    assert [e.parent for e in events] == [None, *ids[:-1]]


def _append_request(
    ref: AggregateRef, *events: journal_pb2.NewEvent, **fields: object
) -> journal_pb2.AppendRequest:
    request = journal_pb2.AppendRequest(
        aggregate_type=ref.type, aggregate_id=ref.id.bytes, events=list(events)
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


_EVENT = journal_pb2.NewEvent(type="ok")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"aggregate_id": b"\x01\x02\x03"}, "aggregate_id"),
        ({"aggregate_type": ""}, "aggregate_type"),
        ({"expected_tail": b"12345"}, "expected_tail"),
    ],
)
async def test_append_with_a_bad_field_is_invalid_argument_naming_it(
    stub: journal_pb2_grpc.JournalAsyncStub,
    ref: AggregateRef,
    change: dict[str, object],
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(_append_request(ref, _EVENT, **change))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


async def test_append_without_events_is_invalid_argument_naming_events(
    stub: journal_pb2_grpc.JournalAsyncStub, ref: AggregateRef
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(_append_request(ref))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("events: ")


async def test_a_field_error_travels_as_a_bad_request_detail(
    stub: journal_pb2_grpc.JournalAsyncStub, ref: AggregateRef
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Append(_append_request(ref, _EVENT, aggregate_type=""))
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == caught.value.details()  # still for people: "field: reason"
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    [violation] = bad_request.field_violations
    assert violation.field == "aggregate_type"
    assert caught.value.details() == f"aggregate_type: {violation.description}"


async def test_an_empty_event_type_is_invalid_argument_naming_it(
    client: JournalClient, ref: AggregateRef
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.append(ref, [NewEvent(type="ok"), NewEvent(type="")])
    assert caught.value.field == "events[1].type"
    assert await _all_batches(client, ref.id) == []


async def test_an_oversized_event_is_invalid_argument_and_nothing_is_appended(
    client: JournalClient, ref: AggregateRef
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.append(ref, [NewEvent(type="ok"), NewEvent(type="big", data=b"x" * (MiB + 1))])
    assert caught.value.field == "events[1].data"
    assert str(MiB) in caught.value.reason
    assert await _all_batches(client, ref.id) == []

    # Exactly at the limit is fine; the type counts toward it.
    await client.append(ref, [NewEvent(type="max", data=b"x" * (MiB - 3))])
    [batch] = await _all_batches(client, ref.id)
    assert len(batch.events[0].data) == MiB - 3
    with pytest.raises(InvalidArgument):
        await client.append(ref, [NewEvent(type="max", data=b"x" * (MiB - 2))])


async def test_the_event_size_limit_is_configurable_and_counts_type_and_metadata(
    ref: AggregateRef,
) -> None:
    store = MemoryJournalStore()
    async with (
        JournalServer(store, listen="127.0.0.1:0", max_event_size=100) as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        await client.append(ref, [NewEvent(type="ok", data=b"x" * 98)])  # 2 + 98 bytes
        with pytest.raises(InvalidArgument) as caught:
            await client.append(
                ref, [NewEvent(type="big", data=b"x" * 80, metadata={"key": "v" * 20})]
            )
        assert caught.value.field == "events[0].data"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"aggregate_id": b"short"}, "aggregate_id"),
        ({"aggregate_id": b"\x00" * 16, "after": b"\x01" * 15}, "after"),
    ],
)
async def test_events_with_bad_ids_is_invalid_argument_naming_the_field(
    stub: journal_pb2_grpc.JournalAsyncStub, request_fields: dict[str, bytes], field: str
) -> None:
    call = stub.Events(journal_pb2.EventsRequest(**request_fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


async def test_invalid_argument_reaches_the_client_as_the_named_field(
    server: JournalServer,
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        client = JournalClient(channel)
        with pytest.raises(InvalidArgument) as caught:
            await client.list_aggregates(page_token="not a token")
    assert caught.value.field == "page_token"


async def _make_aggregates(client: JournalClient, count: int, type_: str) -> set[UUID]:
    ids = set()
    for _ in range(count):
        ref = AggregateRef(type=type_, id=uuid4())
        await client.append(ref, [NewEvent(type="created")])
        ids.add(ref.id)
    return ids


async def test_pagination_covers_every_aggregate_exactly_once(client: JournalClient) -> None:
    orders = await _make_aggregates(client, 13, "order")
    users = await _make_aggregates(client, 4, "user")

    seen: list[UUID] = []
    token = ""
    pages = 0
    while True:
        page, token = await client.list_aggregates(page_size=5, page_token=token)
        seen.extend(info.id for info in page)
        pages += 1
        if not token:
            break
    assert pages == 4
    assert len(seen) == len(set(seen)) == 17
    assert set(seen) == orders | users
    assert seen == sorted(seen, key=lambda i: i.bytes)

    only_users = [info async for info in client.aggregates("user", page_size=3)]
    assert {info.id for info in only_users} == users
    assert {info.type for info in only_users} == {"user"}


async def test_pagination_while_aggregates_are_added_still_covers_each_exactly_once(
    client: JournalClient,
) -> None:
    existing = await _make_aggregates(client, 20, "order")

    seen: list[UUID] = []
    token = ""
    while True:
        page, token = await client.list_aggregates("order", page_size=3, page_token=token)
        seen.extend(info.id for info in page)
        # Others append new aggregates between pages.
        await _make_aggregates(client, 2, "order")
        if not token:
            break

    assert len(seen) == len(set(seen))
    assert existing <= set(seen)


async def test_a_page_token_of_another_filter_is_refused_naming_page_token(
    client: JournalClient,
) -> None:
    await _make_aggregates(client, 3, "order")
    _, token = await client.list_aggregates("order", page_size=1)
    assert token

    with pytest.raises(InvalidArgument) as caught:
        await client.list_aggregates("user", page_size=1, page_token=token)
    assert caught.value.field == "page_token"
    with pytest.raises(InvalidArgument) as caught:
        await client.list_aggregates(page_size=1, page_token=token)
    assert caught.value.field == "page_token"


async def test_page_size_is_capped_and_must_not_be_negative(client: JournalClient) -> None:
    await _make_aggregates(client, 3, "order")
    page, token = await client.list_aggregates(page_size=5000)
    assert (len(page), token) == (3, "")
    with pytest.raises(InvalidArgument) as caught:
        await client.list_aggregates(page_size=-1)
    assert caught.value.field == "page_size"


@pytest.fixture
def memory_store() -> MemoryJournalStore:
    return MemoryJournalStore()


@pytest.fixture
async def signals_server(memory_store: MemoryJournalStore) -> AsyncIterator[JournalServer]:
    # Memory store appends never await, so the test can append several times
    # within one loop turn, before the server's signal loop may run.
    async with JournalServer(memory_store, listen="127.0.0.1:0", max_pending_signals=5) as server:
        yield server


async def _collect_signals(
    client: JournalClient, send: MemoryObjectSendStream[SignalBatch], types: list[str]
) -> None:
    async with send:
        stream = client.signals(types)
        try:
            async for batch in stream:
                await send.send(batch)
        finally:
            await stream.aclose()


async def test_signals_over_grpc_coalesce_per_aggregate(
    signals_server: JournalServer, memory_store: JournalStore
) -> None:
    a = AggregateRef(type="order", id=uuid4())
    b = AggregateRef(type="order", id=uuid4())
    send, receive = anyio.create_memory_object_stream[SignalBatch](10)
    async with (
        JournalClient.connect(signals_server.address) as client,
        anyio.create_task_group() as tg,
        receive,
    ):
        tg.start_soon(_collect_signals, client, send, [])
        with anyio.fail_after(10):
            # The first batch (a resync) says the stream is subscribed.
            assert (await receive.receive()).resync
            for _ in range(4):
                last_a = await memory_store.append(a, [NewEvent(type="x")], expected_tail=None)
            last_b = await memory_store.append(b, [NewEvent(type="x")], expected_tail=None)
            batch = await receive.receive()
        tg.cancel_scope.cancel()

    assert not batch.resync
    assert [(s.aggregate, s.head) for s in batch.signals] == [(a, last_a.tail), (b, last_b.tail)]


async def test_a_signal_reader_that_falls_behind_gets_resync_and_appends_never_wait(
    signals_server: JournalServer, memory_store: JournalStore
) -> None:
    send, receive = anyio.create_memory_object_stream[SignalBatch](10)
    async with (
        JournalClient.connect(signals_server.address) as client,
        anyio.create_task_group() as tg,
        receive,
    ):
        tg.start_soon(_collect_signals, client, send, ["order"])
        with anyio.fail_after(10):
            assert (await receive.receive()).resync
            # Twenty aggregates against a bound of five, faster than the reader reads.
            for _ in range(20):
                ref = AggregateRef(type="order", id=uuid4())
                await memory_store.append(ref, [NewEvent(type="x")], expected_tail=None)
            batch = await receive.receive()
            assert batch.resync

            # Then signals flow again.
            ref = AggregateRef(type="order", id=uuid4())
            result = await memory_store.append(ref, [NewEvent(type="x")], expected_tail=None)
            batch = await receive.receive()
        tg.cancel_scope.cancel()

    assert not batch.resync
    assert [(s.aggregate, s.head) for s in batch.signals] == [(ref, result.tail)]


async def test_appends_complete_while_a_signal_reader_never_reads(
    server: JournalServer, client: JournalClient
) -> None:
    async with JournalClient.connect(server.address) as reader:
        stream = reader.signals()
        try:
            # Open the stream, then never read from it again.
            with anyio.fail_after(10):
                assert (await anext(stream)).resync
                for _ in range(200):
                    await client.append(
                        AggregateRef(type="t", id=uuid4()), [NewEvent(type="x", data=b"." * 512)]
                    )
        finally:
            await stream.aclose()


async def test_graceful_shutdown_ends_an_in_flight_watch_cleanly(ref: AggregateRef) -> None:
    store = MemoryJournalStore()
    server = JournalServer(store, listen="127.0.0.1:0")
    ended: list[str] = []

    async def drain(name: str, stream: AsyncIterator[object]) -> None:
        async for _ in stream:
            pass
        ended.append(name)  # the normal end of the stream: no error raised

    async with server, JournalClient.connect(server.address) as client:
        await client.append(ref, [NewEvent(type="a")])
        watch = client.events(ref.id, watch=True)
        signals = client.signals()
        with anyio.fail_after(10):
            # Both streams are open and blocked on the server.
            assert (await anext(watch)).will_block
            assert (await anext(signals)).resync
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, "watch", watch)
                tg.start_soon(drain, "signals", signals)
                # A long grace: the streams must end on their own, not be cut off.
                await server.stop(grace=30)

    assert sorted(ended) == ["signals", "watch"]


async def test_health_check_says_serving(server: JournalServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tailrunner.v1.Journal"):
            response = await health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_journal_service(server: JournalServer) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        async for response in call:
            names = {s.name for s in response.list_services_response.service}
            break
    assert {"tailrunner.v1.Journal", "grpc.health.v1.Health"} <= names


async def test_the_server_binds_an_ephemeral_port_and_reports_it(store: JournalStore) -> None:
    async with (
        JournalServer(store, listen="127.0.0.1:0") as one,
        JournalServer(MemoryJournalStore(), listen="127.0.0.1:0") as two,
    ):
        assert one.port != 0
        assert one.port != two.port
        assert one.address == f"127.0.0.1:{one.port}"


async def test_an_ipv6_host_is_reported_in_brackets_as_clients_dial_it() -> None:
    async with JournalServer(MemoryJournalStore(), listen="[::1]:0") as server:
        assert server.address == f"[::1]:{server.port}"
        async with JournalClient.connect(server.address, timeout=10) as client:
            await client.append(AggregateRef(type="t", id=uuid4()), [NewEvent(type="x")])


async def test_a_port_in_use_is_refused_naming_listen(server: JournalServer) -> None:
    with pytest.raises(InvalidArgument) as caught:
        async with JournalServer(MemoryJournalStore(), listen=server.address):
            pass
    assert caught.value.field == "listen"


async def test_a_journal_that_is_not_there_is_unavailable(server: JournalServer) -> None:
    address = server.address
    await server.stop()
    async with JournalClient.connect(address, timeout=5) as client:
        with pytest.raises(JournalUnavailable):
            await client.append(AggregateRef(type="t", id=uuid4()), [NewEvent(type="x")])
        with pytest.raises(JournalUnavailable):
            await _all_batches(client, uuid4())


async def test_events_read_over_grpc_equal_the_stored_events(
    store: JournalStore, client: JournalClient, ref: AggregateRef
) -> None:
    result = await client.append(
        ref, [NewEvent(type="a", metadata={"k": "v"}), NewEvent(type="b", data=b"\x00\xff")]
    )
    await client.append(ref, [NewEvent(type="c")], expected_tail=result.tail)
    stored = await store.read(ref.id, after=None, limit=10)

    assert [e for b in await _all_batches(client, ref.id) for e in b.events] == stored
    # The plain way of making ULIDs (used if ULID ever changes shape) agrees.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tailrunner.journal.received._RAW_ULIDS", False)
        assert [e for b in await _all_batches(client, ref.id) for e in b.events] == stored


async def test_a_batch_large_in_bytes_is_split_into_several_messages(
    client: JournalClient, stub: journal_pb2_grpc.JournalAsyncStub, ref: AggregateRef
) -> None:
    big = b"x" * (MiB - 100)
    result = await client.append(ref, [NewEvent(type=f"big{i}", data=big) for i in range(5)])

    call = stub.Events(journal_pb2.EventsRequest(aggregate_id=ref.id.bytes))
    responses = [response async for response in call]

    assert len(responses) > 1
    assert all(response.ByteSize() < 4 * MiB for response in responses)
    assert [e.id for r in responses for e in r.events] == [i.bytes for i in result.event_ids]
    assert [r.will_block for r in responses] == [False] * (len(responses) - 1) + [True]
