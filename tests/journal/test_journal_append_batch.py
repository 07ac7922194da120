"""``AppendBatch`` and the client's coalescing of concurrent appends.

A real journal server on 127.0.0.1 over the memory store and a real SQLite
file; the server's calls are counted by wrapping ``JournalService``'s
methods (before the server registers them).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    JournalUnavailable,
    TailMismatch,
)
from tailrunner.journal.client import JournalClient
from tailrunner.journal.hub import Hub
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.journal.service import SERVICE, JournalService
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, AppendResult, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc

Calls = Counter[str]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalStore]:
    journal_store: JournalStore = (
        MemoryJournalStore()
        if request.param == "memory"
        else await SQLiteJournalStore.open(tmp_path / "journal.db")
    )
    try:
        yield journal_store
    finally:
        await journal_store.aclose()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """The journal's Append and AppendBatch calls, and the appends of each batch."""
    counted: Calls = Counter()
    append, append_batch = JournalService.Append, JournalService.AppendBatch

    async def counting_append(self: JournalService, request: Any, context: Any) -> Any:
        counted["Append"] += 1
        return await append(self, request, context)

    async def counting_batch(self: JournalService, request: Any, context: Any) -> Any:
        counted["AppendBatch"] += 1
        counted["batched appends"] += len(request.appends)
        return await append_batch(self, request, context)

    monkeypatch.setattr(JournalService, "Append", counting_append)
    monkeypatch.setattr(JournalService, "AppendBatch", counting_batch)
    return counted


@pytest.fixture
async def server(store: JournalStore, calls: Calls) -> AsyncIterator[JournalServer]:
    async with JournalServer(store, listen="127.0.0.1:0") as journal_server:
        yield journal_server


@pytest.fixture
async def client(server: JournalServer) -> AsyncIterator[JournalClient]:
    async with JournalClient.connect(server.address, timeout=10) as journal_client:
        yield journal_client


def _ref(type_: str = "order") -> AggregateRef:
    return AggregateRef(type=type_, id=uuid4())


def _same_error(got: BaseException, want: BaseException) -> None:
    """``got`` is what a plain Append raised: same class, text and fields."""
    assert type(got) is type(want)
    assert str(got) == str(want)
    assert vars(got) == vars(want)


# -- coalescing -----------------------------------------------------------------


async def test_many_concurrent_writers_land_every_append_once_in_fewer_calls(
    client: JournalClient, store: JournalStore, calls: Calls
) -> None:
    refs = [_ref() for _ in range(64)]
    results: dict[AggregateRef, list[AppendResult]] = {ref: [] for ref in refs}

    async def writer(ref: AggregateRef) -> None:
        tail: ULID | None = None
        for n in range(20):
            # expected_tail chains each append on the writer's last one.
            result = await client.append(
                ref, [NewEvent(type="e", data=str(n).encode())], expected_tail=tail
            )
            results[ref].append(result)
            tail = result.tail

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for ref in refs:
                tg.start_soon(writer, ref)

    for ref in refs:
        events = await store.read(ref.id, after=None, limit=100)
        assert [e.data for e in events] == [str(n).encode() for n in range(20)]
        assert [e.id for e in events] == [r.tail for r in results[ref]]
        assert [r.event_ids for r in results[ref]] == [(e.id,) for e in events]
        assert [e.parent for e in events] == [None, *(e.id for e in events[:-1])]
    assert calls["Append"] + calls["batched appends"] == 64 * 20
    # The first append goes out alone, then the writers move in step: those
    # a returned batch wakes append again into the next one (about a call a round).
    assert calls["Append"] + calls["AppendBatch"] <= 25, calls


async def test_a_lone_writer_sends_plain_appends(client: JournalClient, calls: Calls) -> None:
    ref = _ref()
    first = await client.append(ref, [NewEvent(type="created")])
    await client.append(ref, [NewEvent(type="next")], expected_tail=first.tail)

    assert calls == {"Append": 2}


async def test_racing_appends_on_one_aggregate_one_wins_the_others_mismatch(
    client: JournalClient, store: JournalStore, calls: Calls
) -> None:
    ref = _ref()
    head = (await client.append(ref, [NewEvent(type="created")])).tail

    outcomes = await asyncio.gather(
        *(client.append(ref, [NewEvent(type=f"try{n}")], expected_tail=head) for n in range(16)),
        return_exceptions=True,
    )

    won = [o for o in outcomes if isinstance(o, AppendResult)]
    lost = [o for o in outcomes if isinstance(o, TailMismatch)]
    assert len(won) == 1 and len(lost) == 15
    assert {(m.expected, m.actual) for m in lost} == {(head, won[0].tail)}
    assert await store.head(ref.id) == won[0].tail
    assert len(await store.read(ref.id, after=None, limit=100)) == 2
    # The first went out alone; the 15 that came while it was in flight, together.
    assert calls == {"Append": 2, "AppendBatch": 1, "batched appends": 15}


