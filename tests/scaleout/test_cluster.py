"""Three runners in one process share the tasks on the real PostgreSQL (lazy and eager).

Each runner has its own tail store connection, its own leases and its own
engine, against one journal on loopback. The activity writes each event's
effect in the tail store's transaction, so an effect is there exactly when
its tail committed: the checks are "every event's effect exactly once", "each
segment held by one runner", and "no two runs of a task overlap in time
(from the run records, which carry owner and epoch)". Killed and paused
runners are the subprocess test's (tests/e2e/test_scaleout.py); here a
runner leaves cleanly and a new one joins, so the hand-over goes through
drain and release.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import psycopg
import pytest
from anyio.abc import TaskGroup
from psycopg import sql
from ulid import ULID

from tailrunner import ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import EOF, Outcome
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.runner import Runner
from tailrunner.scaleout.cluster import ClusterMember, join_cluster
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.store import RunRecord
from tailrunner.testing import LoopbackJournal, loopback_journal

SEGMENTS = 16
AGGREGATES = 40


@activity(name="effects", aggregate_types=("thing",), auto_checkpoint=False)
async def effects(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    async for batch in stream.batches():
        if batch.events:
            last = batch.events[-1].id
            # The store's connection has the test's schema first on its search path.
            async with ctx.transaction(last) as conn:
                for event in batch.events:
                    await conn.execute(
                        "INSERT INTO effects (aggregate_id, event_id) VALUES (%s, %s)",
                        (event.aggregate_id, event.id.bytes),
                    )
            tail = last
        if batch.will_block and ctx.engine != "eager":
            break  # eager: keep watching; a hand-over cancels the watch
    return EOF(tail)


class Member:
    def __init__(self, runner: Runner, member: ClusterMember, scope: anyio.CancelScope) -> None:
        self.runner = runner
        self.member = member
        self.scope = scope


class Cluster:
    def __init__(self, url: str, schema: str, journal: LoopbackJournal, kind: str) -> None:
        self.url = url
        self.schema = schema
        self.journal = journal
        self.kind = kind
        self.members: list[Member] = []

    async def start(self, tg: TaskGroup) -> Member:
        ready: anyio.Event = anyio.Event()
        box: list[Member] = []

        async def run_member() -> None:
            with anyio.CancelScope() as scope:
                async with AsyncExitStack() as stack:
                    store = await PostgresTailStore.open(
                        f"{self.url}?options=-csearch_path%3D{self.schema}", schema=self.schema
                    )
                    stack.push_async_callback(store.aclose)
                    member = await stack.enter_async_context(
                        join_cluster(self.url, store, segments=SEGMENTS, lease=1.5)
                    )
                    options = EngineOptions(
                        kind=self.kind,
                        retry=RetryPolicy(initial=0.05, max_delay=0.3, jitter=0.0),
                        discovery_interval=0.5,
                        backstop=1.0,
                        shutdown_grace=2.0,
                    )
                    runner = Runner(
                        journal=self.journal.client,
                        tails=member.tails,
                        activities=[effects],
                        options=options,
                        membership=member.membership,
                    )
                    box.append(Member(runner, member, scope))
                    async with anyio.create_task_group() as inner:
                        await inner.start(runner.run)
                        ready.set()
                        await anyio.sleep_forever()

        tg.start_soon(run_member)
        with anyio.fail_after(20):
            await ready.wait()
        self.members.append(box[0])
        return box[0]


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


async def prepare(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(
            sql.SQL("CREATE TABLE {} (aggregate_id uuid NOT NULL, event_id bytea NOT NULL)").format(
                sql.Identifier(schema, "effects")
            )
        )


async def effects_done(url: str, schema: str) -> Counter[tuple[uuid.UUID, bytes]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT aggregate_id, event_id FROM {}").format(
                sql.Identifier(schema, "effects")
            )
        )
        return Counter((row[0], bytes(row[1])) for row in await cursor.fetchall())


async def wait_for_effects(url: str, schema: str, expected: set[tuple[uuid.UUID, bytes]]) -> None:
    with anyio.fail_after(60):
        while True:
            if expected <= set(await effects_done(url, schema)):
                return
            await anyio.sleep(0.1)


async def segment_owners(cluster: Cluster) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for m in cluster.members:
        for segment in m.member.membership.leases.owned():
            owners.setdefault(segment, []).append(m.member.membership.incarnation)
    return owners


async def until_all_segments_held(cluster: Cluster, live: list[Member]) -> None:
    """Until the live members hold every segment between them, each at most its share."""
    share = -(-SEGMENTS // len(live)) + 1
    with anyio.fail_after(30):
        while True:
            counts = [len(m.member.membership.leases.owned()) for m in live]
            if sum(counts) == SEGMENTS and max(counts) <= share and min(counts) > 0:
                return
            await anyio.sleep(0.1)


def no_overlapping_runs(runs: list[RunRecord]) -> None:
    """Runs of one task by different leases never overlap in time."""
    ordered = sorted(runs, key=lambda r: r.started_at)
    for earlier, later in itertools.pairwise(ordered):
        if (earlier.owner, earlier.epoch) != (later.owner, later.epoch):
            assert earlier.finished_at <= later.started_at, (earlier, later)


@pytest.mark.parametrize("kind", ["lazy", "eager"])
async def test_three_runners_share_the_work_and_hand_it_over(
    kind: str, journal: LoopbackJournal, postgres_url: str, pg_schema: str
) -> None:
    await prepare(postgres_url, pg_schema)
    refs = [AggregateRef(type="thing", id=uuid.uuid4()) for _ in range(AGGREGATES)]
    expected: set[tuple[uuid.UUID, bytes]] = set()

    async def append_round() -> None:
        for ref in refs:
            result = await journal.client.append(ref, [NewEvent(type="e")] * 2)
            expected.update((ref.id, event_id.bytes) for event_id in result.event_ids)

    cluster = Cluster(postgres_url, pg_schema, journal, kind)
    await append_round()
    async with anyio.create_task_group() as tg:
        a = await cluster.start(tg)
        b = await cluster.start(tg)
        c = await cluster.start(tg)
        await until_all_segments_held(cluster, [a, b, c])
        await wait_for_effects(postgres_url, pg_schema, expected)
        assert all(len(held) == 1 for held in (await segment_owners(cluster)).values())

        # a leaves cleanly: its segments are drained, released, and claimed by b and c.
        a.scope.cancel()
        await until_all_segments_held(cluster, [b, c])
        await append_round()
        await wait_for_effects(postgres_url, pg_schema, expected)

        # A newcomer gets its share from b and c, which give back between runs.
        d = await cluster.start(tg)
        await until_all_segments_held(cluster, [b, c, d])
        await append_round()
        await wait_for_effects(postgres_url, pg_schema, expected)
        owners = await segment_owners(cluster)
        assert all(len(held) == 1 for held in owners.values()), owners
        tg.cancel_scope.cancel()

    done = await effects_done(postgres_url, pg_schema)
    assert set(done) == expected
    doubled = {key: n for key, n in done.items() if n > 1}
    assert not doubled, f"effects applied twice: {len(doubled)}"
    store = await PostgresTailStore.open(postgres_url, schema=pg_schema)
    try:
        owners_seen: set[str] = set()
        for ref in refs:
            runs = await store.list_runs("effects", ref.id)
            assert all(r.owner is not None and r.epoch is not None for r in runs)
            owners_seen.update(r.owner for r in runs if r.owner is not None)
            no_overlapping_runs(runs)
    finally:
        await store.aclose()
    assert len(owners_seen) >= 3, "the work was shared"
