"""The PostgreSQL journal store as several journal servers use it: two stores on one schema.

The contract itself (appends, reads, request ids, expect_new…) runs on
PostgreSQL through the ``store`` fixture's ``postgres`` parameter; these
tests are what only a shared database can break: races between instances,
migrations, clocks, and the CLI against PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any
from uuid import uuid4

import anyio
import anyio.abc
import psycopg
import pytest
from psycopg import sql
from ulid import ULID

import tailrunner.ids
from tailrunner.errors import InvalidArgument, StoreError, TailMismatch
from tailrunner.journal.open import migrate_store, open_store
from tailrunner.journal.postgres import SCHEMA_VERSION, PostgresJournalStore, migrate_schema
from tailrunner.model import AggregateRef, AppendResult, Event, NewEvent
from tailrunner.tails.postgres import PostgresTailStore

ServeJournal = Callable[[str], AbstractAsyncContextManager[Any]]


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@pytest.fixture
async def two(postgres_url: str, pg_schema: str) -> AsyncIterator[list[PostgresJournalStore]]:
    """Two stores on one schema: two journal servers' view of one PostgreSQL."""
    first = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=4)
    try:
        second = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=4)
        try:
            yield [first, second]
        finally:
            await second.aclose()
    finally:
        await first.aclose()


Outcome = AppendResult | TailMismatch


async def _contend(
    store: PostgresJournalStore,
    ref: AggregateRef,
    event_type: str,
    outcomes: list[Outcome],
    *,
    expected_tail: ULID | None = None,
    expect_new: bool = False,
) -> None:
    """One racer: its append's result, or its tail mismatch, goes to ``outcomes``."""
    try:
        outcomes.append(
            await store.append(
                ref, [NewEvent(type=event_type)], expected_tail=expected_tail,
                expect_new=expect_new,
            )
        )  # fmt: skip
    except TailMismatch as exc:
        outcomes.append(exc)


def _split(outcomes: list[Outcome]) -> tuple[list[AppendResult], list[TailMismatch]]:
    won = [o for o in outcomes if isinstance(o, AppendResult)]
    return won, [o for o in outcomes if isinstance(o, TailMismatch)]


def _assert_chain(events: list[Event], count: int) -> None:
    """``count`` events, each the child of the one before: no gap, no fork."""
    assert len(events) == count
    assert events[0].parent is None
    for parent, child in itertools.pairwise(events):
        assert child.parent == parent.id
        assert int(child.id) > int(parent.id)


async def test_racing_appends_with_one_expected_tail_give_one_winner_across_stores(
    two: list[PostgresJournalStore], ref: AggregateRef
) -> None:
    first = await two[0].append(ref, [NewEvent(type="opened")], expected_tail=None)
    head = first.tail
    rounds, per_store = 15, 3
    for round_ in range(rounds):
        outcomes: list[Outcome] = []
        async with anyio.create_task_group() as tg:
            for n in range(per_store):
                for store in two:
                    tg.start_soon(
                        partial(
                            _contend, store, ref, f"r{round_}.{n}", outcomes, expected_tail=head
                        )
                    )
        won, lost = _split(outcomes)
        assert len(won) == 1, f"round {round_}: {len(won)} winners"
        assert len(lost) == 2 * per_store - 1
        assert {exc.actual for exc in lost} == {won[0].tail}
        head = won[0].tail

    for store in two:
        events = await store.read(ref.id, after=None, limit=1000)
        _assert_chain(events, rounds + 1)
        assert events[-1].id == head == await store.head(ref.id)
        (info,) = await store.list_aggregates(ref.type, after_id=None, limit=10)
        assert (info.head, info.event_count) == (head, rounds + 1)


async def test_racing_first_appends_with_expect_new_give_one_winner_across_stores(
    two: list[PostgresJournalStore],
) -> None:
    for _ in range(10):
        ref = AggregateRef(type="order", id=uuid4())
        outcomes: list[Outcome] = []
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(
                    partial(_contend, two[n % 2], ref, f"c{n}", outcomes, expect_new=True)
                )
        won, lost = _split(outcomes)
        assert len(won) == 1
        assert {(exc.expected, exc.actual) for exc in lost} == {(None, won[0].tail)}
        events = await two[1].read(ref.id, after=None, limit=10)
        assert [e.id for e in events] == [won[0].tail]


async def test_one_request_id_through_both_stores_appends_once(
    two: list[PostgresJournalStore], ref: AggregateRef
) -> None:
    await two[0].append(ref, [NewEvent(type="opened")], expected_tail=None)
    results: list[AppendResult] = []

    async def retry(store: PostgresJournalStore) -> None:
        results.append(
            await store.append(
                ref, [NewEvent(type="paid"), NewEvent(type="shipped")], expected_tail=None,
                request_id="pay-1",
            )
        )  # fmt: skip

    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(retry, two[n % 2])
    assert len(set(results)) == 1
    # And a later repeat through the other store, sequentially.
    again = await two[1].append(ref, [NewEvent(type="x")], expected_tail=None, request_id="pay-1")
    assert again == results[0]
    types = [e.type for e in await two[1].read(ref.id, after=None, limit=100)]
    assert types == ["opened", "paid", "shipped"]


