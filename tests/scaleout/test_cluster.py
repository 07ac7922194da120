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

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from tailrunner.model import AggregateRef, NewEvent
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.testing import LoopbackJournal, loopback_journal
from tests.scaleout.cluster_support import (
    AGGREGATES,
    Cluster,
    effects_done,
    no_overlapping_runs,
    prepare,
    segment_owners,
    until_all_segments_held,
    wait_for_effects,
)


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


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
