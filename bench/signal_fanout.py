"""Signal fan-out: the append rate with 100 signal subscribers against none.

A journal server (SQLite store, ``synchronous=NORMAL`` so that the CPU cost
shows, not the disk) runs in its own process. This process appends: 16
callers at once, each one event per call to an aggregate of its own. The
subscribers run in a third process (``python -m bench.signal_fanout
subscribe ADDRESS N``), so that reading signals does not take the
appender's loop: 100 ``AggregateSignals`` streams (raw gRPC, spread over a
few channels) that read everything they are sent.

tailrunner: events/s with the 100 reading subscribers; baseline: events/s
of the same server with none, measured in the same run, in turns. The ratio
is the cost of the fan-out. Goal: ≥ 0.7.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Sequence

import anyio
import grpc

from bench.common import Figure, Goal, Reporter, child, median, run_module, serving, temp_dir
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc

#: Concurrent appending callers, each on its own aggregate.
WRITERS = 16
#: Signal subscribers in the subscriber process.
SUBSCRIBERS = 100
#: Streams per channel in the subscriber process.
STREAMS_PER_CHANNEL = 10


async def append_rate(client: JournalClient, events: int) -> float:
    """``WRITERS`` callers appending ``events`` single events in all; events/s."""
    each = events // WRITERS

    async def write() -> None:
        aggregate = AggregateRef(type="fanout", id=uuid.uuid4())
        for _ in range(each):
            await client.append(aggregate, [NewEvent(type="happened", data=b"x" * 100)])

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(WRITERS):
            tg.start_soon(write)
    return each * WRITERS / (time.perf_counter() - start)


async def subscribe(address: str, count: int) -> None:
    """The subscriber process: ``count`` reading streams; reports ready, then its counts."""
    reporter = Reporter()
    received = [0] * count
    messages = [0] * count
    resyncs = [0] * count
    ready = anyio.Event()
    first = [False] * count

    async def read(stub: journal_pb2_grpc.JournalStub, index: int) -> None:
        call = stub.AggregateSignals(journal_pb2.SignalsRequest())
        try:
            async for response in call:  # type: ignore[attr-defined]
                received[index] += len(response.signals)
                messages[index] += 1
                resyncs[index] += response.resync
                if not first[index]:
                    first[index] = True
                    if all(first):
                        ready.set()
        except grpc.aio.AioRpcError:
            return  # the server stopped

    channels = [grpc.aio.insecure_channel(address) for _ in range(-(-count // STREAMS_PER_CHANNEL))]
    try:
        async with anyio.create_task_group() as tg:
            for index in range(count):
                stub = journal_pb2_grpc.JournalStub(channels[index // STREAMS_PER_CHANNEL])
                tg.start_soon(read, stub, index)
            await ready.wait()
            reporter.send(ready=True)
            with contextlib.suppress(EOFError):
                await reporter.receive()  # "report"
            reporter.send(
                signals=sum(received),
                messages=sum(messages),
                resyncs=sum(resyncs),
                least=min(received),
            )
            tg.cancel_scope.cancel()
    finally:
        for channel in channels:
            await channel.close(None)


async def measure(quick: bool) -> list[Figure]:
    events = 1_600 if quick else 16_000
    repeats = 1 if quick else 3
    with_none: list[float] = []
    with_subscribers: list[float] = []
    delivered: list[str] = []
    async with temp_dir("fanout") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}?synchronous=NORMAL"
        async with (
            serving("journal", "--store", url) as address,
            JournalClient.connect(address) as client,
        ):
            await append_rate(client, 320)  # warm-up
            for _ in range(repeats):
                with_none.append(await append_rate(client, events))
                async with child(
                    "bench.signal_fanout", "subscribe", address, str(SUBSCRIBERS)
                ) as subscribers:
                    await subscribers.read()  # every stream got its first batch
                    with_subscribers.append(await append_rate(client, events))
                    await anyio.sleep(0.5)  # let the last signals arrive
                    await subscribers.send({"report": True})
                    counts = await subscribers.read()
                delivered.append(
                    f"{counts['signals']:,} signals in {counts['messages']:,} messages"
                    f" ({counts['resyncs']} resyncs,"
                    f" fewest to one stream {counts['least']:,})"
                )
    return [
        Figure(
            name=f"append rate with {SUBSCRIBERS} signal subscribers",
            unit="events/s",
            tailrunner=median(with_subscribers),
            baseline=median(with_none),
            baseline_name="the same appends with no subscriber",
            higher_is_better=True,
            goal=Goal(on="ratio", op=">=", limit=0.7),
            note=f"{events:,} events, {WRITERS} callers of one event each, SQLite NORMAL;"
            f" subscribers read in another process; median of {repeats};"
            f" delivered: {'; '.join(delivered)}",
        )
    ]


def main(argv: Sequence[str]) -> None:
    if len(argv) == 3 and argv[0] == "subscribe":
        anyio.run(subscribe, argv[1], int(argv[2]), backend="asyncio")
    else:
        run_module(measure)


if __name__ == "__main__":
    main(sys.argv[1:])
