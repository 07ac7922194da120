"""Readers that do not read, and many readers that do (issue 15).

(a) 100 ``Events`` watches and 100 ``AggregateSignals`` streams whose
clients never read (raw gRPC, small receive windows) while appends go on,
on more aggregates than the hub remembers: the journal process's RSS stays
bounded, and other callers are served all along.

(b) 100 signal subscribers that read all get a signal for every aggregate
appended, with its newest head, and no resync but their first.

No wall-clock bounds: the timeouts only bound a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import psutil
import pytest

from tailrunner.journal.hub import DEFAULT_MAX_PENDING
from tailrunner.journal.server import JournalServer
from tailrunner.journal.sqlite import SQLiteJournalStore
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tests.e2e.conftest import TAILRUNNER

MiB = 1024 * 1024
#: Streams of each kind that never read.
STALLED = 100
#: Channel options of a client that reads nothing: a small stream window,
#: not grown by BDP probing, so that the server's writes back up at once.
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
#: Bytes of each event appended to the watched aggregates: what a journal
#: that buffered for stalled watchers would pile up.
WATCHED_EVENT_SIZE = 16 * 1024


@pytest.fixture
def journal_process(tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """``tailrunner journal serve`` on port 0 over SQLite (NORMAL): its address and process."""
    log = (tmp_path / "journal.log").open("w")
    proc = subprocess.Popen(
        [
            TAILRUNNER,
            "journal",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{tmp_path / 'journal.db'}?synchronous=NORMAL",
            "--no-operations",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on"), f"journal did not start: {line!r}"
        yield line.removeprefix("listening on").strip(), psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        log.close()


def append_request(aggregate: uuid.UUID, data: bytes = b"{}") -> journal_pb2.AppendRequest:
    return journal_pb2.AppendRequest(
        aggregate_type="slow",
        aggregate_id=aggregate.bytes,
        events=[journal_pb2.NewEvent(type="happened", data=data)],
    )


async def appends(
    stub: journal_pb2_grpc.JournalStub, requests: list[journal_pb2.AppendRequest], writers: int
) -> None:
    async def write(mine: list[journal_pb2.AppendRequest]) -> None:
        for request in mine:
            await stub.Append(request, timeout=60)

    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(write, requests[n::writers])


async def served_meanwhile(stub: journal_pb2_grpc.JournalStub) -> None:
    """One caller's round: append, read back, list, and a signal of a reading subscriber."""
    aggregate = uuid.uuid4()
    call = stub.AggregateSignals(journal_pb2.SignalsRequest(aggregate_types=["other"]))
    try:
        first = await call.read()
        assert first.resync
        request = append_request(aggregate)
        request.aggregate_type = "other"
        tail = (await stub.Append(request, timeout=60)).tail
        read = [
            r
            async for r in stub.Events(
                journal_pb2.EventsRequest(aggregate_id=aggregate.bytes), timeout=60
            )
        ]
        assert [e.id for r in read for e in r.events] == [tail]
        await stub.ListAggregates(journal_pb2.ListAggregatesRequest(page_size=10), timeout=60)
        with anyio.fail_after(60):
            signalled = await call.read()
        assert [(s.aggregate_id, s.head) for s in signalled.signals] == [(aggregate.bytes, tail)]
    finally:
        call.cancel()


def rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


@pytest.mark.slow
async def test_readers_that_never_read_do_not_grow_the_journal_and_others_are_served(
    journal_process: tuple[str, psutil.Process],
) -> None:
    address, process = journal_process
    watched = [uuid.uuid4() for _ in range(STALLED)]
    async with (
        grpc.aio.insecure_channel(address) as channel,
        grpc.aio.insecure_channel(address, options=SMALL_WINDOW) as stalled_channel,
    ):
        stub = journal_pb2_grpc.JournalStub(channel)
        stalled = journal_pb2_grpc.JournalStub(stalled_channel)
        # Warm up: every watched aggregate exists, each code path ran once.
        await appends(stub, [append_request(a) for a in watched], writers=8)
        await served_meanwhile(stub)
        before = rss(process)

        calls: list[grpc.aio.UnaryStreamCall] = []  # type: ignore[type-arg]
        for aggregate in watched:
            calls.append(
                stalled.Events(journal_pb2.EventsRequest(aggregate_id=aggregate.bytes, watch=True))
            )
            calls.append(stalled.AggregateSignals(journal_pb2.SignalsRequest()))
        try:
            # Let every call reach the server (none of them is read).
            await anyio.sleep(1)
            big = os.urandom(WATCHED_EVENT_SIZE)
            peak = before
            # Rounds of appends: big events on the watched aggregates (about
            # 16 MiB per round the stalled watchers are owed), and more fresh
            # aggregates than the hub remembers for the stalled subscribers.
            fresh_per_round = DEFAULT_MAX_PENDING // 4
            for _ in range(6):
                await appends(
                    stub,
                    [append_request(a, big) for a in watched * 10]
                    + [append_request(uuid.uuid4()) for _ in range(fresh_per_round)],
                    writers=16,
                )
                with anyio.fail_after(120):
                    await served_meanwhile(stub)
                peak = max(peak, rss(process))
            after = rss(process)
            print(
                f"journal RSS: {before / MiB:.1f} MiB before the stalled readers,"
                f" peak {peak / MiB:.1f} MiB, {after / MiB:.1f} MiB after"
            )
            assert peak - before < 200 * MiB
            # The stalled calls are still open: none was ended to save memory.
            assert all(not call.done() for call in calls)
        finally:
            for call in calls:
                call.cancel()