async def test_what_one_store_appends_the_other_reads_and_hears(
    two: list[PostgresJournalStore], ref: AggregateRef
) -> None:
    heard: list[list[tuple[AggregateRef, ULID]]] = [[], []]
    for store, log in zip(two, heard, strict=True):
        store.add_listener(lambda aggregate, head, log=log: log.append((aggregate, head)))
    other_heard = anyio.Event()
    two[1].add_listener(lambda aggregate, head: other_heard.set())
    result = await two[0].append(
        ref,
        [NewEvent(type="placed", data=b"\x00\x01", metadata={"by": "a"}), NewEvent(type="paid")],
        expected_tail=None,
    )
    events = await two[1].read(ref.id, after=None, limit=10)
    assert [(e.type, e.data, dict(e.metadata), e.aggregate_type) for e in events] == [
        ("placed", b"\x00\x01", {"by": "a"}, "order"),
        ("paid", b"", {}, "order"),
    ]
    assert tuple(e.id for e in events) == result.event_ids
    assert await two[1].read(ref.id, after=events[0].id, limit=10) == events[1:]
    assert await two[1].head(ref.id) == result.tail
    # Listeners hear their own store's appends at once, the other's through LISTEN/NOTIFY.
    assert heard[0] == [(ref, result.tail)]
    with anyio.fail_after(10):
        await other_heard.wait()
    assert heard[1] == [(ref, result.tail)]


async def test_an_id_is_above_the_head_even_when_this_servers_clock_is_behind(
    two: list[PostgresJournalStore], ref: AggregateRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await two[0].append(ref, [NewEvent(type="a")], expected_tail=None)

    class Behind:
        @staticmethod
        def time() -> float:
            return 1_000_000.0  # 1970: far behind the first server's clock

    monkeypatch.setattr(tailrunner.ids, "time", Behind)
    second = await two[1].append(
        ref, [NewEvent(type="b"), NewEvent(type="c")], expected_tail=first.tail
    )
    assert int(first.tail) < int(second.event_ids[0]) < int(second.tail)
    _assert_chain(await two[0].read(ref.id, after=None, limit=10), 3)


async def test_migrating_twice_changes_nothing_the_second_time(
    postgres_url: str, pg_schema: str
) -> None:
    assert await migrate_schema(postgres_url, schema=pg_schema) == (SCHEMA_VERSION, True)
    assert await migrate_schema(postgres_url, schema=pg_schema) == (SCHEMA_VERSION, False)
    url = _with_schema(postgres_url, pg_schema)
    assert await migrate_store(url) == SCHEMA_VERSION
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresJournalStore)
        assert store.schema == pg_schema
    finally:
        await store.aclose()


async def test_stores_opening_one_fresh_schema_at_once_all_open(
    postgres_url: str, pg_schema: str, ref: AggregateRef
) -> None:
    opened: list[PostgresJournalStore] = []

    async def open_one() -> None:
        opened.append(await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=1))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(open_one)
        assert len(opened) == 4
        result = await opened[0].append(ref, [NewEvent(type="a")], expected_tail=None)
        assert await opened[3].head(ref.id) == result.tail
    finally:
        for store in opened:
            await store.aclose()


async def test_a_schema_from_a_newer_tailrunner_is_refused(
    postgres_url: str, pg_schema: str
) -> None:
    await migrate_schema(postgres_url, schema=pg_schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {}.journal_schema_version SET version = 99").format(
                sql.Identifier(pg_schema)
            )
        )
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await PostgresJournalStore.open(postgres_url, schema=pg_schema)


@pytest.mark.parametrize(
    ("query", "why"),
    [("?schema=", "must not be empty"), ("?schema=a&schema=b", "given 2 times"),
     (f"?schema={'s' * 64}", "over PostgreSQL's limit")],
    ids=["empty", "twice", "too-long"],
)  # fmt: skip
async def test_a_bad_schema_in_the_url_is_refused_naming_the_option(query: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as caught:
        await open_store(f"postgresql://nobody@127.0.0.1:1/db{query}")
    assert caught.value.field == "--store"


async def test_the_url_keeps_libpq_parameters_beside_the_schema(
    postgres_url: str, pg_schema: str, ref: AggregateRef
) -> None:
    # An encoded space in a libpq parameter reaches libpq as written.
    url = _with_schema(
        f"{postgres_url}{'&' if '?' in postgres_url else '?'}application_name=journal%20one",
        pg_schema,
    )
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresJournalStore)
        assert store.schema == pg_schema
        await store.append(ref, [NewEvent(type="a")], expected_tail=None)
        with psycopg.connect(postgres_url) as conn:
            names = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                ("journal%",),
            ).fetchall()
        assert ("journal one",) in names
    finally:
        await store.aclose()


# -- the CLI ---------------------------------------------------------------------


