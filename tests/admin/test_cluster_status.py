"""The cluster view of a runner that shares the work: GetCluster, ``tailrunner status``, metrics.

Against the real PostgreSQL, a fresh schema per test: two runners' leases
(:class:`SegmentLeases`) claim segments in it; the admin server and the
metrics of the first read them through its :class:`Membership`. The
runners' loops do not run: the tests claim, release and announce by hand,
so that who holds what is known exactly.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import anyio
import click
import grpc
import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from structlog.testing import capture_logs

from tailrunner.admin.metrics import Metrics, serve_metrics
from tailrunner.admin.server import AdminServer
from tailrunner.cli.admin import COMMANDS, _ranges
from tailrunner.proto.v1 import runner_pb2, runner_pb2_grpc
from tailrunner.runner import Runner
from tailrunner.scaleout.leases import SegmentLeases
from tailrunner.scaleout.membership import Membership
from tailrunner.sql.fencing import Fence
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal

from .conftest import TOKEN, Behaviour, fast_options
from .test_metrics import samples, scrape, value

Pool = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]
CLI = click.Group("tailrunner", commands=COMMANDS)
AUTH = (("authorization", f"Bearer {TOKEN}"),)
#: Rich markup in what a runner says about itself: it must be shown as typed.
ABOUT_OTHER = "web-2 [bold red]pid[/bold red] 7"


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


@dataclass
class Cluster:
    """Two runners on one lease table: ``here`` answers, ``other`` only holds leases."""

    here: Membership
    other: SegmentLeases


@pytest.fixture
async def cluster(pool: Pool, pg_schema: str) -> Cluster:
    """``here`` holds 0 and 2 (it claimed 0-2, gave 1 back); ``other`` holds 3-4; 1, 5-7 free."""
    here = await SegmentLeases.open(pool, schema=pg_schema, segments=8, lease=60)
    other = await SegmentLeases.open(pool, schema=pg_schema, segments=8, lease=60)
    await here.announce("web-1 pid 1 lazy")
    await other.announce(ABOUT_OTHER)
    assert [lease.segment for lease in await here.claim(3)] == [0, 1, 2]
    assert [lease.segment for lease in await other.claim(2)] == [3, 4]
    assert await here.release([1]) == [1]
    return Cluster(here=Membership(here, about="web-1 pid 1 lazy"), other=other)


@asynccontextmanager
async def serve_admin(
    journal: LoopbackJournal, membership: Membership | None, token: str | None = TOKEN
) -> AsyncIterator[tuple[AdminServer, runner_pb2_grpc.RunnerAsyncStub, Runner]]:
    """An admin server (and a stub of it) over a runner that is not running: its view only."""
    runner = Runner(
        journal=journal.client,
        tails=MemoryTailStore(),
        activities=[Behaviour().activity()],
        options=fast_options(),
    )
    async with (
        AdminServer(
            engine=runner.engine,
            tails=MemoryTailStore(),
            journal=journal.client,
            listen="127.0.0.1:0",
            token=token,
            membership=membership,
        ) as admin,
        grpc.aio.insecure_channel(admin.address) as channel,
    ):
        yield admin, runner_pb2_grpc.RunnerStub(channel), runner


def columns(line: str) -> list[str]:
    """A table row's cells (the tables pad them with two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


async def invoke(address: str, *args: str) -> Result:
    """``tailrunner ARGS --admin ADDRESS`` with the token, off the loop that serves it."""
    call = functools.partial(
        CliRunner().invoke,
        CLI,
        [*args, "--admin", address],
        env={"TAILRUNNER_ADMIN_TOKEN": TOKEN, "TAILRUNNER_ADMIN": None},
    )
    with capture_logs():
        return await anyio.to_thread.run_sync(call)


