"""A PostgreSQL connection cut heals without lost or doubled work (lazy and eager).

Two runners in one process share the tasks on the real PostgreSQL, against
one journal on loopback: runner A reaches PostgreSQL only through a
:class:`~tests.faults.tcp_proxy.TcpProxy` (its tail store and its leases
both), runner B directly. The activity writes each event's effect in the
tail store's transaction (see :mod:`tests.scaleout.cluster_support`).

1. Both share the work; every effect lands.
2. The proxy resets all of A's connections, several times during a round
   of appends: A's pooled connections die, the pools open new ones, the
   writes that can be repeated are retried, the others fail and their runs
   are retried. Every effect lands exactly once, and A works again.
3. The proxy black-holes A for longer than the lease: its connections stay
   open and silent. A loses its segments by their local deadlines, B claims
   them and finishes the round alone. The proxy heals: A rejoins, gets its
   share back from B, and does work again.

At the end: every appended event's effect exactly once, and the run records
of a task under different leases (owner, epoch) never overlap in time.

This is the CI-bounded version: a few cuts and one black hole. With
``TAILRUNNER_SOAK=1`` it does more rounds of cuts and black holes. The
figures (connections reset, time for A's heartbeat to get through again
after each fault, leases lost, fenced writes) are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import anyio
import pytest

from tailrunner.model import AggregateRef, NewEvent
from tailrunner.tails.postgres import PostgresTailStore
from tailrunner.testing import LoopbackJournal, loopback_journal
from tests.faults.tcp_proxy import TcpProxy, proxy_for_url, through
from tests.scaleout.cluster_support import (
    LEASE,
    SEGMENTS,
    Cluster,
    Member,
    effects_done,
    no_overlapping_runs,
    prepare,
    until_all_segments_held,
    wait_for_effects,
)

SOAK = os.environ.get("TAILRUNNER_SOAK") == "1"
#: Rounds of (cuts, then a black hole); cuts per round.
ROUNDS = 5 if SOAK else 1
CUTS = 6 if SOAK else 3
AGGREGATES = 24


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    with proxy_for_url(postgres_url) as p:
        yield p


def dump_tasks() -> None:
    """Every asyncio task's stack on stderr: where a wait that timed out was stuck."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)


@contextmanager
def bounded(seconds: float, what: str) -> Iterator[None]:
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        dump_tasks()
        raise TimeoutError(f"{what}: not within {seconds} s (task stacks on stderr)") from None


async def heartbeat_through(member: Member) -> float:
    """Seconds until ``member``'s next renewal reaches the database."""
    leases = member.member.membership.leases
    before = leases.stats.heartbeats
    started = anyio.current_time()
    while True:
        if leases.stats.heartbeats > before:
            return anyio.current_time() - started
        await anyio.sleep(0.02)