async def test_every_reading_subscriber_gets_every_aggregates_newest_head(
    tmp_path: Path,
) -> None:
    subscribers = 100
    aggregates = [uuid.uuid4() for _ in range(300)]
    store = await SQLiteJournalStore.open(tmp_path / "journal.db")
    async with JournalServer(store, listen="127.0.0.1:0", close_store=True) as server:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        heads: list[dict[bytes, bytes]] = [{} for _ in range(subscribers)]
        resyncs = [0] * subscribers
        subscribed = [anyio.Event() for _ in range(subscribers)]
        newest: dict[bytes, bytes] = {}
        written, delivered = anyio.Event(), anyio.Event()

        def check_delivered() -> None:
            if written.is_set() and all(seen == newest for seen in heads):
                delivered.set()

        async def read(index: int) -> None:
            stub = journal_pb2_grpc.JournalStub(channels[index % len(channels)])
            seen = heads[index]
            response: journal_pb2.SignalsResponse
            async for response in stub.AggregateSignals(journal_pb2.SignalsRequest()):  # type: ignore[attr-defined]
                resyncs[index] += response.resync
                for s in response.signals:
                    # Heads only move forward: a signal never goes back.
                    assert s.head > seen.get(s.aggregate_id, b"")
                    seen[s.aggregate_id] = s.head
                subscribed[index].set()
                check_delivered()

        try:
            async with anyio.create_task_group() as tg:
                for index in range(subscribers):
                    tg.start_soon(read, index)
                with anyio.fail_after(60):
                    for event in subscribed:
                        await event.wait()
                stub = journal_pb2_grpc.JournalStub(channels[0])

                async def write(mine: list[uuid.UUID]) -> None:
                    for _ in range(3):
                        for aggregate in mine:
                            reply = await stub.Append(append_request(aggregate), timeout=60)
                            newest[aggregate.bytes] = reply.tail

                async with anyio.create_task_group() as writers:
                    for n in range(8):
                        writers.start_soon(write, aggregates[n::8])
                written.set()
                check_delivered()
                with anyio.fail_after(120):
                    await delivered.wait()
                tg.cancel_scope.cancel()
        finally:
            for channel in channels:
                await channel.close(None)
    assert all(seen == newest for seen in heads)
    assert len(newest) == len(aggregates)
    # The first batch of each stream is its resync; none was dropped after it.
    assert resyncs == [1] * subscribers


@pytest.mark.slow
async def test_readers_that_stop_on_a_long_aggregate_of_big_events_pin_little(
    journal_process: tuple[str, psutil.Process],
) -> None:
    # 12.5 MiB of events: each stalled reader would pin its whole first
    # batch (1,000 events) if a batch were not cut at its byte budget.
    address, process = journal_process
    aggregate = uuid.uuid4()
    big = os.urandom(64 * 1024)
    async with (
        grpc.aio.insecure_channel(address) as channel,
        grpc.aio.insecure_channel(address, options=SMALL_WINDOW) as stalled_channel,
    ):
        stub = journal_pb2_grpc.JournalStub(channel)
        for _ in range(10):
            await stub.Append(
                journal_pb2.AppendRequest(
                    aggregate_type="slow",
                    aggregate_id=aggregate.bytes,
                    events=[journal_pb2.NewEvent(type="big", data=big)] * 20,
                ),
                timeout=60,
            )
        await served_meanwhile(stub)
        before = rss(process)
        stalled = journal_pb2_grpc.JournalStub(stalled_channel)
        calls = [
            stalled.Events(journal_pb2.EventsRequest(aggregate_id=aggregate.bytes, watch=True))
            for _ in range(STALLED)
        ]
        try:
            # Every call reads its first batch, and is then stuck on sending it.
            await anyio.sleep(2)
            with anyio.fail_after(120):
                await served_meanwhile(stub)
            after = rss(process)
            print(f"journal RSS: {before / MiB:.1f} MiB, {after / MiB:.1f} MiB with the stalled")
            assert after - before < 200 * MiB
            # A reader that reads gets every event, in order, in batches cut by bytes.
            messages = [
                m
                async for m in stub.Events(
                    journal_pb2.EventsRequest(aggregate_id=aggregate.bytes), timeout=60
                )
            ]
            assert sum(len(m.events) for m in messages) == 200
            assert len(messages) > 1 and [m.will_block for m in messages][-1]
            assert not any(m.will_block for m in messages[:-1])
        finally:
            for call in calls:
                call.cancel()