async def test_get_cluster_returns_every_segment_and_runner_and_needs_the_token(
    journal: LoopbackJournal, cluster: Cluster
) -> None:
    here, other = cluster.here.incarnation, cluster.other.incarnation
    async with serve_admin(journal, cluster.here) as (_, stub, _runner):
        reply = await stub.GetCluster(runner_pb2.GetClusterRequest(), metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetCluster(runner_pb2.GetClusterRequest())

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reply.scaleout_enabled
    assert reply.incarnation == here
    assert reply.segment_count == 8
    assert reply.lease.ToTimedelta() == timedelta(seconds=60)
    owners = {s.segment: s.owner for s in reply.segments}
    assert owners == {0: here, 1: "", 2: here, 3: other, 4: other, 5: "", 6: "", 7: ""}
    assert [s.live for s in reply.segments] == [True, False, True, True, True, False, False, False]
    held = cluster.here.leases.owned()
    zero = reply.segments[0]
    assert zero.epoch == held[0].epoch == 1
    assert zero.since.ToDatetime(tzinfo=held[0].acquired_at.tzinfo) == held[0].acquired_at
    assert zero.HasField("expire_time")
    # Released: free, the epoch stays for the next claim to bump.
    assert reply.segments[1].epoch == 1 and not reply.segments[1].HasField("since")
    members = {m.incarnation: m for m in reply.members}
    assert set(members) == {here, other}
    assert members[other].about == ABOUT_OTHER and members[other].live
    assert members[here].about == "web-1 pid 1 lazy"


async def test_status_names_each_runner_with_its_segment_ranges(
    journal: LoopbackJournal, cluster: Cluster
) -> None:
    here, other = cluster.here.incarnation, cluster.other.incarnation
    async with serve_admin(journal, cluster.here) as (admin, _stub, _runner):
        text = await invoke(admin.address, "status")
        full = await invoke(admin.address, "status", "--segments")
        as_json = await invoke(admin.address, "status", "--json")

    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert f"cluster: 8 segments, lease 60s, this runner {here[:8]}" in lines
    (mine,) = [columns(line) for line in lines if line.startswith(f"{here[:8]} (this)")]
    (theirs,) = [columns(line) for line in lines if line.startswith(other[:8])]
    # RUNNER, ABOUT, LIVE, SEGMENTS, HELD, SINCE
    assert mine[1:5] == ["web-1 pid 1 lazy", "yes", "0,2", "2"]
    assert mine[5].endswith(" ago")
    # Shown as typed, not read as Rich markup.
    assert theirs[:5] == [other[:8], ABOUT_OTHER, "yes", "3-4", "2"]
    assert "free: 1,5-7 (any runner may claim them)" in lines
    assert "EPOCH" not in text.stdout, "the per-segment table only with --segments"

    assert full.exit_code == 0, full.output
    rows = {
        line.split()[0]: line.split()
        for line in full.stdout.splitlines()
        if line.split() and line.split()[0].isdigit()
    }
    assert rows["0"][1:3] == [here[:8], "1"] and rows["0"][-2] == "in"
    assert rows["1"][1:] == ["-", "1", "-", "-"]
    assert rows["4"][1:3] == [other[:8], "1"]
    assert rows["7"][1:] == ["-", "0", "-", "-"]

    assert as_json.exit_code == 0, as_json.output
    (last,) = [json.loads(line) for line in as_json.stdout.splitlines()]  # no tasks here
    shown = last["cluster"]
    assert shown["incarnation"] == here and shown["segment_count"] == 8
    by_runner = {r["incarnation"]: r for r in shown["runners"]}
    assert by_runner[here]["segments"] == [0, 2]
    assert by_runner[other]["segments"] == [3, 4]
    assert by_runner[other]["about"] == ABOUT_OTHER
    assert by_runner[here]["since"] is not None
    assert [s["owner"] for s in shown["segments"]] == [here, None, here, other, other] + [None] * 3


async def test_status_shows_the_tasks_when_the_cluster_cannot_be_read(
    journal: LoopbackJournal, cluster: Cluster, pool: Pool, pg_schema: str
) -> None:
    async with serve_admin(journal, cluster.here) as (admin, stub, _runner):
        async with pool.connection() as conn:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema)))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.GetCluster(runner_pb2.GetClusterRequest(), metadata=AUTH)
        text = await invoke(admin.address, "status")

    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "segment leases" in (failed.value.details() or "")
    assert text.exit_code == 0, text.output
    assert text.stdout.strip() == "no tasks"
    assert text.stderr.startswith(f"cluster not shown: the runner at {admin.address} could not")


