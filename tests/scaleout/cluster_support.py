"""What the in-process cluster tests share: the ``effects`` activity, runners on one journal,
and the checks (effects exactly once, one owner per segment, no overlapping runs).

The activity writes each event's effect in the tail store's transaction, so
an effect is there exactly when its tail committed.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from contextlib import AsyncExitStack

import anyio
import psycopg
from anyio.abc import TaskGroup
from psycopg import sql
from ulid import ULID

from tailrunner import ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import EOF, Outcome
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.runner import Runner
from tailrunner.scaleout.cluster import ClusterMember, join_cluster
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.tails.store import RunRecord
from tailrunner.testing import LoopbackJournal

SEGMENTS = 16
AGGREGATES = 40
#: Seconds a lease lasts: short, so that hand-overs happen within a test.
LEASE = 1.5


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

    async def start(self, tg: TaskGroup, *, url: str | None = None) -> Member:
        """A runner in ``tg``; ``url``: where it reaches PostgreSQL (default the cluster's)."""
        url = self.url if url is None else url
        ready: anyio.Event = anyio.Event()
        box: list[Member] = []

        async def run_member() -> None:
            with anyio.CancelScope() as scope:
                async with AsyncExitStack() as stack:
                    store = await PostgresTailStore.open(
                        f"{url}?options=-csearch_path%3D{self.schema}", schema=self.schema
                    )
                    stack.push_async_callback(store.aclose)
                    member = await stack.enter_async_context(
                        join_cluster(url, store, segments=SEGMENTS, lease=LEASE)
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
