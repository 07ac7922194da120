"""SegmentLeases and fencing against the real PostgreSQL, a fresh schema per test.

Waits for expiry go by the database's clock (polled, bounded), never by
the test's wall clock.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tailrunner.errors import InvalidArgument, StoreError
from tailrunner.scaleout import Fence, FencedWrites, Lease, SegmentLeases, fenced
from tailrunner.tails.postgres import PostgresTailStore

Pool = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[Pool]:
    p: Pool = AsyncConnectionPool(
        postgres_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await p.open(wait=True, timeout=10)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def other_pool(postgres_url: str) -> AsyncIterator[Pool]:
    """The second runner's own connections."""
    p: Pool = AsyncConnectionPool(
        postgres_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await p.open(wait=True, timeout=10)
    try:
        yield p
    finally:
        await p.close()


class Lost:
    """Collects what on_lost reports."""

    def __init__(self) -> None:
        self.leases: list[Lease] = []
        self.event = anyio.Event()

    def __call__(self, leases: Sequence[Lease]) -> None:
        self.leases.extend(leases)
        self.event.set()

    @property
    def segments(self) -> list[int]:
        return sorted(lease.segment for lease in self.leases)


async def wait_until_expired(pool: Pool, schema: str, leases: Sequence[Lease]) -> None:
    """Until the database's clock is past every one of ``leases``' expiry (at most 10 s)."""
    latest = max(lease.expires_at for lease in leases)
    with anyio.fail_after(10):
        while True:
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT now() > %s", (latest,))
                row = await cursor.fetchone()
            if row is not None and row[0]:
                return
            await anyio.sleep(0.05)


async def make_demo(pool: Pool, schema: str) -> None:
    """The stand-in for the tails the engines will fence: one value per key."""
    async with pool.connection() as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {} (k integer PRIMARY KEY, v text NOT NULL)").format(
                sql.Identifier(schema, "demo")
            )
        )


DEMO_UPSERT = (
    "INSERT INTO {schema}.demo (k, v) SELECT %s, %s WHERE {fence}"
    " ON CONFLICT (k) DO UPDATE SET v = excluded.v"
)


async def demo_value(pool: Pool, schema: str, k: int) -> Any:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT v FROM {} WHERE k = %s").format(sql.Identifier(schema, "demo")), (k,)
        )
        row = await cursor.fetchone()
    return None if row is None else row[0]


async def test_open_creates_the_rows_once(pool: Pool, pg_schema: str) -> None:
    first = await SegmentLeases.open(pool, schema=pg_schema, segments=8)
    second = await SegmentLeases.open(pool, schema=pg_schema, segments=8)
    rows = await second.table()
    assert [row.segment for row in rows] == list(range(8))
    assert all(row.owner is None and row.epoch == 0 and not row.live for row in rows)
    assert first.incarnation != second.incarnation
    # uuid4 text, not a host name.
    assert len(first.incarnation) == 36 and first.incarnation.count("-") == 4


async def test_open_refuses_another_segment_count(pool: Pool, pg_schema: str) -> None:
    await SegmentLeases.open(pool, schema=pg_schema, segments=8)
    with pytest.raises(StoreError, match="holds 8 segments, this runner is set to 4"):
        await SegmentLeases.open(pool, schema=pg_schema, segments=4)
    # More is refused too, and the table is not grown for the others.
    with pytest.raises(StoreError, match="holds 8 segments, this runner is set to 16"):
        await SegmentLeases.open(pool, schema=pg_schema, segments=16)
    leases = await SegmentLeases.open(pool, schema=pg_schema, segments=8)
    assert len(await leases.table()) == 8


