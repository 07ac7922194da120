"""What only one backend does: opening files and servers, WAL, concurrent migrations, URLs."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql
from ulid import ULID

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.model import AggregateRef
from tailrunner.stores import redact
from tailrunner.tails import postgres as postgres_store
from tailrunner.tails import sqlite as sqlite_store
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.open import open_tail_store
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import RunRecord, TailRecord
from tests.cancelling import HOW, Caller, HeldCommit, queue_behind


def a_record() -> TailRecord:
    return TailRecord(
        activity="act",
        aggregate=AggregateRef(type="thing", id=uuid.uuid4()),
        tail=None,
        state="PENDING",
        updated_at=datetime.now(UTC),
    )


# -- SQLite ---------------------------------------------------------------------


async def test_sqlite_store_uses_wal_and_syncs_fully_by_default(tmp_path: Path) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    await store.aclose()
    with sqlite3.connect(tmp_path / "tails.db") as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    conn.close()
    assert mode == "wal"


async def test_sqlite_file_in_a_missing_folder_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-folder" / "tails.db"
    with pytest.raises(StoreError) as info:
        await SQLiteTailStore.open(path)
    assert str(path) in str(info.value)
    assert "unable to open database file" in str(info.value)


async def test_sqlite_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tails.db"
    path.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StoreError) as info:
        await SQLiteTailStore.open(path)
    assert str(path) in str(info.value)
    assert "not a database" in str(info.value)


async def test_sqlite_store_refuses_an_unknown_synchronous_level(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        await SQLiteTailStore.open(tmp_path / "tails.db", synchronous="SOMETIMES")  # type: ignore[arg-type]
    assert info.value.field == "synchronous"


async def test_sqlite_store_shares_a_file_with_another_component(tmp_path: Path) -> None:
    # The journal's SQLite store keeps its version in PRAGMA user_version.
    path = tmp_path / "shared.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    store = await SQLiteTailStore.open(path)
    await store.save(record := a_record())
    await store.aclose()
    store = await SQLiteTailStore.open(path)
    try:
        assert await store.get("act", record.aggregate.id) == record
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (7,)
    conn.close()


def a_run(record: TailRecord) -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(
        activity=record.activity,
        aggregate=record.aggregate,
        attempt=1,
        started_at=now,
        finished_at=now,
        tail_before=None,
        tail_after=record.tail,
        outcome="eof",
    )


async def test_sqlite_commits_concurrent_saves_together_and_keeps_each(tmp_path: Path) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    commits: list[str] = []
    store._conn.set_trace_callback(
        lambda statement: commits.append(statement) if statement == "COMMIT" else None
    )
    records = [replace(a_record(), tail=ULID()) for _ in range(50)]
    try:
        async with anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(store.save_with_run, record, a_run(record))
        assert len(commits) < len(records) / 2  # group commits, not one per save
        for record in records:
            assert await store.get("act", record.aggregate.id) == record
            (run,) = await store.list_runs("act", record.aggregate.id)
            assert run.tail_after == record.tail
    finally:
        await store.aclose()


async def test_sqlite_a_failing_write_fails_alone_in_its_group(tmp_path: Path) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    good = [a_record() for _ in range(2)]
    outcomes: dict[str, BaseException | None] = {}

    async def commit(name: str, write: sqlite_store._Write) -> None:
        try:
            await store._commit(name, write)
            outcomes[name] = None
        except StoreError as exc:
            outcomes[name] = exc

    try:
        # Queue three writes behind the held lock, so that they commit as one group.
        await store._lock.acquire()
        async with anyio.create_task_group() as tg:
            for name, params in [
                ("first", sqlite_store._tail_params(good[0])),
                ("bad", ("too", "few")),
                ("last", sqlite_store._tail_params(good[1])),
            ]:
                tg.start_soon(commit, name, sqlite_store._Write(tail=params))
            await anyio.wait_all_tasks_blocked()
            assert store._group.pending == 3
            store._lock.release()
        assert outcomes["first"] is None
        assert outcomes["last"] is None
        assert "bad" in outcomes and isinstance(outcomes["bad"], StoreError)
        for record in good:
            assert await store.get("act", record.aggregate.id) == record
    finally:
        await store.aclose()


async def test_sqlite_a_save_cancelled_while_queued_is_never_committed(tmp_path: Path) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    record = a_record()
    try:
        async with store._lock, anyio.create_task_group() as tg:
            tg.start_soon(store.save, record)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert store._group.pending == 0
        await store.save(a_record())  # the next group does not carry it along
        assert await store.get("act", record.aggregate.id) is None
    finally:
        await store.aclose()


@pytest.mark.parametrize("how", HOW)
async def test_sqlite_a_save_cancelled_while_its_group_commits_is_saved_then_cancelled(
    tmp_path: Path, how: str
) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    held = HeldCommit(store._conn)
    first, cancelled = a_record(), a_record()
    leader = Caller(partial(store.save_with_run, first, a_run(first)))
    taken = Caller(partial(store.save_with_run, cancelled, a_run(cancelled)))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await queue_behind(store._lock, tg, [leader, taken])
                await held.entered.wait()  # the leader's thread commits both
                taken.cancel(how)
                await anyio.wait_all_tasks_blocked()
                assert taken.ended is None  # the cancellation waits for the commit
                held.release()
        assert leader.ended == "returned"
        assert taken.ended is asyncio.CancelledError
        # A taken write completes: saved, with its one run, and nothing is in
        # flight any more once the cancellation came out.
        assert await store.get("act", cancelled.aggregate.id) == cancelled
        assert len(await store.list_runs("act", cancelled.aggregate.id)) == 1
        assert store._group.pending == 0
    finally:
        held.release()
        await store.aclose()


@pytest.mark.parametrize("how", HOW)
async def test_sqlite_a_leader_cancelled_mid_commit_commits_its_group_once(
    tmp_path: Path, how: str
) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    held = HeldCommit(store._conn)
    first, other = a_record(), a_record()
    leader = Caller(partial(store.save_with_run, first, a_run(first)))
    follower = Caller(partial(store.save_with_run, other, a_run(other)))
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await queue_behind(store._lock, tg, [leader, follower])
                await held.entered.wait()
                leader.cancel(how)
                await anyio.wait_all_tasks_blocked()
                held.release()
        assert leader.ended is asyncio.CancelledError
        assert follower.ended == "returned"
        for record in (first, other):
            assert await store.get("act", record.aggregate.id) == record
            # Once: the group was not re-queued and committed again.
            assert len(await store.list_runs("act", record.aggregate.id)) == 1
    finally:
        held.release()
        await store.aclose()


async def test_sqlite_runners_opening_a_new_file_at_once_all_open_it(tmp_path: Path) -> None:
    # Switching a new file to WAL takes an exclusive lock that SQLite does not
    # wait for by itself; every opener must still get the file.
    for attempt in range(10):
        path = tmp_path / f"tails-{attempt}.db"
        stores: list[SQLiteTailStore] = []

        async def open_one(path: Path = path, stores: list[SQLiteTailStore] = stores) -> None:
            stores.append(await SQLiteTailStore.open(path))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(open_one)
        for store in stores:
            await store.aclose()
        assert len(stores) == 4


async def test_sqlite_transaction_that_ends_itself_saves_nothing(tmp_path: Path) -> None:
    store = await SQLiteTailStore.open(tmp_path / "tails.db")
    try:
        record = a_record()
        with pytest.raises(StoreError, match="ended the transaction"):
            async with store.transaction(record) as conn:
                conn.execute("COMMIT")
        assert await store.get("act", record.aggregate.id) is None
        await store.save(record)  # and the store still works
    finally:
        await store.aclose()


#: A version-1 tail store file as tailrunner wrote it before issue 10, by hand
#: (not from MIGRATIONS, so that an edit of a released migration shows here).
SQLITE_V1 = [
    """CREATE TABLE tails (
        activity TEXT NOT NULL, aggregate_id BLOB NOT NULL, aggregate_type TEXT NOT NULL,
        tail BLOB, state TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
        completed INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        PRIMARY KEY (activity, aggregate_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX tails_by_updated ON tails (updated_at, activity, aggregate_id)",
    "CREATE INDEX tails_by_state ON tails (state, updated_at, activity, aggregate_id)",
    """CREATE TABLE tail_runs (
        seq INTEGER PRIMARY KEY, activity TEXT NOT NULL, aggregate_id BLOB NOT NULL,
        aggregate_type TEXT NOT NULL, attempt INTEGER NOT NULL, started_at INTEGER NOT NULL,
        finished_at INTEGER NOT NULL, tail_before BLOB, tail_after BLOB,
        events_seen INTEGER NOT NULL, outcome TEXT NOT NULL, error TEXT
    )""",
    "CREATE INDEX tail_runs_by_task ON tail_runs (activity, aggregate_id, seq)",
    "CREATE TABLE tails_schema_version"
    " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
    "INSERT INTO tails_schema_version VALUES (1, 1)",
]
#: 2025-01-02T03:04:05.678901Z in the stores' microseconds since the epoch.
V1_UPDATED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
V1_MICROS = 1735787045678901


def v1_expected(aggregate_id: uuid.UUID, tail: ULID) -> tuple[TailRecord, RunRecord]:
    """The record and run the version-1 rows hold, as a migrated store must return them."""
    aggregate = AggregateRef(type="thing", id=aggregate_id)
    record = TailRecord(
        activity="act",
        aggregate=aggregate,
        tail=tail,
        state="RETRY",
        attempts=2,
        last_error="ValueError: bad event",
        updated_at=V1_UPDATED,
    )
    run = RunRecord(
        activity="act",
        aggregate=aggregate,
        attempt=2,
        started_at=V1_UPDATED,
        finished_at=V1_UPDATED,
        tail_before=None,
        tail_after=tail,
        events_seen=3,
        outcome="error",
        error="ValueError: bad event",
    )
    return record, run


async def test_sqlite_a_version_1_file_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "tails.db"
    aggregate_id, tail = uuid.uuid4(), ULID()
    with sqlite3.connect(path) as conn:
        for statement in SQLITE_V1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO tails VALUES ('act', ?, 'thing', ?, 'RETRY', 2,"
            " 'ValueError: bad event', 0, ?)",
            (aggregate_id.bytes, tail.bytes, V1_MICROS),
        )
        conn.execute(
            "INSERT INTO tail_runs (activity, aggregate_id, aggregate_type, attempt, started_at,"
            " finished_at, tail_before, tail_after, events_seen, outcome, error)"
            " VALUES ('act', ?, 'thing', 2, ?, ?, NULL, ?, 3, 'error', 'ValueError: bad event')",
            (aggregate_id.bytes, V1_MICROS, V1_MICROS, tail.bytes),
        )
    conn.close()
    expected, expected_run = v1_expected(aggregate_id, tail)

    store = await SQLiteTailStore.open(path)
    try:
        assert await store.get("act", aggregate_id) == expected
        assert await store.list_runs("act", aggregate_id) == [expected_run]
        due = V1_UPDATED + timedelta(seconds=30)
        await store.save(replace(expected, failures=5, next_run_at=due))
        stored = await store.get("act", aggregate_id)
        assert stored is not None and (stored.failures, stored.next_run_at) == (5, due)
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("SELECT version FROM tails_schema_version").fetchone()
    conn.close()
    assert version == len(sqlite_store.MIGRATIONS) == 3


# -- PostgreSQL -------------------------------------------------------------------


async def test_unreachable_postgres_is_refused_naming_the_url_without_its_password() -> None:
    # Port 1 on loopback: refused at once, no server needed.
    url = "postgresql://someone:hunter2@127.0.0.1:1/test"
    with pytest.raises(StoreError) as info:
        await PostgresTailStore.open(url, connect_timeout=2)
    message = str(info.value)
    assert "postgresql://someone:***@127.0.0.1:1/test" in message
    assert "hunter2" not in message
    assert "refused" in message.lower()


async def test_runners_opening_a_new_schema_at_once_migrate_it_once(
    postgres_url: str, pg_schema: str
) -> None:
    stores: list[PostgresTailStore] = []

    async def open_one() -> None:
        stores.append(await PostgresTailStore.open(postgres_url, schema=pg_schema, pool_size=1))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(open_one)
        record = a_record()
        await stores[0].save(record)
        assert await stores[-1].get("act", record.aggregate.id) == record
    finally:
        for store in stores:
            await store.aclose()
    with psycopg.connect(postgres_url) as conn:
        query = sql.SQL("SELECT version FROM {}.tails_schema_version")
        rows = conn.execute(query.format(sql.Identifier(pg_schema))).fetchall()
    assert rows == [(len(postgres_store.MIGRATIONS),)]


async def test_postgres_transaction_whose_writes_failed_commits_nothing(
    postgres_url: str, pg_schema: str
) -> None:
    store = await PostgresTailStore.open(postgres_url, schema=pg_schema)
    try:
        record = a_record()
        with pytest.raises(StoreError, match="INERROR; nothing was saved"):
            async with store.transaction(record) as conn:
                # The activity swallows its own error; the transaction is aborted.
                with pytest.raises(psycopg.errors.UndefinedTable):
                    await conn.execute("SELECT * FROM no_such_table")
        assert await store.get("act", record.aggregate.id) is None
    finally:
        await store.aclose()


#: A version-1 PostgreSQL schema as tailrunner made it before issue 10, by hand.
POSTGRES_V1 = [
    "CREATE SCHEMA {schema}",
    """CREATE TABLE {schema}.tails (
        activity text COLLATE "C" NOT NULL, aggregate_id uuid NOT NULL,
        aggregate_type text NOT NULL, tail bytea CHECK (octet_length(tail) = 16),
        state text NOT NULL, attempts integer NOT NULL, last_error text,
        completed boolean NOT NULL, updated_at timestamptz NOT NULL,
        PRIMARY KEY (activity, aggregate_id)
    )""",
    "CREATE INDEX tails_by_updated ON {schema}.tails (updated_at, activity, aggregate_id)",
    "CREATE INDEX tails_by_state ON {schema}.tails (state, updated_at, activity, aggregate_id)",
    """CREATE TABLE {schema}.tail_runs (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        activity text COLLATE "C" NOT NULL, aggregate_id uuid NOT NULL,
        aggregate_type text NOT NULL, attempt integer NOT NULL,
        started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL,
        tail_before bytea, tail_after bytea, events_seen bigint NOT NULL,
        outcome text NOT NULL, error text
    )""",
    "CREATE INDEX tail_runs_by_task ON {schema}.tail_runs (activity, aggregate_id, seq)",
    "CREATE TABLE {schema}.tails_schema_version"
    " (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)",
    "INSERT INTO {schema}.tails_schema_version VALUES (1, 1)",
]


async def test_postgres_a_version_1_schema_is_upgraded_keeping_its_rows(
    postgres_url: str, pg_schema: str
) -> None:
    aggregate_id, tail = uuid.uuid4(), ULID()
    ident = sql.Identifier(pg_schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for statement in POSTGRES_V1:
            conn.execute(sql.SQL(statement).format(schema=ident))
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.tails VALUES ('act', %s, 'thing', %s, 'RETRY', 2,"
                " 'ValueError: bad event', false, %s)"
            ).format(ident),
            (aggregate_id, tail.bytes, V1_UPDATED),
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.tail_runs (activity, aggregate_id, aggregate_type, attempt,"
                " started_at, finished_at, tail_before, tail_after, events_seen, outcome, error)"
                " VALUES ('act', %s, 'thing', 2, %s, %s, NULL, %s, 3, 'error',"
                " 'ValueError: bad event')"
            ).format(ident),
            (aggregate_id, V1_UPDATED, V1_UPDATED, tail.bytes),
        )
    expected, expected_run = v1_expected(aggregate_id, tail)

    store = await PostgresTailStore.open(postgres_url, schema=pg_schema)
    try:
        assert await store.get("act", aggregate_id) == expected
        assert await store.list_runs("act", aggregate_id) == [expected_run]
        due = V1_UPDATED + timedelta(seconds=30)
        await store.save(replace(expected, failures=5, next_run_at=due))
        stored = await store.get("act", aggregate_id)
        assert stored is not None and (stored.failures, stored.next_run_at) == (5, due)
    finally:
        await store.aclose()
    with psycopg.connect(postgres_url) as conn:
        query = sql.SQL("SELECT version FROM {}.tails_schema_version").format(ident)
        assert conn.execute(query).fetchall() == [(len(postgres_store.MIGRATIONS),)]
    assert len(postgres_store.MIGRATIONS) == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgres://h/db", "postgres://h/db"),
        ("host=h password='a b' dbname=db", "host=h password=*** dbname=db"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


# -- open_tail_store --------------------------------------------------------------


async def test_open_memory_store() -> None:
    store = await open_tail_store("memory:")
    assert isinstance(store, MemoryTailStore)
    await store.aclose()


async def test_open_sqlite_store_resolves_a_relative_path_against_base_dir(
    tmp_path: Path,
) -> None:
    (tmp_path / "conf" / "state").mkdir(parents=True)
    store = await open_tail_store("sqlite:///state/tails.db", base_dir=tmp_path / "conf")
    assert isinstance(store, SQLiteTailStore)
    await store.aclose()
    assert store.path == str(tmp_path / "conf" / "state" / "tails.db")


async def test_open_sqlite_store_takes_an_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "tails.db"
    store = await open_tail_store(f"sqlite:///{path}", base_dir=Path("/elsewhere"))
    assert isinstance(store, SQLiteTailStore)
    await store.aclose()
    assert store.path == str(path)


async def test_open_postgres_store(postgres_url: str, pg_schema: str) -> None:
    store = await open_tail_store(postgres_url, postgres_schema=pg_schema, run_retention=5)
    assert isinstance(store, PostgresTailStore)
    assert store.schema == pg_schema
    await store.aclose()


@pytest.mark.parametrize("url", ["mysql://u:hunter2@h/db", "sqlite:///", "tails.db", "", "memory"])
async def test_open_refuses_other_urls_naming_the_key_and_what_is_allowed(url: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await open_tail_store(url)
    assert info.value.field == "tails.store"
    assert "memory:, sqlite:///PATH" in str(info.value)
    assert "postgresql://" in str(info.value)
    assert "hunter2" not in str(info.value)