async def test_errors_in_a_batch_are_what_a_plain_append_raises(
    client: JournalClient, calls: Calls
) -> None:
    ref, other = _ref(), _ref()
    head = (await client.append(ref, [NewEvent(type="created")])).tail
    first = await client.append(other, [NewEvent(type="created")], request_id="req-1")
    stale = ULID()

    def appends() -> list[Any]:
        return [
            client.append(ref, [NewEvent(type="x")], expected_tail=stale),
            client.append(ref, [NewEvent(type="x")], expect_new=True),
            client.append(AggregateRef(type="invoice", id=ref.id), [NewEvent(type="x")]),
            client.append(ref, [NewEvent(type="")]),
            client.append(_ref(), []),
            client.append(other, [NewEvent(type="again")], request_id="req-1"),
        ]

    # Alone, one after the other: plain Appends.
    plain = [await asyncio.gather(append, return_exceptions=True) for append in appends()]
    calls.clear()
    # Behind one append in flight: the rest in one batch.
    batched = await asyncio.gather(
        client.append(_ref(), [NewEvent(type="first")]), *appends(), return_exceptions=True
    )

    assert calls == {"Append": 1, "AppendBatch": 1, "batched appends": 6}
    kinds = [type(outcome) for outcome in batched[1:]]
    assert kinds == [
        TailMismatch,
        TailMismatch,
        AggregateTypeMismatch,
        InvalidArgument,
        InvalidArgument,
        AppendResult,
    ]
    for got, (want,) in zip(batched[1:], plain, strict=True):
        if isinstance(want, BaseException):
            assert isinstance(got, BaseException)
            _same_error(got, want)
        else:
            assert got == want == first
    mismatch = batched[1]
    assert isinstance(mismatch, TailMismatch)
    assert (mismatch.expected, mismatch.actual) == (stale, head)
    named = batched[4]
    assert isinstance(named, InvalidArgument) and named.field == "events[0].type"
    assert await client.append(ref, [NewEvent(type="y")], expected_tail=head)


async def test_a_caller_cancelled_while_queued_is_never_sent(
    client: JournalClient, store: JournalStore, calls: Calls
) -> None:
    sent, queued = _ref(), _ref()
    first = asyncio.ensure_future(client.append(sent, [NewEvent(type="sent")]))
    second = asyncio.ensure_future(client.append(queued, [NewEvent(type="queued")]))
    await asyncio.sleep(0)  # both started: the first in flight, the second queued
    assert not first.done()
    second.cancel()

    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert calls == {"Append": 1}
    assert await store.read(queued.id, after=None, limit=10) == []
    # The client goes on: the next append is a plain one again.
    await client.append(queued, [NewEvent(type="later")])
    assert calls == {"Append": 2}


