"""FencedTailStore on the real PostgreSQL: a runner that lost its lease writes nothing.

Every write kind (record, record with run, run alone, an activity's
transaction) is checked three ways: under the lease it lands; for a
segment never held it is not sent; after another runner took the segment
over it changes nothing, is counted, and stops the segment here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

import anyio
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from ulid import ULID

from tailrunner.errors import LeaseLost
from tailrunner.model import AggregateRef
from tailrunner.scaleout.fenced_tails import FencedTailStore
from tailrunner.scaleout.leases import SegmentLeases
from tailrunner.scaleout.membership import Membership
from tailrunner.states import OutcomeKind, TaskState
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.store import RunRecord, TailRecord

Pool = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]
SEGMENTS = 4


@pytest.fixture
async def pools(postgres_url: str) -> AsyncIterator[tuple[Pool, Pool]]:
    made: list[Pool] = []
    for _ in range(2):
        p: Pool = AsyncConnectionPool(
            postgres_url, min_size=1, max_size=3, kwargs={"autocommit": True}, open=False
        )
        await p.open(wait=True, timeout=10)
        made.append(p)
    try:
        yield made[0], made[1]
    finally:
        for p in made:
            await p.close()


@pytest.fixture
async def tails(postgres_url: str, pg_schema: str) -> AsyncIterator[PostgresTailStore]:
    store = await PostgresTailStore.open(postgres_url, schema=pg_schema)
    try:
        yield store
    finally:
        await store.aclose()


class Cluster:
    """Runner a (the one under test) and runner b (the one that takes over)."""

    def __init__(self, a: Membership, b: SegmentLeases, store: PostgresTailStore) -> None:
        self.a = a
        self.b = b
        self.store = store
        self.fenced = FencedTailStore(store, a)
        self.lost: list[frozenset[int]] = []
        a.on_lost = self.lost.append

    def task_in(self, segment: int) -> AggregateRef:
        """An aggregate whose task ("act", it) hashes into ``segment``."""
        while True:
            ref = AggregateRef(type="thing", id=uuid.uuid4())
            if self.a.segment("act", ref.id) == segment:
                return ref

    async def take_over(self, segment: int) -> None:
        """Let a's lease on ``segment`` expire (database clock) and b claim it."""
        lease = self.a.leases.owned()[segment]
        with anyio.fail_after(10):
            while True:
                async with self.store_pool.connection() as conn:
                    cursor = await conn.execute("SELECT now() > %s", (lease.expires_at,))
                    row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
                await anyio.sleep(0.05)
        won = await self.b.claim(SEGMENTS)
        assert segment in {w.segment for w in won}

    store_pool: Pool


@pytest.fixture
async def cluster(pools: tuple[Pool, Pool], tails: PostgresTailStore, pg_schema: str) -> Cluster:
    # A long local deadline would hide nothing here: a's lease is taken over
    # in the database while a still believes it holds it (a paused runner).
    a = await SegmentLeases.open(
        pools[0], schema=pg_schema, segments=SEGMENTS, lease=0.5, heartbeat=0.4
    )
    b = await SegmentLeases.open(pools[1], schema=pg_schema, segments=SEGMENTS, lease=30)
    c = Cluster(Membership(a), b, tails)
    c.store_pool = pools[1]
    return c


def record(ref: AggregateRef, tail: ULID | None = None, state: TaskState = TaskState.SLEEPING):
    return TailRecord(
        activity="act",
        aggregate=ref,
        tail=tail,
        state=state,
        updated_at=datetime.now(UTC),
    )


def run_of(ref: AggregateRef, owner: str | None = None, epoch: int | None = None) -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(
        activity="act",
        aggregate=ref,
        attempt=1,
        started_at=now,
        finished_at=now,
        tail_before=None,
        tail_after=None,
        outcome=OutcomeKind.EOF,
        owner=owner,
        epoch=epoch,
    )


async def pretend_paused(cluster: Cluster) -> None:
    """Keep a's local deadlines from noticing the takeover (a paused runner wakes late)."""
    leases = cluster.a.leases
    for segment, lease in leases.owned().items():
        leases._owned[segment] = replace(lease, deadline=anyio.current_time() + 3600)


Write = Callable[[FencedTailStore, AggregateRef], Awaitable[None]]


async def write_record(store: FencedTailStore, ref: AggregateRef) -> None:
    await store.save(record(ref, ULID()))


async def write_record_and_run(store: FencedTailStore, ref: AggregateRef) -> None:
    await store.save_with_run(record(ref, ULID()), run_of(ref))


async def write_run(store: FencedTailStore, ref: AggregateRef) -> None:
    await store.record_run(run_of(ref))


async def write_in_transaction(store: FencedTailStore, ref: AggregateRef) -> None:
    async with store.transaction(record(ref, ULID())) as conn:
        await conn.execute(
            sql.SQL("INSERT INTO {} (k) VALUES (%s)").format(
                sql.Identifier(store.store.schema, "effects")
            ),
            (str(ref.id),),
        )


