"""Idempotent appends: the same request id on the same aggregate appends once.

Both stores through the store fixtures, the journal over real gRPC on
127.0.0.1, and real SQLite files.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import anyio
import pytest
from ulid import ULID

from tailrunner.errors import AggregateTypeMismatch, InvalidArgument
from tailrunner.journal.client import JournalClient
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import MAX_REQUEST_ID_LENGTH, JournalStore
from tailrunner.journal.wire_format import encode_event
from tailrunner.model import AggregateRef, AppendResult, NewEvent
from tests.journal.conftest import STORES, open_test_store


async def _event_types(store: JournalStore, ref: AggregateRef) -> list[str]:
    return [e.type for e in await store.read(ref.id, after=None, limit=1000)]


async def test_a_retried_append_appends_once_and_returns_the_first_result(
    store: JournalStore, ref: AggregateRef
) -> None:
    heard: list[ULID] = []
    store.add_listener(lambda _aggregate, head: heard.append(head))
    events = [NewEvent(type="placed"), NewEvent(type="paid")]

    first = await store.append(ref, events, expected_tail=None, request_id="req-1")
    again = await store.append(ref, events, expected_tail=None, request_id="req-1")

    assert again == first
    assert len(first.event_ids) == 2
    assert await _event_types(store, ref) == ["placed", "paid"]
    assert await store.head(ref.id) == first.tail
    assert heard == [first.tail]  # a repeat is not an append: listeners hear nothing


async def test_different_request_ids_append_twice(store: JournalStore, ref: AggregateRef) -> None:
    first = await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r1")
    second = await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r2")
    plain = await store.append(ref, [NewEvent(type="a")], expected_tail=None)

    assert first.tail < second.tail < plain.tail
    assert await _event_types(store, ref) == ["a", "a", "a"]


async def test_the_same_request_id_on_another_aggregate_is_another_request(
    store: JournalStore, ref: AggregateRef
) -> None:
    other = AggregateRef(type=ref.type, id=uuid4())
    first = await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r")
    elsewhere = await store.append(other, [NewEvent(type="b")], expected_tail=None, request_id="r")

    assert elsewhere != first
    assert await _event_types(store, ref) == ["a"]
    assert await _event_types(store, other) == ["b"]


async def test_a_repeat_whose_expected_tail_no_longer_matches_returns_the_first_result(
    store: JournalStore, ref: AggregateRef
) -> None:
    first = await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r")
    await store.append(ref, [NewEvent(type="b")], expected_tail=first.tail)

    # The retry still expects the head from before the first append (none).
    again = await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r")
    stale = ULID()
    with_stale_tail = await store.append(
        ref, [NewEvent(type="a")], expected_tail=stale, request_id="r"
    )

    assert again == with_stale_tail == first
    assert await _event_types(store, ref) == ["a", "b"]


async def test_a_repeat_with_other_events_returns_the_first_result_and_appends_nothing(
    store: JournalStore, ref: AggregateRef
) -> None:
    # The documented choice: the request id alone identifies the request.
    first = await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r")
    again = await store.append(
        ref, [NewEvent(type="x"), NewEvent(type="y")], expected_tail=None, request_id="r"
    )

    assert again == first
    assert await _event_types(store, ref) == ["a"]


async def test_a_repeat_with_another_aggregate_type_is_still_a_type_mismatch(
    store: JournalStore, ref: AggregateRef
) -> None:
    await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id="r")
    retyped = AggregateRef(type="not-" + ref.type, id=ref.id)
    with pytest.raises(AggregateTypeMismatch):
        await store.append(retyped, [NewEvent(type="a")], expected_tail=None, request_id="r")


async def test_concurrent_appends_with_one_request_id_append_once(
    store: JournalStore, ref: AggregateRef
) -> None:
    # On SQLite the appends queue behind one another's commits and are group
    # committed, several in one transaction: the look-up is in each savepoint.
    results: list[AppendResult] = []

    async def append() -> None:
        results.append(
            await store.append(ref, [NewEvent(type="once")], expected_tail=None, request_id="r")
        )

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(append)

    assert len(results) == 20
    assert len(set(results)) == 1
    assert await _event_types(store, ref) == ["once"]


async def test_sqlite_one_group_commit_with_first_appends_and_their_repeats_appends_each_once(
    tmp_path: Path, ref: AggregateRef
) -> None:
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    commits: list[str] = []
    store._writer.set_trace_callback(
        lambda statement: commits.append(statement) if statement == "COMMIT" else None
    )
    heard: list[ULID] = []
    store.add_listener(lambda _aggregate, head: heard.append(head))
    try:
        results: dict[str, list[AppendResult]] = {"r1": [], "r2": []}

        async def append(request_id: str) -> None:
            results[request_id].append(
                await store.append(
                    ref, [NewEvent(type=request_id)], expected_tail=None, request_id=request_id
                )
            )

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                # Queued while the write lock is held: all ten commit as one
                # group, the first append of each request id with its repeats.
                await store._write_lock.acquire()
                for index in range(10):
                    tg.start_soon(append, f"r{index % 2 + 1}")
                await anyio.wait_all_tasks_blocked()
                store._write_lock.release()

        assert commits == ["COMMIT"]
        assert [len(found) for found in results.values()] == [5, 5]
        assert [len(set(found)) for found in results.values()] == [1, 1]
        assert sorted(await _event_types(store, ref)) == ["r1", "r2"]
        assert sorted(heard) == sorted(found[0].tail for found in results.values())
    finally:
        await store.aclose()


async def test_sqlite_a_reopened_file_still_knows_the_request_id(
    tmp_path: Path, ref: AggregateRef
) -> None:
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    first = await store.append(
        ref, [NewEvent(type="a"), NewEvent(type="b")], expected_tail=None, request_id="r"
    )
    await store.aclose()

    reopened = await SQLiteJournalStore.open(path)
    try:
        again = await reopened.append(
            ref, [NewEvent(type="a"), NewEvent(type="b")], expected_tail=None, request_id="r"
        )
        assert again == first
        assert await _event_types(reopened, ref) == ["a", "b"]
    finally:
        await reopened.aclose()


@pytest.fixture(params=STORES)
async def store_keeping_two(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[JournalStore]:
    """Each store backend, remembering two request ids per aggregate."""
    journal_store = await open_test_store(request, request.param, tmp_path, request_ids_kept=2)
    try:
        yield journal_store
    finally:
        await journal_store.aclose()


async def test_the_window_keeps_the_last_request_ids_of_each_aggregate(
    store_keeping_two: JournalStore, ref: AggregateRef
) -> None:
    store = store_keeping_two
    other = AggregateRef(type=ref.type, id=uuid4())
    results = {
        name: await store.append(ref, [NewEvent(type=name)], expected_tail=None, request_id=name)
        for name in ("r1", "r2", "r3")
    }
    # Appends without a request id and on other aggregates do not use up the window.
    await store.append(ref, [NewEvent(type="plain")], expected_tail=None)
    await store.append(other, [NewEvent(type="o")], expected_tail=None, request_id="o1")
    await store.append(other, [NewEvent(type="o")], expected_tail=None, request_id="o2")
    await store.append(other, [NewEvent(type="o")], expected_tail=None, request_id="o3")

    for kept in ("r2", "r3"):
        again = await store.append(ref, [NewEvent(type=kept)], expected_tail=None, request_id=kept)
        assert again == results[kept]
    assert await _event_types(store, ref) == ["r1", "r2", "r3", "plain"]

    # r1 fell out of the window: its repeat appends again.
    late = await store.append(ref, [NewEvent(type="r1")], expected_tail=None, request_id="r1")
    assert late != results["r1"]
    assert await _event_types(store, ref) == ["r1", "r2", "r3", "plain", "r1"]


async def test_a_window_below_one_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as memory:
        MemoryJournalStore(request_ids_kept=0)
    with pytest.raises(InvalidArgument) as sqlite:
        await SQLiteJournalStore.open(tmp_path / "j.db", request_ids_kept=0)
    assert memory.value.field == sqlite.value.field == "request_ids_kept"


@pytest.mark.parametrize(
    "bad",
    ["", "x" * (MAX_REQUEST_ID_LENGTH + 1), "has space", "naïve", "tab\t"],
    ids=["empty", "too-long", "space", "non-ascii", "control"],
)
async def test_a_store_refuses_a_malformed_request_id(
    store: JournalStore, ref: AggregateRef, bad: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.append(ref, [NewEvent(type="a")], expected_tail=None, request_id=bad)
    assert caught.value.field == "request_id"
    assert await _event_types(store, ref) == []


# -- over gRPC -----------------------------------------------------------------


async def test_over_grpc_a_retried_append_returns_the_first_result(
    client: JournalClient, ref: AggregateRef
) -> None:
    events = [NewEvent(type="placed", data=b"1"), NewEvent(type="paid")]
    first = await client.append(ref, events, request_id="01J0000000000000000000000A")
    again = await client.append(ref, events, request_id="01J0000000000000000000000A")
    other = await client.append(ref, events, request_id="01J0000000000000000000000B")

    assert again == first
    assert other.tail > first.tail
    with anyio.fail_after(10):
        read = [e.id async for batch in client.events(ref.id) for e in batch.events]
    assert read == [*first.event_ids, *other.event_ids]


async def test_over_grpc_a_stale_expected_tail_on_a_repeat_returns_the_first_result(
    client: JournalClient, ref: AggregateRef
) -> None:
    first = await client.append(ref, [NewEvent(type="a")], request_id="r")
    await client.append(ref, [NewEvent(type="b")])
    again = await client.append(ref, [NewEvent(type="a")], expected_tail=ULID(), request_id="r")
    assert again == first


@pytest.mark.parametrize(
    "bad",
    ["", "x" * (MAX_REQUEST_ID_LENGTH + 1), "has space", "naïve"],
    ids=["empty", "too-long", "space", "non-ascii"],
)
async def test_over_grpc_a_malformed_request_id_is_invalid_argument_naming_it(
    client: JournalClient, ref: AggregateRef, bad: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.append(ref, [NewEvent(type="a")], request_id=bad)
    assert caught.value.field == "request_id"
    with anyio.fail_after(10):
        assert [batch async for batch in client.events(ref.id)] == []


async def test_over_grpc_the_longest_request_id_is_taken(
    client: JournalClient, ref: AggregateRef
) -> None:
    longest = "~" * MAX_REQUEST_ID_LENGTH
    first = await client.append(ref, [NewEvent(type="a")], request_id=longest)
    assert await client.append(ref, [NewEvent(type="a")], request_id=longest) == first


# -- migration -----------------------------------------------------------------

# Schema 2, as the releases before request ids wrote it: events in wire form.
_SCHEMA_2 = (
    "CREATE TABLE aggregates (id BLOB PRIMARY KEY, type TEXT NOT NULL, head BLOB NOT NULL,"
    " event_count INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX aggregates_by_type ON aggregates (type, id)",
    "CREATE TABLE events (aggregate_id BLOB NOT NULL, id BLOB NOT NULL, wire BLOB NOT NULL,"
    " PRIMARY KEY (aggregate_id, id)) WITHOUT ROWID",
)


async def test_sqlite_migrates_a_schema_2_journal_and_then_takes_request_ids(
    tmp_path: Path, ref: AggregateRef
) -> None:
    path = tmp_path / "journal.db"
    first, second = ULID(), ULID()
    with sqlite3.connect(path) as conn:
        for statement in _SCHEMA_2:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [
                (ref.id.bytes, first.bytes, encode_event(first.bytes, None, "a", b"1", None)),
                (
                    ref.id.bytes,
                    second.bytes,
                    encode_event(second.bytes, first.bytes, "b", b"", {"k": "v"}),
                ),
            ],
        )
        conn.execute(
            "INSERT INTO aggregates VALUES (?, ?, ?, ?)", (ref.id.bytes, ref.type, second.bytes, 2)
        )
        conn.execute("PRAGMA user_version = 2")
    conn.close()

    store = await SQLiteJournalStore.open(path)
    try:
        events = await store.read(ref.id, after=None, limit=10)
        assert [(e.id, e.parent, e.type, dict(e.metadata)) for e in events] == [
            (first, None, "a", {}),
            (second, first, "b", {"k": "v"}),
        ]
        appended = await store.append(
            ref, [NewEvent(type="c")], expected_tail=second, request_id="r"
        )
        assert (
            await store.append(ref, [NewEvent(type="c")], expected_tail=second, request_id="r")
            == appended
        )
        assert await _event_types(store, ref) == ["a", "b", "c"]
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "append_requests" in tables
    conn.close()
