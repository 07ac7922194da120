"""Completion-to-waiter latency of a long-running operation: WaitOperation against polling.

A journal server (SQLite, ``synchronous=NORMAL``) in its own process serves
``google.longrunning.Operations``. In this one: a service author's
``Operations`` library (over a journal client) creates an operation; a waiter
blocks in tailrunner's ``OperationsClient.wait`` (``WaitOperation``, woken by
the journal's push). A sample is the time from just before
``set_successful`` to the waiter having the done operation.

Baseline: seed 001's way, a client that polls ``GetOperation`` once a
second until the operation is done, started at a random phase of its poll
(as a real poller would be). Both wait for the same completions.

Goal: the pushed wait's median is at most a tenth of the poller's.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import anyio
import grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import empty_pb2

from bench.common import Figure, Goal, percentile, run_module, serving, temp_dir
from tailrunner.journal.client import JournalClient
from tailrunner.operations import Operations
from tailrunner.operations.client import OperationsClient

#: Seed 001's polling frequency.
POLL = 1.0


async def one_completion(
    ops: Operations, waiter: OperationsClient, get: Any
) -> tuple[float, float]:
    """Seconds from one completion to the pushed waiter, and to the poller, having it."""
    name = (await ops.create()).name
    done_at: dict[str, float] = {}
    ready = anyio.Event()

    async def wait_pushed() -> None:
        ready.set()
        result = await waiter.wait(name, timeout=30)
        assert result.done
        done_at["pushed"] = time.perf_counter()

    async def wait_polled() -> None:
        await anyio.sleep(random.uniform(0, POLL))  # a poller's phase
        # Polling is the baseline being measured: seed 001's loop, on purpose.
        while not (await get(lro.GetOperationRequest(name=name))).done:  # noqa: ASYNC110
            await anyio.sleep(POLL)
        done_at["polled"] = time.perf_counter()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_pushed)
        tg.start_soon(wait_polled)
        await ready.wait()
        await anyio.sleep(0.2)  # the waiter is in WaitOperation, the poller polling
        start = time.perf_counter()
        await ops.set_successful(name, empty_pb2.Empty())
    return done_at["pushed"] - start, done_at["polled"] - start


async def measure(quick: bool) -> list[Figure]:
    samples = 3 if quick else 20
    async with temp_dir("operation-wait") as tmp:
        url = f"sqlite:///{tmp / 'journal.db'}?synchronous=NORMAL"
        async with (
            serving("journal", "--store", url, "--operations") as address,
            JournalClient.connect(address) as journal,
            OperationsClient.connect(address) as waiter,
            grpc.aio.insecure_channel(address) as channel,
        ):
            ops = Operations(journal)
            get = channel.unary_unary(
                "/google.longrunning.Operations/GetOperation",
                request_serializer=lro.GetOperationRequest.SerializeToString,
                response_deserializer=lro.Operation.FromString,
            )
            pushed: list[float] = []
            polled: list[float] = []
            for _ in range(samples):
                to_pushed, to_polled = await one_completion(ops, waiter, get)
                pushed.append(to_pushed)
                polled.append(to_polled)
    note = f"{samples} completions; poller: GetOperation every {POLL:g} s (seed 001)"
    return [
        Figure(
            name="operation completion to waiter, median",
            unit="ms",
            tailrunner=statistics.median(pushed) * 1000,
            baseline=statistics.median(polled) * 1000,
            baseline_name="a client polling GetOperation each second",
            higher_is_better=False,
            goal=Goal(on="ratio", op="<=", limit=0.1),
            note=note,
        ),
        Figure(
            name="operation completion to waiter, p99",
            unit="ms",
            tailrunner=percentile(pushed, 99) * 1000,
            baseline=percentile(polled, 99) * 1000,
            baseline_name="a client polling GetOperation each second",
            higher_is_better=False,
            note=note,
        ),
    ]


if __name__ == "__main__":
    run_module(measure)