WRITES = {
    "save": write_record,
    "save_with_run": write_record_and_run,
    "record_run": write_run,
    "transaction": write_in_transaction,
}


async def effects(cluster: Cluster, ref: AggregateRef) -> int:
    async with cluster.store_pool.connection() as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE k = %s").format(
                sql.Identifier(cluster.store.schema, "effects")
            ),
            (str(ref.id),),
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def written(cluster: Cluster, ref: AggregateRef) -> tuple[bool, int, int]:
    """(a record exists, runs recorded, the transaction's effects) for the task."""
    stored = await cluster.store.get("act", ref.id)
    runs = await cluster.store.list_runs("act", ref.id)
    return stored is not None, len(runs), await effects(cluster, ref)


@pytest.fixture
async def effects_table(cluster: Cluster) -> None:
    async with cluster.store_pool.connection() as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {} (k text NOT NULL)").format(
                sql.Identifier(cluster.store.schema, "effects")
            )
        )


@pytest.mark.usefixtures("effects_table")
@pytest.mark.parametrize("kind", sorted(WRITES))
async def test_a_write_under_the_lease_lands(cluster: Cluster, kind: str) -> None:
    await cluster.a.leases.claim(SEGMENTS)
    ref = cluster.task_in(1)
    await WRITES[kind](cluster.fenced, ref)
    has_record, runs, did = await written(cluster, ref)
    assert has_record == (kind != "record_run")
    assert runs == (1 if "run" in kind else 0)
    assert did == (1 if kind == "transaction" else 0)
    assert cluster.a.fenced_writes.total == 0


@pytest.mark.usefixtures("effects_table")
@pytest.mark.parametrize("kind", sorted(WRITES))
async def test_a_write_for_a_segment_not_held_is_not_sent(cluster: Cluster, kind: str) -> None:
    await cluster.a.leases.claim(1)  # segment 0 only
    ref = cluster.task_in(2)
    with pytest.raises(LeaseLost, match="does not hold segment 2"):
        await WRITES[kind](cluster.fenced, ref)
    assert await written(cluster, ref) == (False, 0, 0)


@pytest.mark.usefixtures("effects_table")
@pytest.mark.parametrize("kind", sorted(WRITES))
async def test_a_write_after_a_takeover_changes_nothing_and_stops_the_segment(
    cluster: Cluster, kind: str
) -> None:
    await cluster.a.leases.claim(SEGMENTS)
    ref = cluster.task_in(3)
    before = record(ref, ULID())
    await cluster.store.save(before)  # what the new owner resumes from
    await pretend_paused(cluster)
    await cluster.take_over(3)
    assert cluster.a.leases.holds(3), "a still believes it holds the segment"

    with pytest.raises(LeaseLost, match="segment 3"):
        await WRITES[kind](cluster.fenced, ref)

    assert await cluster.store.get("act", ref.id) == before
    assert await cluster.store.list_runs("act", ref.id) == []
    assert await effects(cluster, ref) == 0
    assert cluster.a.fenced_writes.by_segment() == {3: 1}
    assert not cluster.a.leases.holds(3)
    assert cluster.lost == [frozenset({3})]
    # The other segments a holds are untouched.
    assert sorted(cluster.a.leases.owned()) == [0, 1, 2]


async def test_run_records_carry_the_lease(cluster: Cluster) -> None:
    await cluster.a.leases.claim(SEGMENTS)
    ref = cluster.task_in(0)
    lease = cluster.a.leases.owned()[0]
    await cluster.fenced.save_with_run(record(ref), run_of(ref, lease.owner, lease.epoch))
    (run,) = await cluster.store.list_runs("act", ref.id)
    assert (run.owner, run.epoch) == (cluster.a.incarnation, lease.epoch)


async def test_the_leases_must_share_the_tails_schema(
    pools: tuple[Pool, Pool], tails: PostgresTailStore, pg_schema: str
) -> None:
    other = f"{pg_schema}_leases"
    leases = await SegmentLeases.open(pools[0], schema=other, segments=2)
    try:
        with pytest.raises(ValueError, match="both must be in one schema"):
            FencedTailStore(tails, Membership(leases))
    finally:
        async with pools[0].connection() as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other))
            )


async def test_a_late_refusal_of_an_earlier_lease_keeps_the_one_held_now(cluster: Cluster) -> None:
    await cluster.a.leases.claim(SEGMENTS)
    ref = cluster.task_in(0)
    earlier = cluster.a.fence("act", ref.id)
    assert earlier is not None
    await cluster.a.leases.release([0])
    (again,) = await cluster.a.leases.claim(1)
    assert (again.segment, again.epoch) == (0, earlier.epoch + 1)

    cluster.a.refused(earlier)  # a slow write of the earlier lease, refused at last

    assert cluster.a.fenced_writes.by_segment() == {0: 1}
    assert cluster.a.leases.holds(0), "the lease held now stays"
    assert cluster.lost == []