async def _run(command: list[str], *args: str) -> tuple[int, str, str]:
    with anyio.fail_after(30):
        result = await anyio.run_process([*command, *args], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.mark.slow
async def test_cli_migrate_then_two_journal_servers_on_one_schema(
    tailrunner_cli: list[str], serve_journal: ServeJournal, postgres_url: str, pg_schema: str
) -> None:
    url = _with_schema(postgres_url, pg_schema)
    for _ in range(2):
        code, out, err = await _run(tailrunner_cli, "journal", "migrate", "--store", url)
        assert (code, err) == (0, "")
        assert out.strip() == f"schema version {SCHEMA_VERSION}"

    aggregate_id = str(uuid4())
    async with serve_journal(url) as a, serve_journal(url) as b:
        code, tail, err = await _run(
            tailrunner_cli,
            "append", "--journal", a.address, "--type", "order", "--id", aggregate_id,
            "--event-type", "placed", "--data", '{"sku": "a-1"}',
        )  # fmt: skip
        assert (code, err) == (0, "")
        tail = tail.strip()
        # --expect-new through the other server is refused there: it sees the event.
        code, _, err = await _run(
            tailrunner_cli,
            "append", "--journal", b.address, "--type", "order", "--id", aggregate_id,
            "--event-type", "paid", "--expect-new",
        )  # fmt: skip
        assert code != 0
        assert tail in err
        code, out, err = await _run(
            tailrunner_cli, "events", "--journal", b.address, "--id", aggregate_id, "--json"
        )
        assert (code, err) == (0, "")
        (event,) = [json.loads(line) for line in out.splitlines()]
        assert (event["id"], event["type"], event["data"]) == (tail, "placed", {"sku": "a-1"})


@pytest.mark.slow
async def test_cli_migrate_refuses_memory_and_names_the_option(tailrunner_cli: list[str]) -> None:
    code, _, err = await _run(tailrunner_cli, "journal", "migrate", "--store", "memory:")
    assert code != 0
    assert "--store" in err
    assert "memory:" in err


async def test_a_journal_and_a_tail_store_creating_one_schema_at_once_both_open(
    postgres_url: str,
) -> None:
    # A journal server and a runner on a fresh database, both on the default schema.
    for _ in range(5):
        schema = f"tailrunner_test_{uuid4().hex[:12]}"
        opened: list[PostgresJournalStore | PostgresTailStore] = []
        try:
            async with anyio.create_task_group() as tg:
                for kind in (PostgresJournalStore, PostgresTailStore):
                    tg.start_soon(_open_into, opened, kind, postgres_url, schema)
            assert len(opened) == 2
        finally:
            for store in opened:
                await store.aclose()
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


async def test_a_cancelled_append_settles_before_the_cancellation_is_raised(
    postgres_url: str, pg_schema: str, ref: AggregateRef
) -> None:
    store = await PostgresJournalStore.open(postgres_url, schema=pg_schema, pool_size=2)
    try:
        first = await store.append(ref, [NewEvent(type="a")], expected_tail=None)
        returned: list[AppendResult] = []
        caught: list[bool] = []

        async def append(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                returned.append(
                    await store.append(ref, [NewEvent(type="b")], expected_tail=first.tail)
                )
            caught.append(scope.cancelled_caught)

        # Another transaction holds the aggregate's row: the append waits for it.
        # The watcher polls on a connection of its own, in autocommit: inside the
        # locker's transaction pg_stat_activity would be one snapshot, never updated.
        async with (
            await psycopg.AsyncConnection.connect(postgres_url) as locker,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as watcher,
        ):
            await locker.execute(
                sql.SQL("SELECT 1 FROM {}.aggregates WHERE id = %s FOR UPDATE").format(
                    sql.Identifier(pg_schema)
                ),
                (ref.id,),
            )
            async with anyio.create_task_group() as tg:
                scope = await tg.start(append)
                try:
                    with anyio.fail_after(10):
                        while not await _waits_for_a_row_lock(watcher, pg_schema):  # noqa: ASYNC110 (PostgreSQL has no event for it)
                            await anyio.sleep(0.01)
                    scope.cancel()
                finally:
                    # Always: a failed wait must not leave the append stuck on the lock
                    # (the task group would wait for it forever).
                    await locker.rollback()
        # It committed (so readers see it), and its caller got the cancellation.
        assert (returned, caught) == ([], [True])
        assert [e.type for e in await store.read(ref.id, after=None, limit=10)] == ["a", "b"]
    finally:
        await store.aclose()


async def _waits_for_a_row_lock(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    cursor = await conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE %s AND pid <> pg_backend_pid()",
        (f"%{schema}%FOR UPDATE%",),
    )
    return await cursor.fetchone() is not None


async def _open_into(
    opened: list[PostgresJournalStore | PostgresTailStore],
    kind: type[PostgresJournalStore | PostgresTailStore],
    url: str,
    schema: str,
) -> None:
    opened.append(await kind.open(url, schema=schema, pool_size=1))
