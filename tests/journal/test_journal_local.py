"""LocalJournal, the journal server's in-process JournalApi, behaves as a JournalClient of it.

Each check runs on both stores, with the client and the local journal on the
same server: what one writes the other reads, batches, pages and tokens are
the same, watches and signals are pushed by the same hub, and the errors are
the client's.
"""

from __future__ import annotations

from contextlib import aclosing
from uuid import uuid4

import anyio
import pytest
from ulid import ULID

from tailrunner.errors import AggregateTypeMismatch, InvalidArgument, TailMismatch
from tailrunner.journal.append_checks import MAX_TYPE_LENGTH, AppendLimits
from tailrunner.journal.client import JournalClient
from tailrunner.journal.local import LocalJournal
from tailrunner.journal.server import JournalServer
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, EventBatch, NewEvent


def summary(batches: list[EventBatch]) -> list[tuple[list[str], bool]]:
    return [([str(e.id) for e in batch.events], batch.will_block) for batch in batches]


async def read_all(journal: LocalJournal | JournalClient, ref: AggregateRef, **kw: int) -> list:
    async with aclosing(journal.events(ref.id, **kw)) as batches:
        return [batch async for batch in batches]


async def test_what_one_appends_the_other_reads_in_the_same_batches(
    server: JournalServer, client: JournalClient, ref: AggregateRef
) -> None:
    local = server.local_journal
    await local.append(ref, [NewEvent(type=f"e{i}", data=b"x") for i in range(5)])
    await client.append(ref, [NewEvent(type="e5", metadata={"k": "v"})])
    for max_batch in (0, 2, 6):
        assert summary(await read_all(local, ref, max_batch=max_batch)) == summary(
            await read_all(client, ref, max_batch=max_batch)
        )
    events = [e for batch in await read_all(local, ref) for e in batch.events]
    assert [e.type for e in events] == [f"e{i}" for i in range(6)]
    assert events[-1].metadata == {"k": "v"}
    assert all(e.aggregate_type == ref.type for e in events)


async def test_a_local_watch_is_woken_by_a_clients_append(
    server: JournalServer, client: JournalClient, ref: AggregateRef
) -> None:
    seen: list[EventBatch] = []
    caught_up = anyio.Event()

    async def watch() -> None:
        async with aclosing(server.local_journal.events(ref.id, watch=True)) as batches:
            async for batch in batches:
                seen.append(batch)
                caught_up.set()
                if batch.events:
                    return

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await caught_up.wait()  # the caught-up batch of an empty aggregate comes first
        assert seen[0].events == () and seen[0].will_block
        await client.append(ref, [NewEvent(type="created")])
    assert [e.type for e in seen[-1].events] == ["created"]


async def test_a_watch_ends_when_the_server_stops(server: JournalServer, ref: AggregateRef) -> None:
    await server.local_journal.append(ref, [NewEvent(type="created")])
    batches = []
    first = anyio.Event()

    async def watch() -> None:
        async with aclosing(server.local_journal.events(ref.id, watch=True)) as stream:
            async for batch in stream:
                batches.append(batch)
                first.set()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        await first.wait()
        await server.stop()
    assert len(batches) == 1


async def test_signals_start_with_a_resync_then_signal_appends(
    server: JournalServer, client: JournalClient, ref: AggregateRef
) -> None:
    async with aclosing(server.local_journal.signals([ref.type])) as signals:
        first = await signals.__anext__()
        assert first.resync
        await client.append(AggregateRef(type="other", id=uuid4()), [NewEvent(type="x")])
        result = await client.append(ref, [NewEvent(type="created")])
        batch = await signals.__anext__()
    assert [(s.aggregate_id, s.head) for s in batch.signals] == [(ref.id, result.tail)]


