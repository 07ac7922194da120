"""The tail store contract, one suite over every backend: memory, SQLite, PostgreSQL."""

from __future__ import annotations

import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest
from psycopg import sql
from ulid import ULID

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.model import AggregateRef
from tailrunner.tails import postgres as postgres_store
from tailrunner.tails import sqlite as sqlite_store
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.sqlite import SQLiteTailStore
from tailrunner.tails.store import (
    MAX_ERROR_TEXT,
    RunRecord,
    TailRecord,
    TailStore,
    query_cursor,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class Backend:
    """Opens one kind of store (again and again, on the same data) and reads its effects table."""

    kind: str
    #: The store's transaction yields a connection the activity can write through.
    has_effects = True

    async def open(self, *, run_retention: int = 100) -> TailStore:
        raise NotImplementedError

    async def create_effects(self, conn: Any) -> None:
        raise NotImplementedError

    async def write_effect(self, conn: Any, value: str) -> None:
        raise NotImplementedError

    def committed_effects(self) -> list[str]:
        """What another connection sees: only what was committed."""
        raise NotImplementedError

    # Durable backends only: where their schema is, and how to look at it.
    module: Any
    extra_migration: str

    def child_args(self) -> list[str]:
        """Arguments for :data:`CHILD` to open the same store."""
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    def set_schema_version(self, version: int) -> None:
        raise NotImplementedError

    def has_table(self, name: str) -> bool:
        raise NotImplementedError


class MemoryBackend(Backend):
    kind = "memory"
    has_effects = False

    async def open(self, *, run_retention: int = 100) -> TailStore:
        return MemoryTailStore(run_retention=run_retention)


class SQLiteBackend(Backend):
    kind = "sqlite"
    module = sqlite_store
    extra_migration = "CREATE TABLE extra (x INTEGER)"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self, *, run_retention: int = 100) -> TailStore:
        return await SQLiteTailStore.open(self.path, run_retention=run_retention)

    async def create_effects(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE effects (value TEXT NOT NULL)")

    async def write_effect(self, conn: sqlite3.Connection, value: str) -> None:
        conn.execute("INSERT INTO effects (value) VALUES (?)", (value,))

    def committed_effects(self) -> list[str]:
        with sqlite3.connect(self.path) as conn:
            rows = conn.execute("SELECT value FROM effects ORDER BY value").fetchall()
        conn.close()
        return [value for (value,) in rows]

    def child_args(self) -> list[str]:
        return ["sqlite", str(self.path), ""]

    def _sql(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with sqlite3.connect(self.path) as conn:
            rows = conn.execute(query, params).fetchall()
        conn.close()
        return rows

    def schema_version(self) -> int:
        return int(self._sql("SELECT version FROM tails_schema_version")[0][0])

    def set_schema_version(self, version: int) -> None:
        self._sql("UPDATE tails_schema_version SET version = ?", (version,))

    def has_table(self, name: str) -> bool:
        return bool(self._sql("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)))


class PostgresBackend(Backend):
    kind = "postgres"
    module = postgres_store
    extra_migration = "CREATE TABLE {schema}.extra (x integer)"

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.effects = sql.SQL("{}.effects").format(sql.Identifier(schema))

    async def open(self, *, run_retention: int = 100) -> TailStore:
        return await PostgresTailStore.open(
            self.url, schema=self.schema, run_retention=run_retention
        )

    async def create_effects(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(sql.SQL("CREATE TABLE {} (value text NOT NULL)").format(self.effects))

    async def write_effect(self, conn: psycopg.AsyncConnection[Any], value: str) -> None:
        await conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(self.effects), (value,))

    def committed_effects(self) -> list[str]:
        with psycopg.connect(self.url) as conn:
            query = sql.SQL("SELECT value FROM {} ORDER BY value").format(self.effects)
            return [value for (value,) in conn.execute(query).fetchall()]

    def child_args(self) -> list[str]:
        return ["postgres", self.url, self.schema]

    def schema_version(self) -> int:
        query = sql.SQL("SELECT version FROM {}.tails_schema_version")
        with psycopg.connect(self.url) as conn:
            row = conn.execute(query.format(sql.Identifier(self.schema))).fetchone()
        assert row is not None
        return int(row[0])

    def set_schema_version(self, version: int) -> None:
        query = sql.SQL("UPDATE {}.tails_schema_version SET version = %s")
        with psycopg.connect(self.url) as conn:
            conn.execute(query.format(sql.Identifier(self.schema)), (version,))

    def has_table(self, name: str) -> bool:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                (self.schema, name),
            ).fetchone()
        return row is not None


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        return SQLiteBackend(tmp_path / "tails.db")
    # Only PostgreSQL tests ask for the server (and may skip or fail without it).
    url = request.getfixturevalue("postgres_url")
    return PostgresBackend(url, request.getfixturevalue("pg_schema"))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return make_backend(request.param, request, tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[TailStore]:
    opened = await backend.open()
    try:
        yield opened
    finally:
        await opened.aclose()


def ref(n: int | None = None, type_: str = "thing") -> AggregateRef:
    return AggregateRef(type=type_, id=uuid.UUID(int=n) if n is not None else uuid.uuid4())


def record(
    aggregate: AggregateRef,
    *,
    activity: str = "act",
    tail: ULID | None = None,
    state: str = "SLEEPING",
    updated_at: datetime = T0,
    **fields: Any,
) -> TailRecord:
    return TailRecord(
        activity=activity,
        aggregate=aggregate,
        tail=tail,
        state=state,
        updated_at=updated_at,
        **fields,
    )


def run(
    aggregate: AggregateRef, attempt: int, *, activity: str = "act", **fields: Any
) -> RunRecord:
    values: dict[str, Any] = {
        "started_at": T0 + timedelta(seconds=attempt),
        "finished_at": T0 + timedelta(seconds=attempt, milliseconds=250),
        "tail_before": None,
        "tail_after": ULID.from_int(attempt),
        "events_seen": attempt * 2,
        "outcome": "eof",
    }
    values.update(fields)
    return RunRecord(activity=activity, aggregate=aggregate, attempt=attempt, **values)


# -- tails --------------------------------------------------------------------


async def test_saved_records_come_back_from_get_and_load(store: TailStore) -> None:
    fresh = record(ref(1), tail=None, state="PENDING")
    failing = record(
        ref(2), tail=ULID(), state="SUSPENDED", attempts=5, last_error="ValueError: bad event"
    )
    done = record(ref(3, "other"), tail=ULID(), state="COMPLETE", completed=True)
    for r in (fresh, failing, done):
        await store.save(r)

    assert await store.get("act", fresh.aggregate.id) == fresh
    assert await store.get("act", failing.aggregate.id) == failing
    assert await store.get("act", done.aggregate.id) == done
    assert await store.load("act") == {r.aggregate.id: r for r in (fresh, failing, done)}


async def test_unknown_tasks_have_no_record(store: TailStore) -> None:
    await store.save(record(ref(1)))
    assert await store.get("act", uuid.uuid4()) is None
    assert await store.get("other-activity", ref(1).id) is None
    assert await store.load("other-activity") == {}


async def test_save_replaces_the_previous_record(store: TailStore) -> None:
    agg = ref(1)
    await store.save(record(agg, tail=ULID(), state="RETRY", attempts=2, last_error="boom"))
    newer = record(agg, tail=None, state="SLEEPING", updated_at=T0 + timedelta(seconds=1))
    await store.save(newer)
    assert await store.get("act", agg.id) == newer
    assert await store.load("act") == {agg.id: newer}


async def test_each_activity_keeps_its_own_record_of_an_aggregate(store: TailStore) -> None:
    agg = ref(1)
    first = record(agg, activity="first", tail=ULID())
    second = record(agg, activity="second", tail=None, state="COMPLETE", completed=True)
    await store.save(first)
    await store.save(second)
    assert await store.get("first", agg.id) == first
    assert await store.get("second", agg.id) == second


async def test_a_naive_updated_at_is_refused(store: TailStore) -> None:
    naive = record(ref(1), updated_at=datetime(2025, 1, 1))
    with pytest.raises(InvalidArgument) as info:
        await store.save(naive)
    assert info.value.field == "updated_at"


async def test_updated_at_keeps_its_instant_to_the_microsecond(store: TailStore) -> None:
    plus_two = datetime(2025, 6, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    await store.save(record(ref(1), updated_at=plus_two))
    stored = await store.get("act", ref(1).id)
    assert stored is not None
    assert stored.updated_at == plus_two


async def test_backoff_fields_come_back_as_saved_and_can_be_cleared(store: TailStore) -> None:
    # Issue 10, defect 11: a restarted runner resumes the backoff where it was.
    due = datetime(2025, 6, 1, 14, 0, 7, 123456, tzinfo=timezone(timedelta(hours=-5)))
    waiting = record(ref(1), tail=ULID(), state="RETRY", attempts=3, failures=4, next_run_at=due)
    await store.save(waiting)
    stored = await store.get("act", ref(1).id)
    assert stored == waiting
    assert stored is not None and stored.next_run_at == due and stored.failures == 4
    assert (await store.load("act"))[ref(1).id] == waiting
    assert await store.query(states=["RETRY"]) == [waiting]

    caught_up = replace(waiting, state="SLEEPING", failures=0, next_run_at=None)
    await store.save_with_run(caught_up, run(ref(1), 1))
    assert await store.get("act", ref(1).id) == caught_up


async def test_a_record_that_was_never_given_backoff_fields_has_the_defaults(
    store: TailStore,
) -> None:
    await store.save(record(ref(1)))
    stored = await store.get("act", ref(1).id)
    assert stored is not None
    assert (stored.failures, stored.next_run_at) == (0, None)


async def test_a_naive_next_run_at_or_negative_failures_is_refused(store: TailStore) -> None:
    naive = record(ref(1), next_run_at=datetime(2025, 1, 1))
    negative = record(ref(2), failures=-1)
    for bad, field in ((naive, "next_run_at"), (negative, "failures")):
        with pytest.raises(InvalidArgument) as info:
            await store.save(bad)
        assert info.value.field == field
        with pytest.raises(InvalidArgument) as info:
            async with store.transaction(bad):
                pass
        assert info.value.field == field
    assert await store.load("act") == {}


# -- run records --------------------------------------------------------------


async def test_save_with_run_stores_both(store: TailStore) -> None:
    agg = ref(7)
    saved = record(agg, tail=ULID.from_int(9), state="RETRY", attempts=2, last_error="E: x")
    ran = run(agg, 2, outcome="error", error="E: x")
    await store.save_with_run(saved, ran)
    assert await store.get("act", agg.id) == saved
    assert await store.list_runs("act", agg.id) == [ran]


async def test_run_records_come_back_newest_first(store: TailStore) -> None:
    agg = ref(1)
    runs = [
        run(agg, 1, tail_before=None, tail_after=ULID(), outcome="error", error="E: x"),
        run(agg, 2, tail_before=ULID(), tail_after=None, outcome="silent_retry"),
        run(agg, 3, outcome="done", events_seen=0),
    ]
    for r in runs:
        await store.record_run(r)
    await store.record_run(run(ref(2), 1))
    await store.record_run(run(agg, 1, activity="other"))

    assert await store.list_runs("act", agg.id) == runs[::-1]
    assert await store.list_runs("act", agg.id, limit=2) == runs[:0:-1]
    assert await store.list_runs("act", uuid.uuid4()) == []


async def test_a_run_error_of_the_whole_bound_comes_back_whole(store: TailStore) -> None:
    # A traceback as the engine keeps it: many lines, any text, the exception last.
    last = "ValueError: bad event"
    frame = '  File "/srv/plugins/ünïcode.py", line 12, in follow\n    raise ValueError("…")\n'
    body = "Traceback (most recent call last):\n"
    body += frame * ((MAX_ERROR_TEXT - len(body) - len(last)) // len(frame))
    traceback = body + "x" * (MAX_ERROR_TEXT - len(body) - len(last) - 1) + "\n" + last
    assert len(traceback) == MAX_ERROR_TEXT
    ran = run(ref(1), 1, outcome="error", error=traceback)
    await store.save_with_run(record(ref(1), last_error=traceback), ran)

    (stored,) = await store.list_runs("act", ref(1).id)
    assert stored.error == traceback
    assert stored.error.splitlines()[-1] == last
    saved = await store.get("act", ref(1).id)
    assert saved is not None and saved.last_error == traceback


async def test_run_records_keep_only_the_newest_n_per_task(backend: Backend) -> None:
    store = await backend.open(run_retention=3)
    try:
        agg, other = ref(1), ref(2)
        for attempt in range(1, 8):
            await store.record_run(run(agg, attempt))
        await store.record_run(run(other, 1))

        kept = await store.list_runs("act", agg.id, limit=100)
        assert [r.attempt for r in kept] == [7, 6, 5]
        assert [r.attempt for r in await store.list_runs("act", other.id)] == [1]
    finally:
        await store.aclose()


async def test_list_runs_refuses_a_limit_below_one(store: TailStore) -> None:
    with pytest.raises(InvalidArgument) as info:
        await store.list_runs("act", uuid.uuid4(), limit=0)
    assert info.value.field == "limit"


# -- query (the status view) ----------------------------------------------------


async def test_query_filters_by_activity_and_state_newest_first(store: TailStore) -> None:
    records = [
        record(ref(1), state="SLEEPING", updated_at=T0),
        record(ref(2), state="SUSPENDED", updated_at=T0 + timedelta(seconds=2)),
        record(ref(3), activity="other", state="SUSPENDED", updated_at=T0 + timedelta(seconds=1)),
        record(ref(4), state="COMPLETE", completed=True, updated_at=T0 + timedelta(seconds=3)),
    ]
    for r in records:
        await store.save(r)
    r1, r2, r3, r4 = records

    assert await store.query() == [r4, r2, r3, r1]
    assert await store.query("act") == [r4, r2, r1]
    assert await store.query(states=["SUSPENDED"]) == [r2, r3]
    assert await store.query(states="SUSPENDED") == [r2, r3]  # one state, not letters
    assert await store.query("act", states={"SUSPENDED", "SLEEPING"}) == [r2, r1]
    assert await store.query(states=["RUNNING"]) == []
    assert await store.query(limit=2) == [r4, r2]


async def test_query_pages_on_with_the_cursor_of_the_last_record(store: TailStore) -> None:
    # Ties on updated_at are broken by activity, then aggregate id.
    records = [
        record(ref(n), activity=activity, updated_at=T0 + timedelta(seconds=n % 3))
        for n in range(1, 10)
        for activity in ("a", "b")
    ]
    for r in records:
        await store.save(r)
    expected = sorted(records, key=query_cursor, reverse=True)

    pages: list[list[TailRecord]] = []
    after = None
    while True:
        page = await store.query(limit=4, after=after)
        if not page:
            break
        pages.append(page)
        after = query_cursor(page[-1])
    assert [len(p) for p in pages] == [4, 4, 4, 4, 2]
    assert [r for p in pages for r in p] == expected

    only_b = await store.query("b", limit=3, after=query_cursor(expected[0]))
    assert only_b == [r for r in expected[1:] if r.activity == "b"][:3]


async def test_query_refuses_a_limit_below_one(store: TailStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.query(limit=0)


# -- transaction (exactly-once effects) -------------------------------------------


async def test_transaction_commits_the_activity_writes_and_the_tail_together(
    backend: Backend, store: TailStore
) -> None:
    agg = ref(1)
    setup = record(agg, tail=None)
    async with store.transaction(setup) as conn:
        if backend.has_effects:
            await backend.create_effects(conn)
    assert await store.get("act", agg.id) == setup

    moved = record(agg, tail=ULID(), updated_at=T0 + timedelta(seconds=1))
    async with store.transaction(moved) as conn:
        if backend.has_effects:
            await backend.write_effect(conn, "charged")
        else:
            assert conn is None

    assert await store.get("act", agg.id) == moved
    if backend.has_effects:
        assert backend.committed_effects() == ["charged"]


async def test_transaction_rolls_back_writes_and_tail_on_an_exception(
    backend: Backend, store: TailStore
) -> None:
    agg = ref(1)
    before = record(agg, tail=ULID())
    async with store.transaction(before) as conn:
        if backend.has_effects:
            await backend.create_effects(conn)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.transaction(record(agg, tail=ULID(), state="EOF")) as conn:
            if backend.has_effects:
                await backend.write_effect(conn, "charged")
            raise Boom

    assert await store.get("act", agg.id) == before
    if backend.has_effects:
        assert backend.committed_effects() == []
    # The store still works after a rollback.
    after = replace(before, tail=ULID())
    await store.save(after)
    assert await store.get("act", agg.id) == after


async def test_transaction_rolls_back_when_cancelled(backend: Backend, store: TailStore) -> None:
    agg = ref(1)
    before = record(agg, tail=None)
    async with store.transaction(before) as conn:
        if backend.has_effects:
            await backend.create_effects(conn)

    with anyio.CancelScope() as scope:
        async with store.transaction(record(agg, tail=ULID())) as conn:
            if backend.has_effects:
                await backend.write_effect(conn, "charged")
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert await store.get("act", agg.id) == before
    if backend.has_effects:
        assert backend.committed_effects() == []


# -- durable stores: reopen, migrations ---------------------------------------------


async def test_a_reopened_store_has_every_record_and_run(durable: Backend) -> None:
    saved = [record(ref(n), tail=ULID() if n % 2 else None, completed=n == 3) for n in (1, 2, 3)]
    store = await durable.open()
    for r in saved:
        await store.save(r)
    await store.record_run(run(ref(1), 1))
    await store.aclose()

    store = await durable.open()
    try:
        assert await store.load("act") == {r.aggregate.id: r for r in saved}
        assert await store.list_runs("act", ref(1).id) == [run(ref(1), 1)]
    finally:
        await store.aclose()


async def test_a_closed_store_refuses_calls(durable: Backend) -> None:
    store = await durable.open()
    await store.aclose()
    await store.aclose()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        await store.get("act", uuid.uuid4())


async def test_reopening_at_the_same_version_migrates_nothing(
    durable: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await durable.open()
    await store.save(record(ref(1)))
    await store.aclose()
    # Same number of migrations, but running any of them now would fail.
    poisoned = tuple(("SELECT no_such_function()",) for _ in durable.module.MIGRATIONS)
    monkeypatch.setattr(durable.module, "MIGRATIONS", poisoned)

    store = await durable.open()
    try:
        assert await store.get("act", ref(1).id) == record(ref(1))
    finally:
        await store.aclose()
    assert durable.schema_version() == len(poisoned)


async def test_an_older_schema_is_migrated_on_open(
    durable: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await durable.open()
    await store.save(record(ref(1)))
    await store.aclose()
    current = durable.module.MIGRATIONS
    monkeypatch.setattr(durable.module, "MIGRATIONS", (*current, (durable.extra_migration,)))

    store = await durable.open()
    try:
        assert await store.get("act", ref(1).id) == record(ref(1))
    finally:
        await store.aclose()
    assert durable.schema_version() == len(current) + 1
    assert durable.has_table("extra")


async def test_a_newer_schema_is_refused_naming_the_store_and_both_versions(
    durable: Backend,
) -> None:
    store = await durable.open()
    await store.aclose()
    latest = durable.schema_version()
    durable.set_schema_version(latest + 41)

    with pytest.raises(StoreError) as info:
        await durable.open()
    message = str(info.value)
    assert f"version {latest + 41} is newer than this tailrunner's ({latest})" in message
    where = str(durable.path) if isinstance(durable, SQLiteBackend) else durable.schema
    assert where in message


#: Saves a record per aggregate 1, 2, 3 … and prints ``saved N`` once save N returned.
CHILD = """
import sys, uuid
from datetime import UTC, datetime

import anyio
from ulid import ULID

from tailrunner.model import AggregateRef
from tailrunner.tails.store import TailRecord


async def main(kind, where, schema):
    if kind == "sqlite":
        from tailrunner.tails.sqlite import SQLiteTailStore

        store = await SQLiteTailStore.open(where)
    else:
        from tailrunner.tails.postgres import PostgresTailStore

        store = await PostgresTailStore.open(where, schema=schema)
    n = 0
    while True:
        n += 1
        await store.save(
            TailRecord(
                activity="act",
                aggregate=AggregateRef(type="thing", id=uuid.UUID(int=n)),
                tail=ULID.from_int(n),
                state="SLEEPING",
                updated_at=datetime.now(UTC),
            )
        )
        sys.stdout.write(f"saved {n}\\n")
        sys.stdout.flush()


anyio.run(main, *sys.argv[1:])
"""


def acknowledged(output: bytes) -> list[int]:
    """The numbers of the whole ``saved N`` lines; the kill may have cut the last line."""
    lines = output.split(b"\n")[:-1]
    return [int(line.split()[1]) for line in lines if line.startswith(b"saved ")]


async def test_every_save_that_returned_survives_sigkill(durable: Backend) -> None:
    # Create the schema first, so the child spends its time saving.
    await (await durable.open()).aclose()
    output = b""
    async with await anyio.open_process(
        [sys.executable, "-c", CHILD, *durable.child_args()]
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        with anyio.fail_after(30):
            async for chunk in child.stdout:
                output += chunk
                if len(acknowledged(output)) >= 30:
                    break
            child.kill()  # SIGKILL: no cleanup, no flush
            await child.wait()
            # Lines printed between our read and the kill were acknowledged too.
            async for chunk in child.stdout:
                output += chunk
            errors = b"".join([chunk async for chunk in child.stderr])
    saved = acknowledged(output)
    assert len(saved) >= 30, errors.decode()
    assert saved == list(range(1, len(saved) + 1))

    store = await durable.open()
    try:
        stored = await store.load("act")
    finally:
        await store.aclose()
    for n in saved:
        found = stored.get(uuid.UUID(int=n))
        assert found is not None, f"save {n} returned, but is gone after SIGKILL"
        assert found.tail == ULID.from_int(n)