async def test_open_refuses_a_pool_without_autocommit(postgres_url: str, pg_schema: str) -> None:
    p: Pool = AsyncConnectionPool(postgres_url, min_size=1, max_size=1, open=False)
    await p.open(wait=True, timeout=10)
    try:
        with pytest.raises(InvalidArgument, match="autocommit"):
            await SegmentLeases.open(p, schema=pg_schema, segments=4)
    finally:
        await p.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"segments": 0}, "segments"),
        ({"segments": 5000}, "segments"),
        ({"lease": 0}, "lease"),
        ({"lease": 7200}, "lease"),
        ({"lease": 1.0, "heartbeat": 1.0}, "heartbeat"),
        ({"schema": ""}, "schema"),
    ],
)
def test_bad_settings_are_refused(pool: Pool, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        SegmentLeases(pool, **kwargs)
    assert caught.value.field == field


async def test_concurrent_claimers_never_hold_the_same_segment(
    pool: Pool, other_pool: Pool, pg_schema: str
) -> None:
    a = await SegmentLeases.open(pool, schema=pg_schema, segments=16)
    b = await SegmentLeases.open(other_pool, schema=pg_schema, segments=16)
    rng = random.Random(14)
    epochs: dict[int, int] = {}
    for _ in range(40):
        won: dict[str, list[Lease]] = {}

        async def claim(
            name: str, leases: SegmentLeases, count: int, into: dict[str, list[Lease]]
        ) -> None:
            into[name] = await leases.claim(count)

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim, "a", a, rng.randint(1, 16), won)
            tg.start_soon(claim, "b", b, rng.randint(1, 16), won)
        won_a = {lease.segment for lease in won["a"]}
        won_b = {lease.segment for lease in won["b"]}
        assert not won_a & won_b
        held_a, held_b = set(a.owned()), set(b.owned())
        assert not held_a & held_b
        # The table agrees with both.
        owners = {row.segment: row.owner for row in await a.table()}
        assert {s for s, o in owners.items() if o == a.incarnation} == held_a
        assert {s for s, o in owners.items() if o == b.incarnation} == held_b
        # Every claim bumped its segment's epoch past all before.
        for lease in won["a"] + won["b"]:
            assert lease.epoch > epochs.get(lease.segment, 0)
            epochs[lease.segment] = lease.epoch
        # Hand some back, so the next round has something to fight over.
        await a.release(s for s in held_a if rng.random() < 0.6)
        await b.release(s for s in held_b if rng.random() < 0.6)
    assert a.stats.claimed + b.stats.claimed == sum(epochs.values())


async def test_claim_takes_only_what_is_free(pool: Pool, pg_schema: str) -> None:
    a = await SegmentLeases.open(pool, schema=pg_schema, segments=4)
    b = await SegmentLeases.open(pool, schema=pg_schema, segments=4)
    assert [lease.segment for lease in await a.claim(3)] == [0, 1, 2]
    # a's own segments are not claimed again.
    assert [lease.segment for lease in await a.claim(3)] == [3]
    assert await b.claim(4) == []
    assert await a.claim(0) == []
    with pytest.raises(InvalidArgument, match="max_count"):
        await a.claim(-1)


async def test_release_then_claim_bumps_the_epoch(pool: Pool, pg_schema: str) -> None:
    a = await SegmentLeases.open(pool, schema=pg_schema, segments=2)
    b = await SegmentLeases.open(pool, schema=pg_schema, segments=2)
    (first,) = await a.claim(1)
    assert (first.segment, first.epoch, first.owner) == (0, 1, a.incarnation)
    assert await a.release([0, 1]) == [0]  # 1 is not a's: skipped
    assert a.owned() == {}
    row = (await a.table())[0]
    # Free, and the epoch kept.
    assert (row.owner, row.epoch, row.since, row.expires_at, row.live) == (
        None,
        1,
        None,
        None,
        False,
    )
    (second,) = await b.claim(1)
    assert (second.segment, second.epoch) == (0, 2)
    await b.release([0])
    (third,) = await a.claim(1)
    assert third.epoch == 3
    assert a.stats.released == 1 and a.stats.claimed == 2 and a.stats.rescued == 0