async def test_pages_and_tokens_are_the_clients(
    server: JournalServer, client: JournalClient
) -> None:
    for _ in range(5):
        await client.append(AggregateRef(type="order", id=uuid4()), [NewEvent(type="x")])
    await client.append(AggregateRef(type="other", id=uuid4()), [NewEvent(type="x")])
    local = server.local_journal
    page, token = await local.list_aggregates("order", page_size=2)
    assert (page, token) == await client.list_aggregates("order", page_size=2)
    # A token of one works with the other.
    assert await local.list_aggregates("order", page_size=2, page_token=token) == (
        await client.list_aggregates("order", page_size=2, page_token=token)
    )
    everything, last = await local.list_aggregates()
    assert len(everything) == 6 and last == ""
    with pytest.raises(InvalidArgument) as caught:
        await local.list_aggregates("other", page_token=token)
    assert caught.value.field == "page_token"
    with pytest.raises(InvalidArgument) as caught:
        await local.list_aggregates(page_size=-1)
    assert caught.value.field == "page_size"


async def test_the_errors_are_the_clients(server: JournalServer, ref: AggregateRef) -> None:
    local = server.local_journal
    first = await local.append(ref, [NewEvent(type="created")], expect_new=True)
    with pytest.raises(TailMismatch):
        await local.append(ref, [NewEvent(type="again")], expect_new=True)
    with pytest.raises(TailMismatch):
        await local.append(ref, [NewEvent(type="again")], expected_tail=ULID())
    with pytest.raises(AggregateTypeMismatch):
        await local.append(AggregateRef(type="other", id=ref.id), [NewEvent(type="x")])
    refusals = [
        ("expect_new", dict(expect_new=True, expected_tail=first.tail)),
        ("request_id", dict(request_id="")),
        ("request_id", dict(request_id="has space")),
    ]
    for field, kwargs in refusals:
        with pytest.raises(InvalidArgument) as caught:
            await local.append(ref, [NewEvent(type="x")], **kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field
    with pytest.raises(InvalidArgument) as caught:
        await local.append(ref, [])
    assert caught.value.field == "events"
    with pytest.raises(InvalidArgument) as caught:
        await local.append(ref, [NewEvent(type="")])
    assert caught.value.field == "events[0].type"
    # A repeat with a request id appends nothing and gives the first result.
    once = await local.append(ref, [NewEvent(type="paid")], request_id="pay-1")
    assert await local.append(ref, [NewEvent(type="paid")], request_id="pay-1") == once


async def test_the_local_path_refuses_what_the_grpc_path_refuses_by_the_same_error(
    store: JournalStore,
) -> None:
    limits = dict(max_event_size=1000, max_events_per_append=5)
    async with (
        JournalServer(store, listen="127.0.0.1:0", **limits) as server,
        JournalClient.connect(server.address, timeout=10) as client,
    ):
        local = server.local_journal
        assert local.limits == AppendLimits(**limits)
        fits = NewEvent(type="t" * 200, data=b"x" * 800)
        refusals: list[tuple[str, str, list[NewEvent]]] = [
            ("empty aggregate type", "", [fits]),
            ("aggregate type too long", "a" * (MAX_TYPE_LENGTH + 1), [fits]),
            ("no events", "order", []),
            ("too many events", "order", [NewEvent(type="t")] * 6),
            ("empty event type", "order", [fits, NewEvent(type="")]),
            ("event type too long", "order", [NewEvent(type="t" * (MAX_TYPE_LENGTH + 1))]),
            (
                "the type counts toward the size",
                "order",
                [NewEvent(type="t" * 201, data=fits.data)],
            ),
            (
                "metadata counts too",
                "order",
                [NewEvent(type="t", data=b"x", metadata={"k": "v" * 998})],
            ),
        ]
        for why, aggregate_type, events in refusals:
            ref = AggregateRef(type=aggregate_type, id=uuid4())
            with pytest.raises(InvalidArgument) as over_grpc:
                await client.append(ref, events)
            with pytest.raises(InvalidArgument) as in_process:
                await local.append(ref, events)
            assert (in_process.value.field, str(in_process.value)) == (
                over_grpc.value.field,
                str(over_grpc.value),
            ), why
        # At the limits both append.
        for journal in (client, local):
            await journal.append(AggregateRef(type="order", id=uuid4()), [fits] * 5)