@pytest.mark.parametrize("kind", ["lazy", "eager"])
async def test_connection_cut_and_black_hole_heal_without_lost_or_doubled_work(
    kind: str, journal: LoopbackJournal, proxy: TcpProxy, postgres_url: str, pg_schema: str
) -> None:
    await prepare(postgres_url, pg_schema)
    refs = [AggregateRef(type="thing", id=uuid.uuid4()) for _ in range(AGGREGATES)]
    expected: set[tuple[uuid.UUID, bytes]] = set()

    async def append(some: list[AggregateRef]) -> None:
        for ref in some:
            result = await journal.client.append(ref, [NewEvent(type="e")] * 2)
            expected.update((ref.id, event_id.bytes) for event_id in result.event_ids)

    async def round_done_partly_by_a(what: str) -> None:
        """A round of appends whose effects A writes in part: A works again.

        A's segments held under the same epochs before the appends and after
        their effects landed were never claimed by anyone in between, so
        their tasks' effects were A's (every effect is a fenced write).
        """
        membership = a.member.membership
        for _ in range(3):  # a hand-over in between proves nothing: again
            before = membership.snapshot()
            await append(refs)
            with bounded(30, f"{what}: every effect of a new round"):
                await wait_for_effects(postgres_url, pg_schema, expected)
            after = membership.snapshot()
            kept = {s for s, epoch in before.items() if after.get(s) == epoch}
            if any(membership.segment("effects", ref.id) in kept for ref in refs):
                return
        raise AssertionError(f"{what}: A wrote none of three rounds' effects")

    cluster = Cluster(postgres_url, pg_schema, journal, kind)
    figures: dict[str, list[float]] = {"reset": [], "cut_heal": [], "bh_takeover": []}
    figures["bh_heal"] = []
    await append(refs)
    async with anyio.create_task_group() as tg:
        a = await cluster.start(tg, url=through(proxy, postgres_url))
        b = await cluster.start(tg)
        leases_a = a.member.membership.leases
        with bounded(30, "both runners hold their share"):
            await until_all_segments_held(cluster, [a, b])
        with bounded(30, "phase 1: every effect"):
            await wait_for_effects(postgres_url, pg_schema, expected)

        for _ in range(ROUNDS):
            # 2. Cuts during a round of appends.
            for i in range(CUTS):
                await append(refs[i::CUTS])
                await anyio.sleep(0.3)
                figures["reset"].append(await anyio.to_thread.run_sync(proxy.cut))
                with bounded(10, f"cut {i + 1}: A's heartbeat gets through again"):
                    figures["cut_heal"].append(await heartbeat_through(a))
            with bounded(30, "after the cuts: every effect"):
                await wait_for_effects(postgres_url, pg_schema, expected)
            with bounded(30, "after the cuts: both runners hold their share"):
                await until_all_segments_held(cluster, [a, b])
            await round_done_partly_by_a("after the cuts")

            # 3. A black hole longer than the lease, during a round.
            lost_before = leases_a.stats.lost
            await anyio.to_thread.run_sync(proxy.blackhole)
            silent_from = anyio.current_time()
            await append(refs)
            with bounded(20, "black hole: B holds every segment, A none"):
                while True:
                    if len(b.member.membership.leases.owned()) == SEGMENTS and not leases_a.owned():
                        break
                    await anyio.sleep(0.05)
            figures["bh_takeover"].append(anyio.current_time() - silent_from)
            with bounded(30, "black hole: every effect, through B"):
                await wait_for_effects(postgres_url, pg_schema, expected)
            assert leases_a.stats.lost > lost_before
            heal_from = anyio.current_time()
            await anyio.to_thread.run_sync(proxy.heal)
            with bounded(30, "healed: both runners hold their share"):
                await until_all_segments_held(cluster, [a, b])
            figures["bh_heal"].append(anyio.current_time() - heal_from)
            await round_done_partly_by_a("healed")
        tg.cancel_scope.cancel()

    done = await effects_done(postgres_url, pg_schema)
    assert set(done) == expected, f"lost effects: {len(expected - set(done))}"
    doubled = {key: n for key, n in done.items() if n > 1}
    assert not doubled, f"effects applied twice: {len(doubled)}"
    store = await PostgresTailStore.open(postgres_url, schema=pg_schema)
    try:
        for ref in refs:
            runs = await store.list_runs("effects", ref.id)
            assert all(r.owner is not None and r.epoch is not None for r in runs)
            no_overlapping_runs(runs)
    finally:
        await store.aclose()
    stats = proxy.stats
    assert stats.reset >= CUTS * ROUNDS, stats  # every cut found A's connections open
    membership = a.member.membership
    print(
        f"\n[{kind}] cuts={stats.cuts} connections accepted={stats.accepted} reset={stats.reset}"
        f" per cut={figures['reset']}"
        f" heartbeat through after a cut (s)={[round(x, 2) for x in figures['cut_heal']]}"
        f" black hole: B holds all after (s)={[round(x, 2) for x in figures['bh_takeover']]}"
        f" shares back after heal (s)={[round(x, 2) for x in figures['bh_heal']]}"
        f" A: leases lost={membership.leases.stats.lost}"
        f" heartbeat failures={membership.leases.stats.heartbeat_failures}"
        f" fenced writes refused={membership.fenced_writes.total} lease={LEASE}"
    )
