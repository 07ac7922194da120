"""A silent partition between runner and journal strands no task (issue 15, defect 1).

The runner reaches the journal through a TCP proxy; then every connection
open at that moment goes silent for good (no FIN, no RST: what a NAT or a
firewall that lost its state does), while new connections work. The client's
keepalive notices the dead connection within about twice its interval, the
streams on it fail and are retried on a new connection, and an event
appended meanwhile is handled. Without keepalive nothing would notice: the
runner's signal stream would wait on the dead connection until the backstop
(set to an hour here).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import pytest
from ulid import ULID

from tailrunner import EOF, ActivityContext, EventStream, activity
from tailrunner.activities.outcomes import Outcome
from tailrunner.engines.factory import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.runner import Runner
from tailrunner.tails.memory import MemoryTailStore
from tailrunner.testing import LoopbackJournal, loopback_journal

from .faults.tcp_proxy import TcpProxy

KEEPALIVE = 0.5


@pytest.fixture
async def journal() -> AsyncIterator[LoopbackJournal]:
    async with loopback_journal() as j:
        yield j


@pytest.mark.parametrize("kind", ["lazy", "eager"])
async def test_a_silent_partition_is_noticed_and_the_work_goes_on(
    kind: str, journal: LoopbackJournal
) -> None:
    seen: list[ULID] = []

    @activity(name="follow", aggregate_types=("thing",))
    async def follow(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
        async for batch in stream.batches():
            for event in batch.events:
                seen.append(event.id)
                tail = event.id
            if batch.will_block and ctx.engine != "eager":
                break
        return EOF(tail)

    async def until_seen(event_id: ULID) -> None:
        with anyio.fail_after(30):
            while True:
                if event_id in seen:
                    return
                await anyio.sleep(0.05)

    ref = AggregateRef(type="thing", id=uuid.uuid4())
    host, port = journal.server.address.rsplit(":", 1)
    proxy = await anyio.to_thread.run_sync(TcpProxy, host, int(port))
    try:
        async with JournalClient.connect(
            f"127.0.0.1:{proxy.port}", keepalive=KEEPALIVE, timeout=5
        ) as client:
            runner = Runner(
                journal=client,
                tails=MemoryTailStore(),
                activities=[follow],
                options=EngineOptions(
                    kind=kind,
                    retry=RetryPolicy(initial=0.05, max_delay=0.5, jitter=0.0),
                    backstop=3600.0,
                    discovery_interval=3600.0,
                ),
            )
            (first,) = (await journal.client.append(ref, [NewEvent(type="e")])).event_ids
            async with anyio.create_task_group() as tg:
                await tg.start(runner.run)
                await until_seen(first)
                stalled = await anyio.to_thread.run_sync(proxy.stall_open)
                assert stalled >= 1, "the runner's connection was open"
                (second,) = (await journal.client.append(ref, [NewEvent(type="e")])).event_ids
                await until_seen(second)
                tg.cancel_scope.cancel()
        stats = await anyio.to_thread.run_sync(lambda: proxy.stats)
    finally:
        await anyio.to_thread.run_sync(proxy.close)
    assert stats.accepted >= 2, "a new connection was made after the partition"
