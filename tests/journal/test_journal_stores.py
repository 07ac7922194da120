"""The JournalStore contract, for every store (memory, SQLite)."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial
from pathlib import Path
from typing import cast
from uuid import UUID, uuid4

import anyio
import pytest
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    InvalidArgument,
    StoreError,
    TailMismatch,
)
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.open import open_store
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.journal.store import JournalStore
from tailrunner.model import AggregateRef, AppendResult, NewEvent
from tests.cancelling import HOW, Caller, HeldCommit, queue_behind


async def test_append_then_read_round_trip(store: JournalStore, ref: AggregateRef) -> None:
    first = await store.append(
        ref,
        [
            NewEvent(type="placed", data=b'{"sku":"a-1"}', metadata={"by": "alice"}),
            NewEvent(type="paid"),
        ],
        expected_tail=None,
    )
    second = await store.append(ref, [NewEvent(type="shipped")], expected_tail=first.tail)

    events = await store.read(ref.id, after=None, limit=100)

    assert [e.type for e in events] == ["placed", "paid", "shipped"]
    assert [e.id for e in events] == [*first.event_ids, *second.event_ids]
    assert [e.parent for e in events] == [None, events[0].id, events[1].id]
    assert events[0].data == b'{"sku":"a-1"}'
    assert dict(events[0].metadata) == {"by": "alice"}
    assert dict(events[1].metadata) == {}
    assert {(e.aggregate_type, e.aggregate_id) for e in events} == {(ref.type, ref.id)}
    assert second.tail == events[-1].id
    assert await store.head(ref.id) == second.tail


async def test_read_after_and_limit_page_through_in_order(
    store: JournalStore, ref: AggregateRef
) -> None:
    result = await store.append(
        ref, [NewEvent(type=f"e{i}") for i in range(10)], expected_tail=None
    )
    ids = list(result.event_ids)

    assert [e.id for e in await store.read(ref.id, after=ids[3], limit=4)] == ids[4:8]
    assert [e.id for e in await store.read(ref.id, after=ids[7], limit=4)] == ids[8:]
    assert await store.read(ref.id, after=ids[-1], limit=4) == []


async def test_reading_an_unknown_aggregate_gives_no_events(store: JournalStore) -> None:
    assert await store.read(uuid4(), after=None, limit=10) == []
    assert await store.head(uuid4()) is None


async def test_a_stale_expected_tail_is_refused_with_the_actual_tail(
    store: JournalStore, ref: AggregateRef
) -> None:
    first = await store.append(ref, [NewEvent(type="a")], expected_tail=None)
    second = await store.append(ref, [NewEvent(type="b")], expected_tail=first.tail)

    with pytest.raises(TailMismatch) as caught:
        await store.append(ref, [NewEvent(type="c")], expected_tail=first.tail)

    assert caught.value.expected == first.tail
    assert caught.value.actual == second.tail
    assert [e.type for e in await store.read(ref.id, after=None, limit=10)] == ["a", "b"]


async def test_an_expected_tail_on_an_empty_aggregate_is_a_mismatch(
    store: JournalStore, ref: AggregateRef
) -> None:
    with pytest.raises(TailMismatch) as caught:
        await store.append(ref, [NewEvent(type="a")], expected_tail=ULID.from_int(1))
    assert caught.value.actual is None


async def test_two_writers_racing_on_one_expected_tail_exactly_one_wins(
    store: JournalStore, ref: AggregateRef
) -> None:
    start = await store.append(ref, [NewEvent(type="created")], expected_tail=None)
    won: list[str] = []
    lost: list[TailMismatch] = []

    async def write(name: str) -> None:
        try:
            await store.append(ref, [NewEvent(type=name)], expected_tail=start.tail)
        except TailMismatch as exc:
            lost.append(exc)
        else:
            won.append(name)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, "a")
            tg.start_soon(write, "b")

    assert len(won) == 1
    assert len(lost) == 1
    events = await store.read(ref.id, after=None, limit=10)
    assert [e.type for e in events] == ["created", won[0]]
    assert lost[0].actual == events[-1].id


async def test_an_aggregate_keeps_the_type_of_its_first_append(
    store: JournalStore, ref: AggregateRef
) -> None:
    await store.append(ref, [NewEvent(type="a")], expected_tail=None)
    with pytest.raises(AggregateTypeMismatch):
        await store.append(
            AggregateRef(type="other", id=ref.id), [NewEvent(type="b")], expected_tail=None
        )


async def test_an_append_that_fails_midway_commits_nothing(
    store: JournalStore, ref: AggregateRef
) -> None:
    first = await store.append(ref, [NewEvent(type="a")], expected_tail=None)
    broken = NewEvent(type="broken", data=cast(bytes, object()))  # cannot be stored

    with pytest.raises((StoreError, TypeError)):
        await store.append(ref, [NewEvent(type="b"), broken], expected_tail=None)

    assert [e.type for e in await store.read(ref.id, after=None, limit=10)] == ["a"]
    assert await store.head(ref.id) == first.tail
    # The store is still usable after the failed append.
    await store.append(ref, [NewEvent(type="c")], expected_tail=first.tail)


async def test_an_append_needs_events(store: JournalStore, ref: AggregateRef) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.append(ref, [], expected_tail=None)
    assert caught.value.field == "events"


async def test_listeners_hear_each_commit_with_the_new_head(
    store: JournalStore, ref: AggregateRef
) -> None:
    heard: list[tuple[AggregateRef, ULID]] = []
    store.add_listener(lambda aggregate, head: heard.append((aggregate, head)))

    first = await store.append(ref, [NewEvent(type="a"), NewEvent(type="b")], expected_tail=None)
    with pytest.raises(TailMismatch):
        await store.append(ref, [NewEvent(type="c")], expected_tail=ULID.from_int(1))

    assert heard == [(ref, first.tail)]


async def test_a_failing_listener_does_not_fail_the_append(
    store: JournalStore, ref: AggregateRef
) -> None:
    def broken(aggregate: AggregateRef, head: ULID) -> None:
        raise RuntimeError("listener bug")

    heard: list[ULID] = []
    store.add_listener(broken)
    store.add_listener(lambda aggregate, head: heard.append(head))

    result = await store.append(ref, [NewEvent(type="a")], expected_tail=None)

    assert heard == [result.tail]


async def _create(store: JournalStore, count: int, type_: str) -> list[UUID]:
    ids = []
    for _ in range(count):
        ref = AggregateRef(type=type_, id=uuid4())
        await store.append(ref, [NewEvent(type="created")], expected_tail=None)
        ids.append(ref.id)
    return ids


async def test_list_aggregates_pages_by_id_with_and_without_a_type(store: JournalStore) -> None:
    orders = await _create(store, 7, "order")
    users = await _create(store, 5, "user")

    seen = []
    after: UUID | None = None
    while page := await store.list_aggregates(None, after_id=after, limit=3):
        seen.extend(page)
        after = page[-1].id
    assert [info.id for info in seen] == sorted(orders + users, key=lambda i: i.bytes)
    assert all(info.event_count == 1 and info.head is not None for info in seen)

    only_users = await store.list_aggregates("user", after_id=None, limit=100)
    assert [info.id for info in only_users] == sorted(users, key=lambda i: i.bytes)
    assert {info.type for info in only_users} == {"user"}


async def test_list_aggregates_counts_events_and_reports_the_head(
    store: JournalStore, ref: AggregateRef
) -> None:
    result = await store.append(ref, [NewEvent(type="a"), NewEvent(type="b")], expected_tail=None)
    result = await store.append(ref, [NewEvent(type="c")], expected_tail=result.tail)

    [info] = await store.list_aggregates(None, after_id=None, limit=10)

    assert (info.type, info.id, info.head, info.event_count) == (ref.type, ref.id, result.tail, 3)


async def test_a_closed_store_refuses_appends(store: JournalStore, ref: AggregateRef) -> None:
    await store.aclose()
    with pytest.raises(StoreError):
        await store.append(ref, [NewEvent(type="a")], expected_tail=None)


# SQLite only.


async def test_sqlite_keeps_events_across_a_reopen(tmp_path: Path, ref: AggregateRef) -> None:
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path)
    result = await store.append(
        ref, [NewEvent(type="a", metadata={"k": "v"}), NewEvent(type="b")], expected_tail=None
    )
    await store.aclose()

    reopened = await SQLiteJournalStore.open(path)
    try:
        events = await reopened.read(ref.id, after=None, limit=10)
        assert [e.id for e in events] == list(result.event_ids)
        assert dict(events[0].metadata) == {"k": "v"}
        assert await reopened.head(ref.id) == result.tail
    finally:
        await reopened.aclose()


# Schema 1, as the first releases wrote it: events as columns.
_SCHEMA_1 = (
    "CREATE TABLE aggregates (id BLOB PRIMARY KEY, type TEXT NOT NULL, head BLOB NOT NULL,"
    " event_count INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX aggregates_by_type ON aggregates (type, id)",
    "CREATE TABLE events (aggregate_id BLOB NOT NULL, id BLOB NOT NULL, parent BLOB,"
    " type TEXT NOT NULL, data BLOB NOT NULL, metadata TEXT, PRIMARY KEY (aggregate_id, id))"
    " WITHOUT ROWID",
)


def _write_schema_1_journal(
    path: Path, ref: AggregateRef, other: AggregateRef, first: ULID, second: ULID
) -> None:
    with sqlite3.connect(path) as conn:
        for statement in _SCHEMA_1:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            [
                (ref.id.bytes, first.bytes, None, "placed", b'{"n":1}', '{"by":"alice"}'),
                (ref.id.bytes, second.bytes, first.bytes, "paid", b"", None),
                (other.id.bytes, first.bytes, None, "made", b"x", None),
            ],
        )
        conn.executemany(
            "INSERT INTO aggregates VALUES (?, ?, ?, ?)",
            [
                (ref.id.bytes, ref.type, second.bytes, 2),
                (other.id.bytes, other.type, first.bytes, 1),
            ],
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()


async def test_sqlite_migrates_a_schema_1_journal_keeping_every_event(
    tmp_path: Path, ref: AggregateRef
) -> None:
    path = tmp_path / "journal.db"
    first, second = ULID(), ULID()
    other = AggregateRef(type="other", id=uuid4())
    _write_schema_1_journal(path, ref, other, first, second)

    store = await SQLiteJournalStore.open(path)
    try:
        events = await store.read(ref.id, after=None, limit=10)
        assert [(e.id, e.parent, e.type, e.data) for e in events] == [
            (first, None, "placed", b'{"n":1}'),
            (second, first, "paid", b""),
        ]
        assert [dict(e.metadata) for e in events] == [{"by": "alice"}, {}]
        assert {(e.aggregate_type, e.aggregate_id) for e in events} == {(ref.type, ref.id)}
        assert [e.type for e in await store.read(other.id, after=None, limit=10)] == ["made"]
        # The migrated journal takes appends where it left off.
        appended = await store.append(ref, [NewEvent(type="shipped")], expected_tail=second)
        assert appended.tail > second
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "events_1" not in tables


async def test_sqlite_two_processes_opening_a_schema_1_journal_migrate_it_once(
    tmp_path: Path, ref: AggregateRef
) -> None:
    path = tmp_path / "journal.db"
    first, second = ULID(), ULID()
    _write_schema_1_journal(path, ref, AggregateRef(type="other", id=uuid4()), first, second)

    stores: list[SQLiteJournalStore] = []

    async def open_one() -> None:
        stores.append(await SQLiteJournalStore.open(path))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    try:
        for store in stores:
            events = await store.read(ref.id, after=None, limit=10)
            assert [(e.id, e.parent) for e in events] == [(first, None), (second, first)]
    finally:
        for store in stores:
            await store.aclose()


async def test_sqlite_refuses_a_journal_of_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=r"journal\.db: schema version 99 is newer"):
        await SQLiteJournalStore.open(path)


async def test_sqlite_commits_concurrent_appends_together_each_with_its_outcome(
    tmp_path: Path, ref: AggregateRef
) -> None:
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    commits: list[str] = []
    store._writer.set_trace_callback(
        lambda statement: commits.append(statement) if statement == "COMMIT" else None
    )
    heard: list[tuple[UUID, ULID]] = []
    store.add_listener(lambda aggregate, head: heard.append((aggregate.id, head)))
    start = await store.append(ref, [NewEvent(type="created")], expected_tail=None)
    others = [AggregateRef(type="thing", id=uuid4()) for _ in range(20)]
    results: dict[str, AppendResult | TailMismatch] = {}

    async def append(name: str, aggregate: AggregateRef, expected: ULID | None) -> None:
        try:
            results[name] = await store.append(
                aggregate, [NewEvent(type=name), NewEvent(type=name)], expected_tail=expected
            )
        except TailMismatch as exc:
            results[name] = exc

    commits.clear()
    try:
        async with anyio.create_task_group() as tg:
            for n, other in enumerate(others):
                tg.start_soon(append, f"other-{n}", other, None)
            # Two appends to one aggregate in the same group: the first moves
            # the head, so the second's expectation is stale.
            tg.start_soon(append, "wins", ref, start.tail)
            tg.start_soon(append, "loses", ref, start.tail)

        assert len(commits) < len(others) / 2  # group commits, not one per append
        lost = results["loses"]
        assert isinstance(lost, TailMismatch)
        events = await store.read(ref.id, after=None, limit=10)
        assert [e.type for e in events] == ["created", "wins", "wins"]
        assert lost.actual == events[-1].id
        for n, other in enumerate(others):
            stored = await store.read(other.id, after=None, limit=10)
            assert [e.type for e in stored] == [f"other-{n}"] * 2
            assert [e.parent for e in stored] == [None, stored[0].id]
        # Every committed append was heard once, with its new head; the loser was not.
        committed = [r for r in results.values() if isinstance(r, AppendResult)]
        assert len(heard) == 1 + len(committed)
        assert {head for _, head in heard[1:]} == {r.tail for r in committed}
    finally:
        await store.aclose()


async def test_sqlite_an_append_cancelled_while_queued_is_never_committed(
    tmp_path: Path, ref: AggregateRef
) -> None:
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    try:
        async with store._write_lock, anyio.create_task_group() as tg:
            tg.start_soon(partial(store.append, ref, [NewEvent(type="never")], expected_tail=None))
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert store._group.pending == 0
        other = AggregateRef(type="thing", id=uuid4())
        await store.append(other, [NewEvent(type="later")], expected_tail=None)
        assert await store.read(ref.id, after=None, limit=10) == []
    finally:
        await store.aclose()


@pytest.mark.parametrize("how", HOW)
async def test_sqlite_an_append_cancelled_while_its_group_commits_is_appended_then_cancelled(
    tmp_path: Path, ref: AggregateRef, how: str
) -> None:
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    heard: list[UUID] = []
    store.add_listener(lambda aggregate, head: heard.append(aggregate.id))
    other = AggregateRef(type="thing", id=uuid4())
    held = HeldCommit(store._writer)
    leader = Caller(partial(store.append, other, [NewEvent(type="first")], expected_tail=None))
    taken = Caller(partial(store.append, ref, [NewEvent(type="kept")], expected_tail=None))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await queue_behind(store._write_lock, tg, [leader, taken])
                await held.entered.wait()  # the leader's thread commits both
                taken.cancel(how)
                await anyio.wait_all_tasks_blocked()
                assert taken.ended is None  # the cancellation waits for the commit
                held.release()
        assert leader.ended == "returned"
        assert taken.ended is asyncio.CancelledError
        # A taken append completes, and is heard like any other: reading it
        # back tells the cancelled caller that it is in.
        assert [e.type for e in await store.read(ref.id, after=None, limit=10)] == ["kept"]
        assert heard.count(ref.id) == 1
        assert store._group.pending == 0
    finally:
        held.release()
        await store.aclose()


@pytest.mark.parametrize("how", HOW)
async def test_sqlite_a_leader_cancelled_mid_commit_appends_its_group_once(
    tmp_path: Path, ref: AggregateRef, how: str
) -> None:
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    other = AggregateRef(type="thing", id=uuid4())
    held = HeldCommit(store._writer)
    leader = Caller(partial(store.append, other, [NewEvent(type="first")], expected_tail=None))
    follower = Caller(partial(store.append, ref, [NewEvent(type="once")], expected_tail=None))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await queue_behind(store._write_lock, tg, [leader, follower])
                await held.entered.wait()
                leader.cancel(how)
                await anyio.wait_all_tasks_blocked()
                held.release()
        assert leader.ended is asyncio.CancelledError
        assert follower.ended == "returned"
        # Once each: the group was not re-queued and appended again.
        assert [e.type for e in await store.read(other.id, after=None, limit=10)] == ["first"]
        assert [e.type for e in await store.read(ref.id, after=None, limit=10)] == ["once"]
    finally:
        held.release()
        await store.aclose()


async def test_sqlite_uses_wal_and_the_asked_synchronous_level(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = await SQLiteJournalStore.open(path, synchronous="NORMAL")
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_that_cannot_be_opened_names_the_path_and_the_reason(
    tmp_path: Path,
) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "journal.db"
    with pytest.raises(StoreError, match=r"no/such/dir/journal\.db: unable to open"):
        await SQLiteJournalStore.open(missing_dir)

    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_bytes(b"these are not the bytes of a database, " * 100)
    with pytest.raises(StoreError, match=r"notes\.txt: file is not a database"):
        await SQLiteJournalStore.open(not_a_db)


async def test_open_store_understands_sqlite_and_memory_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    relative = await open_store("sqlite:///journal.db")
    absolute = await open_store(f"sqlite:///{tmp_path / 'abs.db'}?synchronous=normal")
    memory = await open_store("memory:")
    try:
        assert isinstance(relative, SQLiteJournalStore)
        assert relative.path == "journal.db"  # relative to the working directory
        assert (tmp_path / "journal.db").exists()
        assert isinstance(absolute, SQLiteJournalStore)
        assert (tmp_path / "abs.db").exists()
        assert isinstance(memory, MemoryJournalStore)
    finally:
        for opened in (relative, absolute, memory):
            await opened.aclose()


@pytest.mark.parametrize(
    "url",
    ["mysql://localhost/journal", "sqlite://journal.db", "sqlite:///", "journal.db", ""],
)
async def test_open_store_refuses_other_urls_naming_the_option_and_what_is_allowed(
    url: str,
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await open_store(url)
    assert caught.value.field == "--store"
    assert "sqlite:///" in caught.value.reason
    assert "postgresql://" in caught.value.reason
    assert "memory:" in caught.value.reason


async def test_open_store_refuses_an_unknown_synchronous_level(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="synchronous"):
        await open_store(f"sqlite:///{tmp_path / 'j.db'}?synchronous=sometimes")