async def test_heartbeat_keeps_the_lease_past_its_first_expiry(pool: Pool, pg_schema: str) -> None:
    lost = Lost()
    a = await SegmentLeases.open(
        pool, schema=pg_schema, segments=2, lease=1.5, heartbeat=0.2, on_lost=lost
    )
    (first,) = await a.claim(1)
    async with anyio.create_task_group() as tg:
        await tg.start(a.run_heartbeat)
        await wait_until_expired(pool, pg_schema, [first])
        row = (await a.table())[0]
        tg.cancel_scope.cancel()
    # Still held, same epoch, by the database's clock past the claim's expiry.
    assert (row.owner, row.epoch, row.live) == (a.incarnation, first.epoch, True)
    assert row.expires_at is not None and row.expires_at > first.expires_at
    assert list(a.owned()) == [0] and a.owned()[0].epoch == first.epoch
    assert a.stats.heartbeats >= 1 and lost.leases == []


async def test_an_expired_lease_moves_and_the_old_owners_writes_are_fenced(
    pool: Pool, other_pool: Pool, pg_schema: str
) -> None:
    lost = Lost()
    old = await SegmentLeases.open(
        pool, schema=pg_schema, segments=4, lease=0.8, heartbeat=0.1, on_lost=lost
    )
    new = await SegmentLeases.open(other_pool, schema=pg_schema, segments=4)
    await make_demo(pool, pg_schema)
    leases = await old.claim(4)
    assert [lease.segment for lease in leases] == [0, 1, 2, 3]
    # Built from the lease, not old.fence(2): that is None once the
    # local deadline passed, and this test writes past it on purpose.
    stale = Fence(schema=pg_schema, segment=2, owner=old.incarnation, epoch=leases[2].epoch)
    async with pool.connection() as conn:
        assert await fenced(conn, stale, DEMO_UPSERT, (2, "old, in time"))
    assert await demo_value(pool, pg_schema, 2) == "old, in time"
    # Nothing free while the old owner's leases last.
    assert await new.claim(4) == []

    await wait_until_expired(pool, pg_schema, leases)
    taken = await new.claim(4)
    assert [lease.segment for lease in taken] == [0, 1, 2, 3]
    assert [lease.epoch for lease in taken] == [2, 2, 2, 2]
    assert new.stats.rescued == 4
    assert await new.live_runners() == 1  # the old owner's leases have all expired

    # The old owner wakes up: its renewal keeps nothing and reports all lost.
    assert await old.renew() == []
    assert lost.segments == [0, 1, 2, 3]
    assert old.owned() == {} and old.stats.lost == 4

    # Its write with the stale fence changes nothing and is counted.
    writes = FencedWrites()
    async with pool.connection() as conn:
        assert not await fenced(conn, stale, DEMO_UPSERT, (2, "old, too late"), writes=writes)
        assert not await fenced(
            conn,
            stale,
            "UPDATE {schema}.demo SET v = %s WHERE k = %s AND {fence}",
            ("old, too late", 2),
            writes=writes,
        )
    assert writes.total == 2 and writes.by_segment() == {2: 2}
    assert await demo_value(pool, pg_schema, 2) == "old, in time"

    # The new owner's write lands.
    fresh = new.fence(2)
    assert fresh is not None and fresh.epoch == 2
    new_writes = FencedWrites()
    async with other_pool.connection() as conn:
        assert await fenced(conn, fresh, DEMO_UPSERT, (2, "new"), writes=new_writes)
        # Its own condition matching nothing is not a fenced write.
        assert await fenced(
            conn,
            fresh,
            "UPDATE {schema}.demo SET v = %s WHERE k = %s AND {fence}",
            ("nobody", 99),
            writes=new_writes,
        )
    assert new_writes.total == 0
    assert await demo_value(pool, pg_schema, 2) == "new"


async def test_a_fenced_write_in_an_open_transaction_holds_the_segment(
    pool: Pool, other_pool: Pool, pg_schema: str
) -> None:
    # The fence locks the lease row FOR SHARE: while the writer's
    # transaction is open, no claimer can take the segment, even expired.
    old = await SegmentLeases.open(pool, schema=pg_schema, segments=1, lease=0.8, heartbeat=0.1)
    new = await SegmentLeases.open(other_pool, schema=pg_schema, segments=1)
    await make_demo(pool, pg_schema)
    leases = await old.claim(1)
    fence = Fence(schema=pg_schema, segment=0, owner=old.incarnation, epoch=leases[0].epoch)
    async with pool.connection() as conn, conn.transaction():
        assert await fenced(conn, fence, DEMO_UPSERT, (0, "old"))
        await wait_until_expired(other_pool, pg_schema, leases)
        assert await new.claim(1) == []
    # Committed: now it can move.
    (taken,) = await new.claim(1)
    assert taken.epoch == 2
    assert await demo_value(pool, pg_schema, 0) == "old"


