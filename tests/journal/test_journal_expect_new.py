"""``expect_new``: an append that commits only on an aggregate with no events.

Both stores through the store fixtures, the journal over real gRPC on
127.0.0.1 (the ``client`` fixture serves each store), and real SQLite files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from ulid import ULID

from tailrunner.errors import InvalidArgument, TailMismatch
from tailrunner.journal.client import JournalClient
from tailrunner.journal.server import JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, AppendResult, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc


async def _event_types(store: JournalStore, ref: AggregateRef) -> list[str]:
    return [e.type for e in await store.read(ref.id, after=None, limit=1000)]


async def _race(
    *appends: Callable[[], Awaitable[AppendResult]],
) -> tuple[list[AppendResult], list[TailMismatch]]:
    """Run ``appends`` concurrently; what landed, and the mismatches of the others."""
    won: list[AppendResult] = []
    lost: list[TailMismatch] = []

    async def one(append: Callable[[], Awaitable[AppendResult]]) -> None:
        try:
            won.append(await append())
        except TailMismatch as exc:
            lost.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for append in appends:
                tg.start_soon(one, append)
    return won, lost


# -- the store contract --------------------------------------------------------


async def test_store_expect_new_on_an_aggregate_without_events_commits(
    store: JournalStore, ref: AggregateRef
) -> None:
    result = await store.append(
        ref, [NewEvent(type="created")], expected_tail=None, expect_new=True
    )

    assert await store.head(ref.id) == result.tail
    assert await _event_types(store, ref) == ["created"]


async def test_store_expect_new_on_an_aggregate_with_events_is_a_mismatch_naming_the_head(
    store: JournalStore, ref: AggregateRef
) -> None:
    first = await store.append(ref, [NewEvent(type="created")], expected_tail=None)

    with pytest.raises(TailMismatch) as caught:
        await store.append(ref, [NewEvent(type="again")], expected_tail=None, expect_new=True)

    assert (caught.value.expected, caught.value.actual) == (None, first.tail)
    assert str(caught.value) == f"expected no events, but the aggregate's head is {first.tail}"
    assert await _event_types(store, ref) == ["created"]


async def test_store_expect_new_with_an_expected_tail_is_invalid_argument_naming_expect_new(
    store: JournalStore, ref: AggregateRef
) -> None:
    first = await store.append(ref, [NewEvent(type="created")], expected_tail=None)

    with pytest.raises(InvalidArgument) as caught:
        await store.append(ref, [NewEvent(type="b")], expected_tail=first.tail, expect_new=True)

    assert caught.value.field == "expect_new"
    assert str(first.tail) in caught.value.reason
    assert await _event_types(store, ref) == ["created"]


async def test_store_two_concurrent_first_appends_with_expect_new_land_once(
    store: JournalStore, ref: AggregateRef
) -> None:
    def first(name: str) -> Callable[[], Awaitable[AppendResult]]:
        return lambda: store.append(ref, [NewEvent(type=name)], expected_tail=None, expect_new=True)

    won, lost = await _race(first("a"), first("b"))

    assert len(won) == 1
    assert len(lost) == 1
    assert (lost[0].expected, lost[0].actual) == (None, won[0].tail)
    assert len(await _event_types(store, ref)) == 1


async def test_store_a_repeat_with_expect_new_returns_the_first_result(
    store: JournalStore, ref: AggregateRef
) -> None:
    # The repeat check comes first, as for expected_tail: the append already happened.
    first = await store.append(
        ref, [NewEvent(type="created")], expected_tail=None, expect_new=True, request_id="r"
    )

    again = await store.append(
        ref, [NewEvent(type="created")], expected_tail=None, expect_new=True, request_id="r"
    )

    assert again == first
    assert await _event_types(store, ref) == ["created"]
    with pytest.raises(TailMismatch):  # another request id is another append
        await store.append(
            ref, [NewEvent(type="created")], expected_tail=None, expect_new=True, request_id="s"
        )


async def test_sqlite_first_appends_with_expect_new_in_one_group_commit_land_once(
    tmp_path: Path, ref: AggregateRef
) -> None:
    # In one transaction the second savepoint must see the first one's insert.
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    commits: list[str] = []
    store._writer.set_trace_callback(
        lambda statement: commits.append(statement) if statement == "COMMIT" else None
    )
    heard: list[ULID] = []
    store.add_listener(lambda _aggregate, head: heard.append(head))
    try:
        won: list[AppendResult] = []
        lost: list[TailMismatch] = []

        async def first(name: str) -> None:
            try:
                won.append(
                    await store.append(
                        ref, [NewEvent(type=name)], expected_tail=None, expect_new=True
                    )
                )
            except TailMismatch as exc:
                lost.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await store._write_lock.acquire()
                for index in range(5):
                    tg.start_soon(first, f"e{index}")
                await anyio.wait_all_tasks_blocked()
                store._write_lock.release()

        assert commits == ["COMMIT"]
        assert len(won) == 1
        assert [(m.expected, m.actual) for m in lost] == [(None, won[0].tail)] * 4
        assert len(await _event_types(store, ref)) == 1
        assert heard == [won[0].tail]
    finally:
        await store.aclose()


async def test_sqlite_two_stores_on_one_file_racing_first_appends_with_expect_new_land_once(
    tmp_path: Path, ref: AggregateRef
) -> None:
    # Two writers on one file (two processes, in effect): the check is in the write transaction.
    path = tmp_path / "journal.db"
    one = await SQLiteJournalStore.open(path)
    two = await SQLiteJournalStore.open(path)
    try:
        won, lost = await _race(
            lambda: one.append(ref, [NewEvent(type="one")], expected_tail=None, expect_new=True),
            lambda: two.append(ref, [NewEvent(type="two")], expected_tail=None, expect_new=True),
        )

        assert len(won) == 1
        assert [(m.expected, m.actual) for m in lost] == [(None, won[0].tail)]
        assert len(await _event_types(one, ref)) == 1
    finally:
        await one.aclose()
        await two.aclose()


# -- over gRPC -----------------------------------------------------------------


async def test_grpc_expect_new_commits_then_is_a_mismatch_naming_the_head(
    client: JournalClient, ref: AggregateRef
) -> None:
    first = await client.append(ref, [NewEvent(type="created")], expect_new=True)

    with pytest.raises(TailMismatch) as caught:
        await client.append(ref, [NewEvent(type="again")], expect_new=True)

    assert (caught.value.expected, caught.value.actual) == (None, first.tail)


async def test_grpc_expect_new_violation_travels_as_a_tail_mismatch_with_no_expected_tail(
    client: JournalClient, server: JournalServer, ref: AggregateRef
) -> None:
    head = await client.append(ref, [NewEvent(type="created")])

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = journal_pb2_grpc.JournalStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Append(
                journal_pb2.AppendRequest(
                    aggregate_type=ref.type,
                    aggregate_id=ref.id.bytes,
                    expect_new=True,
                    events=[journal_pb2.NewEvent(type="b")],
                )
            )

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [detail] = rpc_status.from_call(caught.value).details
    mismatch = journal_pb2.TailMismatch()
    assert detail.Unpack(mismatch)
    assert (mismatch.expected_tail, mismatch.actual_tail) == (b"", head.tail.bytes)


async def test_grpc_expect_new_with_an_expected_tail_is_invalid_argument_naming_expect_new(
    client: JournalClient, server: JournalServer, ref: AggregateRef
) -> None:
    head = await client.append(ref, [NewEvent(type="created")])

    # The client refuses it without a round trip ...
    with pytest.raises(InvalidArgument) as refused:
        await client.append(ref, [NewEvent(type="b")], expected_tail=head.tail, expect_new=True)
    assert refused.value.field == "expect_new"

    # ... and so does the journal, for a client that sends it anyway.
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = journal_pb2_grpc.JournalStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Append(
                journal_pb2.AppendRequest(
                    aggregate_type=ref.type,
                    aggregate_id=ref.id.bytes,
                    expected_tail=head.tail.bytes,
                    expect_new=True,
                    events=[journal_pb2.NewEvent(type="b")],
                )
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [detail] = rpc_status.from_call(caught.value).details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["expect_new"]
    batches = [batch async for batch in client.events(ref.id)]
    assert [e.id for batch in batches for e in batch.events] == [head.tail]


async def test_grpc_two_clients_racing_first_appends_with_expect_new_land_once(
    client: JournalClient, server: JournalServer, ref: AggregateRef
) -> None:
    async with JournalClient.connect(server.address, timeout=10) as other:
        won, lost = await _race(
            lambda: client.append(ref, [NewEvent(type="a")], expect_new=True),
            lambda: other.append(ref, [NewEvent(type="b")], expect_new=True),
        )

    assert len(won) == 1
    assert [(m.expected, m.actual) for m in lost] == [(None, won[0].tail)]


async def test_grpc_a_repeat_with_expect_new_returns_the_first_result(
    client: JournalClient, ref: AggregateRef
) -> None:
    first = await client.append(ref, [NewEvent(type="created")], expect_new=True, request_id="r")

    again = await client.append(ref, [NewEvent(type="created")], expect_new=True, request_id="r")

    assert again == first
    batches = [batch async for batch in client.events(ref.id)]
    assert [e.id for batch in batches for e in batch.events] == [first.tail]
