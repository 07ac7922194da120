"""Stream throughput: one activity reading pre-appended events, against bare gRPC.

tailrunner: a journal server (SQLite store) in its own process; in this one,
the lazy engine runs one activity that reads every event of one aggregate
(``Events(watch=false)``, the journal's default batch of 1,000) and returns
``EOF``. Timed inside the activity, from its start to its last event.

Baseline: :mod:`bench.baseline_server` in its own process streams the same
events, as the same messages in the same batches (built once at its start),
to a bare ``async for`` loop that takes each event's id, as the activity does.

Goal: tailrunner ≥ 0.7 of the baseline's events/s.
"""

from __future__ import annotations

import json
import time
import uuid

import grpc

from bench.common import Figure, Goal, median, run_module, serving, temp_dir
from tailrunner.activities import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.journal.client import JournalClient
from tailrunner.journal.open import open_store
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.proto.v1 import journal_pb2, journal_pb2_grpc
from tailrunner.testing import run_activity

AGGREGATE_TYPE = "bench"
#: The journal's default ``Events`` batch (``max_batch`` = 0).
BATCH = 1000


def payload(n: int) -> bytes:
    """About 100 bytes of JSON, a typical small event."""
    return json.dumps({"n": n, "what": "happened", "detail": "x" * 48}).encode()


async def fill(url: str, aggregate: AggregateRef, count: int, *, per_append: int = 1000) -> None:
    """Append ``count`` events to ``aggregate`` directly through the store (no fsync)."""
    store = await open_store(url, synchronous="OFF")
    try:
        for start in range(0, count, per_append):
            events = [
                NewEvent(type="happened", data=payload(n))
                for n in range(start, min(count, start + per_append))
            ]
            await store.append(aggregate, events, expected_tail=None)
    finally:
        await store.aclose()


async def tailrunner_pass(client: JournalClient, aggregate: AggregateRef) -> tuple[int, float]:
    timings: list[tuple[int, float]] = []

    @activity(name="reader", aggregate_types=[AGGREGATE_TYPE])
    async def reader(ctx: ActivityContext, tail: object, stream: EventStream) -> Outcome:
        start = time.perf_counter()
        count = 0
        last = None
        async for event in stream:
            last = event.id
            count += 1
        timings.append((count, time.perf_counter() - start))
        return EOF(last)

    await run_activity(reader, journal=client, aggregate=aggregate, engine="lazy", time_limit=600)
    return timings[0]


async def baseline_pass(
    stub: journal_pb2_grpc.JournalStub, aggregate: AggregateRef
) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    last = b""
    call = stub.Events(journal_pb2.EventsRequest(aggregate_id=aggregate.id.bytes))
    async for response in call:
        for event in response.events:
            last = event.id
            count += 1
    assert last
    return count, time.perf_counter() - start


async def measure(quick: bool) -> list[Figure]:
    count = 20_000 if quick else 200_000
    repeats = 1 if quick else 5
    aggregate = AggregateRef(type=AGGREGATE_TYPE, id=uuid.uuid4())
    async with temp_dir("stream") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}"
        await fill(url, aggregate, count)
        async with (
            serving("journal", "--store", url) as journal_address,
            serving(
                "baseline", "--store", url, "--aggregate", str(aggregate.id), "--batch", str(BATCH)
            ) as baseline_address,
            JournalClient.connect(journal_address) as client,
            grpc.aio.insecure_channel(
                baseline_address, options=[("grpc.max_receive_message_length", -1)]
            ) as channel,
        ):
            stub = journal_pb2_grpc.JournalStub(channel)
            # Warm-up: caches, connections, the store's page cache.
            await tailrunner_pass(client, aggregate)
            await baseline_pass(stub, aggregate)
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(repeats):
                n, seconds = await tailrunner_pass(client, aggregate)
                assert n == count, f"the activity saw {n} events, not {count}"
                ours.append(n / seconds)
                n, seconds = await baseline_pass(stub, aggregate)
                assert n == count, f"the baseline saw {n} events, not {count}"
                theirs.append(n / seconds)
    return [
        Figure(
            name="stream throughput",
            unit="events/s",
            tailrunner=median(ours),
            baseline=median(theirs),
            baseline_name="minimal grpc.aio server, bare client loop",
            higher_is_better=True,
            goal=Goal(on="ratio", op=">=", limit=0.7),
            note=f"{count:,} events, batches of {BATCH}, median of {repeats} after a warm-up",
        )
    ]


if __name__ == "__main__":
    run_module(measure)