async def test_fenced_needs_the_fence_in_the_statement(pool: Pool) -> None:
    fence = Fence(schema="s", segment=0, owner="o", epoch=1)
    async with pool.connection() as conn:
        with pytest.raises(InvalidArgument, match=r"must hold \{fence\}"):
            await fenced(conn, fence, "UPDATE s.demo SET v = 1")


async def test_live_runners_and_share(pool: Pool, other_pool: Pool, pg_schema: str) -> None:
    a = await SegmentLeases.open(pool, schema=pg_schema, segments=10)
    b = await SegmentLeases.open(other_pool, schema=pg_schema, segments=10)
    c = await SegmentLeases.open(pool, schema=pg_schema, segments=10)
    assert await a.live_runners() == 1
    assert await a.share() == 10
    await a.claim(await a.share())
    assert await b.live_runners() == 2
    assert await c.live_runners() == 2  # c holds nothing yet: counted as itself
    assert await b.share(slack=0) == 5
    await a.release(range(5, 10))
    await b.claim(await b.share(slack=0))
    assert await c.live_runners() == 3
    assert await c.share() == 5  # ceil(10 / 3) + 1
    rows = await c.table()
    assert [row.owner for row in rows] == [a.incarnation] * 5 + [b.incarnation] * 5
    assert all(row.live and row.since is not None for row in rows)


async def test_heartbeat_reports_a_segment_taken_over(pool: Pool, pg_schema: str) -> None:
    lost = Lost()
    a = await SegmentLeases.open(
        pool, schema=pg_schema, segments=2, lease=3.0, heartbeat=0.1, on_lost=lost
    )
    await a.claim(2)
    async with anyio.create_task_group() as tg:
        await tg.start(a.run_heartbeat)
        # Someone else holds segment 1 now (as after a pause past the lease).
        async with pool.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET owner = 'someone', epoch = epoch + 1 WHERE segment = 1"
                ).format(sql.Identifier(pg_schema, "segment_leases"))
            )
        with anyio.fail_after(5):
            await lost.event.wait()
        tg.cancel_scope.cancel()
    assert lost.segments == [1]
    assert list(a.owned()) == [0]
    assert a.stats.heartbeats >= 1