async def test_a_failed_batch_call_fails_each_of_its_callers(
    store: JournalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(self: JournalService, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the journal is restarting")

    monkeypatch.setattr(JournalService, "AppendBatch", unavailable)
    refs = [_ref() for _ in range(4)]
    async with (
        JournalServer(store, listen="127.0.0.1:0") as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        outcomes = await asyncio.gather(
            *(client.append(ref, [NewEvent(type="x")]) for ref in refs), return_exceptions=True
        )

    assert isinstance(outcomes[0], AppendResult)
    for outcome in outcomes[1:]:
        assert isinstance(outcome, JournalUnavailable)
        assert str(outcome) == "UNAVAILABLE: the journal is restarting"
    assert len({id(outcome) for outcome in outcomes[1:]}) == 3  # each its own
    for ref in refs[1:]:
        assert await store.read(ref.id, after=None, limit=10) == []


async def test_a_batch_over_the_journals_message_limit_is_sent_again_append_by_append(
    store: JournalStore, calls: Calls
) -> None:
    big = NewEvent(type="big", data=b"x" * 40_000)
    refs = [_ref() for _ in range(4)]
    async with (
        JournalServer(
            store, listen="127.0.0.1:0", max_event_size=64_000, max_request_size=100_000
        ) as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        outcomes = await asyncio.gather(*(client.append(ref, [big]) for ref in refs))

    assert all(isinstance(outcome, AppendResult) for outcome in outcomes)
    for ref in refs:
        assert [e.data for e in await store.read(ref.id, after=None, limit=10)] == [big.data]
    # The three queued ones (120 kB) were refused by gRPC before the journal saw them.
    assert calls == {"Append": 4}


# -- a journal without AppendBatch ------------------------------------------------


async def test_a_journal_without_append_batch_gets_plain_appends_from_then_on(
    store: JournalStore,
) -> None:
    asked: list[str] = []
    service = JournalService(store, Hub())
    append = grpc.unary_unary_rpc_method_handler(
        service.Append,
        request_deserializer=journal_pb2.AppendRequest.FromString,
        response_serializer=journal_pb2.AppendResponse.SerializeToString,
    )

    class OnlyAppend(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            asked.append(details.method.rsplit("/", 1)[1])
            return append if details.method == f"/{SERVICE}/Append" else None

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((OnlyAppend(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with JournalClient.connect(f"127.0.0.1:{port}", timeout=10) as client:
            refs = [_ref() for _ in range(5)]
            for _ in range(2):
                outcomes = await asyncio.gather(
                    *(client.append(ref, [NewEvent(type="x")]) for ref in refs)
                )
                assert all(isinstance(outcome, AppendResult) for outcome in outcomes)
    finally:
        await server.stop(None)

    # Once refused, never asked again; every append landed once.
    assert asked.count("AppendBatch") == 1
    assert asked.count("Append") == 10
    for ref in refs:
        assert len(await store.read(ref.id, after=None, limit=10)) == 2


# -- the RPC itself ---------------------------------------------------------------


@pytest.fixture
async def stub(server: JournalServer) -> AsyncIterator[journal_pb2_grpc.JournalAsyncStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield journal_pb2_grpc.JournalStub(channel)


def _request(ref: AggregateRef, **fields: Any) -> journal_pb2.AppendRequest:
    return journal_pb2.AppendRequest(
        aggregate_type=ref.type,
        aggregate_id=ref.id.bytes,
        events=[journal_pb2.NewEvent(type="x")],
        **fields,
    )


async def test_append_batch_of_more_than_1000_appends_is_invalid_argument_naming_appends(
    stub: journal_pb2_grpc.JournalAsyncStub, store: JournalStore
) -> None:
    refs = [_ref() for _ in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AppendBatch(
            journal_pb2.AppendBatchRequest(appends=[_request(ref) for ref in refs])
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "appends"
    assert await store.read(refs[0].id, after=None, limit=1) == []


async def test_append_batch_results_are_one_per_append_in_order(
    stub: journal_pb2_grpc.JournalAsyncStub, store: JournalStore
) -> None:
    empty = await stub.AppendBatch(journal_pb2.AppendBatchRequest())
    assert list(empty.results) == []

    refs = [_ref() for _ in range(1000)]
    requests = [_request(ref) for ref in refs]
    requests[500] = _request(refs[500], expected_tail=b"short")
    response = await stub.AppendBatch(journal_pb2.AppendBatchRequest(appends=requests))

    assert len(response.results) == 1000
    for index, (ref, result) in enumerate(zip(refs, response.results, strict=True)):
        if index == 500:
            assert result.WhichOneof("result") == "error"
            assert result.error.code == code_pb2.INVALID_ARGUMENT
            bad = error_details_pb2.BadRequest()
            assert result.error.details[0].Unpack(bad)
            assert bad.field_violations[0].field == "expected_tail"
            assert await store.head(ref.id) is None
        else:
            assert result.WhichOneof("result") == "response"
            assert result.response.event_ids == [result.response.tail]
            assert await store.head(ref.id) == ULID(result.response.tail)


async def test_tail_mismatch_in_a_batch_carries_its_detail(
    stub: journal_pb2_grpc.JournalAsyncStub, client: JournalClient
) -> None:
    ref = _ref()
    head = (await client.append(ref, [NewEvent(type="created")])).tail
    response = await stub.AppendBatch(
        journal_pb2.AppendBatchRequest(appends=[_request(ref, expect_new=True)])
    )

    (result,) = response.results
    assert result.error.code == code_pb2.FAILED_PRECONDITION
    mismatch = journal_pb2.TailMismatch()
    assert result.error.details[0].Unpack(mismatch)
    assert (mismatch.expected_tail, mismatch.actual_tail) == (b"", head.bytes)
