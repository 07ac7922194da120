"""Membership on the real PostgreSQL: the heartbeat never waits behind a hand-over."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import psycopg
import pytest
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from tailrunner.scaleout.leases import SegmentLeases
from tailrunner.scaleout.membership import Membership

Pool = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]


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


async def until(predicate: object, timeout: float = 15.0) -> None:
    assert callable(predicate)
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.02)


async def test_a_slow_hand_over_does_not_stop_the_heartbeat(
    pools: tuple[Pool, Pool], pg_schema: str
) -> None:
    leases = await SegmentLeases.open(pools[0], schema=pg_schema, segments=4, lease=1.5)
    membership = Membership(leases)
    lost: list[frozenset[int]] = []
    membership.on_lost = lost.append
    drained = anyio.Event()
    stop_draining = anyio.Event()

    async def slow_drain(segments: frozenset[int]) -> frozenset[int]:
        drained.set()
        await stop_draining.wait()  # runs that take long to end, over several leases
        return frozenset()

    membership.drain = slow_drain
    async with anyio.create_task_group() as tg:
        await tg.start(membership.run)
        assert sorted(leases.owned()) == [0, 1, 2, 3]  # alone: all of them
        # A newcomer: the share drops to ceil(4 / 2) + 1 = 3, one is given back.
        newcomer = await SegmentLeases.open(pools[1], schema=pg_schema, segments=4, lease=30)
        await newcomer.announce("newcomer")
        with anyio.fail_after(15):
            await drained.wait()
        beats = leases.stats.heartbeats
        # Six beats (two leases) while the hand-over waits: all stay renewed.
        await until(lambda: leases.stats.heartbeats >= beats + 6)
        assert lost == [], "no lease lost while a hand-over waited"
        assert len(leases.owned()) == 4
        stop_draining.set()
        await until(lambda: len(leases.owned()) == 3)
        assert lost == []
        tg.cancel_scope.cancel()
    assert leases.stats.released == 1