async def test_heartbeat_loses_leases_by_deadline_when_the_database_is_gone(
    postgres_url: str, pg_schema: str
) -> None:
    p: Pool = AsyncConnectionPool(
        postgres_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await p.open(wait=True, timeout=10)
    lost = Lost()
    a = await SegmentLeases.open(
        p, schema=pg_schema, segments=2, lease=0.6, heartbeat=0.2, on_lost=lost
    )
    leases = await a.claim(2)
    assert a.holds(0) and a.fence(1) is not None
    await p.close()  # every renewal fails from now on
    async with anyio.create_task_group() as tg:
        await tg.start(a.run_heartbeat)
        with anyio.fail_after(5):
            await lost.event.wait()
        tg.cancel_scope.cancel()
    assert lost.segments == [0, 1]
    assert a.stats.heartbeat_failures >= 1
    # Lost locally before the database's lease ran out: the deadline is one
    # heartbeat short of the lease, counted from before the claim was sent.
    assert all(lease.deadline <= anyio.current_time() for lease in leases)
    assert not a.holds(0) and a.fence(1) is None


async def test_a_runner_that_slept_past_its_deadline_holds_nothing(
    pool: Pool, pg_schema: str
) -> None:
    # No heartbeat ran meanwhile (a pause): holds and fence look at the deadline.
    lost = Lost()
    a = await SegmentLeases.open(
        pool, schema=pg_schema, segments=2, lease=0.3, heartbeat=0.1, on_lost=lost
    )
    (lease,) = await a.claim(1)
    await anyio.sleep(max(0.0, lease.deadline - anyio.current_time()) + 0.01)
    assert a.fence(0) is None
    assert lost.segments == [0] and a.owned() == {}


async def test_concurrent_openers_create_the_schema_and_rows_once(
    pool: Pool, other_pool: Pool, pg_schema: str
) -> None:
    opened: list[SegmentLeases] = []

    async def open_one(p: Pool) -> None:
        opened.append(await SegmentLeases.open(p, schema=pg_schema, segments=32))

    async with anyio.create_task_group() as tg:
        for p in (pool, other_pool, pool, other_pool):
            tg.start_soon(open_one, p)
    assert len(opened) == 4
    rows = await opened[0].table()
    assert [row.segment for row in rows] == list(range(32))


async def test_runners_that_pause_never_believe_they_hold_the_same_segment(
    pool: Pool, other_pool: Pool, pg_schema: str
) -> None:
    # Three runners on short leases; in each round each one claims, renews
    # or "pauses" (does nothing), so leases expire and move all the time.
    # Whatever a runner still holds once it has dropped the leases past
    # their local deadlines, no other runner holds: the deadline comes
    # before the database's expiry, and only that expiry lets another claim.
    pools = (pool, other_pool, pool)
    runners = [
        await SegmentLeases.open(p, schema=pg_schema, segments=8, lease=0.3, heartbeat=0.1)
        for p in pools
    ]
    rng = random.Random(7)
    paused = [0, 0, 0]  # rounds each runner still sleeps through

    async def act(leases: SegmentLeases, claim: bool) -> None:
        await leases.renew()
        if claim:
            await leases.claim(rng.randint(1, 8))

    for _ in range(40):
        async with anyio.create_task_group() as tg:
            for i, leases in enumerate(runners):
                if paused[i]:
                    paused[i] -= 1
                elif rng.random() < 0.15:
                    # A pause about as long as the lease (SIGSTOP, a GC, a cut network).
                    paused[i] = rng.randint(4, 8)
                else:
                    tg.start_soon(act, leases, rng.random() < 0.5)
        await anyio.sleep(0.05)
        held: list[set[int]] = []
        for leases in runners:
            leases.expire_overdue()
            held.append(set(leases.owned()))
        for i, mine in enumerate(held):
            for theirs in held[i + 1 :]:
                assert not mine & theirs
    moved = sum(leases.stats.rescued for leases in runners)
    # The test exercised take-overs, not just one runner holding everything.
    assert moved > 0
    assert all(leases.stats.claimed > 0 for leases in runners)


async def test_drop_reports_the_segments_and_leaves_the_table(pool: Pool, pg_schema: str) -> None:
    lost = Lost()
    a = await SegmentLeases.open(pool, schema=pg_schema, segments=3, on_lost=lost)
    await a.claim(3)
    assert [lease.segment for lease in a.drop([1, 2, 7])] == [1, 2]
    assert lost.segments == [1, 2]
    assert list(a.owned()) == [0] and a.fence(1) is None and not a.holds(1)
    assert a.holds(0)
    # The table still shows them held until they expire: nobody else may run them yet.
    assert [row.owner for row in await a.table()] == [a.incarnation] * 3


async def test_the_leases_share_a_schema_with_the_tail_store(
    postgres_url: str, pool: Pool, pg_schema: str
) -> None:
    # Each keeps its own version table, so either may be opened first.
    leases = await SegmentLeases.open(pool, schema=pg_schema, segments=4)
    store = await PostgresTailStore.open(postgres_url, schema=pg_schema, pool_size=1)
    await store.aclose()
    again = await SegmentLeases.open(pool, schema=pg_schema, segments=4)
    assert len(await again.table()) == 4
    assert await leases.claim(1) != []


async def test_a_schema_from_a_newer_tailrunner_is_refused(pool: Pool, pg_schema: str) -> None:
    await SegmentLeases.open(pool, schema=pg_schema, segments=4)
    async with pool.connection() as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET version = 99").format(
                sql.Identifier(pg_schema, "segment_leases_schema_version")
            )
        )
    with pytest.raises(StoreError, match="version 99 is newer"):
        await SegmentLeases.open(pool, schema=pg_schema, segments=4)