async def test_metrics_count_the_leases_and_the_fenced_writes(
    journal: LoopbackJournal, cluster: Cluster
) -> None:
    membership = cluster.here
    leases = membership.leases
    await leases.renew()
    async with serve_admin(journal, membership) as (_admin, _stub, runner):
        metrics = Metrics(engine=runner.engine, journal=journal.client, membership=membership)
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_metrics, metrics, "127.0.0.1:0")
            _, before = await scrape(port)
            held = leases.owned()[2]
            membership.refused(
                Fence(
                    schema=leases.schema,
                    segment=2,
                    owner=membership.incarnation,
                    epoch=held.epoch,
                )
            )
            _, after = await scrape(port)
            tg.cancel_scope.cancel()

    assert value(before, "tailrunner_runner_info", incarnation=membership.incarnation) == 1
    assert value(before, "tailrunner_segments_held") == 2
    assert value(before, "tailrunner_segments_claimed_total") == 3
    assert value(before, "tailrunner_segments_released_total") == 1
    assert value(before, "tailrunner_segments_rescued_total") == 0
    assert value(before, "tailrunner_lease_heartbeats_total") == 1
    assert value(before, "tailrunner_lease_heartbeat_failures_total") == 0
    assert value(before, "tailrunner_segments_lost_total") == 0
    assert value(before, "tailrunner_fenced_writes_total") == 0
    # The fenced write is counted, and its segment given up at once.
    assert value(after, "tailrunner_fenced_writes_total") == 1
    assert value(after, "tailrunner_segments_lost_total") == 1
    assert value(after, "tailrunner_segments_held") == 1


async def test_a_runner_that_does_not_share_work_says_so(journal: LoopbackJournal) -> None:
    async with serve_admin(journal, None) as (admin, stub, runner):
        reply = await stub.GetCluster(runner_pb2.GetClusterRequest(), metadata=AUTH)
        text = await invoke(admin.address, "status")
        segments = await invoke(admin.address, "status", "--segments")
        as_json = await invoke(admin.address, "status", "--json")
        metrics = Metrics(engine=runner.engine, journal=journal.client)
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_metrics, metrics, "127.0.0.1:0")
            _, scraped = await scrape(port)
            tg.cancel_scope.cancel()

    assert reply == runner_pb2.Cluster(scaleout_enabled=False)
    assert text.exit_code == 0 and "cluster" not in text.output
    assert text.stdout.strip() == "no tasks"
    assert segments.exit_code == 0
    assert segments.stderr.strip() == "this runner does not share work (scaleout.enabled is false)"
    assert as_json.exit_code == 0 and as_json.stdout == ""
    names = {name for name, _ in samples(scraped)}
    assert not {n for n in names if "segment" in n or "lease" in n or "runner_info" in n}
    assert "tailrunner_open_streams" in names


@pytest.mark.parametrize(
    ("numbers", "text"),
    [
        ([], ""),
        ([4], "4"),
        ([0, 1, 2, 3], "0-3"),
        ([40, 0, 1, 2, 20, 19, 18], "0-2,18-20,40"),
        ([1, 3, 5], "1,3,5"),
        ([2, 2, 3], "2-3"),
    ],
)
def test_segments_are_shown_as_compact_ranges(numbers: list[int], text: str) -> None:
    assert _ranges(numbers) == text


def aggregate_in(membership: Membership, segment: int) -> uuid.UUID:
    while True:
        candidate = uuid.uuid4()
        if membership.segment("follow", candidate) == segment:
            return candidate


async def test_a_control_for_another_runners_task_names_that_runner(
    journal: LoopbackJournal, cluster: Cluster
) -> None:
    elsewhere = aggregate_in(cluster.here, 3)  # held by the other runner
    free = aggregate_in(cluster.here, 5)
    async with serve_admin(journal, cluster.here) as (_, stub, _runner):
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await stub.StopTask(
                runner_pb2.StopTaskRequest(activity="follow", aggregate_id=str(elsewhere)),
                metadata=AUTH,
            )
        with pytest.raises(grpc.aio.AioRpcError) as nobody:
            await stub.StopTask(
                runner_pb2.StopTaskRequest(activity="follow", aggregate_id=str(free)),
                metadata=AUTH,
            )

    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    message = other.value.details() or ""
    assert f"segment 3 is held by runner {cluster.other.incarnation}" in message
    assert ABOUT_OTHER in message and "control it there" in message
    assert nobody.value.code() == grpc.StatusCode.NOT_FOUND
    assert "segment 5 is held by no runner" in (nobody.value.details() or "")
